import { Requests } from '../lib/api';
import { endpoint } from '../lib/http';
import { service } from '../lib/service';

/** MESSAGE_DELETE: rolls back an incoming message, or removes any message with its envelopes. */
export const messageDelete = endpoint(
  'messageDelete',
  { method: 'POST', from: 'json', input: Requests.messageDelete, access: { self: 'owner' } },
  async ({ msgid, owner }) => {
    const { deleted } = await service().store.messageDelete(msgid, { owner });
    return { status: 200, json: { msgid, deleted } };
  },
);
