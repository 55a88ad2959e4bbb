import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { Datastore } from '@google-cloud/datastore';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { installBridge, uninstallBridge } from '../bin/install-bridge';
import type { Summary } from '../bridge/stats';
import { percentile } from '../bridge/stats';
import type { StorageOps } from '../dev/counting-storage';
import { freePort, startEmulator } from '../dev/emulator';
import { openSmtpClient, startSink, waitFor, type Sink } from '../dev/mail';
import { cpuMillis } from '../dev/smtpd/proc';
import { startSmtpd, type Smtpd } from '../dev/smtpd/process';
import { testUser } from '../dev/smtpd/user';
import { HttpQueueStore } from '../bridge/client';
import { randomEvpid, randomMsgid } from '../lib/ids';
import { sha256hex } from '../lib/rules';
import { CHUNK_BYTES } from '../lib/store';
import { progress, table } from './report';

/**
 * Real smtpd with queue=rest (the bridge, the functions in their own process,
 * the Firestore emulator, all on this machine) against real smtpd with its own
 * queue=fs, same config and load, in one run; and queue=rest with the
 * functions on QUEUE_STORE=memory, which is the cost of the bridge, HTTP and
 * the functions without storage. Before each scenario, the raw rate at which
 * the same emulator takes what the scenario stores per message (its body in
 * chunks and its envelopes, one insert, one at a time), which bounds what
 * queue=rest can accept. Messages are relayed to a local sink. The MTA is
 * paused while messages are sent, so acceptance and delivery are measured
 * apart, each with the CPU time of every process and the storage operations
 * of the functions.
 */
const ROOT = path.join(__dirname, '../..');
const BACKEND = 'restbench';
const TOKEN = randomBytes(16).toString('hex');
const WARM_UP_MESSAGES = 1000;

export interface SmtpdBenchOptions {
  /** Messages per scenario with a small body. */
  messages: number;
  /** Messages per scenario with a 1 MiB body. */
  bigMessages: number;
  /** Parallel SMTP clients. */
  clients: number;
}

interface Scenario {
  name: string;
  recipients: number;
  bytes: number;
  messages: number;
}

type QueueKind = 'fs' | 'rest' | 'rest-memory';
const QUEUES: QueueKind[] = ['fs', 'rest', 'rest-memory'];
const PROCESSES = ['smtpd', 'bridge', 'functions', 'emulator'] as const;
type ProcessName = (typeof PROCESSES)[number];
type CpuMs = Partial<Record<ProcessName, number>>;

/** Per message, while accepting and while delivering. */
interface PhaseCost {
  cpuMs: CpuMs;
  storage?: StorageOps;
}

interface Run {
  scenario: string;
  queue: QueueKind;
  /** The emulator's raw inserts per second of what one message stores, measured just before the scenario. */
  rawPerSecond: number;
  accepting: PhaseCost;
  delivering: PhaseCost;
  messages: number;
  acceptedPerSecond: number;
  deliveredPerSecond: number;
  smtpP50Ms: number;
  smtpP99Ms: number;
  failures: number;
  bridge?: BridgeStats;
}

interface BridgeStats {
  acceptRequestsPerMessage: number | null;
  httpRequests: number;
  http: Record<string, Summary>;
  smtpd: Record<string, Summary>;
}

export async function benchSmtpd(o: SmtpdBenchOptions): Promise<{ table: string; results: unknown }> {
  testUser();
  installBridge({ name: BACKEND });
  const emulator = await startEmulator({ kind: 'firestore' });
  const logDir0 = mkdtempSync(path.join(tmpdir(), 'queue-bench-counts-'));
  const services = {
    rest: await startFunctions({ DATASTORE_EMULATOR_HOST: emulator.host }, path.join(logDir0, 'datastore.json')),
    'rest-memory': await startFunctions({ QUEUE_STORE: 'memory' }, path.join(logDir0, 'memory.json')),
  };
  await warmUp(emulator.host, Object.values(services));
  const sink = await startSink();
  const logDir = mkdtempSync(path.join(tmpdir(), 'queue-bench-'));
  chmodSync(logDir, 0o755);
  const body = (bytes: number) => Buffer.from(Array.from({ length: Math.ceil(bytes / 64) }, (_, i) => `line ${i} ${'x'.repeat(52)}\n`).join('').slice(0, bytes));
  const scenarios: Scenario[] = [
    { name: '4 KiB, 1 rcpt', recipients: 1, bytes: 4096, messages: o.messages },
    { name: '4 KiB, 10 rcpts', recipients: 10, bytes: 4096, messages: o.messages },
    { name: '1 MiB, 1 rcpt', recipients: 1, bytes: 1024 * 1024, messages: o.bigMessages },
    { name: '1 MiB, 10 rcpts', recipients: 10, bytes: 1024 * 1024, messages: o.bigMessages },
  ];
  const runs: Run[] = [];
  try {
    for (const scenario of scenarios) {
      const rawPerSecond = await rawInsertRate(emulator.host, scenario, body(scenario.bytes));
      for (const queue of QUEUES) {
        const service = queue === 'fs' ? undefined : services[queue];
        const pids = { functions: service?.child.pid, emulator: queue === 'rest' ? emulator.pid : undefined };
        runs.push({ ...(await runScenario(scenario, queue, body(scenario.bytes), { service, pids, sink, logDir, clients: o.clients })), rawPerSecond });
      }
    }
  } finally {
    await sink.stop();
    for (const service of Object.values(services)) service.child.kill('SIGTERM');
    await emulator.stop();
    rmSync(logDir0, { recursive: true, force: true });
    uninstallBridge(BACKEND);
    rmSync(logDir, { recursive: true, force: true });
  }
  return { table: report(runs, o.clients), results: { options: o, runs } };
}

async function runScenario(
  scenario: Scenario,
  queue: QueueKind,
  body: Buffer,
  env: { service?: Functions; pids: { functions?: number; emulator?: number }; sink: Sink; logDir: string; clients: number },
): Promise<Omit<Run, 'rawPerSecond'>> {
  const statsFile = path.join(env.logDir, `${queue}-${scenario.recipients}-${scenario.bytes}.json`);
  const logFile = path.join(env.logDir, `${queue}-${scenario.recipients}-${scenario.bytes}.log`);
  const smtpd = await startSmtpd({
    relayPort: env.sink.port,
    queue: env.service ? `${BACKEND}:${env.service.url}` : undefined,
    env: { QUEUE_TOKEN: TOKEN, QUEUE_REST_INSTANCE: `bench-${randomBytes(3).toString('hex')}`, QUEUE_REST_LOG: logFile, QUEUE_REST_STATS_FILE: statsFile, METADATA_SERVER_DETECTION: 'none' },
  });
  try {
    const bridgeLog = () => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : '');
    if (env.service) await waitFor('the start-up walk', () => (bridgeLog().includes('walk done') ? true : undefined), 30_000, () => `the bridge logged: ${bridgeLog().slice(-2000) || 'nothing'}`);
    await smtpd.smtpctl('pause', 'mta');
    env.sink.messages.length = 0;
    const recipients = Array.from({ length: scenario.recipients }, (_, i) => `r${i}@relay.test`);
    const mail = { from: 'bench@example.test', to: recipients };
    const clients = Array.from({ length: env.clients }, () => openSmtpClient(smtpd.port));
    const latencies: number[] = [];
    let failures = 0;
    let acceptSeconds: number;
    let accepting: Costs;
    try {
      // one untimed message per connection: smtpd here sometimes takes 5 s to greet (its resolver waits for an unreachable DNS server)
      await Promise.all(clients.map((client) => client.send({ ...mail, body: 'warm-up\n' })));
      let next = 0;
      const bar = progress(scenario.messages, `${queue} ${scenario.name}`);
      const before = await costs(smtpd, env.pids, env.service);
      const started = performance.now();
      await Promise.all(
        clients.map(async (client) => {
          while (next < scenario.messages) {
            next++;
            const t = performance.now();
            try {
              await client.send({ ...mail, body });
              latencies.push(performance.now() - t);
            } catch {
              failures++;
            }
            bar.increment();
          }
        }),
      );
      acceptSeconds = (performance.now() - started) / 1000;
      accepting = since(before, await costs(smtpd, env.pids, env.service));
      bar.stop();
    } finally {
      for (const client of clients) client.close();
    }
    const expected = (latencies.length + clients.length) * scenario.recipients;
    const beforeDelivery = await costs(smtpd, env.pids, env.service);
    const deliveryStarted = performance.now();
    await smtpd.smtpctl('resume', 'mta');
    const delivered = () => env.sink.messages.reduce((n, m) => n + m.to.length, 0);
    await waitFor(`${expected} deliveries at the sink`, () => (delivered() >= expected ? true : undefined), 600_000, () => `${delivered()} so far`);
    const deliverSeconds = (performance.now() - deliveryStarted) / 1000;
    if (env.service) await sleep(500); // the last envelope deletes
    const delivering = since(beforeDelivery, await costs(smtpd, env.pids, env.service));
    await smtpd.stop();
    // deletes the bridge wrote behind land before it exits
    if (env.service) delivering.storage = since(beforeDelivery, { cpuMs: {}, storage: await env.service.counts() }).storage;
    latencies.sort((a, b) => a - b);
    const deliveredMessages = latencies.length + clients.length;
    const run: Omit<Run, 'rawPerSecond'> = {
      scenario: scenario.name,
      queue,
      accepting: perMessage(accepting, latencies.length),
      delivering: perMessage(delivering, deliveredMessages),
      messages: latencies.length,
      acceptedPerSecond: round(latencies.length / acceptSeconds),
      deliveredPerSecond: round(latencies.length / deliverSeconds),
      smtpP50Ms: round(percentile(latencies, 0.5)),
      smtpP99Ms: round(percentile(latencies, 0.99)),
      failures,
    };
    if (env.service) {
      const stats = JSON.parse(readFileSync(statsFile, 'utf8'));
      run.bridge = { acceptRequestsPerMessage: stats.acceptRequestsPerMessage, httpRequests: stats.httpRequests, http: stats.http, smtpd: stats.smtpd };
    }
    return run;
  } finally {
    await smtpd.stop();
  }
}

interface Functions {
  url: string;
  child: ChildProcess;
  /** The storage operations of the functions so far. */
  counts(): Promise<StorageOps>;
}

/** The functions as `npm start` serves them, in a process of their own, counting their storage operations (bench/functions.ts). */
async function startFunctions(env: Record<string, string>, countsFile: string): Promise<Functions> {
  const port = await freePort();
  const child = spawn(process.execPath, [path.join(ROOT, 'dist/bench/functions.js')], {
    env: { ...process.env, ...env, PORT: String(port), QUEUE_TOKEN: TOKEN, QUEUE_NAMESPACE: `bench-${randomBytes(3).toString('hex')}`, LOG_LEVEL: 'warn', BENCH_COUNTS_FILE: countsFile },
    // its log lines (warnings and errors only) on stderr, with the progress bars
    stdio: ['ignore', process.stderr, 'inherit'],
  });
  const url = `http://127.0.0.1:${port}`;
  await waitFor('the functions', () => fetch(`${url}/envelopeWalk`).then(() => true, () => undefined), 30_000);
  let asked = 0;
  const counts = async () => {
    const signal = ++asked;
    child.kill('SIGUSR2');
    return waitFor('the storage counts', () => {
      const written = existsSync(countsFile) ? (JSON.parse(readFileSync(countsFile, 'utf8') || '{}') as { signal?: number; ops?: StorageOps }) : {};
      return written.signal === signal ? written.ops : undefined;
    }, 10_000);
  };
  return { url, child, counts };
}

interface Costs {
  cpuMs: CpuMs;
  storage?: StorageOps;
}

/** CPU time of every process so far, by role, and the functions' storage operations. */
async function costs(smtpd: Smtpd, pids: { functions?: number; emulator?: number }, service?: Functions): Promise<Costs> {
  const cpuMs: CpuMs = { smtpd: 0 };
  // smtpd's processes, and the bridge it runs (node, and the discover helper's shell) in its process group
  for (const p of cpuMillis({ pgrp: [smtpd.pid] })) {
    const role = p.comm === 'smtpd' ? 'smtpd' : 'bridge';
    cpuMs[role] = (cpuMs[role] ?? 0) + p.ms;
  }
  for (const role of ['functions', 'emulator'] as const) {
    const pid = pids[role];
    if (pid) cpuMs[role] = cpuMillis({ pid: [pid] }).reduce((sum, p) => sum + p.ms, 0);
  }
  return { cpuMs, storage: await service?.counts() };
}

function since(before: Costs, after: Costs): Costs {
  const cpuMs: CpuMs = {};
  for (const role of PROCESSES) if (after.cpuMs[role] !== undefined) cpuMs[role] = after.cpuMs[role]! - (before.cpuMs[role] ?? 0);
  if (!before.storage || !after.storage) return { cpuMs };
  const storage = { ...after.storage };
  for (const op of Object.keys(storage) as (keyof StorageOps)[]) storage[op] -= before.storage[op];
  return { cpuMs, storage };
}

function perMessage(total: Costs, messages: number): PhaseCost {
  const cpuMs: CpuMs = {};
  for (const role of PROCESSES) if (total.cpuMs[role] !== undefined) cpuMs[role] = round(total.cpuMs[role]! / messages);
  if (!total.storage) return { cpuMs };
  const storage = { ...total.storage };
  for (const op of Object.keys(storage) as (keyof StorageOps)[]) storage[op] = round(storage[op] / messages);
  return { cpuMs, storage };
}

/**
 * The emulator is a JVM: it takes the same call several times faster once
 * its JIT has compiled the paths. So every process is warmed up before
 * anything is measured, with commits and deletes through each functions
 * process, and raw inserts.
 */
async function warmUp(emulatorHost: string, services: Functions[]): Promise<void> {
  const body = Buffer.alloc(4096, 'w');
  const bar = progress(services.length * WARM_UP_MESSAGES, 'warm-up');
  for (const service of services) {
    const store = new HttpQueueStore({ baseUrl: service.url, token: TOKEN });
    try {
      for (let i = 0; i < WARM_UP_MESSAGES; i++) {
        const msgid = randomMsgid();
        const evpid = randomEvpid(msgid);
        await store.messageCreate([msgid], 'warm-up');
        await store.messageCommit({ msgid, owner: 'warm-up', size: body.length, sha256: sha256hex(body), body, envelopes: [{ evpid, data: body.subarray(0, 400) }] });
        await store.envelopeDelete(evpid, { owner: 'warm-up' });
        bar.increment();
      }
    } finally {
      await store.close();
    }
  }
  bar.stop();
  await rawInsertRate(emulatorHost, { name: 'warm-up', recipients: 1, bytes: body.length, messages: 0 }, body);
}

/**
 * What one message of the scenario stores, its body in chunks and its
 * envelopes, inserted into the emulator with the Datastore client, one insert
 * at a time: the emulator's own rate, with no queue around it.
 */
async function rawInsertRate(emulatorHost: string, scenario: Scenario, body: Buffer): Promise<number> {
  const datastore = new Datastore({ apiEndpoint: emulatorHost, projectId: 'bench', namespace: `raw-${randomBytes(3).toString('hex')}` });
  const envelope = Buffer.alloc(400, 'e');
  const insert = (n: number) => {
    const entities = [];
    for (let offset = 0, i = 0; offset < body.length; offset += CHUNK_BYTES, i++) {
      entities.push({ key: datastore.key(['RawMessage', `m${n}`, 'RawChunk', String(i)]), data: { data: body.subarray(offset, offset + CHUNK_BYTES) }, excludeFromIndexes: ['data'] });
    }
    for (let r = 0; r < scenario.recipients; r++) {
      entities.push({ key: datastore.key(['RawMessage', `m${n}`, 'RawEnvelope', String(r)]), data: { data: envelope }, excludeFromIndexes: ['data'] });
    }
    return datastore.insert(entities);
  };
  const inserts = scenario.bytes >= CHUNK_BYTES ? 40 : 1000;
  try {
    for (let n = 0; n < inserts / 4; n++) await insert(-1 - n);
    const bar = progress(inserts, `raw inserts, ${scenario.name}`);
    const started = performance.now();
    for (let n = 0; n < inserts; n++) {
      await insert(n);
      bar.increment();
    }
    bar.stop();
    return round(inserts / ((performance.now() - started) / 1000));
  } finally {
    await datastore.clients_.get('DatastoreClient')?.close?.();
  }
}

function report(runs: Run[], clients: number): string {
  const fsOf = (run: Run) => runs.find((r) => r.scenario === run.scenario && r.queue === 'fs')!;
  const main = table(
    `smtpd, queue=rest against queue=fs, ${clients} SMTP clients, relayed to a local sink (this machine; MTA paused while sending)`,
    ['scenario', 'queue', 'msgs', 'accepted/s', '÷ fs', 'delivered/s', '÷ fs', 'SMTP p50 ms', 'SMTP p99 ms', 'HTTP req/accepted msg', 'failed'],
    runs.map((run) => {
      const fs = fsOf(run);
      const rest = run.queue !== 'fs';
      return [
        run.scenario,
        `queue=${run.queue}`,
        run.messages,
        run.acceptedPerSecond,
        rest ? round(run.acceptedPerSecond / fs.acceptedPerSecond) : '',
        run.deliveredPerSecond,
        rest ? round(run.deliveredPerSecond / fs.deliveredPerSecond) : '',
        run.smtpP50Ms,
        run.smtpP99Ms,
        run.bridge?.acceptRequestsPerMessage ?? '',
        run.failures,
      ];
    }),
  );
  const ratios = table(
    'Against the floors, measured in the same run: rest ÷ the emulator\'s raw insert of what a message stores; rest-memory ÷ fs',
    ['scenario', 'raw inserts/s', 'rest accepted/s', 'rest ÷ raw', 'rest-memory accepted/s', 'fs accepted/s', 'rest-memory ÷ fs'],
    runs
      .filter((run) => run.queue === 'rest')
      .map((rest) => {
        const memory = runs.find((r) => r.scenario === rest.scenario && r.queue === 'rest-memory')!;
        const fs = fsOf(rest);
        return [rest.scenario, rest.rawPerSecond, rest.acceptedPerSecond, round(rest.acceptedPerSecond / rest.rawPerSecond), memory.acceptedPerSecond, fs.acceptedPerSecond, round(memory.acceptedPerSecond / fs.acceptedPerSecond)];
      }),
  );
  const phases = (run: Run) => [['accepted', run.accepting], ['delivered', run.delivering]] as const;
  const cpu = table(
    'CPU ms per message, by process (user + system, from /proc), accepting and delivering',
    ['scenario', 'queue', 'per', ...PROCESSES, 'total'],
    runs.flatMap((run) =>
      phases(run).map(([per, cost]) => {
        const cells = PROCESSES.map((p) => cost.cpuMs[p] ?? '');
        return [run.scenario, `queue=${run.queue}`, per, ...cells, round(PROCESSES.reduce((sum, p) => sum + (cost.cpuMs[p] ?? 0), 0))];
      }),
    ),
  );
  const storage = table(
    'Storage operations of the functions per message (records looked up, queried and written; index entries the writes change)',
    ['scenario', 'queue', 'per', 'lookups', 'queries', 'records read', 'write calls', 'records written', 'index entries'],
    runs
      .filter((run) => run.queue !== 'fs')
      .flatMap((run) =>
        phases(run).map(([per, cost]) => {
          const ops = cost.storage!;
          return [run.scenario, `queue=${run.queue}`, per, ops.lookups, ops.queries, ops.recordsRead, ops.writes, ops.recordsWritten, ops.indexEntries];
        }),
      ),
  );
  const ops = new Map<string, (string | number)[]>();
  for (const run of runs.filter((r) => r.bridge)) {
    for (const [side, summaries] of [['smtpd', run.bridge!.smtpd], ['HTTP', run.bridge!.http]] as const) {
      for (const [op, s] of Object.entries(summaries)) {
        const name = `${side} ${op} (${run.queue})`;
        const row = ops.get(name) ?? [name, 0, 0, 0];
        ops.set(name, [name, Number(row[1]) + s.count, Math.max(Number(row[2]), s.p50Ms), Math.max(Number(row[3]), s.p99Ms)]);
      }
    }
  }
  const perOp = table(
    'queue-rest, per operation over all rest runs (the worst scenario\'s p50 and p99), ms',
    ['operation', 'count', 'p50', 'p99'],
    [...ops.values()].sort((a, b) => String(a[0]).localeCompare(String(b[0]))),
  );
  return main + ratios + cpu + storage + perOp;
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}
