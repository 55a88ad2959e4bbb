import { Requests } from '../lib/api';
import { endpoint } from '../lib/http';
import { service } from '../lib/service';

/** Drops an owner's uncommitted messages left from a crash (the bridge calls it at INIT). */
export const messagePurge = endpoint(
  'messagePurge',
  { method: 'POST', from: 'json', input: Requests.messagePurge, access: { self: 'owner' } },
  async ({ owner, keep }) => {
    const purged = await service().store.messagePurge(owner, keep);
    return { status: 200, json: { purged } };
  },
);
