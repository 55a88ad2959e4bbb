import { MemoryQueueStore } from '../../lib/store-memory';
import { queueStoreContract } from './queue-store.contract';

describe('MemoryQueueStore', () => {
  queueStoreContract({
    create: async (limits) => {
      const store = new MemoryQueueStore(limits);
      return { store, dispose: () => store.close() };
    },
  });
});
