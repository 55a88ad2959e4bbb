import { Requests } from '../lib/api';
import { endpoint } from '../lib/http';
import { DEFAULT_OWNER } from '../lib/ids';
import { service } from '../lib/service';

/** Stores a part of an incoming message's body, for bodies too large for one messageCommit. */
export const messageWrite = endpoint(
  'messageWrite',
  { method: 'PUT', from: 'bytes', input: Requests.messageWrite, access: { self: 'owner' } },
  async ({ msgid, offset, owner = DEFAULT_OWNER }, req) => {
    const data = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    await service().store.messageWrite(msgid, offset, data, owner);
    return { status: 204 };
  },
);
