import { firestoreStore } from '../support/stores';
import { tombstoneSweepTests } from './datastore-tombstones';
import { queueStoreContract } from './queue-store.contract';

describe('the queue over DatastoreStorage on the Firestore emulator in Datastore mode', () => {
  tombstoneSweepTests(() => process.env.QUEUE_TEST_FIRESTORE_HOST!);
  queueStoreContract({
    create: async (limits) => {
      const store = firestoreStore(limits);
      return { store, dispose: () => store.close() };
    },
  });
});
