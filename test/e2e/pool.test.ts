import { execFile } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { installBridge, uninstallBridge } from '../../bin/install-bridge';
import { freePort, openSmtpClient, startSink, stopAllSinks, waitFor, type Sink, type SmtpError } from '../../dev/mail';
import { startSmtpd, stopAllSmtpd, type Smtpd } from '../../dev/smtpd/process';
import { testUser } from '../../dev/smtpd/user';
import { Credentials } from '../../lib/credentials';
import { msgidOf } from '../../lib/ids';
import { Queue } from '../../lib/queue';
import { startProxy } from '../support/proxy';
import { startService } from '../support/service';
import { firestoreStorage, uniqueNamespace } from '../support/stores';

/**
 * A pool of MX on one queue: several real smtpd, each in a mount namespace
 * of its own (spool, control socket), each with its own bridge instance, all
 * on one service, relaying to one sink. Mail must reach the sink exactly
 * once whatever happens to an instance. As a pool should run: one identity
 * per MX (QUEUE_AUTH=tokens), each bridge with its own credential, issued
 * with `queue-rest credential issue`; takeovers on another's behalf with the
 * administrator's.
 */
jest.setTimeout(240_000);

const ROOT = path.join(__dirname, '../..');
const BACKEND = 'resttest';
const LEASE = 4000;
const ADMIN_TOKEN = 'pool-admin-token-0123456789abcdef';

type Service = Awaited<ReturnType<typeof startService>>;
let service: Service;
let logDir: string;

let checkoutMode: number;
let bridgeProgram: string;

beforeAll(() => {
  testUser();
  bridgeProgram = installBridge({ name: BACKEND }).wrapper;
  // the installed bridge needs nothing from the checkout: the pool runs with it closed to everyone but root
  checkoutMode = statSync(ROOT).mode & 0o7777;
  chmodSync(ROOT, 0o700);
  logDir = mkdtempSync(path.join(tmpdir(), 'queue-pool-'));
  chmodSync(logDir, 0o755);
});

/** Each MX's credential, issued once per test (an MX that restarts keeps its own). */
let tokens: Map<string, string>;

// a queue of its own for each test: a takeover takes every dead instance's mail
beforeEach(async () => {
  const storage = firestoreStorage(uniqueNamespace('pool'));
  service = await startService({ store: new Queue(storage), credentials: new Credentials(storage), auth: { mode: 'tokens', adminToken: ADMIN_TOKEN } });
  tokens = new Map();
});

/** The administrator's command line, as an operator runs it (not spawnSync: the service runs in this process). */
async function adminCommand(args: string[]): Promise<string> {
  const env: NodeJS.ProcessEnv = { ...process.env, QUEUE_ADMIN_TOKEN: ADMIN_TOKEN };
  delete env.QUEUE_TOKEN;
  return (await promisify(execFile)(bridgeProgram, args, { env, encoding: 'utf8' })).stdout;
}

async function credentialOf(instance: string): Promise<string> {
  if (!tokens.has(instance)) tokens.set(instance, (await adminCommand(['credential', 'issue', instance, service.baseUrl])).trim());
  return tokens.get(instance)!;
}

afterEach(async () => {
  await stopAllSinks();
  await stopAllSmtpd();
  await service.stop();
});

afterAll(() => {
  chmodSync(ROOT, checkoutMode);
  uninstallBridge(BACKEND);
});

interface Mx {
  name: string;
  smtpd: Smtpd;
  log(): string;
}

let generation = 0;

/** An MX of the pool: smtpd with queue-rest as instance `name`, ready once its walk is done; `takeover start` for a test of the command, which automatic rounds would race. */
async function mx(name: string, relayPort: number, url = service.baseUrl, takeover: 'auto' | 'start' = 'auto'): Promise<Mx> {
  const logFile = path.join(logDir, `${name}-${++generation}.log`);
  const smtpd = await startSmtpd({
    isolated: true,
    relayPort,
    queue: `${BACKEND}:${url}`,
    env: {
      QUEUE_TOKEN: await credentialOf(name),
      QUEUE_REST_INSTANCE: name,
      QUEUE_REST_LEASE: String(LEASE),
      QUEUE_REST_LOG: logFile,
      QUEUE_REST_STATE: path.join(path.dirname(logFile), 'state'),
      QUEUE_REST_RETRY_BUDGET: '2000',
      QUEUE_REST_TIMEOUT: '1000',
      QUEUE_REST_TAKEOVER: takeover,
      METADATA_SERVER_DETECTION: 'none',
    },
    trace: true,
  });
  await smtpd.waitForOutput(/queue_envelope_walk\(\) -> -1/, 60_000);
  return { name, smtpd, log: () => readFileSync(logFile, 'utf8') };
}

/** Sends `count` messages to relay.test through the given MX, round robin; answers their Message-IDs. */
async function send(pool: Mx[], count: number, tag: string): Promise<string[]> {
  const clients = pool.map((m) => openSmtpClient(m.smtpd.port));
  try {
    const ids: string[] = [];
    for (let i = 0; i < count; i++) {
      const body = `${tag} message ${i}\n`;
      await clients[i % clients.length].send({ from: 'sender@example.test', to: [`rcpt${i}@relay.test`], subject: `${tag} ${i}`, body });
      ids.push(`${tag} ${i}`);
    }
    return ids;
  } finally {
    for (const c of clients) c.close();
  }
}

/** As send, but a message an MX answers with a temporary failure goes to the next MX; answers the subjects, and how many were refused so. */
async function sendOrNextMx(pool: Mx[], count: number, tag: string): Promise<string[]> {
  const clients = pool.map((m) => openSmtpClient(m.smtpd.port));
  try {
    const ids: string[] = [];
    for (let i = 0; i < count; i++) {
      const mail = { from: 'sender@example.test', to: [`rcpt${i}@relay.test`], subject: `${tag} ${i}`, body: `${tag} message ${i}\n` };
      for (let tries = 0; ; tries++) {
        try {
          await clients[(i + tries) % clients.length].send(mail);
          break;
        } catch (err) {
          const code = (err as SmtpError).responseCode ?? 0;
          if (code < 400 || code >= 500 || tries >= 2 * clients.length) throw err;
        }
      }
      ids.push(`${tag} ${i}`);
    }
    return ids;
  } finally {
    for (const c of clients) c.close();
  }
}

/** How many times the sink got each subject. */
function arrivals(sink: Sink): Map<string, number> {
  const seen = new Map<string, number>();
  for (const m of sink.messages) {
    const subject = /^Subject: (.*)$/m.exec(m.data.toString())?.[1].trim() ?? '?';
    seen.set(subject, (seen.get(subject) ?? 0) + 1);
  }
  return seen;
}

async function expectEachExactlyOnce(sink: Sink, subjects: string[], explain: () => string): Promise<void> {
  await waitFor(`${subjects.length} messages at the sink`, () => (subjects.every((s) => arrivals(sink).has(s)) ? true : undefined), 90_000, () => `${arrivals(sink).size} arrived\n${explain()}`);
  await sleep(2_000);
  const counts = arrivals(sink);
  const duplicates = subjects.filter((s) => (counts.get(s) ?? 0) > 1);
  const lost = subjects.filter((s) => !counts.has(s));
  // eslint-disable-next-line no-console
  console.log(`${subjects[0]?.split(' ')[0]}: ${subjects.length} sent, ${counts.size} arrived, ${duplicates.length} duplicates, ${lost.length} lost`);
  expect({ duplicates, lost }).toEqual({ duplicates: [], lost: [] });
}

/** Committed messages per owner/state, of the owners whose name starts with `prefix` (msgids reserved ahead are left out). */
async function ownersOf(prefix: string): Promise<Map<string, number>> {
  const owners = new Map<string, number>();
  for (const c of await service.store.queueCounts()) {
    if (c.owner.startsWith(prefix) && c.state !== 'incoming') owners.set(`${c.owner}/${c.state}`, c.messages);
  }
  return owners;
}

/** `queue-rest takeover` for a running MX, on its behalf, as an administrator runs it; answers the evpids claimed. */
async function takeover(instance: string): Promise<string[]> {
  const stdout = await adminCommand(['takeover', service.baseUrl, '--instance', instance, '--json']);
  // what it claimed; the instance's bridge hands them to its smtpd
  return JSON.parse(stdout).claimed;
}

test('two live MX share the queue: 200 messages sent across both reach the sink exactly once', async () => {
  const sink = await startSink();
  const pool = [await mx('pool-a', sink.port), await mx('pool-b', sink.port)];
  const subjects = await send(pool, 200, 'shared');
  await expectEachExactlyOnce(sink, subjects, () => pool.map((m) => m.smtpd.output().slice(-2000)).join('\n'));
  await waitFor('an empty queue', async () => ((await ownersOf('pool-')).size === 0 ? true : undefined), 30_000);
});

test("a killed MX's mail is taken over at a survivor's start-up walk and delivered exactly once", async () => {
  const relayPort = await freePort();
  const a = await mx('dead-a', relayPort);
  const subjects = await send([a], 20, 'walked');
  await waitFor("dead-a's messages in the service", async () => ((await ownersOf('dead-a')).get('dead-a/queued') === 20 ? true : undefined));
  const killedAt = Date.now();
  await a.smtpd.kill('SIGKILL');
  const sink = await startSink({ port: relayPort });
  await sleep(LEASE);
  const b = await mx('dead-b', relayPort);
  expect(b.log()).toMatch(/took over 20 messages of dead instances/);
  await expectEachExactlyOnce(sink, subjects, () => b.smtpd.output().slice(-3000));
  // eslint-disable-next-line no-console
  console.log(`take-over by a start-up walk: mail delivered ${((Date.now() - killedAt) / 1000).toFixed(1)} s after the kill (lease ${LEASE / 1000} s)`);
  expect((await ownersOf('dead-')).size).toBe(0);
});

test("a killed MX's mail is taken over by a running MX with queue-rest takeover, without a restart, and delivered exactly once", async () => {
  const relayPort = await freePort();
  const b = await mx('cmd-b', relayPort, service.baseUrl, 'start');
  const a = await mx('cmd-a', relayPort);
  const subjects = await send([a], 20, 'discovered');
  await waitFor("cmd-a's messages in the service", async () => ((await ownersOf('cmd-a')).get('cmd-a/queued') === 20 ? true : undefined));
  const killedAt = Date.now();
  await a.smtpd.kill('SIGKILL');
  const sink = await startSink({ port: relayPort });
  expect(await takeover('cmd-b')).toEqual([]);
  await sleep(LEASE);
  expect(await takeover('cmd-b')).toHaveLength(20);
  await expectEachExactlyOnce(sink, subjects, () => b.smtpd.output().slice(-3000));
  // eslint-disable-next-line no-console
  console.log(`take-over by command: mail delivered ${((Date.now() - killedAt) / 1000).toFixed(1)} s after the kill (lease ${LEASE / 1000} s)`);
  expect(b.smtpd.output()).not.toMatch(/queue-proc: (bad response|pipe closed|exiting)/);
});

test('an MX cut off from the service loses its mail to a survivor, and when it comes back its stale writes are refused and nothing is delivered twice', async () => {
  const relayPort = await freePort();
  const proxy = await startProxy(service.port);
  try {
    const b = await mx('cut-b', relayPort, service.baseUrl, 'start');
    const a = await mx('cut-a', relayPort, `http://127.0.0.1:${proxy.port}`);
    const subjects = await send([a], 10, 'partitioned');
    await waitFor("cut-a's messages in the service", async () => ((await ownersOf('cut-a')).get('cut-a/queued') === 10 ? true : undefined));
    proxy.cut();
    await sleep(LEASE + 500);
    const sink = await startSink({ port: relayPort });
    expect(await takeover('cut-b')).toHaveLength(10);
    await expectEachExactlyOnce(sink, subjects, () => b.smtpd.output().slice(-3000));

    proxy.restore();
    await waitFor('cut-a to renew its lease', () => (/lease of cut-a not renewed[\s\S]*lease of cut-a held/.test(a.log()) ? true : undefined), 30_000, a.log);
    await a.smtpd.smtpctl('schedule', 'all');
    // its envelopes now belong to cut-b, or are gone once cut-b delivered them
    await waitFor("cut-a's refused attempts", () => (/owned by another instance|evpid [0-9a-f]{16} not found|msgid [0-9a-f]{8} not found/.test(a.log()) ? true : undefined), 30_000, a.log);
    await sleep(3_000);
    const counts = arrivals(sink);
    expect(subjects.filter((s) => counts.get(s) !== 1)).toEqual([]);
    expect(a.smtpd.output()).not.toMatch(/queue-proc: (bad response|pipe closed|exiting)/);
  } finally {
    await proxy.stop();
  }
});

test('two MX racing to take over the same orphans claim each message exactly once, and each is delivered once', async () => {
  const relayPort = await freePort();
  const a = await mx('race-a', relayPort);
  const subjects = await send([a], 30, 'raced');
  await waitFor("race-a's messages in the service", async () => ((await ownersOf('race-a')).get('race-a/queued') === 30 ? true : undefined));
  await a.smtpd.kill('SIGKILL');
  const sink = await startSink({ port: relayPort });
  await sleep(LEASE);
  const [b, c] = await Promise.all([mx('race-b', relayPort), mx('race-c', relayPort)]);
  const claimed = (m: Mx) => Number(/took over (\d+) messages/.exec(m.log())?.[1] ?? 0);
  // eslint-disable-next-line no-console
  console.log(`race: race-b claimed ${claimed(b)}, race-c claimed ${claimed(c)}`);
  expect(claimed(b) + claimed(c)).toBe(30);
  await expectEachExactlyOnce(sink, subjects, () => [b, c].map((m) => m.smtpd.output().slice(-2000)).join('\n'));
  const walkedBy = new Map<string, string[]>();
  for (const m of [b, c]) {
    // r=0 ("nothing yet") is traced with evpid 0: only r>0 hands out an envelope
    for (const [line, evpid] of m.smtpd.output().matchAll(/^.*queue_envelope_walk\(\) -> [1-9]\d* \(([0-9a-f]{16})\).*$/gm)) {
      walkedBy.set(msgidOf(evpid), [...(walkedBy.get(msgidOf(evpid)) ?? []), `${m.name}: ${line}`]);
    }
  }
  expect([...walkedBy.values()].filter((lines) => lines.length > 1)).toEqual([]);
  expect(walkedBy.size).toBe(30);
});

/** SIGKILL for smtpd and every process of its group, the bridge included: nothing of the MX runs on. */
async function killWhole(m: Mx): Promise<number> {
  const killedAt = Date.now();
  try {
    process.kill(-m.smtpd.pid, 'SIGKILL');
  } catch {
    // the group is gone already
  }
  await m.smtpd.kill('SIGKILL');
  return killedAt;
}

/** How many messages an MX's bridge took over into its running smtpd, by its log. */
const tookOverLive = (m: Mx) => [...m.log().matchAll(/took over (\d+) messages of dead instances \([^)]*\) into the running smtpd/g)].reduce((sum, [, n]) => sum + Number(n), 0);

const NO_CRASH = /queue-proc: (bad response|pipe closed|exiting)/;

describe('a pool that heals itself', () => {
  test("an MX killed with SIGKILL: a running MX takes its mail over by itself, with no restart and no command, and each is delivered exactly once", async () => {
    const relayPort = await freePort();
    const b = await mx('auto-b', relayPort);
    const a = await mx('auto-a', relayPort);
    const subjects = await send([a], 20, 'healed');
    await waitFor("auto-a's messages in the service", async () => ((await ownersOf('auto-a')).get('auto-a/queued') === 20 ? true : undefined));
    const killedAt = await killWhole(a);
    const sink = await startSink({ port: relayPort });
    await waitFor('all of it at the sink', () => (subjects.every((s) => arrivals(sink).has(s)) ? true : undefined), 60_000, () => b.log().slice(-3000));
    const seconds = (Date.now() - killedAt) / 1000;
    // eslint-disable-next-line no-console
    console.log(`automatic take-over: mail delivered ${seconds.toFixed(1)} s after the SIGKILL (lease ${LEASE / 1000} s, target lease + 10 s)`);
    expect(seconds).toBeLessThanOrEqual(LEASE / 1000 + 10);
    await expectEachExactlyOnce(sink, subjects, () => b.log().slice(-3000));
    expect(tookOverLive(b)).toBe(20);
    expect(b.smtpd.output()).not.toMatch(NO_CRASH);
    expect((await ownersOf('auto-')).size).toBe(0);
  });

  test("three MX, one killed: the two survivors share its orphans, each delivers some, each message exactly once", async () => {
    const relayPort = await freePort();
    const [b, c] = [await mx('three-b', relayPort), await mx('three-c', relayPort)];
    const a = await mx('three-a', relayPort);
    const subjects = await send([a], 40, 'spread');
    await waitFor("three-a's messages in the service", async () => ((await ownersOf('three-a')).get('three-a/queued') === 40 ? true : undefined));
    await killWhole(a);
    const sink = await startSink({ port: relayPort });
    await expectEachExactlyOnce(sink, subjects, () => [b, c].map((m) => m.log().slice(-2000)).join('\n'));
    // eslint-disable-next-line no-console
    console.log(`spread: three-b took over ${tookOverLive(b)}, three-c ${tookOverLive(c)} of 40`);
    expect(tookOverLive(b) + tookOverLive(c)).toBe(40);
    expect(tookOverLive(b)).toBeGreaterThan(0);
    expect(tookOverLive(c)).toBeGreaterThan(0);
    for (const m of [b, c]) expect(m.smtpd.output()).not.toMatch(NO_CRASH);
  });

  test('queue-rest drain during load: the drained MX hands its mail to the live one at once, nothing lost or delivered twice', async () => {
    const sink = await startSink();
    const b = await mx('drain-b', sink.port);
    const a = await mx('drain-a', sink.port);
    // the drain comes while mail is being accepted and delivered; a sender told to try later tries the next MX, as MTAs do
    const sending = sendOrNextMx([a, b], 60, 'drained');
    await waitFor('the first deliveries', () => (sink.messages.length >= 10 ? true : undefined), 60_000);
    const drained = JSON.parse(await adminCommand(['drain', service.baseUrl, '--instance', 'drain-a', '--json']));
    const subjects = await sending;
    await expectEachExactlyOnce(sink, subjects, () => [a, b].map((m) => m.log().slice(-3000)).join('\n'));
    // eslint-disable-next-line no-console
    console.log(`drain: ${drained.messages} queued messages of drain-a; its lease ended ${(drained.leaseEndedAfterMs / 1000).toFixed(1)} s and its mail was drain-b's ${(drained.handedOverAfterMs / 1000).toFixed(1)} s after the command (lease ${LEASE / 1000} s)`);
    expect(a.log()).toMatch(/drain: lease of drain-a ended/);
    expect((await ownersOf('drain-')).size).toBe(0);
    for (const m of [a, b]) expect(m.smtpd.output()).not.toMatch(NO_CRASH);
  });
});
