import '../../functions';
import { HttpQueueStore, type ClientOptions } from '../../bridge/client';
import type { ServiceConfig } from '../../lib/config';
import type { Credentials } from '../../lib/credentials';
import { createQueueServer, listen } from '../../lib/server';
import { useService } from '../../lib/service';
import { DEFAULT_LIMITS, type Limits, type QueueStore } from '../../lib/store';
import { firestoreStore } from './stores';

export const TEST_TOKEN = 'test-token-0123456789abcdef';

export function testConfig(limits: Limits = DEFAULT_LIMITS, auth: ServiceConfig['auth'] = { mode: 'token', token: TEST_TOKEN }): ServiceConfig {
  return {
    auth,
    store: 'datastore',
    datastore: { namespace: 'unused', timeoutMs: 30_000 },
    limits,
  };
}

/**
 * Every function served on a loopback port, on a store of the test's own.
 * The functions read their store from lib/service, so one runs at a time.
 */
export async function startService(
  options: { store?: QueueStore; credentials?: Credentials; limits?: Limits; auth?: ServiceConfig['auth']; namespace?: string; port?: number } = {},
) {
  const limits = options.limits ?? DEFAULT_LIMITS;
  const store = options.store ?? firestoreStore(limits, options.namespace);
  useService({ config: testConfig(limits, options.auth), store, credentials: options.credentials });
  const server = createQueueServer();
  const port = await listen(server, options.port ?? 0, '127.0.0.1');
  const baseUrl = `http://127.0.0.1:${port}`;
  return {
    baseUrl,
    port,
    store,
    client: (extra: Partial<ClientOptions> = {}) => new HttpQueueStore({ baseUrl, token: TEST_TOKEN, limits, ...extra }),
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await store.close();
      useService(undefined);
    },
  };
}
