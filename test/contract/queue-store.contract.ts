import { randomBytes } from 'node:crypto';
import { QueueError, type ErrorCode } from '../../lib/errors';
import { msgidOf, randomEvpid, randomMsgid, type Msgid } from '../../lib/ids';
import { sha256hex } from '../../lib/rules';
import { CHUNK_BYTES, DEFAULT_LIMITS, PAGE_MAX, type Commit, type Envelope, type Limits, type QueueStore } from '../../lib/store';

/**
 * The behaviours every QueueStore must have. Each driver's test file calls
 * this with a way to make a fresh, empty store.
 */
export interface ContractDriver {
  create(limits?: Limits): Promise<{ store: QueueStore; dispose(): Promise<void> }>;
  /** Large-body tests can be slow through some drivers. */
  slow?: boolean;
}

const OWNER = 'mx1';
const OTHER = 'mx2';
const MiB = 1024 * 1024;

export function envelope(msgid: Msgid, rcpt = 'user@example.test'): Envelope {
  return { evpid: randomEvpid(msgid), data: Buffer.from(`version: 3\ndispatcher: local\ntype: mda\nrcpt: ${rcpt}\n`) };
}

export function commitOf(msgid: Msgid, body: Buffer, envelopes: Envelope[] = [], owner = OWNER): Commit {
  return { msgid, owner, size: body.length, sha256: sha256hex(body), body, envelopes };
}

export async function walkAll(store: QueueStore, options: { owner?: string; limit?: number } = {}): Promise<Envelope[]> {
  const all: Envelope[] = [];
  let cursor: string | undefined;
  do {
    const page = await store.envelopeWalk({ ...options, cursor });
    all.push(...page.items);
    cursor = page.cursor ?? undefined;
  } while (cursor);
  return all;
}

export async function expectError(promise: Promise<unknown>, code: ErrorCode, reason?: string): Promise<QueueError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(QueueError);
  expect((err as QueueError).code).toBe(code);
  if (reason) expect((err as QueueError).details.reason).toBe(reason);
  return err as QueueError;
}

const evpids = (envelopes: Envelope[]) => envelopes.map((e) => e.evpid).sort();

export function queueStoreContract(driver: ContractDriver): void {
  let store: QueueStore;
  let dispose: () => Promise<void>;
  const disposers: (() => Promise<void>)[] = [];

  async function storeWith(limits: Limits): Promise<QueueStore> {
    const made = await driver.create(limits);
    disposers.push(made.dispose);
    return made.store;
  }

  beforeEach(async () => {
    ({ store, dispose } = await driver.create());
  });

  afterEach(async () => {
    await dispose();
    while (disposers.length > 0) await disposers.pop()!();
  });

  /** A queued message with `n` envelopes. */
  async function queued(n = 1, body = Buffer.from('Subject: hi\r\n\r\nhello\r\n'), owner = OWNER) {
    const msgid = randomMsgid();
    const envelopes = Array.from({ length: n }, (_, i) => envelope(msgid, `u${i}@example.test`));
    await store.messageCreate([msgid], owner);
    await store.messageCommit(commitOf(msgid, body, envelopes, owner));
    return { msgid, envelopes, body };
  }

  describe('messageCreate', () => {
    test('reserves ids as incoming messages of the owner', async () => {
      const msgids = [randomMsgid(), randomMsgid()];
      await store.messageCreate(msgids, OWNER);
      for (const msgid of msgids) {
        const walk = await store.messageWalk(msgid);
        expect(walk.message).toMatchObject({ msgid, state: 'incoming', owner: OWNER, size: null });
        expect(walk.items).toEqual([]);
      }
    });

    test('by the same owner again succeeds and changes nothing (a retry)', async () => {
      const msgid = randomMsgid();
      await store.messageCreate([msgid], OWNER);
      await store.messageCreate([msgid], OWNER);
      expect((await store.messageWalk(msgid)).message.state).toBe('incoming');
    });

    test('of an id another owner holds is a conflict that reserves none of the batch', async () => {
      const taken = randomMsgid();
      const free = randomMsgid();
      await store.messageCreate([taken], OTHER);
      const err = await expectError(store.messageCreate([free, taken], OWNER), 'conflict');
      expect(err.details.taken).toEqual([taken]);
      await expectError(store.messageWalk(free), 'not_found');
      expect((await store.messageWalk(taken)).message.owner).toBe(OTHER);
    });

    test('of a committed msgid is a conflict', async () => {
      const { msgid } = await queued();
      await expectError(store.messageCreate([msgid], OWNER), 'conflict');
    });

    test('two concurrent creates of the same id: exactly one wins', async () => {
      const msgid = randomMsgid();
      const results = await Promise.allSettled([store.messageCreate([msgid], OWNER), store.messageCreate([msgid], OTHER)]);
      expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
      const loser = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
      expect(loser.reason).toBeInstanceOf(QueueError);
      expect((loser.reason as QueueError).code).toBe('conflict');
    });
  });

  describe('messageCommit', () => {
    test('makes the message and all its envelopes visible at once', async () => {
      const msgid = randomMsgid();
      const envelopes = [envelope(msgid, 'a@example.test'), envelope(msgid, 'b@example.test')];
      await store.messageCreate([msgid], OWNER);
      expect(await walkAll(store)).toEqual([]);
      expect(await store.messageCommit(commitOf(msgid, Buffer.from('body'), envelopes))).toEqual({ created: true });
      expect(evpids(await walkAll(store))).toEqual(evpids(envelopes));
      expect((await store.messageWalk(msgid)).message).toMatchObject({ state: 'queued', owner: OWNER, size: 4 });
    });

    test.each([0, 1, 1000, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1, 3 * MiB + 7])(
      'a %i-byte body reads back byte-identical',
      async (size) => {
        const body = randomBytes(size);
        const { msgid } = await queued(1, body);
        const read = await store.messageRead(msgid);
        expect(read.data.equals(body)).toBe(true);
        expect(read.info).toMatchObject({ size, sha256: sha256hex(body), state: 'queued' });
      },
    );

    test('repeated with the same body answers created: false and changes nothing', async () => {
      const msgid = randomMsgid();
      const envelopes = [envelope(msgid)];
      const commit = commitOf(msgid, Buffer.from('body'), envelopes);
      await store.messageCreate([msgid], OWNER);
      expect(await store.messageCommit(commit)).toEqual({ created: true });
      expect(await store.messageCommit(commit)).toEqual({ created: false });
      expect(evpids(await walkAll(store))).toEqual(evpids(envelopes));
    });

    test('with another body for a committed msgid is a conflict and keeps the first', async () => {
      const { msgid, body } = await queued();
      await expectError(store.messageCommit(commitOf(msgid, Buffer.from('other body'))), 'conflict');
      expect((await store.messageRead(msgid)).data.equals(body)).toBe(true);
    });

    test('refuses a body that does not match its sha256 and writes nothing', async () => {
      const msgid = randomMsgid();
      await store.messageCreate([msgid], OWNER);
      const commit = { ...commitOf(msgid, Buffer.from('body'), [envelope(msgid)]), sha256: sha256hex(Buffer.from('other')) };
      await expectError(store.messageCommit(commit), 'bad_request');
      expect((await store.messageWalk(msgid)).message.state).toBe('incoming');
      expect(await walkAll(store)).toEqual([]);
    });

    test('refuses a body larger than the limit with too_large and writes nothing', async () => {
      const small = await storeWith({ ...DEFAULT_LIMITS, maxMessageBytes: 1000 });
      const msgid = randomMsgid();
      await small.messageCreate([msgid], OWNER);
      await expectError(small.messageCommit(commitOf(msgid, randomBytes(1001), [envelope(msgid)])), 'too_large');
      expect((await small.messageWalk(msgid)).message.state).toBe('incoming');
      await small.messageCommit(commitOf(msgid, randomBytes(1000), [envelope(msgid)]));
    });

    test('refuses envelopes of another message', async () => {
      const msgid = randomMsgid();
      await store.messageCreate([msgid], OWNER);
      await expectError(store.messageCommit(commitOf(msgid, Buffer.from('x'), [envelope(randomMsgid())])), 'bad_request');
      expect(await walkAll(store)).toEqual([]);
    });

    test('commits a message that was not reserved first, if its id is free', async () => {
      const msgid = randomMsgid();
      await store.messageCommit(commitOf(msgid, Buffer.from('x'), [envelope(msgid)]));
      expect((await store.messageWalk(msgid)).message.state).toBe('queued');
    });

    test('makes envelopes created on the incoming message visible with it', async () => {
      const msgid = randomMsgid();
      const early = envelope(msgid, 'early@example.test');
      const late = envelope(msgid, 'late@example.test');
      await store.messageCreate([msgid], OWNER);
      expect(await store.envelopeCreate(early)).toEqual({ created: true });
      expect(await walkAll(store)).toEqual([]);
      await store.messageCommit(commitOf(msgid, Buffer.from('x'), [late]));
      expect(evpids(await walkAll(store))).toEqual(evpids([early, late]));
    });

    test('an envelope that exists with other bytes is a conflict', async () => {
      const msgid = randomMsgid();
      const early = envelope(msgid, 'early@example.test');
      await store.messageCreate([msgid], OWNER);
      await store.envelopeCreate(early);
      const clash = { evpid: early.evpid, data: Buffer.from('version: 3\nother\n') };
      await expectError(store.messageCommit(commitOf(msgid, Buffer.from('x'), [clash])), 'conflict');
      expect((await store.messageWalk(msgid)).message.state).toBe('incoming');
      expect((await store.envelopeLoad(early.evpid)).equals(early.data)).toBe(true);
    });

    test('of a body written in parts checks it and commits it', async () => {
      const msgid = randomMsgid();
      const body = randomBytes(2 * CHUNK_BYTES + 12345);
      await store.messageCreate([msgid], OWNER);
      await store.messageWrite(msgid, 2 * CHUNK_BYTES, body.subarray(2 * CHUNK_BYTES), OWNER);
      await store.messageWrite(msgid, 0, body.subarray(0, 2 * CHUNK_BYTES), OWNER);
      await store.messageWrite(msgid, 0, body.subarray(0, 2 * CHUNK_BYTES), OWNER);
      const { body: _inline, ...commit } = commitOf(msgid, body, [envelope(msgid)]);
      expect(await store.messageCommit(commit)).toEqual({ created: true });
      expect((await store.messageRead(msgid)).data.equals(body)).toBe(true);
      expect(await store.messageCommit(commit)).toEqual({ created: false });
    });

    test('of parts that do not match size and sha256 is a conflict; the message stays incoming', async () => {
      const msgid = randomMsgid();
      const body = randomBytes(5000);
      await store.messageCreate([msgid], OWNER);
      await store.messageWrite(msgid, 0, body, OWNER);
      const { body: _inline, ...commit } = commitOf(msgid, Buffer.concat([body, Buffer.from('!')]), [envelope(msgid)]);
      await expectError(store.messageCommit(commit), 'conflict');
      expect((await store.messageWalk(msgid)).message.state).toBe('incoming');
      expect(await walkAll(store)).toEqual([]);
    });
  });

  describe('messageWrite', () => {
    test('refuses an offset that is not a chunk boundary', async () => {
      const msgid = randomMsgid();
      await store.messageCreate([msgid], OWNER);
      await expectError(store.messageWrite(msgid, 10, Buffer.from('x'), OWNER), 'bad_request');
    });

    test('refuses a part beyond the size limit with too_large', async () => {
      const small = await storeWith({ ...DEFAULT_LIMITS, maxMessageBytes: CHUNK_BYTES });
      const msgid = randomMsgid();
      await small.messageCreate([msgid], OWNER);
      await expectError(small.messageWrite(msgid, CHUNK_BYTES, Buffer.from('x'), OWNER), 'too_large');
    });

    test('of an unknown message is not_found', async () => {
      await expectError(store.messageWrite(randomMsgid(), 0, Buffer.from('x'), OWNER), 'not_found');
    });

    test('on a committed message is a conflict', async () => {
      const { msgid } = await queued();
      await expectError(store.messageWrite(msgid, 0, Buffer.from('x'), OWNER), 'conflict');
    });

    test("on another owner's message is refused", async () => {
      const msgid = randomMsgid();
      await store.messageCreate([msgid], OTHER);
      await expectError(store.messageWrite(msgid, 0, Buffer.from('x'), OWNER), 'conflict', 'not_owner');
    });
  });

  describe('messageDelete', () => {
    test('removes an incoming message and its envelopes', async () => {
      const msgid = randomMsgid();
      const e = envelope(msgid);
      await store.messageCreate([msgid], OWNER);
      await store.envelopeCreate(e);
      expect(await store.messageDelete(msgid)).toEqual({ deleted: true });
      await expectError(store.messageWalk(msgid), 'not_found');
      await expectError(store.envelopeLoad(e.evpid), 'not_found');
    });

    test('removes a committed message with its body and envelopes', async () => {
      const { msgid, envelopes } = await queued(3);
      expect(await store.messageDelete(msgid, { owner: OWNER })).toEqual({ deleted: true });
      await expectError(store.messageRead(msgid), 'not_found');
      await expectError(store.envelopeLoad(envelopes[0].evpid), 'not_found');
      expect(await walkAll(store)).toEqual([]);
    });

    test('of what is already gone answers deleted: false', async () => {
      const { msgid } = await queued();
      await store.messageDelete(msgid);
      expect(await store.messageDelete(msgid)).toEqual({ deleted: false });
    });

    test("of another owner's message is refused and deletes nothing", async () => {
      const { msgid } = await queued();
      await expectError(store.messageDelete(msgid, { owner: OTHER }), 'conflict', 'not_owner');
      expect((await store.messageWalk(msgid)).items).toHaveLength(1);
    });
  });

  describe('a rollback is final', () => {
    /** Nothing of the message can be read, walked or loaded. */
    async function expectGone(msgid: Msgid, envelopes: Envelope[]) {
      await expectError(store.messageWalk(msgid), 'not_found');
      await expectError(store.messageRead(msgid), 'not_found');
      for (const e of envelopes) await expectError(store.envelopeLoad(e.evpid), 'not_found');
      expect(evpids(await walkAll(store)).filter((evpid) => msgidOf(evpid) === msgid)).toEqual([]);
    }

    test('messageCommit after messageDelete of the incoming message is refused and nothing becomes visible', async () => {
      const msgid = randomMsgid();
      const envelopes = [envelope(msgid)];
      await store.messageCreate([msgid], OWNER);
      expect(await store.messageDelete(msgid, { owner: OWNER })).toEqual({ deleted: true });
      await expectError(store.messageCommit(commitOf(msgid, Buffer.from('late'), envelopes)), 'conflict', 'rolled_back');
      await expectGone(msgid, envelopes);
    });

    test('messageWrite and the commit of parts after messageDelete are refused and write nothing', async () => {
      const msgid = randomMsgid();
      const envelopes = [envelope(msgid)];
      const body = randomBytes(CHUNK_BYTES + 10);
      await store.messageCreate([msgid], OWNER);
      await store.messageWrite(msgid, 0, body, OWNER);
      await store.messageDelete(msgid, { owner: OWNER });
      await expectError(store.messageWrite(msgid, 0, body, OWNER), 'conflict', 'rolled_back');
      const { body: _inline, ...commit } = commitOf(msgid, body, envelopes);
      await expectError(store.messageCommit(commit), 'conflict', 'rolled_back');
      await expectGone(msgid, envelopes);
    });

    test('a commit that landed before messageDelete is deleted with it, and a late repeat of it is refused', async () => {
      const msgid = randomMsgid();
      const envelopes = [envelope(msgid), envelope(msgid, 'b@example.test')];
      const commit = commitOf(msgid, Buffer.from('body'), envelopes);
      await store.messageCreate([msgid], OWNER);
      expect(await store.messageCommit(commit)).toEqual({ created: true });
      expect(await store.messageDelete(msgid, { owner: OWNER })).toEqual({ deleted: true });
      await expectError(store.messageCommit(commit), 'conflict', 'rolled_back');
      await expectGone(msgid, envelopes);
    });

    test('envelopeCreate and messageCreate after messageDelete are refused and write nothing', async () => {
      const msgid = randomMsgid();
      const e = envelope(msgid);
      await store.messageCreate([msgid], OWNER);
      await store.messageDelete(msgid, { owner: OWNER });
      await expectError(store.envelopeCreate(e, { owner: OWNER }), 'conflict', 'rolled_back');
      const free = randomMsgid();
      const err = await expectError(store.messageCreate([free, msgid], OWNER), 'conflict');
      expect(err.details).toMatchObject({ taken: [msgid], rolledBack: [msgid] });
      await expectError(store.messageWalk(free), 'not_found');
      await expectGone(msgid, [e]);
    });

    test('messageDelete again answers deleted: false, and the message stays rolled back', async () => {
      const msgid = randomMsgid();
      await store.messageCreate([msgid], OWNER);
      expect(await store.messageDelete(msgid, { owner: OWNER })).toEqual({ deleted: true });
      expect(await store.messageDelete(msgid, { owner: OWNER })).toEqual({ deleted: false });
      expect(await store.messageDelete(msgid)).toEqual({ deleted: false });
      await expectError(store.messageCommit(commitOf(msgid, Buffer.from('late'), [envelope(msgid)])), 'conflict', 'rolled_back');
    });

    test('messageDelete of a msgid that was never reserved fences it too', async () => {
      const msgid = randomMsgid();
      const envelopes = [envelope(msgid)];
      expect(await store.messageDelete(msgid, { owner: OWNER })).toEqual({ deleted: false });
      await expectError(store.messageCommit(commitOf(msgid, Buffer.from('late'), envelopes)), 'conflict', 'rolled_back');
      await expectGone(msgid, envelopes);
    });

    test('messagePurge fences the msgids it purges', async () => {
      const msgid = randomMsgid();
      const envelopes = [envelope(msgid)];
      await store.messageCreate([msgid], OWNER);
      expect(await store.messagePurge(OWNER)).toBe(1);
      await expectError(store.messageCommit(commitOf(msgid, Buffer.from('late'), envelopes)), 'conflict', 'rolled_back');
      await expectGone(msgid, envelopes);
    });

    test('messageCommit racing messageDelete: once both have answered, the message is gone and a late commit is refused', async () => {
      for (let round = 0; round < 3; round++) {
        const msgid = randomMsgid();
        const envelopes = [envelope(msgid)];
        const commit = commitOf(msgid, Buffer.from('body'), envelopes);
        await store.messageCreate([msgid], OWNER);
        const [committed, deleted] = await Promise.allSettled([store.messageCommit(commit), store.messageDelete(msgid, { owner: OWNER })]);
        expect(deleted).toEqual({ status: 'fulfilled', value: { deleted: true } });
        if (committed.status === 'rejected') {
          expect(committed.reason).toMatchObject({ code: 'conflict', details: { reason: 'rolled_back' } });
        }
        await expectGone(msgid, envelopes);
        await expectError(store.messageCommit(commit), 'conflict', 'rolled_back');
      }
    });

    test('once its tombstone has expired, a msgid may be reserved and committed again', async () => {
      const tombstoneMs = 1000;
      const short = await storeWith({ ...DEFAULT_LIMITS, tombstoneMs });
      const [reserved, unreserved] = [randomMsgid(), randomMsgid()];
      await short.messageCreate([reserved], OWNER);
      await short.messageDelete(reserved, { owner: OWNER });
      await short.messageDelete(unreserved, { owner: OWNER });
      await expectError(short.messageCreate([reserved], OWNER), 'conflict');
      await new Promise((resolve) => setTimeout(resolve, tombstoneMs + 200));
      await short.messageCreate([reserved], OWNER);
      for (const msgid of [reserved, unreserved]) {
        const envelopes = [envelope(msgid)];
        expect(await short.messageCommit(commitOf(msgid, Buffer.from('again'), envelopes))).toEqual({ created: true });
        expect(evpids((await short.messageWalk(msgid)).items)).toEqual(evpids(envelopes));
        expect((await short.messageRead(msgid)).data.toString()).toBe('again');
      }
    });
  });

  describe('messageRead', () => {
    test('returns the byte range asked for, across chunks', async () => {
      const body = randomBytes(2 * CHUNK_BYTES + 100);
      const { msgid } = await queued(1, body);
      for (const [offset, length] of [
        [0, 10],
        [CHUNK_BYTES - 5, 10],
        [CHUNK_BYTES, CHUNK_BYTES],
        [2 * CHUNK_BYTES + 50, 1000],
        [5 * CHUNK_BYTES, 10],
      ]) {
        const read = await store.messageRead(msgid, { offset, length });
        expect(read.data.equals(body.subarray(offset, offset + length))).toBe(true);
      }
    });

    test('of an incoming message is not_found', async () => {
      const msgid = randomMsgid();
      await store.messageCreate([msgid], OWNER);
      await expectError(store.messageRead(msgid), 'not_found');
    });

    test("of another owner's message is refused", async () => {
      const { msgid } = await queued();
      await expectError(store.messageRead(msgid, { owner: OTHER }), 'conflict', 'not_owner');
    });
  });

  describe('messageWalk', () => {
    test("lists a message's envelopes in evpid order, page by page", async () => {
      const { msgid, envelopes } = await queued(7);
      const seen: Envelope[] = [];
      let cursor: string | undefined;
      do {
        const page = await store.messageWalk(msgid, { cursor, limit: 3 });
        expect(page.items.length).toBeLessThanOrEqual(3);
        seen.push(...page.items);
        cursor = page.cursor ?? undefined;
      } while (cursor);
      expect(seen.map((e) => e.evpid)).toEqual(evpids(envelopes));
    });
  });

  describe('messageCorrupt and messageUncorrupt', () => {
    test('a corrupt message leaves the walk but stays readable, and comes back', async () => {
      const { msgid, body, envelopes } = await queued(2);
      expect((await store.messageCorrupt(msgid)).state).toBe('corrupt');
      expect(await walkAll(store)).toEqual([]);
      expect((await store.messageRead(msgid)).data.equals(body)).toBe(true);
      expect((await store.envelopeLoad(envelopes[0].evpid)).equals(envelopes[0].data)).toBe(true);
      expect((await store.messageCorrupt(msgid)).state).toBe('corrupt');
      expect((await store.messageUncorrupt(msgid)).state).toBe('queued');
      expect(evpids(await walkAll(store))).toEqual(evpids(envelopes));
    });

    test('of an incoming message is not_found', async () => {
      const msgid = randomMsgid();
      await store.messageCreate([msgid], OWNER);
      await expectError(store.messageCorrupt(msgid), 'not_found');
    });
  });

  describe('envelopeCreate', () => {
    test('adds an envelope to a committed message (a bounce)', async () => {
      const { msgid, envelopes } = await queued(1);
      const bounce = envelope(msgid, 'sender@example.org');
      expect(await store.envelopeCreate(bounce, { owner: OWNER })).toEqual({ created: true });
      expect(evpids(await walkAll(store))).toEqual(evpids([...envelopes, bounce]));
    });

    test('repeated with the same bytes answers created: false; with other bytes, conflict', async () => {
      const { msgid } = await queued(1);
      const e = envelope(msgid);
      await store.envelopeCreate(e);
      expect(await store.envelopeCreate(e)).toEqual({ created: false });
      await expectError(store.envelopeCreate({ evpid: e.evpid, data: Buffer.from('other') }), 'conflict');
      expect((await store.envelopeLoad(e.evpid)).equals(e.data)).toBe(true);
    });

    test('on an unknown message is not_found and writes nothing', async () => {
      const e = envelope(randomMsgid());
      await expectError(store.envelopeCreate(e), 'not_found');
      await expectError(store.envelopeLoad(e.evpid), 'not_found');
    });

    test('larger than maxEnvelopeBytes is too_large and writes nothing', async () => {
      const { msgid } = await queued(1);
      const big = { evpid: randomEvpid(msgid), data: Buffer.alloc(DEFAULT_LIMITS.maxEnvelopeBytes + 1, 0x61) };
      await expectError(store.envelopeCreate(big), 'too_large');
      await expectError(store.envelopeLoad(big.evpid), 'not_found');
    });

    test("on another owner's message is refused", async () => {
      const { msgid } = await queued(1);
      await expectError(store.envelopeCreate(envelope(msgid), { owner: OTHER }), 'conflict', 'not_owner');
    });
  });

  describe('envelopeLoad', () => {
    test('returns exactly the bytes stored, binary included, without a trailing NUL', async () => {
      const msgid = randomMsgid();
      const binary = { evpid: randomEvpid(msgid), data: Buffer.from([0x1f, 0x8b, 0x08, 0x00, 0xff, 0x00, 0x0a]) };
      await store.messageCommit(commitOf(msgid, Buffer.from('x'), [binary]));
      const loaded = await store.envelopeLoad(binary.evpid, { owner: OWNER });
      expect(loaded.equals(binary.data)).toBe(true);
    });

    test('of an unknown envelope is not_found', async () => {
      const { msgid } = await queued(1);
      await expectError(store.envelopeLoad(randomEvpid(msgid)), 'not_found');
      await expectError(store.envelopeLoad(randomEvpid(randomMsgid())), 'not_found');
    });

    test("of another owner's envelope is refused", async () => {
      const { envelopes } = await queued(1);
      await expectError(store.envelopeLoad(envelopes[0].evpid, { owner: OTHER }), 'conflict', 'not_owner');
    });
  });

  describe('envelopeUpdate', () => {
    test('replaces the bytes, and again with the same bytes is harmless', async () => {
      const { envelopes } = await queued(1);
      const updated = { evpid: envelopes[0].evpid, data: Buffer.from('version: 3\nretry: 1\n') };
      await store.envelopeUpdate(updated, { owner: OWNER });
      await store.envelopeUpdate(updated, { owner: OWNER });
      expect((await store.envelopeLoad(updated.evpid)).equals(updated.data)).toBe(true);
    });

    test('of an unknown envelope is not_found and writes nothing', async () => {
      const { msgid } = await queued(1);
      const e = envelope(msgid);
      await expectError(store.envelopeUpdate(e), 'not_found');
      await expectError(store.envelopeLoad(e.evpid), 'not_found');
    });

    test("of another owner's envelope is refused", async () => {
      const { envelopes } = await queued(1);
      await expectError(store.envelopeUpdate({ ...envelopes[0], data: Buffer.from('x') }, { owner: OTHER }), 'conflict', 'not_owner');
      expect((await store.envelopeLoad(envelopes[0].evpid)).equals(envelopes[0].data)).toBe(true);
    });

    test('a late envelopeUpdate with an older version does not overwrite a newer one', async () => {
      const { envelopes } = await queued(1);
      const { evpid } = envelopes[0];
      const older = { evpid, data: Buffer.from('version: 3\nretry: 1\n'), version: 1000 };
      const newer = { evpid, data: Buffer.from('version: 3\nretry: 2\n'), version: 2000 };
      await store.envelopeUpdate(older, { owner: OWNER });
      await store.envelopeUpdate(newer, { owner: OWNER });
      const err = await expectError(store.envelopeUpdate(older, { owner: OWNER }), 'conflict', 'stale');
      expect(err.details.storedVersion).toBe(2000);
      expect((await store.envelopeLoad(evpid)).equals(newer.data)).toBe(true);
    });

    test('repeating the same envelopeUpdate succeeds; the same version with other bytes is stale', async () => {
      const { envelopes } = await queued(1);
      const { evpid } = envelopes[0];
      const update = { evpid, data: Buffer.from('version: 3\nretry: 1\n'), version: 5000 };
      await store.envelopeUpdate(update, { owner: OWNER });
      await store.envelopeUpdate(update, { owner: OWNER });
      expect((await store.envelopeLoad(evpid)).equals(update.data)).toBe(true);
      await expectError(store.envelopeUpdate({ ...update, data: Buffer.from('version: 3\nother\n') }, { owner: OWNER }), 'conflict', 'stale');
      expect((await store.envelopeLoad(evpid)).equals(update.data)).toBe(true);
    });

    test('an update without a version keeps the stored one: an older versioned update after it is still stale', async () => {
      const { envelopes } = await queued(1);
      const { evpid } = envelopes[0];
      await store.envelopeUpdate({ evpid, data: Buffer.from('version: 3\nretry: 2\n'), version: 2000 }, { owner: OWNER });
      const unversioned = { evpid, data: Buffer.from('version: 3\nretry: 3\n') };
      await store.envelopeUpdate(unversioned, { owner: OWNER });
      await expectError(store.envelopeUpdate({ evpid, data: Buffer.from('version: 3\nretry: 1\n'), version: 1000 }), 'conflict', 'stale');
      expect((await store.envelopeLoad(evpid)).equals(unversioned.data)).toBe(true);
    });

    test('a version below 1 or not whole is bad input and changes nothing', async () => {
      const { envelopes } = await queued(1);
      for (const version of [0, -1, 1.5]) {
        await expectError(store.envelopeUpdate({ ...envelopes[0], data: Buffer.from('x'), version }), 'bad_request');
      }
      expect((await store.envelopeLoad(envelopes[0].evpid)).equals(envelopes[0].data)).toBe(true);
    });
  });

  describe('envelopesDelete', () => {
    test('of some envelopes of a message keeps it, in one call', async () => {
      const { msgid, envelopes, body } = await queued(3);
      const some = [envelopes[0].evpid, envelopes[2].evpid];
      expect(await store.envelopesDelete(some, { owner: OWNER })).toEqual({ deleted: some, messageDeleted: false });
      expect((await store.messageRead(msgid)).data.equals(body)).toBe(true);
      expect(evpids(await walkAll(store))).toEqual([envelopes[1].evpid]);
    });

    test('of the last envelopes deletes the message and its body; those already gone are not listed', async () => {
      const { msgid, envelopes } = await queued(3, randomBytes(CHUNK_BYTES + 10));
      await store.envelopeDelete(envelopes[1].evpid);
      const all = envelopes.map((e) => e.evpid);
      expect(await store.envelopesDelete(all)).toEqual({ deleted: [all[0], all[2]], messageDeleted: true });
      await expectError(store.messageRead(msgid), 'not_found');
      expect(await walkAll(store)).toEqual([]);
      expect(await store.envelopesDelete(all)).toEqual({ deleted: [], messageDeleted: false });
    });

    test('of envelopes of two messages is refused and deletes nothing', async () => {
      const [a, b] = [await queued(1), await queued(1)];
      await expectError(store.envelopesDelete([a.envelopes[0].evpid, b.envelopes[0].evpid]), 'bad_request');
      await expectError(store.envelopesDelete([]), 'bad_request');
      expect(await walkAll(store)).toHaveLength(2);
    });

    test("of another owner's envelopes is refused and deletes nothing", async () => {
      const { envelopes } = await queued(2);
      await expectError(store.envelopesDelete(evpids(envelopes), { owner: OTHER }), 'conflict', 'not_owner');
      expect(await walkAll(store)).toHaveLength(2);
    });
  });

  describe('envelopeDelete', () => {
    test('of one of several envelopes keeps the message', async () => {
      const { msgid, envelopes, body } = await queued(2);
      expect(await store.envelopeDelete(envelopes[0].evpid, { owner: OWNER })).toEqual({ deleted: true, messageDeleted: false });
      expect((await store.messageRead(msgid)).data.equals(body)).toBe(true);
      expect(evpids(await walkAll(store))).toEqual([envelopes[1].evpid]);
    });

    test('of the last envelope deletes the message and its body', async () => {
      const { msgid, envelopes } = await queued(2, randomBytes(CHUNK_BYTES + 10));
      await store.envelopeDelete(envelopes[0].evpid);
      expect(await store.envelopeDelete(envelopes[1].evpid)).toEqual({ deleted: true, messageDeleted: true });
      await expectError(store.messageRead(msgid), 'not_found');
      await expectError(store.messageWalk(msgid), 'not_found');
      expect(await walkAll(store)).toEqual([]);
    });

    test('of what is already gone answers deleted: false', async () => {
      const { envelopes } = await queued(2);
      await store.envelopeDelete(envelopes[0].evpid);
      expect(await store.envelopeDelete(envelopes[0].evpid)).toEqual({ deleted: false, messageDeleted: false });
      await store.envelopeDelete(envelopes[1].evpid);
      expect(await store.envelopeDelete(envelopes[1].evpid)).toEqual({ deleted: false, messageDeleted: false });
    });

    test('of the last envelope of an incoming message keeps the message', async () => {
      const msgid = randomMsgid();
      const e = envelope(msgid);
      await store.messageCreate([msgid], OWNER);
      await store.envelopeCreate(e);
      expect(await store.envelopeDelete(e.evpid)).toEqual({ deleted: true, messageDeleted: false });
      expect((await store.messageWalk(msgid)).message.state).toBe('incoming');
    });

    test("of another owner's envelope is refused and deletes nothing", async () => {
      const { envelopes } = await queued(1);
      await expectError(store.envelopeDelete(envelopes[0].evpid, { owner: OTHER }), 'conflict', 'not_owner');
      expect(await walkAll(store)).toHaveLength(1);
    });

    test('concurrent creates and deletes: the message goes away exactly when its last envelope does', async () => {
      const { msgid, envelopes } = await queued(4);
      const extra = [envelope(msgid, 'x@example.test'), envelope(msgid, 'y@example.test')];
      const settled = await Promise.allSettled([
        ...envelopes.map((e) => store.envelopeDelete(e.evpid)),
        ...extra.map((e) => store.envelopeCreate(e)),
      ]);
      for (const r of settled) {
        if (r.status === 'rejected') expect((r.reason as QueueError).code).toBe('not_found');
      }
      const created = extra.filter((_, i) => settled[envelopes.length + i].status === 'fulfilled');
      if (created.length === 0) {
        await expectError(store.messageWalk(msgid), 'not_found');
        return;
      }
      expect(evpids((await store.messageWalk(msgid)).items)).toEqual(evpids(created));
      const last = await Promise.all(created.map((e) => store.envelopeDelete(e.evpid)));
      expect(last.filter((r) => r.messageDeleted)).toHaveLength(1);
      await expectError(store.messageWalk(msgid), 'not_found');
      await expectError(store.messageRead(msgid), 'not_found');
    });
  });

  describe('envelopeWalk', () => {
    test('hands out every committed envelope exactly once across many pages', async () => {
      const all: Envelope[] = [];
      for (let i = 0; i < 30; i++) all.push(...(await queued(1 + (i % 3))).envelopes);
      const pages: number[] = [];
      const seen: Envelope[] = [];
      let cursor: string | undefined;
      do {
        const page = await store.envelopeWalk({ cursor, limit: 7 });
        pages.push(page.items.length);
        seen.push(...page.items);
        cursor = page.cursor ?? undefined;
      } while (cursor);
      expect(pages.length).toBeGreaterThanOrEqual(9);
      expect(pages.every((n) => n <= 7)).toBe(true);
      expect(seen.map((e) => e.evpid)).toEqual(evpids(all));
      const byId = new Map(all.map((e) => [e.evpid, e.data]));
      for (const e of seen) expect(e.data.equals(byId.get(e.evpid)!)).toBe(true);
    });

    test('a page as large as the service gives (1,000, more than Datastore looks up in one call) holds that many', async () => {
      const all: Envelope[] = [];
      for (let i = 0; i < 101; i++) all.push(...(await queued(10)).envelopes);
      const first = await store.envelopeWalk({ limit: PAGE_MAX });
      expect(first.items).toHaveLength(PAGE_MAX);
      const rest = await store.envelopeWalk({ limit: PAGE_MAX, cursor: first.cursor! });
      expect(rest.cursor).toBeNull();
      expect([...first.items, ...rest.items].map((e) => e.evpid)).toEqual(evpids(all));
    }, 120_000);

    test('leaves out messages committed and envelopes created after the walk began', async () => {
      const before: Envelope[] = [];
      for (let i = 0; i < 12; i++) before.push(...(await queued(2)).envelopes);
      let page = await store.envelopeWalk({ limit: 5 });
      const seen = [...page.items];
      const after: Envelope[] = [];
      while (page.cursor) {
        const fresh = await queued(1);
        after.push(...fresh.envelopes);
        const bounce = envelope(msgidOf(before[before.length - 1].evpid), 'late@example.test');
        if (after.length === 1) {
          await store.envelopeCreate(bounce);
          after.push(bounce);
        }
        page = await store.envelopeWalk({ limit: 5, cursor: page.cursor });
        seen.push(...page.items);
      }
      expect(after.length).toBeGreaterThan(2);
      expect(seen.map((e) => e.evpid)).toEqual(evpids(before));
      const next = await walkAll(store);
      expect(evpids(next)).toEqual(evpids([...before, ...after]));
    });

    test("walks only the given owner's messages", async () => {
      const mine = await queued(2, undefined, OWNER);
      await queued(3, undefined, OTHER);
      expect(evpids(await walkAll(store, { owner: OWNER }))).toEqual(evpids(mine.envelopes));
      expect(await walkAll(store)).toHaveLength(5);
    });

    test('never hands out envelopes of incoming messages', async () => {
      const msgid = randomMsgid();
      await store.messageCreate([msgid], OWNER);
      await store.envelopeCreate(envelope(msgid));
      expect(await walkAll(store)).toEqual([]);
    });

    test('keeps a page within maxBytes but always returns at least one envelope', async () => {
      await queued(4);
      const page = await store.envelopeWalk({ maxBytes: 1 });
      expect(page.items).toHaveLength(1);
      expect(page.cursor).not.toBeNull();
    });

    test('refuses a cursor it did not hand out', async () => {
      await expectError(store.envelopeWalk({ cursor: 'not-a-cursor' }), 'bad_request');
      const forged = Buffer.from(JSON.stringify({ t0: 1, m: 'ZZ' })).toString('base64url');
      await expectError(store.envelopeWalk({ cursor: forged }), 'bad_request');
    });
  });

  describe('messagePurge', () => {
    test("deletes the owner's incoming messages except those kept, and nothing else", async () => {
      const [gone, kept] = [randomMsgid(), randomMsgid()];
      const others = randomMsgid();
      await store.messageCreate([gone, kept], OWNER);
      await store.envelopeCreate(envelope(gone));
      await store.messageCreate([others], OTHER);
      const { msgid: committed } = await queued(1);
      expect(await store.messagePurge(OWNER, [kept])).toBe(1);
      await expectError(store.messageWalk(gone), 'not_found');
      expect((await store.messageWalk(kept)).message.state).toBe('incoming');
      expect((await store.messageWalk(others)).message.state).toBe('incoming');
      expect((await store.messageWalk(committed)).message.state).toBe('queued');
    });
  });

  describe('a pool of instances', () => {
    const LEASE = 1500;
    const lapse = () => new Promise((resolve) => setTimeout(resolve, LEASE + 200));

    test('a heartbeat keeps an instance alive for its lease, and then it is not', async () => {
      const startedAt = new Date(Date.now() - 1000);
      const info = await store.instanceHeartbeat(OWNER, LEASE, { walkDone: true, startedAt });
      expect(info).toMatchObject({ instance: OWNER, alive: true, walkDone: true });
      expect(info.startedAt.getTime()).toBe(startedAt.getTime());
      expect(info.leaseUntil.getTime()).toBeGreaterThan(Date.now());
      await lapse();
      expect((await store.instanceList()).map((i) => [i.instance, i.alive])).toEqual([[OWNER, false]]);
    });

    test('a heartbeat without startedAt keeps the one said before; an instance that never says started at its first heartbeat', async () => {
      const startedAt = new Date(Date.now() - 1000);
      await store.instanceHeartbeat(OWNER, 60_000, { startedAt });
      expect((await store.instanceHeartbeat(OWNER, 60_000)).startedAt.getTime()).toBe(startedAt.getTime());
      expect((await store.instanceHeartbeat(OWNER, 60_000, { walkDone: true })).startedAt.getTime()).toBe(startedAt.getTime());
      expect((await store.instanceList()).map((i) => [i.instance, i.startedAt.getTime()])).toEqual([[OWNER, startedAt.getTime()]]);

      const first = await store.instanceHeartbeat(OTHER, 60_000);
      expect(first.startedAt.getTime()).toBe(first.heartbeatAt.getTime());
      await new Promise((resolve) => setTimeout(resolve, 5));
      const later = await store.instanceHeartbeat(OTHER, 60_000);
      expect(later.heartbeatAt.getTime()).toBeGreaterThan(first.heartbeatAt.getTime());
      expect(later.startedAt.getTime()).toBe(first.startedAt.getTime());
    });

    test('a later heartbeat that says when it started replaces what was said before (the instance restarted)', async () => {
      await store.instanceHeartbeat(OWNER, 60_000, { startedAt: new Date(Date.now() - 60_000) });
      const restarted = new Date();
      expect((await store.instanceHeartbeat(OWNER, 60_000, { startedAt: restarted })).startedAt.getTime()).toBe(restarted.getTime());
    });

    test('takeover says more: false once no orphan is left, even when the page ended at its limit', async () => {
      await store.instanceHeartbeat(OWNER, LEASE);
      await store.instanceHeartbeat('mx3', LEASE);
      for (let i = 0; i < 2; i++) await queued(1);
      await lapse();
      expect(await store.queueTakeover(OTHER, { limit: 2 })).toMatchObject({ more: false });
      expect(await store.queueTakeover(OTHER, { limit: 2 })).toEqual({ claimed: [], purged: 0, more: false });
    });

    test("takeover moves a dead instance's queued messages to the claimant and purges its uncommitted ones", async () => {
      await store.instanceHeartbeat(OWNER, LEASE);
      const dead = await queued(2);
      const incoming = randomMsgid();
      await store.messageCreate([incoming], OWNER);
      await lapse();
      await store.instanceHeartbeat(OTHER, 60_000);
      const takeover = await store.queueTakeover(OTHER);
      expect(takeover).toEqual({ claimed: [{ msgid: dead.msgid, from: OWNER, evpids: evpids(dead.envelopes) }], purged: 1, more: false });
      expect((await store.messageWalk(dead.msgid)).message).toMatchObject({ owner: OTHER });
      await expectError(store.messageWalk(incoming), 'not_found');
      expect(evpids(await walkAll(store, { owner: OTHER }))).toEqual(evpids(dead.envelopes));
      expect(await store.queueTakeover(OTHER)).toEqual({ claimed: [], purged: 0, more: false });
    });

    test("a takeover counts what it claims for the claimant: the claimant's heartbeat and the instance list say how many, ever", async () => {
      await store.instanceHeartbeat(OWNER, LEASE);
      await queued(1);
      await queued(1);
      await lapse();
      expect((await store.instanceHeartbeat(OTHER, 60_000)).claims).toBe(0);
      expect((await store.queueTakeover(OTHER, { limit: 1 })).claimed).toHaveLength(1);
      expect((await store.instanceHeartbeat(OTHER, 60_000)).claims).toBe(1);
      expect((await store.queueTakeover(OTHER)).claimed).toHaveLength(1);
      expect(await store.queueTakeover(OTHER)).toMatchObject({ claimed: [] });
      expect((await store.instanceHeartbeat(OTHER, 60_000)).claims).toBe(2);
      expect((await store.instanceList()).map((i) => [i.instance, i.claims])).toEqual([
        [OWNER, 0],
        [OTHER, 2],
      ]);
    });

    test('the former owner is refused afterwards: no load, update, delete or read', async () => {
      await store.instanceHeartbeat(OWNER, LEASE);
      const { msgid, envelopes } = await queued(1);
      await lapse();
      await store.queueTakeover(OTHER);
      const e = envelopes[0];
      await expectError(store.envelopeLoad(e.evpid, { owner: OWNER }), 'conflict', 'not_owner');
      await expectError(store.envelopeUpdate({ ...e, data: Buffer.from('x') }, { owner: OWNER }), 'conflict', 'not_owner');
      await expectError(store.envelopeDelete(e.evpid, { owner: OWNER }), 'conflict', 'not_owner');
      await expectError(store.messageRead(msgid, { owner: OWNER }), 'conflict', 'not_owner');
      expect((await store.envelopeLoad(e.evpid, { owner: OTHER })).equals(e.data)).toBe(true);
    });

    test('takeover fences the uncommitted messages it purges', async () => {
      await store.instanceHeartbeat(OWNER, LEASE);
      const incoming = randomMsgid();
      await store.messageCreate([incoming], OWNER);
      await lapse();
      expect((await store.queueTakeover(OTHER)).purged).toBe(1);
      await expectError(store.messageCommit(commitOf(incoming, Buffer.from('late'), [envelope(incoming)])), 'conflict', 'rolled_back');
      await expectError(store.messageWalk(incoming), 'not_found');
    });

    test('nothing is taken from a live instance, or from an owner that never sent a heartbeat', async () => {
      await store.instanceHeartbeat(OWNER, 60_000);
      const live = await queued(1, undefined, OWNER);
      const unregistered = await queued(1, undefined, 'api-user');
      expect(await store.queueTakeover(OTHER)).toEqual({ claimed: [], purged: 0, more: false });
      expect((await store.messageWalk(live.msgid)).message.owner).toBe(OWNER);
      expect((await store.messageWalk(unregistered.msgid)).message.owner).toBe('api-user');
    });

    test('two claimants racing for the same orphans: each message goes to exactly one', async () => {
      await store.instanceHeartbeat(OWNER, LEASE);
      const orphans = [];
      for (let i = 0; i < 8; i++) orphans.push((await queued(1)).msgid);
      await lapse();
      const [a, b] = await Promise.all([store.queueTakeover('mx-a'), store.queueTakeover('mx-b')]);
      const claimed = [...a.claimed, ...b.claimed].map((c) => c.msgid).sort();
      expect(claimed).toEqual([...orphans].sort());
      for (const msgid of orphans) {
        const owner = (await store.messageWalk(msgid)).message.owner;
        expect(a.claimed.some((c) => c.msgid === msgid)).toBe(owner === 'mx-a');
      }
    });

    test('takes over in pages of at most `limit` messages, and only from the instances asked for', async () => {
      await store.instanceHeartbeat(OWNER, LEASE);
      await store.instanceHeartbeat('mx3', LEASE);
      for (let i = 0; i < 3; i++) await queued(1);
      const other = await queued(1, undefined, 'mx3');
      await lapse();
      const first = await store.queueTakeover(OTHER, { from: [OWNER], limit: 2 });
      expect([first.claimed.length, first.more]).toEqual([2, true]);
      const second = await store.queueTakeover(OTHER, { from: [OWNER], limit: 2 });
      expect([second.claimed.length, second.more]).toEqual([1, false]);
      expect((await store.messageWalk(other.msgid)).message.owner).toBe('mx3');
    });

    test("a shared takeover claims at most ceil(orphans / live instances) of a dead instance's orphans per call, leaving the rest to the others", async () => {
      await store.instanceHeartbeat(OWNER, LEASE);
      for (let i = 0; i < 7; i++) await queued(1);
      await lapse();
      await store.instanceHeartbeat(OTHER, 60_000);
      await store.instanceHeartbeat('mx3', 60_000);
      const first = await store.queueTakeover(OTHER, { share: true });
      expect([first.claimed.length, first.more]).toEqual([4, true]);
      const second = await store.queueTakeover('mx3', { share: true });
      expect([second.claimed.length, second.more]).toEqual([2, true]);
      const third = await store.queueTakeover(OTHER, { share: true });
      expect([third.claimed.length, third.more]).toEqual([1, false]);
      expect(await store.queueTakeover('mx3', { share: true })).toEqual({ claimed: [], purged: 0, more: false });
    });

    test('a shared takeover counts neither dead nor draining instances as live', async () => {
      await store.instanceHeartbeat(OWNER, LEASE);
      await store.instanceHeartbeat('mx4', LEASE);
      for (let i = 0; i < 4; i++) await queued(1);
      await store.instanceHeartbeat('mx3', 60_000);
      await store.instanceHeartbeat('mx3', 60_000, { drain: 'ask' });
      await lapse();
      expect((await store.queueTakeover(OTHER, { share: true })).claimed).toHaveLength(4);
    });

    test("a drain marks a live instance draining without renewing it; its heartbeats are then refused until it says it is done, which ends its lease at once", async () => {
      const startedAt = new Date(Date.now() - 1000);
      const before = await store.instanceHeartbeat(OWNER, 60_000, { startedAt });
      const asked = await store.instanceHeartbeat(OWNER, 60_000, { drain: 'ask' });
      expect(asked).toMatchObject({ alive: true, draining: true });
      expect(asked.leaseUntil.getTime()).toBe(before.leaseUntil.getTime());
      await expectError(store.instanceHeartbeat(OWNER, 60_000, { startedAt }), 'conflict', 'draining');
      await expectError(store.instanceHeartbeat(OWNER, 60_000), 'conflict', 'draining');
      const done = await store.instanceHeartbeat(OWNER, 60_000, { startedAt, drain: 'done' });
      expect(done).toMatchObject({ alive: false, draining: true });
      expect((await store.instanceList()).map((i) => [i.instance, i.alive, i.draining])).toEqual([[OWNER, false, true]]);
    });

    test("a drained instance's mail is claimed at once, and its restart ends the drain", async () => {
      const startedAt = new Date(Date.now() - 1000);
      await store.instanceHeartbeat(OWNER, 60_000, { startedAt });
      const { msgid } = await queued(1);
      await store.instanceHeartbeat(OWNER, 60_000, { drain: 'ask' });
      expect((await store.queueTakeover(OTHER)).claimed).toEqual([]);
      await store.instanceHeartbeat(OWNER, 60_000, { startedAt, drain: 'done' });
      expect((await store.queueTakeover(OTHER)).claimed.map((c) => c.msgid)).toEqual([msgid]);
      const restarted = await store.instanceHeartbeat(OWNER, 60_000, { startedAt: new Date() });
      expect(restarted).toMatchObject({ alive: true, draining: false });
    });

    test('a drain is refused for an instance that holds no lease, and `done` for one that is not draining', async () => {
      await expectError(store.instanceHeartbeat(OWNER, 60_000, { drain: 'ask' }), 'not_found');
      await store.instanceHeartbeat(OWNER, LEASE);
      await expectError(store.instanceHeartbeat(OWNER, LEASE, { drain: 'done' }), 'conflict', 'not_draining');
      await lapse();
      await expectError(store.instanceHeartbeat(OWNER, LEASE, { drain: 'ask' }), 'conflict', 'no_lease');
    });

    test('counts say when the oldest message of each owner and state was created', async () => {
      const first = await queued(1);
      await queued(1);
      const counts = await store.queueCounts();
      const mine = counts.find((c) => c.owner === OWNER && c.state === 'queued')!;
      expect(mine.messages).toBe(2);
      expect(mine.oldestAt!.getTime()).toBe((await store.messageWalk(first.msgid)).message.createdAt.getTime());
    });

    test('a walk begun before a takeover does not hand out what the takeover moved', async () => {
      await store.instanceHeartbeat(OWNER, LEASE);
      const orphan = await queued(1, undefined, OWNER);
      const mine = await queued(1, undefined, OTHER);
      await lapse();
      const page = await store.envelopeWalk({ owner: OTHER, limit: 1 });
      await store.queueTakeover(OTHER);
      const seen = [...page.items];
      let cursor = page.cursor ?? undefined;
      while (cursor) {
        const next = await store.envelopeWalk({ owner: OTHER, cursor, limit: 1 });
        seen.push(...next.items);
        cursor = next.cursor ?? undefined;
      }
      expect(evpids(seen)).toEqual(evpids(mine.envelopes));
      expect(evpids(await walkAll(store, { owner: OTHER }))).toEqual(evpids([...mine.envelopes, ...orphan.envelopes]));
    });

    test('counts messages by owner and state', async () => {
      await queued(2, undefined, OWNER);
      const { msgid } = await queued(1, undefined, OWNER);
      await store.messageCorrupt(msgid);
      await store.messageCreate([randomMsgid()], OTHER);
      expect(await store.queueCounts()).toEqual([
        { owner: OWNER, state: 'corrupt', messages: 1, oldestAt: expect.any(Date) },
        { owner: OWNER, state: 'queued', messages: 1, oldestAt: expect.any(Date) },
        { owner: OTHER, state: 'incoming', messages: 1 },
      ]);
    });
  });

  describe('large bodies', () => {
    const size = 35 * MiB;
    test(`a ${size}-byte body round-trips byte-identical, in parts and inline`, async () => {
      const body = randomBytes(size);
      const parts = randomMsgid();
      await store.messageCreate([parts], OWNER);
      const part = 8 * CHUNK_BYTES;
      for (let at = 0; at < size; at += part) await store.messageWrite(parts, at, body.subarray(at, at + part), OWNER);
      const { body: _inline, ...commit } = commitOf(parts, body, [envelope(parts)]);
      await store.messageCommit(commit);
      expect((await store.messageRead(parts)).data.equals(body)).toBe(true);
      if (driver.slow) return;
      const inline = randomMsgid();
      await store.messageCommit(commitOf(inline, body, [envelope(inline)]));
      expect((await store.messageRead(inline)).data.equals(body)).toBe(true);
    }, 300_000);
  });
}
