import { Requests, toMessageJson } from '../lib/api';
import { endpoint } from '../lib/http';
import { service } from '../lib/service';

/** Quarantines a message whose body is damaged: out of every walk, kept for inspection. */
export const messageCorrupt = endpoint(
  'messageCorrupt',
  { method: 'POST', from: 'json', input: Requests.messageCorrupt, access: 'admin' },
  async ({ msgid, owner }) => {
    const message = await service().store.messageCorrupt(msgid, { owner });
    return { status: 200, json: { message: toMessageJson(message) } };
  },
);
