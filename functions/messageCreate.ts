import { Requests } from '../lib/api';
import { endpoint } from '../lib/http';
import { DEFAULT_OWNER } from '../lib/ids';
import { service } from '../lib/service';

/** MESSAGE_CREATE: reserves msgids chosen by the caller as incoming messages. */
export const messageCreate = endpoint(
  'messageCreate',
  { method: 'POST', from: 'json', input: Requests.messageCreate, access: { self: 'owner' } },
  async ({ msgids, owner = DEFAULT_OWNER }) => {
    await service().store.messageCreate(msgids, owner);
    return { status: 201, json: { msgids, owner, state: 'incoming' } };
  },
);
