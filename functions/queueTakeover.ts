import { Requests } from '../lib/api';
import { endpoint } from '../lib/http';
import { service } from '../lib/service';

/** Gives `owner` the queued messages of instances whose lease has expired, each exactly once. */
export const queueTakeover = endpoint(
  'queueTakeover',
  { method: 'POST', from: 'json', input: Requests.queueTakeover, access: { self: 'owner' } },
  async ({ owner, ...options }) => {
    const takeover = await service().store.queueTakeover(owner, options);
    return { status: 200, json: takeover, log: { claimed: takeover.claimed.length, purged: takeover.purged, more: takeover.more } };
  },
);
