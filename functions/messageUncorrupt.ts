import { Requests, toMessageJson } from '../lib/api';
import { endpoint } from '../lib/http';
import { service } from '../lib/service';

/** Puts a quarantined message back in the queue. */
export const messageUncorrupt = endpoint(
  'messageUncorrupt',
  { method: 'POST', from: 'json', input: Requests.messageUncorrupt, access: 'admin' },
  async ({ msgid, owner }) => {
    const message = await service().store.messageUncorrupt(msgid, { owner });
    return { status: 200, json: { message: toMessageJson(message) } };
  },
);
