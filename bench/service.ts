import { randomBytes } from 'node:crypto';
import '../functions';
import { HttpQueueStore } from '../bridge/client';
import { Stats } from '../bridge/stats';
import { startEmulator } from '../dev/emulator';
import { randomEvpid, randomMsgid } from '../lib/ids';
import { sha256hex } from '../lib/rules';
import { createQueueServer, listen } from '../lib/server';
import { useService } from '../lib/service';
import { DEFAULT_LIMITS, type QueueStore } from '../lib/store';
import { Queue } from '../lib/queue';
import { DatastoreStorage } from '../lib/storage-datastore';
import { progress, table } from './report';

/**
 * Per-operation latency of the queue service on this machine: the Datastore
 * store called directly, and the same operations through HTTP (client →
 * functions → store), in one run against one Firestore emulator.
 */
const ENVELOPE = Buffer.from('version: 3\ndispatcher: local\ntype: mda\nrcpt: user@example.test\n');

async function messageCycle(store: QueueStore, stats: Stats, body: Buffer): Promise<void> {
  const timed = async <T>(op: string, work: () => Promise<T>): Promise<T> => {
    const started = performance.now();
    try {
      const result = await work();
      stats.record(op, performance.now() - started);
      return result;
    } catch (err) {
      stats.record(op, performance.now() - started, false);
      throw err;
    }
  };
  const msgid = randomMsgid();
  const evpid = randomEvpid(msgid);
  const bounce = randomEvpid(msgid);
  await timed('messageCreate', () => store.messageCreate([msgid], 'bench'));
  await timed('messageCommit (4 KiB, 1 envelope)', () =>
    store.messageCommit({ msgid, owner: 'bench', size: body.length, sha256: sha256hex(body), body, envelopes: [{ evpid, data: ENVELOPE }] }),
  );
  await timed('envelopeLoad', () => store.envelopeLoad(evpid, { owner: 'bench' }));
  await timed('envelopeUpdate', () => store.envelopeUpdate({ evpid, data: ENVELOPE }, { owner: 'bench' }));
  await timed('messageFd (read body)', () => store.messageRead(msgid, { owner: 'bench' }));
  await timed('envelopeCreate (bounce)', () => store.envelopeCreate({ evpid: bounce, data: ENVELOPE }, { owner: 'bench' }));
  await timed('envelopeDelete', () => store.envelopeDelete(evpid, { owner: 'bench' }));
  await timed('envelopeDelete (last)', () => store.envelopeDelete(bounce, { owner: 'bench' }));
}

export async function benchService(iterations: number): Promise<{ table: string; results: unknown }> {
  const emulator = await startEmulator({ kind: 'firestore' });
  const namespace = `bench-${randomBytes(3).toString('hex')}`;
  const direct = new Queue(new DatastoreStorage({ apiEndpoint: emulator.host, projectId: 'bench', namespace }));
  useService({
    config: { auth: { mode: 'token', token: 'bench-token-0123456789' }, store: 'datastore', datastore: { namespace, timeoutMs: 10_000 }, limits: DEFAULT_LIMITS },
    store: direct,
  });
  const server = createQueueServer();
  const port = await listen(server, 0, '127.0.0.1');
  const http = new HttpQueueStore({ baseUrl: `http://127.0.0.1:${port}`, token: 'bench-token-0123456789' });
  const body = randomBytes(4096);
  const runs = { direct: new Stats(), http: new Stats() };
  try {
    for (const [name, store] of [['direct', direct], ['http', http]] as const) {
      for (let i = 0; i < 20; i++) await messageCycle(store, new Stats(), body);
      const bar = progress(iterations, `service latency (${name})`);
      for (let i = 0; i < iterations; i++) {
        await messageCycle(store, runs[name], body);
        bar.increment();
      }
      bar.stop();
    }
  } finally {
    await http.close();
    server.closeAllConnections();
    server.close();
    await direct.close();
    await emulator.stop();
  }
  const d = runs.direct.summary();
  const h = runs.http.summary();
  const rows = Object.keys(d).map((op) => [op, d[op].p50Ms, d[op].p99Ms, h[op]?.p50Ms ?? '-', h[op]?.p99Ms ?? '-']);
  return {
    table: table(
      `Queue service, per operation, ${iterations} sequential messages (Firestore emulator in Datastore mode, this machine), ms`,
      ['operation', 'store p50', 'store p99', 'HTTP p50', 'HTTP p99'],
      rows,
    ),
    results: { iterations, store: d, http: h },
  };
}
