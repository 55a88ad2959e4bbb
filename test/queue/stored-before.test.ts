import { setTimeout as sleep } from 'node:timers/promises';
import { randomMsgid, type Msgid } from '../../lib/ids';
import { Queue } from '../../lib/queue';
import { key } from '../../lib/storage';
import { MemoryStorage } from '../../lib/storage-memory';
import { commitOf, envelope, expectError, walkAll } from '../contract/queue-store.contract';

/**
 * An MX upgraded with mail queued: tallies written before they listed their
 * evpids only count them. The queue leaves such a tally so and queries the
 * message's evpids where it needs them.
 */
describe('messages stored before tallies listed their envelopes', () => {
  let storage: MemoryStorage;
  let queue: Queue;

  beforeEach(() => {
    storage = new MemoryStorage();
    queue = new Queue(storage);
  });

  /** A queued message of mx1 with `n` envelopes, whose tally is as the version before wrote it. */
  async function storedBefore(n: number) {
    const msgid = randomMsgid();
    const envelopes = Array.from({ length: n }, (_, i) => envelope(msgid, `u${i}@example.test`));
    await queue.messageCommit(commitOf(msgid, Buffer.from('old'), envelopes));
    await storage.write({ put: [{ key: key.tally(msgid), data: { count: n } }] });
    return { msgid, evpids: envelopes.map((e) => e.evpid).sort() };
  }

  async function tally(msgid: Msgid) {
    return (await storage.get([key.tally(msgid)])).get(key.tally(msgid));
  }

  test('the walk hands out their envelopes with those of newer messages', async () => {
    const old = await storedBefore(3);
    const fresh = randomMsgid();
    const newer = [envelope(fresh)];
    await queue.messageCommit(commitOf(fresh, Buffer.from('new'), newer));
    const walked = await walkAll(queue, { owner: 'mx1', limit: 2 });
    expect(walked.map((e) => e.evpid).sort()).toEqual([...old.evpids, newer[0].evpid].sort());
  });

  test('a takeover hands out their evpids', async () => {
    const old = await storedBefore(2);
    await queue.instanceHeartbeat('mx1', 1);
    await sleep(10);
    const { claimed } = await queue.queueTakeover('mx2');
    expect(claimed).toEqual([{ msgid: old.msgid, from: 'mx1', evpids: old.evpids }]);
  });

  test('envelope creates and deletes keep their tally counting, and deleting the last deletes the message', async () => {
    const old = await storedBefore(2);
    const bounce = envelope(old.msgid, 'bounce@example.test');
    await queue.envelopeCreate(bounce);
    expect(await tally(old.msgid)).toEqual({ count: 3 });
    for (const evpid of [...old.evpids, bounce.evpid]) await queue.envelopeDelete(evpid);
    expect(await tally(old.msgid)).toBeUndefined();
    await expectError(queue.messageWalk(old.msgid), 'not_found');
  });
});
