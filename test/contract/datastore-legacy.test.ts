import { legacyStore } from '../support/stores';
import { queueStoreContract } from './queue-store.contract';

describe('DatastoreQueueStore on the legacy Datastore emulator, with index.yaml enforced', () => {
  queueStoreContract({
    create: async (limits) => {
      const store = legacyStore(limits);
      return { store, dispose: () => store.close() };
    },
  });
});
