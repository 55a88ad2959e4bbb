import { execFile } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { installBridge, uninstallBridge } from '../../bin/install-bridge';
import { freePort, openSmtpClient, startSink, stopAllSinks, waitFor, type Sink } from '../../dev/mail';
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

/** An MX of the pool: smtpd with queue-rest as instance `name`, ready once its walk is done. */
async function mx(name: string, relayPort: number, url = service.baseUrl): Promise<Mx> {
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
  const b = await mx('cmd-b', relayPort);
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
    const b = await mx('cut-b', relayPort);
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
