import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, closeSync, fstatSync, mkdtempSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { PROC } from '../../bridge/protocol';
import { evpidToHex, msgidToHex } from '../../lib/ids';
import { DEFAULT_LIMITS } from '../../lib/store';
import { TEST_TOKEN, startService } from '../support/service';
import { BRIDGE, SmtpdPeer, r, u32, u64 } from '../support/smtpd-peer';
import { firestoreStore, uniqueNamespace } from '../support/stores';

/**
 * The bridge as smtpd sees it, byte for byte: the bundled dist/queue-rest/queue-rest.js
 * with a unix socket as fd 0, against the functions on a Firestore emulator.
 */
type Service = Awaited<ReturnType<typeof startService>>;

const ENVELOPE = (rcpt: string) => Buffer.from(`version: 3\ndispatcher: local\ntype: mda\nrcpt: ${rcpt}\nhelo: test\nhostname: test\n`);

function bodyFd(body: Buffer): number {
  const dir = mkdtempSync(path.join(tmpdir(), 'queue-body-'));
  const file = path.join(dir, 'body');
  writeFileSync(file, body);
  return openSync(file, 'r');
}

function readFd(fd: number): Buffer {
  const size = fstatSync(fd).size;
  const out = Buffer.alloc(size);
  let at = 0;
  while (at < size) at += readSync(fd, out, at, size - at, null);
  closeSync(fd);
  return out;
}

function statsOf(file: string) {
  return JSON.parse(readFileSync(file, 'utf8'));
}

describe('queue-rest speaking to smtpd', () => {
  let service: Service;
  let logDir: string;
  const peers: SmtpdPeer[] = [];

  beforeAll(async () => {
    service = await startService({ store: firestoreStore(DEFAULT_LIMITS, uniqueNamespace('bridge')) });
    logDir = mkdtempSync(path.join(tmpdir(), 'queue-bridge-'));
    chmodSync(logDir, 0o755); // the bridge writes its counters there after it drops root
  });
  afterAll(async () => {
    for (const peer of peers) await peer.close();
    await service.stop();
  });

  async function bridge(instance: string, extra: Record<string, string | undefined> = {}, arg: string | null = service.baseUrl) {
    const peer = await SmtpdPeer.start(arg ?? undefined, {
      QUEUE_TOKEN: TEST_TOKEN,
      QUEUE_REST_INSTANCE: instance,
      QUEUE_REST_LOG: path.join(logDir, `${instance}.log`),
      QUEUE_REST_STATE: path.join(logDir, 'state'),
      QUEUE_REST_STATS_FILE: path.join(logDir, `${instance}.json`),
      QUEUE_REST_USER: process.getuid?.() === 0 ? 'nobody' : undefined,
      QUEUE_REST_RETRY_BUDGET: '2000',
      QUEUE_REST_TIMEOUT: '1000',
      ...extra,
    });
    peers.push(peer);
    return peer;
  }

  async function init(peer: SmtpdPeer) {
    const reply = await peer.request(PROC.INIT, u32(2));
    expect([reply.type, reply.len]).toEqual([PROC.OK, 16]);
  }

  async function walkAll(peer: SmtpdPeer): Promise<{ evpid: bigint; data: Buffer }[]> {
    const walked: { evpid: bigint; data: Buffer }[] = [];
    for (let i = 0; i < 10_000; i++) {
      const reply = await peer.request(PROC.ENVELOPE_WALK);
      const n = r(reply);
      if (n === -1) {
        expect(reply.len).toBe(20);
        return walked;
      }
      if (n === 0) {
        expect(reply.len).toBe(20);
        continue;
      }
      expect(reply.len).toBe(16 + 4 + 8 + n);
      walked.push({ evpid: reply.data.readBigUInt64LE(4), data: reply.data.subarray(12) });
    }
    throw new Error('the walk never ended');
  }

  async function accept(peer: SmtpdPeer, body: Buffer, recipients: string[]) {
    const created = await peer.request(PROC.MESSAGE_CREATE);
    expect([r(created), created.len]).toEqual([1, 24]);
    const msgid = created.data.readUInt32LE(4);
    const evpids: bigint[] = [];
    for (const rcpt of recipients) {
      const reply = await peer.request(PROC.ENVELOPE_CREATE, Buffer.concat([u32(msgid), ENVELOPE(rcpt)]));
      expect([r(reply), reply.len]).toEqual([1, 28]);
      const evpid = reply.data.readBigUInt64LE(4);
      expect(evpid >> 32n).toBe(BigInt(msgid));
      evpids.push(evpid);
    }
    const committed = await peer.request(PROC.MESSAGE_COMMIT, u32(msgid), bodyFd(body));
    expect([r(committed), committed.len]).toEqual([1, 20]);
    return { msgid, evpids };
  }

  test('accepts, delivers and deletes a message as smtpd does, byte for byte', async () => {
    const peer = await bridge('mx-cycle');
    await init(peer);
    expect(await walkAll(peer)).toEqual([]);
    const body = Buffer.from('Received: from test\r\nSubject: hi\r\n\r\nhello\r\n');
    const { msgid, evpids } = await accept(peer, body, ['a@example.test', 'b@example.test', 'c@example.test']);
    const stored = await service.store.messageWalk(msgidToHex(msgid));
    expect(stored.message).toMatchObject({ state: 'queued', owner: 'mx-cycle', size: body.length });
    expect(stored.items.map((e) => e.evpid)).toEqual(evpids.map(evpidToHex).sort());

    const fd = await peer.request(PROC.MESSAGE_FD_R, u32(msgid));
    expect([fd.len, fd.fd !== undefined]).toEqual([16, true]);
    expect(fstatSync(fd.fd!).isFile()).toBe(true);
    expect(readFd(fd.fd!).equals(body)).toBe(true);

    const loaded = await peer.request(PROC.ENVELOPE_LOAD, u64(evpids[0]));
    expect(loaded.data.equals(ENVELOPE('a@example.test'))).toBe(true);
    const updated = ENVELOPE('a@example.test').toString() + 'retry: 1\n';
    expect(r(await peer.request(PROC.ENVELOPE_UPDATE, Buffer.concat([u64(evpids[0]), Buffer.from(updated)])))).toBe(1);
    expect((await peer.request(PROC.ENVELOPE_LOAD, u64(evpids[0]))).data.toString()).toBe(updated);

    const bounce = await peer.request(PROC.ENVELOPE_CREATE, Buffer.concat([u32(msgid), ENVELOPE('sender@example.test')]));
    expect(r(bounce)).toBe(1);
    for (const evpid of [...evpids, bounce.data.readBigUInt64LE(4)]) {
      expect(r(await peer.request(PROC.ENVELOPE_DELETE, u64(evpid)))).toBe(1);
    }
    // deletes are written behind; CLOSE waits for them
    expect(r(await peer.request(PROC.CLOSE))).toBe(1);
    await expect(service.store.messageWalk(msgidToHex(msgid))).rejects.toMatchObject({ code: 'not_found' });
    expect(await peer.close()).toBe(0);
    if (process.getuid?.() === 0) expect(readFileSync(path.join(logDir, 'mx-cycle.log'), 'utf8')).toMatch(/"message":"running as nobody"/);
  });

  test('needs one HTTP request per accepted message, whatever the recipient count', async () => {
    const peer = await bridge('mx-trips');
    await init(peer);
    await walkAll(peer);
    const recipients = Array.from({ length: 25 }, (_, i) => `u${i}@example.test`);
    for (let i = 0; i < 24; i++) await accept(peer, randomBytes(4096), i % 2 ? recipients : recipients.slice(0, 1));
    await peer.request(PROC.CLOSE);
    await peer.close();
    const stats = statsOf(path.join(logDir, 'mx-trips.json'));
    expect(stats.acceptedMessages).toBe(24);
    expect(stats.http.messageCommit.count).toBe(24);
    expect(stats.http.envelopeCreate).toBeUndefined();
    // 24 commits and 12 msgids per reservation: (24 + 3) / 24
    expect(stats.acceptRequestsPerMessage).toBeLessThanOrEqual(1.125);
  });

  test('walks what was committed before INIT exactly once, and nothing committed after', async () => {
    const first = await bridge('mx-walk');
    await init(first);
    await walkAll(first);
    const before = [];
    for (let i = 0; i < 5; i++) before.push(await accept(first, randomBytes(100), ['x@example.test', 'y@example.test']));
    await first.request(PROC.CLOSE);
    await first.close();

    const second = await bridge('mx-walk');
    await init(second);
    const late = await accept(second, randomBytes(100), ['late@example.test']);
    const walked = await walkAll(second);
    expect(walked.map((e) => e.evpid).sort()).toEqual(before.flatMap((m) => m.evpids).sort());
    expect(walked.map((e) => e.evpid)).not.toContain(late.evpids[0]);
    for (const e of walked) expect(e.data.toString()).toMatch(/^version: 3\n/);
    expect(r(await second.request(PROC.ENVELOPE_WALK))).toBe(-1);
    await second.request(PROC.CLOSE);
    await second.close();
  });

  test("purges an earlier run's uncommitted messages at INIT", async () => {
    const first = await bridge('mx-purge');
    await init(first);
    const created = await first.request(PROC.MESSAGE_CREATE);
    const abandoned = msgidToHex(created.data.readUInt32LE(4));
    expect((await service.store.messageWalk(abandoned)).message.state).toBe('incoming');
    await first.close();
    const second = await bridge('mx-purge');
    await init(second);
    await expect(service.store.messageWalk(abandoned)).rejects.toMatchObject({ code: 'not_found' });
    await second.close();
  });

  test('rolls back a message smtpd abandons', async () => {
    const peer = await bridge('mx-rollback');
    await init(peer);
    const created = await peer.request(PROC.MESSAGE_CREATE);
    const msgid = created.data.readUInt32LE(4);
    await peer.request(PROC.ENVELOPE_CREATE, Buffer.concat([u32(msgid), ENVELOPE('a@example.test')]));
    expect(r(await peer.request(PROC.MESSAGE_DELETE, u32(msgid)))).toBe(1);
    await expect(service.store.messageWalk(msgidToHex(msgid))).rejects.toMatchObject({ code: 'not_found' });
    await peer.close();
  });

  test('answers every request with a failure smtpd can take while the service is unreachable', async () => {
    const peer = await bridge('mx-down', {}, 'http://127.0.0.1:9');
    const started = Date.now();
    await init(peer);
    const walk = await peer.request(PROC.ENVELOPE_WALK);
    expect([walk.type, walk.len, r(walk)]).toEqual([PROC.OK, 20, 0]);
    const created = await peer.request(PROC.MESSAGE_CREATE);
    expect([created.type, created.len, r(created)]).toEqual([PROC.OK, 20, 0]);
    const ev = await peer.request(PROC.ENVELOPE_CREATE, Buffer.concat([u32(0x12345678), ENVELOPE('a@example.test')]));
    expect([ev.len, r(ev)]).toEqual([20, 0]);
    const commit = await peer.request(PROC.MESSAGE_COMMIT, u32(0x12345678), bodyFd(Buffer.from('x')));
    expect([commit.len, r(commit)]).toEqual([20, 0]);
    const fd = await peer.request(PROC.MESSAGE_FD_R, u32(0x12345678));
    expect([fd.len, fd.fd]).toEqual([16, undefined]);
    const load = await peer.request(PROC.ENVELOPE_LOAD, u64(0x1234567800000001n));
    expect(load.len).toBe(16);
    const update = await peer.request(PROC.ENVELOPE_UPDATE, Buffer.concat([u64(0x1234567800000001n), Buffer.from('x')]));
    expect([update.type, update.len, r(update)]).toEqual([PROC.OK, 20, 0]);
    // smtpd does not look at a delete's answer; the delete is written behind and retried
    const deleted = await peer.request(PROC.ENVELOPE_DELETE, u64(0x1234567800000001n));
    expect([deleted.type, deleted.len, r(deleted)]).toEqual([PROC.OK, 20, 1]);
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(r(await peer.request(PROC.CLOSE))).toBe(1);
    expect(await peer.close()).toBe(0);
  });

  test('answers malformed and unknown requests without dying', async () => {
    const peer = await bridge('mx-garbage');
    await init(peer);
    expect(r(await peer.request(PROC.MESSAGE_DELETE, Buffer.from([1, 2])))).toBe(0);
    expect(r(await peer.request(PROC.ENVELOPE_DELETE, u32(7)))).toBe(0);
    expect((await peer.request(PROC.ENVELOPE_LOAD, Buffer.alloc(3))).len).toBe(16);
    expect(r(await peer.request(PROC.MESSAGE_COMMIT, u32(1)))).toBe(0);
    expect((await peer.request(99, Buffer.from('what'))).type).toBe(PROC.OK);
    const created = await peer.request(PROC.MESSAGE_CREATE);
    expect(r(created)).toBe(1);
    expect(await peer.close()).toBe(0);
  });

  test('survives random bytes on its socket and still exits only at EOF', async () => {
    const peer = await bridge('mx-noise');
    await init(peer);
    peer.writeRaw(randomBytes(5000));
    await sleep(300);
    expect(peer.child.exitCode).toBeNull();
    expect(await peer.close()).toBe(0);
  });

  test('without a usable configuration it still answers, with failures, until EOF', async () => {
    const peer = await bridge('mx-noconf', {}, null);
    await init(peer);
    expect(r(await peer.request(PROC.MESSAGE_CREATE))).toBe(0);
    expect(r(await peer.request(PROC.ENVELOPE_WALK))).toBe(-1);
    expect(await peer.close()).toBe(0);
  });

  test('ignores SIGTERM and SIGHUP and exits only when smtpd closes the socket', async () => {
    const peer = await bridge('mx-signals');
    await init(peer);
    peer.child.kill('SIGTERM');
    peer.child.kill('SIGHUP');
    await sleep(300);
    expect(peer.child.exitCode).toBeNull();
    expect(r(await peer.request(PROC.MESSAGE_CREATE))).toBe(1);
    expect(await peer.close()).toBe(0);
  });

  test('as an admin tool, shows the instances, the counts, the queued messages and a message', async () => {
    const peer = await bridge('mx-admin');
    await init(peer);
    await walkAll(peer);
    const { msgid, evpids } = await accept(peer, Buffer.from('Subject: admin\r\n\r\nbody\r\n'), ['a@example.test']);
    const admin = async (...args: string[]) => {
      const { stdout } = await promisify(execFile)(process.execPath, [BRIDGE, ...args, '--json'], { env: { ...process.env, QUEUE_TOKEN: TEST_TOKEN } });
      return JSON.parse(stdout);
    };
    const status = await admin('status', service.baseUrl);
    expect(status.instances).toContainEqual(expect.objectContaining({ instance: 'mx-admin', alive: true, walkDone: true }));
    expect(status.counts).toContainEqual({ owner: 'mx-admin', state: 'queued', messages: 1, oldestAt: expect.any(String) });
    expect(await admin('list', service.baseUrl, '--owner', 'mx-admin')).toEqual([{ msgid: msgidToHex(msgid), evpids: [evpidToHex(evpids[0])] }]);
    const shown = await admin('show', service.baseUrl, msgidToHex(msgid));
    expect(shown.message).toMatchObject({ msgid: msgidToHex(msgid), owner: 'mx-admin', state: 'queued' });
    expect(shown.envelopes.map((e: { evpid: string }) => e.evpid)).toEqual([evpidToHex(evpids[0])]);
    expect(await peer.close()).toBe(0);
  });

  test('speaks the 7.7 header layout when told to', async () => {
    const peer = await SmtpdPeer.start(
      service.baseUrl,
      { QUEUE_TOKEN: TEST_TOKEN, QUEUE_REST_INSTANCE: 'mx-77', QUEUE_REST_IMSG: '7.7', QUEUE_REST_LOG: path.join(logDir, 'mx-77.log'), QUEUE_REST_STATE: path.join(logDir, 'state') },
      '7.7',
    );
    peers.push(peer);
    await init(peer);
    const body = Buffer.from('Subject: 7.7\r\n\r\nbody\r\n');
    const created = await peer.request(PROC.MESSAGE_CREATE);
    const msgid = created.data.readUInt32LE(4);
    await peer.request(PROC.ENVELOPE_CREATE, Buffer.concat([u32(msgid), ENVELOPE('a@example.test')]));
    expect(r(await peer.request(PROC.MESSAGE_COMMIT, u32(msgid), bodyFd(body)))).toBe(1);
    const fd = await peer.request(PROC.MESSAGE_FD_R, u32(msgid));
    expect(readFd(fd.fd!).equals(body)).toBe(true);
    expect(await peer.close()).toBe(0);
  });
});
