import { firestoreStore } from '../support/stores';
import { queueStoreContract } from './queue-store.contract';

describe('DatastoreQueueStore on the Firestore emulator in Datastore mode', () => {
  queueStoreContract({
    create: async (limits) => {
      const store = firestoreStore(limits);
      return { store, dispose: () => store.close() };
    },
  });
});
