import { closeSync, fstatSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DestinationStream } from 'pino';
import { Backend, type BackendOptions } from '../../bridge/backend';
import type { Discovered } from '../../bridge/discover';
import { WriteJournal } from '../../bridge/journal';
import { openOwnedFile } from '../../bridge/privileges';
import { dispatch, failureReply, PROC, type Reply } from '../../bridge/protocol';
import { badRequest, QueueError } from '../../lib/errors';
import { evpidFromHex, evpidToHex, msgidFromHex, msgidToHex, randomEvpid, randomMsgid, type Evpid, type Msgid } from '../../lib/ids';
import { createLogger } from '../../lib/log';
import { sha256hex } from '../../lib/rules';
import type { Envelope, QueueStore } from '../../lib/store';
import type { Queue } from '../../lib/queue';
import { memoryQueue } from '../support/stores';
import { FaultyStore } from '../support/faulty-store';
import { u32, u64 as u64le } from '../support/smtpd-peer';

/**
 * The bridge's Backend in process, as smtpd's calls reach it (through the
 * protocol layer, with a thrown failure answered as serve.ts answers it),
 * over the in-memory store behind a store that fails on demand: what smtpd
 * is answered while the service is down or hangs, how long it waits, and
 * what the queue holds once the service is back.
 */

const TIMEOUT_MS = 200;
const BUDGET_MS = 500;
/** No smtpd call may take longer: timeout + retry budget, and a little for the test's own work. */
const BOUND_MS = TIMEOUT_MS + BUDGET_MS + 250;
const OWNER = 'mx1';

const envelope = (rcpt: string, extra = '') => Buffer.from(`version: 3\ndispatcher: local\ntype: mda\nrcpt: ${rcpt}\nhelo: test\nhostname: test\n${extra}`);
const bounce = (rcpt: string) => envelope(rcpt, 'type: bounce\nbounce-type: failed\n');
const BODY = Buffer.from('Subject: hello\r\n\r\nHello, world.\r\n');

const u64 = (evpid: Evpid) => u64le(evpidFromHex(evpid));

/** smtpd's side: each call goes through dispatch, and a failure is answered as serve.ts answers it. */
class Smtpd {
  constructor(
    readonly backend: Backend,
    private readonly tmp: string,
  ) {}

  private async call(type: number, data: Buffer = Buffer.alloc(0), fd?: number): Promise<Reply> {
    try {
      return await dispatch(this.backend, { type, peerid: 0, pid: 1, data, fd });
    } catch {
      return failureReply(type);
    }
  }

  private async r(type: number, data?: Buffer, fd?: number): Promise<number> {
    return (await this.call(type, data, fd)).data.readInt32LE(0);
  }

  async init(): Promise<void> {
    expect((await this.call(PROC.INIT, u32(2))).data).toHaveLength(0);
  }

  async close(): Promise<number> {
    return this.r(PROC.CLOSE);
  }

  /** A msgid, or null for r=0. */
  async messageCreate(): Promise<Msgid | null> {
    const { data } = await this.call(PROC.MESSAGE_CREATE);
    return data.readInt32LE(0) === 1 ? msgidToHex(data.readUInt32LE(4)) : null;
  }

  /** An evpid, or null for r=0. */
  async envelopeCreate(msgid: Msgid, bytes: Buffer): Promise<Evpid | null> {
    const { data } = await this.call(PROC.ENVELOPE_CREATE, Buffer.concat([u32(msgidFromHex(msgid)), bytes]));
    return data.readInt32LE(0) === 1 ? evpidToHex(data.readBigUInt64LE(4)) : null;
  }

  async messageCommit(msgid: Msgid, body = BODY): Promise<number> {
    const file = path.join(mkdtempSync(path.join(this.tmp, 'body-')), msgid);
    writeFileSync(file, body);
    return this.r(PROC.MESSAGE_COMMIT, u32(msgidFromHex(msgid)), openSync(file, 'r'));
  }

  async messageDelete(msgid: Msgid): Promise<number> {
    return this.r(PROC.MESSAGE_DELETE, u32(msgidFromHex(msgid)));
  }

  /** The body behind the fd handed out, or null for no fd. */
  async messageFd(msgid: Msgid): Promise<Buffer | null> {
    const reply = await this.call(PROC.MESSAGE_FD_R, u32(msgidFromHex(msgid)));
    if (reply.fd === undefined) return null;
    const body = Buffer.alloc(fstatSync(reply.fd).size);
    for (let at = 0; at < body.length; ) at += readSync(reply.fd, body, at, body.length - at, at);
    closeSync(reply.fd);
    return body;
  }

  /** The LOAD answer: the envelope's bytes, or empty. */
  async envelopeLoad(evpid: Evpid): Promise<Buffer> {
    return (await this.call(PROC.ENVELOPE_LOAD, u64(evpid))).data;
  }

  async envelopeUpdate(evpid: Evpid, bytes: Buffer): Promise<number> {
    return this.r(PROC.ENVELOPE_UPDATE, Buffer.concat([u64(evpid), bytes]));
  }

  async envelopeDelete(evpid: Evpid): Promise<number> {
    return this.r(PROC.ENVELOPE_DELETE, u64(evpid));
  }

  async envelopeWalk(): Promise<Envelope | 'again' | 'done'> {
    const { data } = await this.call(PROC.ENVELOPE_WALK);
    const r = data.readInt32LE(0);
    if (r === 0) return 'again';
    if (r === -1) return 'done';
    return { evpid: evpidToHex(data.readBigUInt64LE(4)), data: data.subarray(12) };
  }

  async walkAll(): Promise<Envelope[]> {
    const walked: Envelope[] = [];
    for (let i = 0; i < 1000; i++) {
      const next = await this.envelopeWalk();
      if (next === 'done') return walked;
      if (next !== 'again') walked.push(next);
    }
    throw new Error('the walk never ended');
  }

  /** MESSAGE_CREATE, an ENVELOPE_CREATE per recipient, MESSAGE_COMMIT. */
  async accept(recipients: string[]): Promise<{ msgid: Msgid; evpids: Evpid[] }> {
    const msgid = await this.messageCreate();
    if (!msgid) throw new Error('MESSAGE_CREATE failed');
    const evpids: Evpid[] = [];
    for (const rcpt of recipients) evpids.push((await this.envelopeCreate(msgid, envelope(rcpt)))!);
    expect(await this.messageCommit(msgid)).toBe(1);
    return { msgid, evpids };
  }
}

interface Bridge {
  smtpd: Smtpd;
  backend: Backend;
  store: FaultyStore;
  inner: Queue;
  tmp: string;
  /** The bridge's log lines. */
  logs: { severity: string; message: string }[];
}

const started: Bridge[] = [];

afterEach(async () => {
  for (const { store, backend, tmp } of started.splice(0)) {
    store.heal();
    await backend.close();
    rmSync(tmp, { recursive: true, force: true });
  }
});

/** A bridge over `inner` (a fresh queue by default), not yet initialized. */
function bridge(inner = memoryQueue(), options: Partial<BackendOptions> = {}): Bridge {
  const store = new FaultyStore(inner);
  const tmp = mkdtempSync(path.join(tmpdir(), 'backend-test-'));
  const logs: Bridge['logs'] = [];
  const destination = { write: (line: string) => void logs.push(JSON.parse(line)) } as unknown as DestinationStream;
  const backend = new Backend({
    store,
    owner: OWNER,
    log: createLogger({ level: 'debug', destination }),
    tmpDir: tmp,
    timeoutMs: TIMEOUT_MS,
    retryBudgetMs: BUDGET_MS,
    writeRetryMs: 20,
    ...options,
  });
  const b = { smtpd: new Smtpd(backend, tmp), backend, store, inner, tmp, logs };
  started.push(b);
  return b;
}

/** A bridge that has answered INIT and walked the queue. */
async function running(inner?: Queue, options?: Partial<BackendOptions>): Promise<Bridge & { walked: Envelope[] }> {
  const b = bridge(inner, options);
  await b.smtpd.init();
  return { ...b, walked: await b.smtpd.walkAll() };
}

/** A message committed straight into the store, as an earlier run of the bridge left it. */
async function seed(store: QueueStore, recipients: string[]): Promise<{ msgid: Msgid; envelopes: Envelope[] }> {
  const msgid = randomMsgid();
  const envelopes = recipients.map((rcpt) => ({ evpid: randomEvpid(msgid), data: envelope(rcpt) }));
  await store.messageCommit({ msgid, owner: OWNER, size: BODY.length, sha256: sha256hex(BODY), body: BODY, envelopes });
  return { msgid, envelopes };
}

/** Runs one smtpd call and checks that it was answered within timeout + retry budget. */
async function answered<T>(what: string, call: Promise<T>): Promise<T> {
  const t0 = performance.now();
  const value = await call;
  const ms = Math.round(performance.now() - t0);
  if (ms >= BOUND_MS) throw new Error(`${what} was answered after ${ms} ms, over the ${BOUND_MS} ms bound`);
  return value;
}

async function until(what: string, check: () => boolean | Promise<boolean>, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`still not so after ${ms} ms: ${what}`);
    await sleep(10);
  }
}

/** A lease short enough for a test to let it lapse. */
const SHORT_LEASE_MS = 400;

/**
 * The bridge's lease lapses: its renewals fail for longer than half a lease
 * (and than a whole one, so that another instance may take its mail over).
 * The service is otherwise up. Renewals work again after `heal`.
 */
async function lapse(b: Bridge): Promise<void> {
  b.store.fail('instanceHeartbeat');
  await sleep(SHORT_LEASE_MS * 1.2);
}

const settled = (b: Bridge) => until('the background writes are done', () => b.backend.pendingWrites === 0);

describe('ENVELOPE_LOAD while the service does not answer', () => {
  test('answers a walked envelope from the local copy', async () => {
    const inner = memoryQueue();
    const { envelopes } = await seed(inner, ['a@example.test', 'b@example.test']);
    const b = await running(inner);
    expect(b.walked).toHaveLength(2);
    b.store.fail();
    for (const e of envelopes) expect(await b.smtpd.envelopeLoad(e.evpid)).toEqual(e.data);
  });

  test('answers an envelope committed through the bridge from the local copy', async () => {
    const b = await running();
    const { evpids } = await b.smtpd.accept(['a@example.test', 'b@example.test']);
    b.store.fail();
    expect(await b.smtpd.envelopeLoad(evpids[0])).toEqual(envelope('a@example.test'));
    expect(await b.smtpd.envelopeLoad(evpids[1])).toEqual(envelope('b@example.test'));
  });

  test('answers the last bytes of an updated envelope, whether the update landed or was written behind', async () => {
    const b = await running();
    const [evpid] = (await b.smtpd.accept(['a@example.test'])).evpids;
    const first = envelope('a@example.test', 'retry: 1\n');
    const second = envelope('a@example.test', 'retry: 2\n');
    expect(await b.smtpd.envelopeUpdate(evpid, first)).toBe(1);
    b.store.fail();
    expect(await b.smtpd.envelopeLoad(evpid)).toEqual(first);
    expect(await b.smtpd.envelopeUpdate(evpid, second)).toBe(1);
    expect(await b.smtpd.envelopeLoad(evpid)).toEqual(second);
    b.store.heal();
    await settled(b);
    expect(await b.inner.envelopeLoad(evpid)).toEqual(second);
    expect(await b.smtpd.envelopeLoad(evpid)).toEqual(second);
  });

  test('answers a bounce, whether it was created before the outage or during it', async () => {
    const b = await running();
    const { msgid } = await b.smtpd.accept(['a@example.test']);
    const before = (await b.smtpd.envelopeCreate(msgid, bounce('before@example.test')))!;
    expect(before).not.toBeNull();
    b.store.fail();
    const during = (await b.smtpd.envelopeCreate(msgid, bounce('during@example.test')))!;
    expect(during).not.toBeNull();
    expect(during.slice(0, 8)).toBe(msgid);
    expect(await b.smtpd.envelopeLoad(before)).toEqual(bounce('before@example.test'));
    expect(await b.smtpd.envelopeLoad(during)).toEqual(bounce('during@example.test'));
    b.store.heal();
    await settled(b);
    expect(await b.inner.envelopeLoad(during)).toEqual(bounce('during@example.test'));
  });

  test.each([
    ['the service unreachable', () => new QueueError('unavailable', 'envelopeLoad did not answer: connect ECONNREFUSED', {})],
    ['a 503', () => new QueueError('unavailable', 'envelopeLoad answered 503', { status: 503 })],
    ['a connection reset', () => new Error('socket hang up')],
    ['a refused credential', () => new QueueError('unauthorized', 'bad token')],
  ])('answers from the local copy on %s, which says nothing of the envelope', async (_fault, error) => {
    const b = await running(undefined, { leaseMs: SHORT_LEASE_MS });
    const [evpid] = (await b.smtpd.accept(['a@example.test'])).evpids;
    await lapse(b); // else the copy answers without asking
    b.store.error = error;
    b.store.failNext('envelopeLoad', 1);
    expect(await b.smtpd.envelopeLoad(evpid)).toEqual(envelope('a@example.test'));
    expect(b.store.calls('envelopeLoad')).toBe(1);
  });

  test('answers from the local copy within timeout + retry budget when the request hangs', async () => {
    const b = await running(undefined, { leaseMs: SHORT_LEASE_MS });
    const [evpid] = (await b.smtpd.accept(['a@example.test'])).evpids;
    await lapse(b);
    b.store.hang('envelopeLoad');
    expect(await answered('LOAD', b.smtpd.envelopeLoad(evpid))).toEqual(envelope('a@example.test'));
  });
});

describe('ENVELOPE_LOAD while the lease holds', () => {
  test('costs no request for an envelope the bridge walked, committed, updated or created', async () => {
    const inner = memoryQueue();
    const { envelopes } = await seed(inner, ['walked@example.test']);
    const b = await running(inner);
    const { msgid, evpids } = await b.smtpd.accept(['a@example.test']);
    const updated = envelope('a@example.test', 'retry: 1\n');
    expect(await b.smtpd.envelopeUpdate(evpids[0], updated)).toBe(1);
    const notice = (await b.smtpd.envelopeCreate(msgid, bounce('bounce@example.test')))!;
    expect(await b.smtpd.envelopeLoad(envelopes[0].evpid)).toEqual(envelopes[0].data);
    expect(await b.smtpd.envelopeLoad(evpids[0])).toEqual(updated);
    expect(await b.smtpd.envelopeLoad(notice)).toEqual(bounce('bounce@example.test'));
    expect(b.store.calls('envelopeLoad')).toBe(0);
  });

  test('asks the service for an envelope it learnt of before the lease held, and only once', async () => {
    const inner = memoryQueue();
    const { envelopes } = await seed(inner, ['a@example.test']);
    const b = bridge(inner);
    b.store.failNext('instanceHeartbeat', 1); // the walk runs before the lease holds
    await b.smtpd.init();
    expect(await b.smtpd.walkAll()).toHaveLength(1);
    await until('the lease to hold', () => b.backend.leaseSure, 20_000);
    expect(await b.smtpd.envelopeLoad(envelopes[0].evpid)).toEqual(envelopes[0].data);
    expect(await b.smtpd.envelopeLoad(envelopes[0].evpid)).toEqual(envelopes[0].data);
    expect(b.store.calls('envelopeLoad')).toBe(1);
  });
});

describe('MESSAGE_FD_R after the lease lapsed', () => {
  test('renews the lease at once when the service is back, instead of waiting for the next renewal', async () => {
    const b = await running(undefined, { leaseMs: 4_000 });
    const { msgid } = await b.smtpd.accept(['a@example.test']);
    b.store.fail('instanceHeartbeat');
    await until('the lease to lapse', () => !b.backend.leaseSure, 5_000);
    expect(await b.smtpd.messageFd(msgid)).toBeNull();
    await sleep(1_100); // deliveries renew at most once a second
    b.store.heal();
    // the timer would renew up to a second from now
    const t0 = performance.now();
    expect(await b.smtpd.messageFd(msgid)).toEqual(BODY);
    expect(performance.now() - t0).toBeLessThan(100);
  });
});

describe('ENVELOPE_LOAD answers empty only for an envelope that is gone or no longer ours', () => {
  test('an envelope smtpd deleted, before and after its delete lands, with the service up or down', async () => {
    const b = await running();
    const [deleted, kept] = (await b.smtpd.accept(['a@example.test', 'b@example.test'])).evpids;
    b.store.hang('envelopeDelete');
    expect(await b.smtpd.envelopeDelete(deleted)).toBe(1);
    expect(await b.smtpd.envelopeLoad(deleted)).toHaveLength(0);
    b.store.release();
    await settled(b);
    expect(await b.smtpd.envelopeLoad(deleted)).toHaveLength(0);
    b.store.fail();
    expect(await b.smtpd.envelopeLoad(deleted)).toHaveLength(0);
    expect(await b.smtpd.envelopeLoad(kept)).toEqual(envelope('b@example.test'));
  });

  test('an envelope another instance has taken over while the lease had lapsed, and the copy forgets it', async () => {
    const b = await running(undefined, { leaseMs: SHORT_LEASE_MS });
    const [evpid, other] = (await b.smtpd.accept(['a@example.test', 'b@example.test'])).evpids;
    // this instance's renewals fail for a whole lease, and mx2 claims its mail
    await lapse(b);
    expect((await b.inner.queueTakeover('mx2')).claimed).toHaveLength(1);
    // the lease holds again: what the copy knew from before the lapse is not trusted
    b.store.heal();
    await until('the lease to hold again', () => b.backend.leaseSure);
    expect(await b.smtpd.envelopeLoad(evpid)).toHaveLength(0);
    b.store.fail();
    expect(await b.smtpd.envelopeLoad(evpid)).toHaveLength(0);
    // the other envelope of the message, not asked about yet: the copy answers while the service does not
    expect(await b.smtpd.envelopeLoad(other)).toEqual(envelope('b@example.test'));
  });

  test('an envelope the service says is gone, asked once the lease has lapsed, and the copy forgets it', async () => {
    const b = await running(undefined, { leaseMs: SHORT_LEASE_MS });
    const [evpid] = (await b.smtpd.accept(['a@example.test', 'b@example.test'])).evpids;
    await b.inner.envelopeDelete(evpid); // removed behind the bridge's back
    await lapse(b);
    expect(await b.smtpd.envelopeLoad(evpid)).toHaveLength(0);
    b.store.fail();
    expect(await b.smtpd.envelopeLoad(evpid)).toHaveLength(0);
  });

  test('an envelope the bridge never knew, while the service is down, with an error in the log that says why', async () => {
    const b = await running();
    b.store.fail();
    expect(await b.smtpd.envelopeLoad(randomEvpid(randomMsgid()))).toHaveLength(0);
    expect(b.logs.some((l) => l.severity === 'ERROR' && /local copy does not have it/.test(l.message))).toBe(true);
  });
});

describe('ENVELOPE_UPDATE never makes smtpd forget an envelope', () => {
  test('an update that does not land in time is answered 1 within timeout + retry budget, and lands once the service is back', async () => {
    const b = await running();
    const [evpid] = (await b.smtpd.accept(['a@example.test'])).evpids;
    const updated = envelope('a@example.test', 'retry: 1\n');
    b.store.hang('envelopeUpdate');
    expect(await answered('UPDATE', b.smtpd.envelopeUpdate(evpid, updated))).toBe(1);
    b.store.hang('envelopeLoad');
    expect(await answered('LOAD', b.smtpd.envelopeLoad(evpid))).toEqual(updated);
    b.store.release();
    await settled(b);
    expect(await b.inner.envelopeLoad(evpid)).toEqual(updated);
  });

  test('updates written behind land in order: the service ends with the last one', async () => {
    const b = await running();
    const [evpid] = (await b.smtpd.accept(['a@example.test'])).evpids;
    b.store.hang('envelopeUpdate');
    for (let retry = 1; retry <= 3; retry++) {
      expect(await answered(`UPDATE ${retry}`, b.smtpd.envelopeUpdate(evpid, envelope('a@example.test', `retry: ${retry}\n`)))).toBe(1);
    }
    expect(await b.smtpd.envelopeLoad(evpid)).toEqual(envelope('a@example.test', 'retry: 3\n'));
    b.store.release();
    await settled(b);
    expect(await b.inner.envelopeLoad(evpid)).toEqual(envelope('a@example.test', 'retry: 3\n'));
  });

  test('an update of an envelope the bridge does not know is answered 0 while the service is down', async () => {
    const b = await running();
    b.store.fail();
    expect(await b.smtpd.envelopeUpdate(randomEvpid(randomMsgid()), envelope('x@example.test'))).toBe(0);
  });

  test('an update of an envelope that is gone is answered 0, and LOAD then answers empty', async () => {
    const b = await running();
    const [evpid] = (await b.smtpd.accept(['a@example.test', 'b@example.test'])).evpids;
    await b.inner.envelopeDelete(evpid);
    expect(await b.smtpd.envelopeUpdate(evpid, envelope('a@example.test', 'retry: 1\n'))).toBe(0);
    b.store.fail();
    expect(await b.smtpd.envelopeLoad(evpid)).toHaveLength(0);
  });
});

describe('every smtpd call is answered within timeout + retry budget, whatever the service does', () => {
  test('INIT, WALK and CLOSE while every request hangs; the walk goes on once the service is back', async () => {
    const inner = memoryQueue();
    const { envelopes } = await seed(inner, ['a@example.test']);
    const b = bridge(inner, { initWaitMs: 60_000 });
    b.store.hang();
    await answered('INIT', b.smtpd.init());
    for (let i = 0; i < 3; i++) expect(await answered('WALK', b.smtpd.envelopeWalk())).toBe('again');
    b.store.release();
    expect(await b.smtpd.walkAll()).toEqual(envelopes);
    b.store.hang();
    expect(await answered('DELETE', b.smtpd.envelopeDelete(envelopes[0].evpid))).toBe(1);
    expect(await answered('CLOSE', b.smtpd.close())).toBe(1);
  });

  test('every call of a reception, a delivery and a bounce while every request hangs; nothing is lost once it is back', async () => {
    const inner = memoryQueue();
    const walked = await seed(inner, ['w@example.test']);
    const b = await running(inner);
    const accepted = await b.smtpd.accept(['a@example.test', 'b@example.test']);
    b.store.hang();

    // a reception that fails: its commit hangs, smtpd rolls it back
    const msgid = (await answered('MESSAGE_CREATE', b.smtpd.messageCreate()))!;
    expect(msgid).not.toBeNull();
    expect(await answered('ENVELOPE_CREATE', b.smtpd.envelopeCreate(msgid, envelope('c@example.test')))).not.toBeNull();
    expect(await answered('MESSAGE_COMMIT', b.smtpd.messageCommit(msgid))).toBe(0);
    expect(await answered('MESSAGE_DELETE', b.smtpd.messageDelete(msgid))).toBe(0);

    // deliveries: a body just committed is at hand, a walked one is not
    expect(await answered('MESSAGE_FD_R', b.smtpd.messageFd(accepted.msgid))).toEqual(BODY);
    expect(await answered('MESSAGE_FD_R', b.smtpd.messageFd(walked.msgid))).toBeNull();
    const w = walked.envelopes[0].evpid;
    expect(await answered('ENVELOPE_LOAD', b.smtpd.envelopeLoad(w))).toEqual(envelope('w@example.test'));
    const tempfailed = envelope('w@example.test', 'retry: 1\n');
    expect(await answered('ENVELOPE_UPDATE', b.smtpd.envelopeUpdate(w, tempfailed))).toBe(1);
    const [delivered, failed] = accepted.evpids;
    expect(await answered('ENVELOPE_DELETE', b.smtpd.envelopeDelete(delivered))).toBe(1);

    // a permanent failure: the bounce, then the delete of the envelope that bounced
    const bounced = (await answered('ENVELOPE_CREATE (bounce)', b.smtpd.envelopeCreate(accepted.msgid, bounce('b@example.test'))))!;
    expect(bounced).not.toBeNull();
    expect(await answered('ENVELOPE_DELETE', b.smtpd.envelopeDelete(failed))).toBe(1);
    // and a delay notice on the walked message, whose update is still pending
    const notice = (await answered('ENVELOPE_CREATE (delay)', b.smtpd.envelopeCreate(walked.msgid, bounce('w@example.test'))))!;
    expect(notice).not.toBeNull();

    // the msgids reserved ahead run out, and the reservation hangs
    let created: Msgid | null;
    do created = await answered('MESSAGE_CREATE', b.smtpd.messageCreate());
    while (created);

    b.store.release();
    await settled(b);
    await expect(b.inner.messageWalk(msgid)).rejects.toMatchObject({ code: 'not_found' });
    expect(await b.inner.envelopeLoad(w)).toEqual(tempfailed);
    expect(await b.inner.envelopeLoad(notice)).toEqual(bounce('w@example.test'));
    const original = await b.inner.messageWalk(accepted.msgid);
    expect(original.items).toEqual([{ evpid: bounced, data: bounce('b@example.test') }]);

    b.store.hang();
    expect(await answered('ENVELOPE_DELETE', b.smtpd.envelopeDelete(bounced))).toBe(1);
    expect(await answered('CLOSE', b.smtpd.close())).toBe(1);
  });

  test('ENVELOPE_DELETE answered only once the service has it (async-delete no) is bounded too, and retried behind', async () => {
    const b = await running(undefined, { asyncDelete: false });
    const [evpid, other] = (await b.smtpd.accept(['a@example.test', 'b@example.test'])).evpids;
    b.store.hang('envelopeDelete');
    expect(await answered('ENVELOPE_DELETE', b.smtpd.envelopeDelete(evpid))).toBe(0);
    b.store.release();
    await settled(b);
    await expect(b.inner.envelopeLoad(evpid)).rejects.toMatchObject({ code: 'not_found' });
    expect(await b.smtpd.envelopeDelete(other)).toBe(1);
  });
});

describe('a rollback is final', () => {
  test('a commit that hung and lands after the rollback does not bring the message back', async () => {
    const b = await running();
    const msgid = (await b.smtpd.messageCreate())!;
    await b.smtpd.envelopeCreate(msgid, envelope('a@example.test'));
    b.store.hang('messageCommit');
    expect(await answered('MESSAGE_COMMIT', b.smtpd.messageCommit(msgid))).toBe(0);
    // the rollback does not wait for the commit: it lands at once, and its tombstone refuses the late commit
    expect(await answered('MESSAGE_DELETE', b.smtpd.messageDelete(msgid))).toBe(1);
    b.store.release();
    await settled(b);
    expect(b.store.calls('messageCommit')).toBe(1);
    await expect(b.inner.messageWalk(msgid)).rejects.toMatchObject({ code: 'not_found' });
    const next = await running(b.inner);
    expect(next.walked).toEqual([]);
  });

  test('a commit answered as failed is rolled back by the bridge itself (smtpd sends no MESSAGE_DELETE then): when it lands late, it is refused', async () => {
    const b = await running();
    const msgid = (await b.smtpd.messageCreate())!;
    await b.smtpd.envelopeCreate(msgid, envelope('a@example.test'));
    b.store.hang('messageCommit');
    expect(await answered('MESSAGE_COMMIT', b.smtpd.messageCommit(msgid))).toBe(0);
    b.store.release();
    await settled(b);
    await expect(b.inner.messageWalk(msgid)).rejects.toMatchObject({ code: 'not_found' });
    const next = await running(b.inner);
    expect(next.walked).toEqual([]);
  });

  test('a rollback that fails is retried in the background until it lands', async () => {
    const b = await running();
    const msgid = (await b.smtpd.messageCreate())!;
    await b.smtpd.envelopeCreate(msgid, envelope('a@example.test'));
    b.store.fail('messageCommit', 'messageDelete');
    expect(await b.smtpd.messageCommit(msgid)).toBe(0);
    expect(await b.smtpd.messageDelete(msgid)).toBe(0);
    await until('the rollback was retried', () => b.store.calls('messageDelete') >= 3);
    expect((await b.inner.messageWalk(msgid)).message.state).toBe('incoming');
    b.store.heal();
    await settled(b);
    await expect(b.inner.messageWalk(msgid)).rejects.toMatchObject({ code: 'not_found' });
  });
});

describe('a bridge killed before its background writes land: the next start replays them from the journal', () => {
  const journalDir = () => mkdtempSync(path.join(tmpdir(), 'journal-test-'));
  /** The journal as the bridge opens it at start, with what earlier runs left in it. */
  const journal = (file: string) => WriteJournal.read(openOwnedFile(file, undefined, { mode: 0o600, append: true, read: true }), createLogger({ level: 'silent' }));
  const walkedIds = (b: { walked: Envelope[] }) => b.walked.map((e) => e.evpid).sort();

  test('envelopes deleted after delivery are deleted, and never walked (so never delivered) again', async () => {
    const file = path.join(journalDir(), 'mx1.journal');
    const first = await running(undefined, { journal: journal(file) });
    const { evpids } = await first.smtpd.accept(['a@example.test', 'b@example.test', 'c@example.test']);
    first.store.fail(); // the service goes away; then the bridge is SIGKILLed, its background writes undone
    expect(await first.smtpd.envelopeDelete(evpids[0])).toBe(1);
    expect(await first.smtpd.envelopeDelete(evpids[1])).toBe(1);
    const second = await running(first.inner, { journal: journal(file) });
    expect(walkedIds(second)).toEqual([evpids[2]]);
    await settled(second);
    expect((await first.inner.envelopeWalk({ owner: OWNER })).items.map((e) => e.evpid)).toEqual([evpids[2]]);
    // nothing pending: the journal is empty again
    expect(readFileSync(file)).toHaveLength(0);
  });

  test('a bounce smtpd was told exists is created, with the latest bytes of its updates, and walked', async () => {
    const file = path.join(journalDir(), 'mx1.journal');
    const first = await running(undefined, { journal: journal(file) });
    const { msgid, evpids } = await first.smtpd.accept(['a@example.test']);
    first.store.fail();
    const bounced = (await answered('ENVELOPE_CREATE (bounce)', first.smtpd.envelopeCreate(msgid, bounce('a@example.test'))))!;
    expect(bounced).not.toBeNull();
    expect(await first.smtpd.envelopeDelete(evpids[0])).toBe(1);
    const retried = bounce('a@example.test').toString() + 'retry: 1\n';
    expect(await first.smtpd.envelopeUpdate(bounced, Buffer.from(retried))).toBe(1);
    const second = await running(first.inner, { journal: journal(file) });
    expect(second.walked).toEqual([{ evpid: bounced, data: Buffer.from(retried) }]);
    expect(await second.smtpd.messageFd(msgid)).toEqual(BODY);
  });

  test('the rollback of a commit answered as failed, which landed late, lands: the message is not walked', async () => {
    const file = path.join(journalDir(), 'mx1.journal');
    const first = await running(undefined, { journal: journal(file) });
    const msgid = (await first.smtpd.messageCreate())!;
    await first.smtpd.envelopeCreate(msgid, envelope('a@example.test'));
    first.store.hang('messageCommit');
    first.store.fail('messageDelete');
    expect(await answered('MESSAGE_COMMIT', first.smtpd.messageCommit(msgid))).toBe(0);
    first.store.release(); // the commit lands after all; its rollback does not
    await until('the late commit landed', async () => (await first.inner.messageWalk(msgid)).message.state === 'queued');
    const second = await running(first.inner, { journal: journal(file) });
    expect(second.walked).toEqual([]);
    await expect(first.inner.messageWalk(msgid)).rejects.toMatchObject({ code: 'not_found' });
  });

  test('a write the journal cannot keep is not answered as done', async () => {
    const full = WriteJournal.read(openSync('/dev/full', 'r+'), createLogger({ level: 'silent' }));
    const b = await running(undefined, { journal: full });
    const { msgid, evpids } = await b.smtpd.accept(['a@example.test', 'b@example.test']);
    b.store.fail();
    expect(await answered('ENVELOPE_DELETE', b.smtpd.envelopeDelete(evpids[0]))).toBe(0);
    expect(await answered('ENVELOPE_CREATE (bounce)', b.smtpd.envelopeCreate(msgid, bounce('b@example.test')))).toBeNull();
    expect(await answered('ENVELOPE_UPDATE', b.smtpd.envelopeUpdate(evpids[1], envelope('b@example.test', 'retry: 1\n')))).toBe(0);
    expect(b.logs.some((l) => l.severity === 'ERROR' && /cannot keep a pending write in the journal/.test(l.message))).toBe(true);
  });
});

describe('a bounce on a message whose envelope deletes are still pending', () => {
  test('lands, and the message lives on until the bounce itself is deleted', async () => {
    const b = await running();
    const { msgid, evpids } = await b.smtpd.accept(['a@example.test', 'b@example.test']);
    const [delivered, failed] = evpids;
    b.store.hang('envelopeDelete');
    expect(await b.smtpd.envelopeDelete(delivered)).toBe(1);
    const bounced = (await answered('ENVELOPE_CREATE (bounce)', b.smtpd.envelopeCreate(msgid, bounce('b@example.test'))))!;
    expect(bounced).not.toBeNull();
    expect(await b.smtpd.envelopeDelete(failed)).toBe(1);
    expect(await b.smtpd.envelopeLoad(bounced)).toEqual(bounce('b@example.test'));
    b.store.release();
    await settled(b);
    expect((await b.inner.messageWalk(msgid)).items).toEqual([{ evpid: bounced, data: bounce('b@example.test') }]);
    expect(await b.smtpd.messageFd(msgid)).toEqual(BODY);
    expect(await b.smtpd.envelopeDelete(bounced)).toBe(1);
    await settled(b);
    await expect(b.inner.messageWalk(msgid)).rejects.toMatchObject({ code: 'not_found' });
  });
});

describe('envelope deletes of one message go in fewer requests', () => {
  const rcpts = (n: number) => Array.from({ length: n }, (_, i) => `r${i}@example.test`);

  test('deletes waiting behind the first of a message go in one request; the message goes with the last', async () => {
    const b = await running();
    const { msgid, evpids } = await b.smtpd.accept(rcpts(10));
    b.store.hang('envelopeDelete');
    for (const evpid of evpids) expect(await b.smtpd.envelopeDelete(evpid)).toBe(1);
    b.store.release();
    await settled(b);
    // the first, sent at once, then the nine that waited behind it
    expect(b.store.calls('envelopeDelete')).toBe(2);
    await expect(b.inner.messageWalk(msgid)).rejects.toMatchObject({ code: 'not_found' });
  });

  test('a delete smtpd made after a bounce is not sent with the deletes before it: the bounce lands before the last envelope goes', async () => {
    const b = await running();
    const { msgid, evpids } = await b.smtpd.accept(rcpts(3));
    b.store.hang('envelopeDelete');
    expect(await b.smtpd.envelopeDelete(evpids[0])).toBe(1);
    expect(await b.smtpd.envelopeDelete(evpids[1])).toBe(1);
    const bounced = (await b.smtpd.envelopeCreate(msgid, bounce('r2@example.test')))!;
    expect(await b.smtpd.envelopeDelete(evpids[2])).toBe(1);
    b.store.release();
    await settled(b);
    expect((await b.inner.messageWalk(msgid)).items).toEqual([{ evpid: bounced, data: bounce('r2@example.test') }]);
  });

  test('a service that takes one envelope per delete (an older version) gets them one at a time', async () => {
    const inner = memoryQueue();
    const oneAtATime = inner.envelopesDelete.bind(inner);
    inner.envelopesDelete = async (evpids, check) => {
      if (evpids.length > 1) throw new QueueError('bad_request', 'invalid request', {});
      return oneAtATime(evpids, check);
    };
    const b = await running(inner);
    const { msgid, evpids } = await b.smtpd.accept(rcpts(4));
    b.store.hang('envelopeDelete');
    for (const evpid of evpids) expect(await b.smtpd.envelopeDelete(evpid)).toBe(1);
    b.store.release();
    await settled(b);
    await expect(b.inner.messageWalk(msgid)).rejects.toMatchObject({ code: 'not_found' });
  });
});

describe('the local copy of envelopes', () => {
  test('keeps what is past its memory budget in a spill file that leaves nothing on disk, and answers from it', async () => {
    const inner = memoryQueue();
    const seeded = await seed(inner, Array.from({ length: 20 }, (_, i) => `walked${i}@example.test`));
    const b = await running(inner, { envelopeMemoryBytes: 4_000 });
    const accepted = await b.smtpd.accept(Array.from({ length: 20 }, (_, i) => `accepted${i}@example.test`));
    expect(b.backend.localEnvelopes.envelopes).toBe(40);
    expect(b.backend.localEnvelopes.spilled).toBeGreaterThan(20);
    expect(readdirSync(b.tmp).filter((name) => name.startsWith('queue-rest-envelopes-'))).toEqual([]);

    b.store.fail();
    for (const e of seeded.envelopes) expect(await b.smtpd.envelopeLoad(e.evpid)).toEqual(e.data);
    for (const [i, evpid] of accepted.evpids.entries()) expect(await b.smtpd.envelopeLoad(evpid)).toEqual(envelope(`accepted${i}@example.test`));
    // spilled envelopes change size and go, and their slots are used again
    for (const [i, e] of seeded.envelopes.entries()) {
      const longer = envelope(`walked${i}@example.test`, `errorline: ${'x'.repeat(300 + i * 10)}\n`);
      expect(await b.smtpd.envelopeUpdate(e.evpid, longer)).toBe(1);
      expect(await b.smtpd.envelopeLoad(e.evpid)).toEqual(longer);
    }
    for (const evpid of accepted.evpids.slice(0, 10)) expect(await b.smtpd.envelopeDelete(evpid)).toBe(1);
    for (const [i, evpid] of accepted.evpids.slice(10).entries()) {
      expect(await b.smtpd.envelopeLoad(evpid)).toEqual(envelope(`accepted${i + 10}@example.test`));
    }
    expect(b.backend.localEnvelopes.envelopes).toBe(30);
  });
});

describe('reconcile: nothing this instance owns stays unknown to its smtpd', () => {
  /** A stand-in for the root helper that runs `smtpctl discover`: it records what it is asked, and answers as told. */
  function discoverer(answer: (evpid: Evpid) => Discovered = () => 'ok') {
    const asked: Evpid[] = [];
    return { asked, discover: async (evpid: Evpid) => (asked.push(evpid), answer(evpid)) };
  }

  /** Messages of a dead instance, claimed for OWNER behind smtpd's back (as `queue-rest takeover` does). */
  async function claimedBehindItsBack(inner: Queue, count: number): Promise<Evpid[]> {
    const evpids = await orphansOf(inner, count);
    await sleep(5);
    const { claimed } = await inner.queueTakeover(OWNER);
    expect(claimed.flatMap((c) => c.evpids).sort()).toEqual([...evpids].sort());
    return evpids;
  }

  test('hands smtpd each envelope claimed for this instance after its walk, once, and none it has already', async () => {
    const inner = memoryQueue();
    const walked = await seed(inner, ['walked@example.test']);
    const fake = discoverer();
    const b = await running(inner, { discoverer: fake });
    const accepted = await b.smtpd.accept(['live@example.test']);
    const orphans = await claimedBehindItsBack(inner, 3);
    b.backend.reconcile();
    await waitFor(() => fake.asked.length >= 3);
    b.backend.reconcile();
    await sleep(50);
    expect([...fake.asked].sort()).toEqual([...orphans].sort());
    expect(fake.asked).not.toContain(walked.envelopes[0].evpid);
    expect(fake.asked).not.toContain(accepted.evpids[0]);
    // smtpd then loads them: from the service, or the copy when it is down
    b.store.fail();
    for (const evpid of orphans) expect(await b.smtpd.envelopeLoad(evpid)).toEqual(envelope(`orphan${orphans.indexOf(evpid)}@example.test`));
  });

  test('tries again an envelope smtpctl could not discover, but never one that may have reached smtpd', async () => {
    const inner = memoryQueue();
    let failing = true;
    const fake = discoverer((evpid) => (evpid === unknownOne ? 'unknown' : failing ? 'fail' : 'ok'));
    let unknownOne: Evpid | undefined;
    const b = await running(inner, { discoverer: fake });
    const orphans = await claimedBehindItsBack(inner, 2);
    unknownOne = orphans[0];
    b.backend.reconcile();
    await waitFor(() => fake.asked.length >= 2);
    failing = false;
    b.backend.reconcile();
    await waitFor(() => fake.asked.length >= 3);
    await sleep(50);
    expect(fake.asked.filter((e) => e === orphans[1])).toHaveLength(2);
    expect(fake.asked.filter((e) => e === orphans[0])).toHaveLength(1);
  });

  test('checks after the walk: an envelope a wrong walk page left out is handed to smtpd a few seconds later', async () => {
    const inner = memoryQueue();
    const missed = await seed(inner, ['missed@example.test']);
    // the storage answers the walk's first page empty, as the legacy emulator did once while it restarted
    const walk = inner.envelopeWalk.bind(inner);
    let wrong = true;
    inner.envelopeWalk = async (page) => (wrong ? ((wrong = false), { items: [], cursor: null }) : walk(page));
    const fake = discoverer();
    const b = await running(inner, { discoverer: fake });
    expect(b.walked).toHaveLength(0);
    await waitFor(() => fake.asked.length >= 1, 10_000);
    expect(fake.asked).toEqual([missed.envelopes[0].evpid]);
  });

  test('an envelope smtpd deleted that the service still lists (its delete found nothing there) is deleted again, never handed back', async () => {
    const inner = memoryQueue();
    const seeded = await seed(inner, ['a@example.test', 'b@example.test']);
    const [gone, kept] = seeded.envelopes.map((e) => e.evpid);
    // the storage answers the first delete as if the envelope were not there, as the Datastore emulator did once while it restarted
    const remove = inner.envelopeDelete.bind(inner);
    let wrong = true;
    inner.envelopeDelete = async (evpid, check) => (wrong ? ((wrong = false), { deleted: false, messageDeleted: false }) : remove(evpid, check));
    const fake = discoverer();
    const b = await running(inner, { discoverer: fake });
    expect(await b.smtpd.envelopeDelete(gone)).toBe(1);
    await settled(b);
    expect((await inner.envelopeWalk({ owner: OWNER })).items.map((e) => e.evpid)).toContain(gone);
    b.backend.reconcile();
    await waitFor(async () => !(await inner.envelopeWalk({ owner: OWNER })).items.some((e) => e.evpid === gone));
    expect(fake.asked).toEqual([]);
    expect((await inner.envelopeWalk({ owner: OWNER })).items.map((e) => e.evpid)).toEqual([kept]);
  });

  test('a walk whose cursor the service refuses (one of its earlier version) ends, and the reconciler hands smtpd the rest', async () => {
    const inner = memoryQueue();
    const seeded = [await seed(inner, ['a@example.test']), await seed(inner, ['b@example.test']), await seed(inner, ['c@example.test'])];
    const walk = inner.envelopeWalk.bind(inner);
    // the start-up walk's first page comes with a cursor the service then refuses
    let calls = 0;
    inner.envelopeWalk = async (page) => {
      if (page?.cursor === 'before-the-upgrade') throw badRequest('the cursor is not valid');
      if (calls++ > 0) return walk(page);
      return { ...(await walk({ ...page, limit: 1 })), cursor: 'before-the-upgrade' };
    };
    const fake = discoverer();
    const b = await running(inner, { discoverer: fake });
    expect(b.walked).toHaveLength(1);
    await waitFor(() => fake.asked.length >= 2, 10_000);
    const all = seeded.map((m) => m.envelopes[0].evpid);
    expect([...fake.asked, b.walked[0].evpid].sort()).toEqual(all.sort());
  });

  test('waits for the walk: claims made while smtpd loads its queue are handed over once the walk is done', async () => {
    const inner = memoryQueue();
    const fake = discoverer();
    const b = bridge(inner, { discoverer: fake });
    await b.smtpd.init();
    const orphans = await claimedBehindItsBack(inner, 2);
    b.backend.reconcile();
    await sleep(50);
    const walked = await b.smtpd.walkAll();
    await waitFor(() => fake.asked.length + walked.length >= 2);
    await sleep(50);
    expect([...fake.asked, ...walked.map((e) => e.evpid)].sort()).toEqual([...orphans].sort());
  });
});

describe('a pool that heals itself: automatic takeover and drain', () => {
  const LEASE_MS = 1_000;
  const fakeDiscoverer = () => {
    const asked: Evpid[] = [];
    return { asked, discover: async (evpid: Evpid) => (asked.push(evpid), 'ok' as Discovered) };
  };

  test("a running bridge claims a dead instance's mail at its next renewal and hands it to its smtpd, with no command", async () => {
    const inner = memoryQueue();
    const fake = fakeDiscoverer();
    await running(inner, { discoverer: fake, leaseMs: LEASE_MS });
    const orphans = await orphansOf(inner, 3);
    await waitFor(() => fake.asked.length >= 3, 3_000);
    expect([...fake.asked].sort()).toEqual([...orphans].sort());
    expect((await inner.queueCounts()).filter((c) => c.owner === 'dead')).toEqual([]);
  });

  test("the survivors' rounds spread one dead instance's orphans: each claims some, each orphan goes to exactly one", async () => {
    const inner = memoryQueue();
    const [one, two] = [fakeDiscoverer(), fakeDiscoverer()];
    await running(inner, { discoverer: one, leaseMs: LEASE_MS });
    await running(inner, { discoverer: two, leaseMs: LEASE_MS, owner: 'mx2' });
    const orphans = await orphansOf(inner, 40);
    await waitFor(() => one.asked.length + two.asked.length >= 40, 5_000);
    await sleep(300);
    expect([...one.asked, ...two.asked].sort()).toEqual([...orphans].sort());
    expect(one.asked.length).toBeGreaterThan(0);
    expect(two.asked.length).toBeGreaterThan(0);
  });

  test('with takeover start, or without a discoverer, a running bridge claims nothing by itself', async () => {
    const inner = memoryQueue();
    const fake = fakeDiscoverer();
    await running(inner, { discoverer: fake, leaseMs: LEASE_MS, takeover: 'start' });
    await running(inner, { leaseMs: LEASE_MS, owner: 'mx2' });
    await orphansOf(inner, 2);
    await sleep(LEASE_MS);
    expect(fake.asked).toEqual([]);
    expect((await inner.queueCounts()).find((c) => c.owner === 'dead')?.messages).toBe(2);
  });

  test('a drain fences the bridge at its next renewal, waits for the delivery under way, then ends the lease for the survivors to claim the rest', async () => {
    const inner = memoryQueue();
    const b = await running(inner, { leaseMs: LEASE_MS });
    const delivered = await b.smtpd.accept(['delivered@example.test']);
    const waiting = await b.smtpd.accept(['waiting@example.test']);
    expect(await b.smtpd.messageFd(delivered.msgid)).toEqual(BODY);
    await inner.instanceHeartbeat(OWNER, LEASE_MS, { drain: 'ask' });
    await until('the bridge to fence itself', () => !b.backend.leaseSure, 2_000);
    expect(await b.smtpd.messageFd(waiting.msgid)).toBeNull();
    expect(await b.smtpd.messageCreate()).toBeNull();
    // smtpd counts the put-off attempt as a retry: the survivor gets the envelope without it
    expect(await b.smtpd.envelopeUpdate(waiting.evpids[0], envelope('waiting@example.test', 'retry: 1\n'))).toBe(1);
    expect(await inner.envelopeLoad(waiting.evpids[0])).toEqual(envelope('waiting@example.test'));
    // the delivery under way holds the lease
    await sleep(LEASE_MS / 4);
    expect((await inner.instanceList()).find((i) => i.instance === OWNER)).toMatchObject({ alive: true, draining: true });
    expect(await b.smtpd.envelopeDelete(delivered.evpids[0])).toBe(1);
    await until('the lease to end', async () => !(await inner.instanceList()).find((i) => i.instance === OWNER)!.alive, 2_000);
    const { claimed } = await inner.queueTakeover('mx2');
    expect(claimed.map((c) => c.msgid)).toEqual([waiting.msgid]);
  });

  test('with async-delete no, a drain ends the lease only once the delete smtpd is waiting for has landed', async () => {
    const inner = memoryQueue();
    const b = await running(inner, { leaseMs: LEASE_MS, asyncDelete: false });
    const delivered = await b.smtpd.accept(['delivered@example.test']);
    expect(await b.smtpd.messageFd(delivered.msgid)).toEqual(BODY);
    await inner.instanceHeartbeat(OWNER, LEASE_MS, { drain: 'ask' });
    await until('the bridge to fence itself', () => !b.backend.leaseSure, 2_000);
    b.store.hang('envelopeDelete');
    const deleted = b.smtpd.envelopeDelete(delivered.evpids[0]);
    // past the drain's next look (every 200 ms), within the call's bound (700 ms)
    await sleep(450);
    expect((await inner.instanceList()).find((i) => i.instance === OWNER)?.alive).toBe(true);
    b.store.release();
    expect(await deleted).toBe(1);
    await until('the lease to end', async () => !(await inner.instanceList()).find((i) => i.instance === OWNER)!.alive, 2_000);
    // delivered, and deleted: nothing left to deliver again
    expect((await inner.queueTakeover('mx2')).claimed).toEqual([]);
  });

  test('drain-on-close: an orderly stop with every write landed hands the mail to the survivors at once', async () => {
    const inner = memoryQueue();
    const b = await running(inner, { leaseMs: 60_000, drainOnClose: true });
    const { msgid } = await b.smtpd.accept(['a@example.test']);
    await b.backend.close();
    expect((await inner.instanceList()).find((i) => i.instance === OWNER)).toMatchObject({ alive: false, draining: true });
    expect((await inner.queueTakeover('mx2')).claimed.map((c) => c.msgid)).toEqual([msgid]);
  });
});

/** `count` one-recipient messages of instance `dead`, whose lease then runs out. */
async function orphansOf(inner: Queue, count: number): Promise<Evpid[]> {
  const evpids: Evpid[] = [];
  for (let i = 0; i < count; i++) {
    const msgid = randomMsgid();
    const e = { evpid: randomEvpid(msgid), data: envelope(`orphan${i}@example.test`) };
    await inner.messageCommit({ msgid, owner: 'dead', size: BODY.length, sha256: sha256hex(BODY), body: BODY, envelopes: [e] });
    evpids.push(e.evpid);
  }
  await inner.instanceHeartbeat('dead', 1);
  return evpids;
}

async function waitFor(done: () => boolean | Promise<boolean>, ms = 2_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await sleep(10);
  }
}
