import { startService } from '../support/service';
import { queueStoreContract } from './queue-store.contract';

describe('the queue functions over HTTP (HttpQueueStore → functions → Datastore on the Firestore emulator)', () => {
  queueStoreContract({
    slow: true,
    create: async (limits) => {
      const service = await startService({ limits });
      const client = service.client();
      return {
        store: client,
        dispose: async () => {
          await client.close();
          await service.stop();
        },
      };
    },
  });
});
