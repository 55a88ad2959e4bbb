import { Credentials } from '../../lib/credentials';
import { Queue } from '../../lib/queue';
import { MemoryStorage } from '../../lib/storage-memory';
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

const ADMIN_TOKEN = 'contract-admin-token-0123456789abcdef';

describe('the queue functions over HTTP as an administrator of QUEUE_AUTH=tokens (HttpQueueStore → functions → memory)', () => {
  queueStoreContract({
    create: async (limits) => {
      const storage = new MemoryStorage();
      const service = await startService({
        limits,
        store: new Queue(storage, { limits }),
        credentials: new Credentials(storage),
        auth: { mode: 'tokens', adminToken: ADMIN_TOKEN },
      });
      const client = service.client({ token: ADMIN_TOKEN });
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
