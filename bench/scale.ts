import { randomBytes } from 'node:crypto';
import { WALK_PAGE as PAGE } from '../bridge/backend';
import { CountingStorage } from '../dev/counting-storage';
import { startEmulator } from '../dev/emulator';
import { randomEvpid, randomMsgid } from '../lib/ids';
import { Queue } from '../lib/queue';
import { sha256hex } from '../lib/rules';
import { DatastoreStorage } from '../lib/storage-datastore';
import { progress, table } from './report';

/**
 * How the walk at INIT and the queue's status grow with the queue. One owner
 * is filled with messages of a 2 KiB body and one envelope, committed through
 * the queue layer straight into the Firestore emulator (quicker than through
 * HTTP; what is stored is the same). At each size: a full envelopeWalk of
 * that owner in pages of 1,000 (WALK_PAGE), as the bridge does at INIT, and a queueStatus
 * (the instance list and the counts), with the storage calls each makes.
 */
const OWNER = 'bench-mx';
const COMMITTERS = 8;
const ENVELOPE = Buffer.from('version: 3\ndispatcher: local\ntype: mta\nrcpt: user@example.test\n');

interface ScaleStep {
  envelopes: number;
  commitsPerSecond: number;
  walkSeconds: number;
  pages: number;
  secondsPerPage: number;
  callsPerPageMax: number;
  queriesPerPageMax: number;
  /** Of each page's time, the milliseconds its queries and its lookups took. */
  queryMsPerPage: number;
  lookupMsPerPage: number;
  statusSeconds: number;
  statusCalls: string[];
}

export async function benchScale(sizes: number[]): Promise<{ table: string; results: unknown }> {
  const emulator = await startEmulator({ kind: 'firestore', heapMb: 4096 });
  const namespace = `scale-${randomBytes(3).toString('hex')}`;
  const storage = new CountingStorage(new DatastoreStorage({ apiEndpoint: emulator.host, projectId: 'bench', namespace, timeoutMs: 120_000 }));
  const queue = new Queue(storage);
  const body = randomBytes(2048);
  const steps: ScaleStep[] = [];
  try {
    let stored = 0;
    for (const size of [...sizes].sort((a, b) => a - b)) {
      const fillStarted = performance.now();
      await fill(queue, body, size - stored, `scale: commit up to ${size}`);
      const commitsPerSecond = (size - stored) / ((performance.now() - fillStarted) / 1000);
      // the first cursor ever handed out also makes the service's signing key: not part of any walk measured
      if (stored === 0) await queue.envelopeWalk({ owner: OWNER, limit: 1 });
      stored = size;
      const walk = await walkOwner(queue, storage, size);
      storage.reset();
      const statusStarted = performance.now();
      const [, counts] = await Promise.all([queue.instanceList(), queue.queueCounts()]);
      const statusSeconds = (performance.now() - statusStarted) / 1000;
      const queued = counts.find((c) => c.owner === OWNER && c.state === 'queued')?.messages;
      if (queued !== size) throw new Error(`queueStatus counted ${queued} queued messages of ${size}`);
      steps.push({ envelopes: size, commitsPerSecond, ...walk, statusSeconds, statusCalls: [...storage.calls] });
      process.stderr.write(`scale: ${size} envelopes: walk ${walk.walkSeconds.toFixed(2)} s in ${walk.pages} pages, status ${statusSeconds.toFixed(3)} s\n`);
    }
  } finally {
    await queue.close();
    await emulator.stop();
  }
  const rows = steps.map((s) => [
    s.envelopes,
    s.walkSeconds.toFixed(2),
    s.pages,
    s.secondsPerPage.toFixed(3),
    s.callsPerPageMax,
    s.queriesPerPageMax,
    s.queryMsPerPage.toFixed(1),
    s.lookupMsPerPage.toFixed(1),
    s.statusSeconds.toFixed(3),
    s.statusCalls.length,
    Math.round(s.commitsPerSecond),
  ]);
  return {
    table: table(
      `Queue size: a full envelopeWalk of one owner in pages of ${PAGE}, and queueStatus (Firestore emulator in Datastore mode, this machine)`,
      ['envelopes', 'walk s', 'pages', 's/page', 'storage calls/page (max)', 'queries/page (max)', 'query ms/page', 'lookup ms/page', 'status s', 'status storage calls', 'fill commits/s'],
      rows,
    ),
    results: { owner: OWNER, page: PAGE, bodyBytes: body.length, steps },
  };
}

/** Commits `count` messages of OWNER, COMMITTERS at a time. */
async function fill(queue: Queue, body: Buffer, count: number, label: string): Promise<void> {
  const bar = progress(count, label);
  let next = 0;
  const committer = async () => {
    while (next < count) {
      next++;
      const msgid = randomMsgid();
      await queue.messageCommit({ msgid, owner: OWNER, size: body.length, sha256: sha256hex(body), body, envelopes: [{ evpid: randomEvpid(msgid), data: ENVELOPE }] });
      bar.increment();
    }
  };
  await Promise.all(Array.from({ length: COMMITTERS }, committer));
  bar.stop();
}

/** Walks OWNER's envelopes to the end, as the bridge does at INIT, noting each page's storage calls. */
async function walkOwner(queue: Queue, storage: CountingStorage, expected: number) {
  const bar = progress(Math.ceil(expected / PAGE), `scale: walk ${expected}`);
  const started = performance.now();
  let callsPerPageMax = 0;
  let queriesPerPageMax = 0;
  let pages = 0;
  let walked = 0;
  let cursor: string | undefined;
  storage.reset();
  do {
    const before = storage.calls.length;
    const page = await queue.envelopeWalk({ owner: OWNER, limit: PAGE, cursor });
    const calls = storage.calls.slice(before);
    pages++;
    walked += page.items.length;
    callsPerPageMax = Math.max(callsPerPageMax, calls.length);
    queriesPerPageMax = Math.max(queriesPerPageMax, calls.filter((call) => call.startsWith('query')).length);
    cursor = page.cursor ?? undefined;
    bar.increment();
  } while (cursor);
  bar.stop();
  if (walked !== expected) throw new Error(`the walk handed out ${walked} envelopes of ${expected}`);
  const walkSeconds = (performance.now() - started) / 1000;
  const millisOf = (prefix: string) => [...storage.millis].reduce((sum, [call, ms]) => sum + (call.startsWith(prefix) ? ms : 0), 0) / pages;
  return { walkSeconds, pages, secondsPerPage: walkSeconds / pages, callsPerPageMax, queriesPerPageMax, queryMsPerPage: millisOf('query'), lookupMsPerPage: millisOf('get') };
}
