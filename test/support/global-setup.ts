import path from 'node:path';
import { startEmulator, type Emulator } from '../../dev/emulator';

declare global {
  // eslint-disable-next-line no-var
  var queueTestEmulators: Emulator[] | undefined;
}

/**
 * Starts both Datastore emulators once for the whole run. Every test file
 * works in namespaces of its own, so nothing needs a reset between files.
 */
export default async function globalSetup(): Promise<void> {
  process.env.METADATA_SERVER_DETECTION = 'none';
  const [firestore, datastore] = await Promise.all([
    startEmulator({ kind: 'firestore' }),
    startEmulator({ kind: 'datastore', indexFile: path.join(__dirname, '../../index.yaml') }),
  ]);
  globalThis.queueTestEmulators = [firestore, datastore];
  process.env.QUEUE_TEST_FIRESTORE_HOST = firestore.host;
  process.env.QUEUE_TEST_DATASTORE_HOST = datastore.host;
}
