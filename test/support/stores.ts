import { randomBytes } from 'node:crypto';
import { Queue, type QueueOptions } from '../../lib/queue';
import { DatastoreStorage, type DatastoreOptions } from '../../lib/storage-datastore';
import { MemoryStorage } from '../../lib/storage-memory';
import { DEFAULT_LIMITS, type Limits } from '../../lib/store';

export function uniqueNamespace(prefix: string): string {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

function emulatorHost(name: 'QUEUE_TEST_FIRESTORE_HOST' | 'QUEUE_TEST_DATASTORE_HOST'): string {
  const host = process.env[name];
  if (!host) throw new Error(`${name} is not set: run the tests with jest, whose global setup starts the emulators`);
  return host;
}

/** The queue in process memory. */
export function memoryQueue(limits: Limits = DEFAULT_LIMITS): Queue {
  return new Queue(new MemoryStorage(), { limits });
}

/** The queue over Datastore. */
export function datastoreQueue(options: DatastoreOptions & QueueOptions): Queue {
  return new Queue(new DatastoreStorage(options), options);
}

/** The queue on the Firestore emulator in Datastore mode, in a fresh namespace. */
export function firestoreStore(limits: Limits = DEFAULT_LIMITS, namespace = uniqueNamespace('fs')): Queue {
  return new Queue(firestoreStorage(namespace), { limits });
}

/** Storage on the Firestore emulator in Datastore mode, in a fresh namespace. */
export function firestoreStorage(namespace = uniqueNamespace('fs')): DatastoreStorage {
  return new DatastoreStorage({ apiEndpoint: emulatorHost('QUEUE_TEST_FIRESTORE_HOST'), projectId: 'queue-test', namespace, timeoutMs: 30_000 });
}

/** The queue on the legacy Datastore emulator, which enforces index.yaml. */
export function legacyStore(limits: Limits = DEFAULT_LIMITS): Queue {
  return datastoreQueue({ apiEndpoint: emulatorHost('QUEUE_TEST_DATASTORE_HOST'), projectId: 'queue-test', namespace: uniqueNamespace('ds'), limits, timeoutMs: 30_000 });
}
