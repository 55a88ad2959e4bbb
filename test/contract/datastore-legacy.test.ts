import { legacyStore } from '../support/stores';
import { tombstoneSweepTests } from './datastore-tombstones';
import { queueStoreContract } from './queue-store.contract';

describe('the queue over DatastoreStorage on the legacy Datastore emulator, with index.yaml enforced', () => {
  tombstoneSweepTests(() => process.env.QUEUE_TEST_DATASTORE_HOST!);
  queueStoreContract({
    create: async (limits) => {
      const store = legacyStore(limits);
      return { store, dispose: () => store.close() };
    },
  });
});
