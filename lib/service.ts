import { loadConfig, type ServiceConfig } from './config';
import { createLogger } from './log';
import { Queue } from './queue';
import type { Storage } from './storage';
import { DatastoreStorage } from './storage-datastore';
import { MemoryStorage } from './storage-memory';
import type { QueueStore } from './store';

/**
 * The configuration and queue the functions use, made once per process from
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

/** The queue over the configured storage driver. */
export function storeFor(config: ServiceConfig): QueueStore {
  const log = createLogger({ name: 'queue' });
  const onSweepError = (err: unknown) => log.warn({ err }, 'could not sweep expired tombstones; the next heartbeat or purge tries again');
  return new Queue(storageFor(config), { limits: config.limits, onSweepError });
}

function storageFor(config: ServiceConfig): Storage {
  if (config.store === 'memory') return new MemoryStorage();
  return new DatastoreStorage(config.datastore);
}
