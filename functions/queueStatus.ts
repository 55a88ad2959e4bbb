import { Requests, toInstanceJson } from '../lib/api';
import { endpoint } from '../lib/http';
import { service } from '../lib/service';

/** The pool's instances with their leases, and how many messages each owner has, by state. */
export const queueStatus = endpoint('queueStatus', { method: 'GET', from: 'query', input: Requests.queueStatus, access: 'admin' }, async () => {
  const { store } = service();
  const [instances, counts] = await Promise.all([store.instanceList(), store.queueCounts()]);
  return { status: 200, json: { instances: instances.map(toInstanceJson), counts } };
});
