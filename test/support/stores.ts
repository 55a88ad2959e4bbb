import { randomBytes } from 'node:crypto';
import { DatastoreQueueStore } from '../../lib/store-datastore';
import { DEFAULT_LIMITS, type Limits } from '../../lib/store';

export function uniqueNamespace(prefix: string): string {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

function emulatorHost(name: 'QUEUE_TEST_FIRESTORE_HOST' | 'QUEUE_TEST_DATASTORE_HOST'): string {
  const host = process.env[name];
  if (!host) throw new Error(`${name} is not set: run the tests with jest, whose global setup starts the emulators`);
  return host;
}

/** A Datastore store on the Firestore emulator in Datastore mode, in a fresh namespace. */
export function firestoreStore(limits: Limits = DEFAULT_LIMITS, namespace = uniqueNamespace('fs')): DatastoreQueueStore {
  return new DatastoreQueueStore({
    apiEndpoint: emulatorHost('QUEUE_TEST_FIRESTORE_HOST'),
    projectId: 'queue-test',
    namespace,
    limits,
    timeoutMs: 30_000,
  });
}

/** A Datastore store on the legacy Datastore emulator, which enforces index.yaml. */
export function legacyStore(limits: Limits = DEFAULT_LIMITS): DatastoreQueueStore {
  return new DatastoreQueueStore({
    apiEndpoint: emulatorHost('QUEUE_TEST_DATASTORE_HOST'),
    projectId: 'queue-test',
    namespace: uniqueNamespace('ds'),
    limits,
    timeoutMs: 30_000,
  });
}
