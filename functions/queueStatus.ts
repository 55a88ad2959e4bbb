import { Requests, toInstanceJson } from '../lib/api';
import { endpoint, logEvent } from '../lib/http';
import { ownerGauges } from '../lib/pool';
import { service } from '../lib/service';

/** The pool's instances with their leases, and how many messages each owner has, by state. */
export const queueStatus = endpoint('queueStatus', { method: 'GET', from: 'query', input: Requests.queueStatus, access: 'admin' }, async () => {
  const { store } = service();
  const [instances, counts] = await Promise.all([store.instanceList(), store.queueCounts()]);
  for (const gauge of ownerGauges(instances, counts)) logEvent('owner_queue', gauge, `queue of ${gauge.owner}: ${gauge.queued} queued`);
  return { status: 200, json: { instances: instances.map(toInstanceJson), counts } };
});
