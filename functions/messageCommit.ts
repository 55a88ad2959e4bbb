import { Requests } from '../lib/api';
import { endpoint } from '../lib/http';
import { DEFAULT_OWNER } from '../lib/ids';
import { service } from '../lib/service';

/** MESSAGE_COMMIT: makes the body durable and the message and its envelopes visible, atomically. */
export const messageCommit = endpoint(
  'messageCommit',
  { method: 'POST', from: 'json', input: Requests.messageCommit, framed: 'body', access: { self: 'owner' } },
  async ({ owner = DEFAULT_OWNER, ...commit }) => {
    const { created } = await service().store.messageCommit({ ...commit, owner });
    return { status: created ? 201 : 200, json: { msgid: commit.msgid, created } };
  },
);
