import type { InstanceInfo, QueueCount } from './store';

/**
 * One line per owner of queued mail, as `queueStatus` logs it for
 * log-based metrics (docs/metrics.md): how much it owns, how old the oldest
 * is, and whether its lease has run out (an instance that still owns mail
 * then is mail nobody delivers until a survivor claims it).
 */
export function ownerGauges(instances: InstanceInfo[], counts: QueueCount[], now = Date.now()) {
  return counts
    .filter((c) => c.state === 'queued')
    .map((c) => {
      const instance = instances.find((i) => i.instance === c.owner);
      return {
        owner: c.owner,
        queued: c.messages,
        oldestQueuedAgeS: c.oldestAt ? Math.round((now - c.oldestAt.getTime()) / 1000) : 0,
        leaseExpired: instance ? !instance.alive : false,
        draining: instance?.draining ?? false,
      };
    });
}
