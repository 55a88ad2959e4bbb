import { memoryQueue } from '../support/stores';
import { queueStoreContract } from './queue-store.contract';

describe('the queue over MemoryStorage', () => {
  queueStoreContract({
    create: async (limits) => {
      const store = memoryQueue(limits);
      return { store, dispose: () => store.close() };
    },
  });
});
