import { loadConfig, type ServiceConfig } from './config';
import { createLogger } from './log';
import type { QueueStore } from './store';
import { DatastoreQueueStore } from './store-datastore';
import { MemoryQueueStore } from './store-memory';

/**
 * The configuration and store the functions use, made once per process from
 * the environment. Tests and embedders can set their own with useService.
 */
export interface Service {
  config: ServiceConfig;
  store: QueueStore;
}

let current: Service | undefined;

export function service(): Service {
  if (!current) {
    const config = loadConfig();
    current = { config, store: storeFor(config) };
  }
  return current;
}

export function useService(next: Service | undefined): void {
  current = next;
}

export function storeFor(config: ServiceConfig): QueueStore {
  if (config.store === 'memory') return new MemoryQueueStore(config.limits);
  const log = createLogger({ name: 'queue' });
  const onSweepError = (err: unknown) => log.warn({ err }, 'could not sweep expired tombstones; the next heartbeat or purge tries again');
  return new DatastoreQueueStore({ ...config.datastore, limits: config.limits, onSweepError });
}
