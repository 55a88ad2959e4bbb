import { randomBytes } from 'node:crypto';
import { HttpQueueStore, INLINE_MAX_DEFAULT, PART_BYTES } from '../../bridge/client';
import type { FunctionName } from '../../lib/api';
import { randomEvpid, randomMsgid } from '../../lib/ids';
import { sha256hex } from '../../lib/rules';
import { CHUNK_BYTES } from '../../lib/store';
import { startService } from '../support/service';

/**
 * Bodies of every size that matters go through the functions and the HTTP
 * client (the bridge's) to Datastore on the Firestore emulator and come back
 * byte-identical: at the client's inline limit, at its part size, at the
 * store's chunk size, and in the 3–5 MB range, where the inline body's base64
 * once overflowed the validator and every commit failed with a 500.
 */
type Service = Awaited<ReturnType<typeof startService>>;

const OWNER = 'mx1';
const MB = 1_000_000;
const MiB = 1024 * 1024;

describe('bodies of every size through the functions', () => {
  let service: Service;
  const calls = new Map<FunctionName, number>();
  const clients: HttpQueueStore[] = [];

  beforeAll(async () => {
    service = await startService();
  });
  afterAll(async () => {
    for (const client of clients) await client.close();
    await service.stop();
  });
  beforeEach(() => calls.clear());

  function client(inlineMax: number): HttpQueueStore {
    const made = service.client({ inlineMax, observe: (fn) => calls.set(fn, (calls.get(fn) ?? 0) + 1) });
    clients.push(made);
    return made;
  }

  /**
   * Commits a body of `size` random bytes with one envelope, as the bridge
   * does, reads both back and commits again (a retry). Answers how many
   * messageWrite parts the first commit took.
   */
  async function roundTrip(store: HttpQueueStore, size: number): Promise<number> {
    const msgid = randomMsgid();
    const envelope = { evpid: randomEvpid(msgid), data: Buffer.from('version: 3\ntype: mda\nrcpt: a@example.test\n') };
    const body = randomBytes(size);
    await store.messageCreate([msgid], OWNER);
    const commit = { msgid, owner: OWNER, size, sha256: sha256hex(body), body, envelopes: [envelope] };
    expect(await store.messageCommit(commit)).toEqual({ created: true });
    const parts = calls.get('messageWrite') ?? 0;
    const read = await store.messageRead(msgid, { owner: OWNER });
    expect(read.info).toMatchObject({ size, sha256: sha256hex(body), state: 'queued', owner: OWNER });
    expect(read.data.length).toBe(size);
    expect(read.data.equals(body)).toBe(true);
    expect((await store.envelopeLoad(envelope.evpid, { owner: OWNER })).equals(envelope.data)).toBe(true);
    expect(await store.messageCommit(commit)).toEqual({ created: false });
    return parts;
  }

  describe('at the default inline limit: up to it inline in messageCommit, above it in parts', () => {
    test.each([
      [0, 0],
      [1, 0],
      [INLINE_MAX_DEFAULT - 1, 0],
      [INLINE_MAX_DEFAULT, 0],
      [INLINE_MAX_DEFAULT + 1, 1],
    ])('a %i-byte body round-trips byte-identical, sent in %i messageWrite parts', async (size, parts) => {
      expect(await roundTrip(client(INLINE_MAX_DEFAULT), size)).toBe(parts);
    });
  });

  describe('at the part size of messageWrite', () => {
    test.each([
      [PART_BYTES - 1, 1],
      [PART_BYTES, 1],
      [PART_BYTES + 1, 2],
    ])('a %i-byte body round-trips byte-identical, sent in %i messageWrite parts', async (size, parts) => {
      expect(await roundTrip(client(INLINE_MAX_DEFAULT), size)).toBe(parts);
    });
  });

  describe("at the store's chunk size, in parts", () => {
    test.each([CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1])('a %i-byte body round-trips byte-identical', async (size) => {
      expect(await roundTrip(client(0), size)).toBe(1);
    });
  });

  describe('from 3 MB to 5 MB, inline', () => {
    const sweep: [string, number][] = [
      ['3.0 MB', 3 * MB],
      ['3 MiB', 3 * MiB],
      ['3,352,500-byte (4.47 M base64 characters)', 3_352_500],
      ['3,360,000-byte (4.48 M base64 characters)', 3_360_000],
      ['3.4 MB', 3.4 * MB],
      ['3.5 MB', 3.5 * MB],
      ['3.9 MB', 3.9 * MB],
      ['4.0 MB', 4 * MB],
      ['4 MiB', 4 * MiB],
      ['4.5 MB', 4.5 * MB],
      ['5.0 MB', 5 * MB],
    ];
    test.each(sweep)('a %s body round-trips byte-identical', async (_name, size) => {
      expect(await roundTrip(client(16 * MiB), size)).toBe(0);
    });
  });
});
