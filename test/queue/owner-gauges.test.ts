import { ownerGauges } from '../../lib/pool';
import type { InstanceInfo } from '../../lib/store';

const instance = (name: string, alive: boolean, draining = false): InstanceInfo => ({
  instance: name,
  leaseUntil: new Date(),
  heartbeatAt: new Date(),
  startedAt: new Date(),
  walkDone: true,
  alive,
  claims: 0,
  draining,
});

test("one gauge line per owner of queued mail: how much, the oldest's age, whether its lease has run out", () => {
  const now = Date.parse('2026-12-01T06:00:00Z');
  const counts = [
    { owner: 'mx1', state: 'queued' as const, messages: 3, oldestAt: new Date(now - 90_000) },
    { owner: 'mx1', state: 'incoming' as const, messages: 1, oldestAt: new Date(now - 1_000) },
    { owner: 'mx2', state: 'queued' as const, messages: 5, oldestAt: new Date(now - 600_000) },
    { owner: 'api-user', state: 'queued' as const, messages: 1, oldestAt: new Date(now) },
  ];
  expect(ownerGauges([instance('mx1', true), instance('mx2', false, true)], counts, now)).toEqual([
    { owner: 'mx1', queued: 3, oldestQueuedAgeS: 90, leaseExpired: false, draining: false },
    { owner: 'mx2', queued: 5, oldestQueuedAgeS: 600, leaseExpired: true, draining: true },
    { owner: 'api-user', queued: 1, oldestQueuedAgeS: 0, leaseExpired: false, draining: false },
  ]);
});
