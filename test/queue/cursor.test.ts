import { randomBytes } from 'node:crypto';
import { randomMsgid } from '../../lib/ids';
import { Queue } from '../../lib/queue';
import { key, type Mutations, type Transaction } from '../../lib/storage';
import { MemoryStorage } from '../../lib/storage-memory';
import { commitOf, envelope, walkAll } from '../contract/queue-store.contract';
import { expectOneCursorKey } from '../support/cursor-key';
import { TEST_TOKEN, startService } from '../support/service';

/**
 * Walk cursors are opaque and tamper-proof: signed with a key the service
 * keeps in its store, bound to the walk and owner that got them. Anything
 * else is a 400 that writes nothing.
 */
class WatchedStorage extends MemoryStorage {
  writes = 0;
  override write(mutations: Mutations): Promise<void> {
    this.writes++;
    return super.write(mutations);
  }
  override transaction<T>(work: (tx: Transaction) => Promise<T>): Promise<T> {
    this.writes++;
    return super.transaction(work);
  }
}

type Service = Awaited<ReturnType<typeof startService>>;
let storage: WatchedStorage;
let service: Service;

beforeEach(async () => {
  storage = new WatchedStorage();
  service = await startService({ store: new Queue(storage) });
});

afterEach(async () => {
  await service.stop();
});

async function queued(owner: string, envelopes = 3) {
  const msgid = randomMsgid();
  const list = Array.from({ length: envelopes }, (_, i) => envelope(msgid, `u${i}@example.test`));
  await service.store.messageCommit(commitOf(msgid, Buffer.from('Subject: hi\r\n\r\nhi\r\n'), list, owner));
  return { msgid, envelopes: list };
}

type WalkAnswer = { cursor?: string | null; error?: { code: string; message: string } };

async function get(fn: string, query: Record<string, string>): Promise<{ status: number; body: WalkAnswer }> {
  const res = await fetch(`${service.baseUrl}/${fn}?${new URLSearchParams(query)}`, { headers: { authorization: `Bearer ${TEST_TOKEN}` } });
  return { status: res.status, body: (await res.json()) as WalkAnswer };
}

async function firstCursor(query: Record<string, string>, fn = 'envelopeWalk'): Promise<string> {
  const { status, body } = await get(fn, { limit: '1', ...query });
  expect(status).toBe(200);
  expect(body.cursor).toEqual(expect.any(String));
  return body.cursor!;
}

/** Each cursor is refused with the JSON error, and nothing is written meanwhile. */
async function expectRefused(fn: string, query: Record<string, string>, cursors: string[]): Promise<void> {
  const writes = storage.writes;
  for (const cursor of cursors) {
    const { status, body } = await get(fn, { ...query, cursor });
    if (status !== 400) throw new Error(`cursor ${JSON.stringify(cursor)} was answered ${status}`);
    expect(body.error).toEqual({ code: 'bad_request', message: expect.stringMatching(/cursor is not valid/) });
  }
  expect(storage.writes).toBe(writes);
}

const reencode = (bytes: Buffer) => bytes.toString('base64url');
const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

test('an honest walk still hands out every envelope exactly once, page by page', async () => {
  const all = [...(await queued('mx1', 4)).envelopes, ...(await queued('mx1', 2)).envelopes, ...(await queued('mx2', 3)).envelopes];
  const seen = await walkAll(service.client(), { limit: 2 });
  expect(seen.map((e) => e.evpid).sort()).toEqual(all.map((e) => e.evpid).sort());
  expect(await walkAll(service.client(), { owner: 'mx1', limit: 1 })).toHaveLength(6);
});

test('a cursor changed in any byte, its signature or its position, is refused', async () => {
  await queued('mx1');
  const cursor = await firstCursor({ owner: 'mx1' });
  const bytes = Buffer.from(cursor, 'base64url');
  const flipped = [...bytes.keys()].map((i) => {
    const copy = Buffer.from(bytes);
    copy[i] ^= 0x01;
    return reencode(copy);
  });
  await expectRefused('envelopeWalk', { owner: 'mx1' }, flipped);
});

test('a cursor with any character changed, cut short at any length, or lengthened is refused', async () => {
  await queued('mx1');
  const cursor = await firstCursor({ owner: 'mx1' });
  const changed = [...cursor].map((c, i) => cursor.slice(0, i) + ALPHABET[(ALPHABET.indexOf(c) + 1) % 64] + cursor.slice(i + 1));
  const truncated = Array.from({ length: cursor.length - 1 }, (_, n) => cursor.slice(0, n + 1));
  await expectRefused('envelopeWalk', { owner: 'mx1' }, [...changed, ...truncated, `${cursor}A`, `${cursor}==`, ` ${cursor}`]);
});

test('a cursor with its owner swapped in the payload is refused', async () => {
  await queued('mx1');
  const bytes = Buffer.from(await firstCursor({ owner: 'mx1' }), 'base64url');
  const payload = bytes.subarray(32).toString('utf8');
  expect(payload).toContain('"o":"mx1"');
  const swapped = (to: string) => reencode(Buffer.concat([bytes.subarray(0, 32), Buffer.from(payload.replace('"o":"mx1"', to))]));
  await expectRefused('envelopeWalk', { owner: 'mx2' }, [swapped('"o":"mx2"')]);
  await expectRefused('envelopeWalk', {}, [swapped('"o":null')]);
  await expectRefused('envelopeWalk', { owner: 'mx1' }, [reencode(Buffer.concat([bytes.subarray(0, 32), Buffer.from(payload.replace(/"t0":\d+/, '"t0":0'))]))]);
});

test("a cursor is bound to its walk: another owner's, an administrator's, or another call's is refused", async () => {
  const { msgid } = await queued('mx1');
  await queued('mx2');
  const mine = await firstCursor({ owner: 'mx1' });
  const admins = await firstCursor({});
  await expectRefused('envelopeWalk', { owner: 'mx2' }, [mine]);
  await expectRefused('envelopeWalk', {}, [mine]);
  await expectRefused('envelopeWalk', { owner: 'mx1' }, [admins]);
  const messages = await firstCursor({ msgid }, 'messageWalk');
  await expectRefused('envelopeWalk', {}, [messages]);
  await expectRefused('messageWalk', { msgid, owner: 'mx1' }, [messages, mine]);
  const other = await queued('mx1');
  await expectRefused('messageWalk', { msgid: other.msgid }, [messages]);
  expect((await get('envelopeWalk', { owner: 'mx1', cursor: mine })).status).toBe(200);
  expect((await get('messageWalk', { msgid, cursor: messages })).status).toBe(200);
});

test('garbage, and the unsigned cursors of earlier versions, are refused', async () => {
  await queued('mx1');
  await firstCursor({});
  const unsigned = (pos: object) => Buffer.from(JSON.stringify(pos)).toString('base64url');
  await expectRefused('envelopeWalk', {}, [
    'x',
    '!!!!',
    '====',
    'bm9wZQ',
    '%00',
    reencode(randomBytes(64)),
    reencode(randomBytes(300)),
    unsigned({ t0: 0 }),
    reencode(Buffer.concat([Buffer.alloc(32), Buffer.from(JSON.stringify({ w: 'envelopes', o: null, t0: 0 }))])),
  ]);
});

test('a cursor sent before the service ever made its key is refused, and no key is made for it', async () => {
  const forged = reencode(Buffer.concat([randomBytes(32), Buffer.from(JSON.stringify({ w: 'envelopes', o: null, t0: 0 }))]));
  await expectRefused('envelopeWalk', {}, [forged]);
  expect((await storage.get([key.serviceKey('cursor')])).has(key.serviceKey('cursor'))).toBe(false);
});

test('every instance of the service over one store signs with the same key, made once', async () => {
  const shared = new WatchedStorage();
  await expectOneCursorKey(Array.from({ length: 8 }, () => new Queue(shared)));
  expect(await shared.query({ kind: 'ServiceKey' })).toHaveLength(1);
});
