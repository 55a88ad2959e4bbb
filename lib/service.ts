import { ConfigError, loadConfig, type ServiceConfig } from './config';
import { Credentials } from './credentials';
import { createLogger } from './log';
import { Queue } from './queue';
import type { Storage } from './storage';
import { DatastoreStorage } from './storage-datastore';
import { MemoryStorage } from './storage-memory';
import type { QueueStore } from './store';

/**
 * The configuration, queue and credentials the functions use, made once per
 * process from the environment. Tests and embedders can set their own with
 * useService.
 */
export interface Service {
  config: ServiceConfig;
  store: QueueStore;
  /** The issued credentials (QUEUE_AUTH=tokens), kept in the queue's storage; an embedder without them cannot use that mode. */
  credentials?: Credentials;
}

let current: Service | undefined;

export function service(): Service {
  current ??= serviceFor(loadConfig());
  return current;
}

/** The service's issued credentials (QUEUE_AUTH=tokens). */
export function credentials(): Credentials {
  const { credentials } = service();
  if (!credentials) throw new ConfigError('this service has no store of credentials');
  return credentials;
}

export function useService(next: Service | undefined): void {
  current = next;
}

/** The queue and the credentials over the configured storage driver. */
export function serviceFor(config: ServiceConfig): Service {
  return serviceOver(config, storageFor(config));
}

/** The queue and the credentials over the given storage (benchmarks wrap the configured driver to count what it does). */
export function serviceOver(config: ServiceConfig, storage: Storage): Service {
  const log = createLogger({ name: 'queue' });
  const onSweepError = (err: unknown) => log.warn({ err }, 'could not sweep expired tombstones; the next heartbeat or purge tries again');
  return { config, store: new Queue(storage, { limits: config.limits, onSweepError }), credentials: new Credentials(storage) };
}

export function storageFor(config: ServiceConfig): Storage {
  if (config.store === 'memory') return new MemoryStorage();
  return new DatastoreStorage(config.datastore);
}
