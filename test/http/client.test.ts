import { freePort } from '../../dev/mail';
import { HttpQueueStore } from '../../bridge/client';
import { TEST_TOKEN, startService } from '../support/service';
import { uniqueNamespace } from '../support/stores';

/**
 * The bridge's HTTP client when the service is out of reach: the first call
 * spends its retry budget, later ones fail at once but for one probe a
 * second, and the first answer ends the outage.
 */
test('with failFast, an outage costs one retry budget, then calls fail at once until a probe finds the service again', async () => {
  const port = await freePort();
  const client = new HttpQueueStore({ baseUrl: `http://127.0.0.1:${port}`, token: TEST_TOKEN, timeoutMs: 5000, budgetMs: 800, failFast: true });
  try {
    const timed = async (work: () => Promise<unknown>) => {
      const started = Date.now();
      const result = await work().then(
        () => 'ok',
        (err: { code?: string; details?: { outage?: boolean } }) => (err.details?.outage ? 'failed fast' : `failed: ${err.code}`),
      );
      return { result, ms: Date.now() - started };
    };
    const first = await timed(() => client.instanceList());
    expect(first.result).toBe('failed: unavailable');
    expect(first.ms).toBeGreaterThanOrEqual(300); // it retried, within its budget
    const second = await timed(() => client.instanceList());
    expect(second).toMatchObject({ result: 'failed fast' });
    expect(second.ms).toBeLessThan(50);

    const service = await startService({ namespace: uniqueNamespace('client'), port });
    try {
      await new Promise((resolve) => setTimeout(resolve, 1_100));
      expect((await timed(() => client.instanceList())).result).toBe('ok');
      expect((await timed(() => client.queueCounts())).result).toBe('ok');
    } finally {
      await service.stop();
    }
  } finally {
    await client.close();
  }
});

test('without failFast, every call spends its own retry budget', async () => {
  const port = await freePort();
  const client = new HttpQueueStore({ baseUrl: `http://127.0.0.1:${port}`, token: TEST_TOKEN, timeoutMs: 200, budgetMs: 500 });
  try {
    for (let i = 0; i < 2; i++) {
      const started = Date.now();
      await expect(client.instanceList()).rejects.toMatchObject({ code: 'unavailable' });
      expect(Date.now() - started).toBeGreaterThanOrEqual(200);
    }
  } finally {
    await client.close();
  }
});
