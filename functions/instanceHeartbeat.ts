import { Requests, toInstanceJson } from '../lib/api';
import { endpoint } from '../lib/http';
import { service } from '../lib/service';

/** An MX of the pool says it is alive: its messages stay its own for leaseMs more (one write). */
export const instanceHeartbeat = endpoint(
  'instanceHeartbeat',
  { method: 'POST', from: 'json', input: Requests.instanceHeartbeat, access: { self: 'instance' } },
  async ({ instance, leaseMs, pendingWrites, ...state }) => {
    const info = await service().store.instanceHeartbeat(instance, leaseMs, state);
    return { status: 200, json: { instance: toInstanceJson(info) }, log: { instance, leaseMs, pendingWrites, draining: info.draining } };
  },
);
