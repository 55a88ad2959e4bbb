import { randomEvpid, randomMsgid } from '../../lib/ids';
import { Queue } from '../../lib/queue';
import { sha256hex } from '../../lib/rules';
import { MemoryStorage } from '../../lib/storage-memory';
import { CountingStorage } from '../../dev/counting-storage';

const body = Buffer.alloc(4096, 0x61);
const envelopeData = Buffer.from('version: 3\nrcpt: a@example.test\n');

async function setUp() {
  const storage = new CountingStorage(new MemoryStorage(), 3_500_000);
  const queue = new Queue(storage);
  const msgid = randomMsgid();
  const evpids = [randomEvpid(msgid), randomEvpid(msgid)];
  await queue.messageCreate([msgid], 'mx1');
  const commit = { msgid, owner: 'mx1', size: body.length, sha256: sha256hex(body), body, envelopes: evpids.map((evpid) => ({ evpid, data: envelopeData })) };
  return { storage, queue, msgid, evpids, commit };
}

async function callsOf(storage: CountingStorage, run: () => Promise<unknown>): Promise<string[]> {
  storage.calls = [];
  await run();
  return storage.calls;
}

test('the commit of a small message with its envelopes is one write and nothing else', async () => {
  const { storage, queue, commit } = await setUp();
  expect(await callsOf(storage, () => queue.messageCommit(commit))).toEqual(['write']);
});

test('an envelope delete, the last one included, is one transaction with one lookup', async () => {
  const { storage, queue, commit, evpids } = await setUp();
  await queue.messageCommit(commit);
  for (const evpid of evpids) expect(await callsOf(storage, () => queue.envelopeDelete(evpid, { owner: 'mx1' }))).toEqual(['transaction', 'tx.get']);
});

test('an envelope load is one lookup', async () => {
  const { storage, queue, commit, evpids } = await setUp();
  await queue.messageCommit(commit);
  expect(await callsOf(storage, () => queue.envelopeLoad(evpids[0], { owner: 'mx1' }))).toEqual(['get']);
});

test('a walk page is one query of queued messages and two lookups (their tallies, then their envelopes), however many messages the queue holds', async () => {
  const { storage, queue } = await setUp();
  for (let i = 0; i < 500; i++) {
    const msgid = randomMsgid();
    await queue.messageCommit({ msgid, owner: 'mx1', size: body.length, sha256: sha256hex(body), body, envelopes: [{ evpid: randomEvpid(msgid), data: envelopeData }] });
  }
  // the first cursor ever handed out also makes the service's signing key
  await queue.envelopeWalk({ limit: 1 });
  const pages: string[][] = [];
  let cursor: string | undefined;
  do {
    storage.calls = [];
    const page = await queue.envelopeWalk({ owner: 'mx1', limit: 200, cursor });
    pages.push(storage.calls);
    cursor = page.cursor ?? undefined;
  } while (cursor);
  expect(pages).toEqual([0, 1, 2].map(() => ['query Message', 'get', 'get']));
});

test('the queue status counts each owner and state where it is stored, and reads one message of each (the oldest), however many there are', async () => {
  const { storage, queue, commit } = await setUp();
  await queue.messageCommit(commit);
  const reads = async () => (await callsOf(storage, () => queue.queueCounts())).filter((call) => !call.startsWith('count ') && !call.startsWith('fieldValues '));
  // queued and corrupt, of the one owner
  expect(await reads()).toEqual(['query Message', 'query Message']);
  for (let i = 0; i < 50; i++) {
    const msgid = randomMsgid();
    await queue.messageCommit({ ...commit, msgid, envelopes: [{ evpid: randomEvpid(msgid), data: envelopeData }] });
  }
  expect(await reads()).toEqual(['query Message', 'query Message']);
});

test('a heartbeat is one lookup, one write and one query for expired tombstones', async () => {
  const { storage, queue } = await setUp();
  expect(await callsOf(storage, () => queue.instanceHeartbeat('mx1', 60_000))).toEqual(['get', 'write', 'queryKeys Message']);
});
