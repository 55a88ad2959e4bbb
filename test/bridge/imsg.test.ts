import fc from 'fast-check';
import { encodeImsg, ImsgReader, IMSG_HEADER_SIZE, MAX_IMSGSIZE, type ImsgLayout } from '../../bridge/imsg';
import { dispatch, failureReply, PROC, type QueueBackend } from '../../bridge/protocol';

/** The imsg decoder and the request parser, fed random, split and truncated input. */
const layouts: ImsgLayout[] = ['6.8', '7.7'];

const message = fc.record({
  type: fc.integer({ min: 0, max: 0xffffffff }),
  data: fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
  hasFd: fc.boolean(),
  peerid: fc.integer({ min: 0, max: 0xffffffff }),
  pid: fc.integer({ min: 0, max: 0xffffffff }),
});

/** Cuts a buffer into pieces at random points, as reads from a socket do. */
function split(bytes: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const pieces: Buffer[] = [];
  let at = 0;
  for (const p of points) {
    pieces.push(bytes.subarray(at, p));
    at = p;
  }
  pieces.push(bytes.subarray(at));
  return pieces;
}

describe.each(layouts)('imsg %s', (layout) => {
  test('decodes any sequence of messages however the bytes are split, with their fds in order', () => {
    fc.assert(
      fc.property(fc.array(message, { maxLength: 20 }), fc.array(fc.nat(), { maxLength: 30 }), (messages, cuts) => {
        const reader = new ImsgReader(layout);
        const wire = Buffer.concat(messages.map((m) => encodeImsg(layout, m)));
        let nextFd = 100;
        const decoded = [];
        for (const piece of split(wire, cuts)) {
          reader.push(piece, []);
          for (let m = reader.next(); m; m = reader.next()) decoded.push(m);
        }
        // the fds came with the bytes; here, all before any is claimed
        const reader2 = new ImsgReader(layout);
        const fds = messages.filter((m) => m.hasFd).map(() => nextFd++);
        reader2.push(wire, fds);
        const withFds = [];
        for (let m = reader2.next(); m; m = reader2.next()) withFds.push(m);
        expect(decoded.map((m) => [m.type, m.peerid, m.pid, m.data.toString('hex')])).toEqual(
          messages.map((m) => [m.type, m.peerid, m.pid, m.data.toString('hex')]),
        );
        expect(withFds.filter((m) => m.fd !== undefined).map((m) => m.fd)).toEqual(fds);
        expect(reader.broken).toBeUndefined();
      }),
    );
  });

  test('never throws on random bytes, and stops for good at an impossible header', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 40 }), fc.array(fc.nat(1000), { maxLength: 5 }), (chunks, fds) => {
        const reader = new ImsgReader(layout);
        let count = 0;
        for (const chunk of chunks) {
          reader.push(Buffer.from(chunk), fds);
          for (let m = reader.next(); m && count < 10_000; m = reader.next()) {
            count++;
            expect(m.data.length).toBeLessThanOrEqual(MAX_IMSGSIZE - IMSG_HEADER_SIZE);
          }
        }
        if (reader.broken) expect(reader.next()).toBeUndefined();
      }),
    );
  });

  test('keeps a truncated message until the rest arrives', () => {
    fc.assert(
      fc.property(message, fc.nat(), (m, cut) => {
        const wire = encodeImsg(layout, m);
        const at = cut % wire.length;
        const reader = new ImsgReader(layout);
        reader.push(wire.subarray(0, at));
        expect(reader.next()).toBeUndefined();
        reader.push(wire.subarray(at));
        expect(reader.next()?.data.equals(m.data)).toBe(true);
      }),
    );
  });
});

describe('the request parser', () => {
  const backend: QueueBackend = {
    init: async () => undefined,
    close: async () => undefined,
    messageCreate: async () => '0a1b2c3d',
    messageDelete: async () => true,
    messageCommit: async () => true,
    messageFd: async () => 5,
    envelopeCreate: async (msgid) => msgid + '00000001',
    envelopeDelete: async () => true,
    envelopeLoad: async () => Buffer.from('version: 3\n'),
    envelopeUpdate: async () => true,
    envelopeWalk: async () => 'done',
  };

  test('answers any payload of any request type with a reply smtpd can read, or a failure reply', async () => {
    const expectedLength: Record<number, number[]> = {
      [PROC.INIT]: [0],
      [PROC.CLOSE]: [4],
      [PROC.MESSAGE_CREATE]: [4, 8],
      [PROC.MESSAGE_DELETE]: [4],
      [PROC.MESSAGE_COMMIT]: [4],
      [PROC.MESSAGE_FD_R]: [0],
      [PROC.ENVELOPE_CREATE]: [4, 12],
      [PROC.ENVELOPE_DELETE]: [4],
      [PROC.ENVELOPE_LOAD]: [0, 11],
      [PROC.ENVELOPE_UPDATE]: [4],
      [PROC.ENVELOPE_WALK]: [4],
    };
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 14 }), fc.uint8Array({ maxLength: 40 }), async (type, payload) => {
        let reply;
        try {
          reply = await dispatch(backend, { type, peerid: 0, pid: 1, data: Buffer.from(payload) });
        } catch {
          reply = failureReply(type);
        }
        if (expectedLength[type]) expect(expectedLength[type]).toContain(reply.data.length);
      }),
    );
  });
});
