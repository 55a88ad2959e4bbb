import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { installBridge, uninstallBridge } from '../bin/install-bridge';
import type { Summary } from '../bridge/stats';
import { percentile } from '../bridge/stats';
import { freePort, startEmulator } from '../dev/emulator';
import { openSmtpClient, startSink, waitFor, type Sink } from '../dev/mail';
import { startSmtpd } from '../dev/smtpd/process';
import { testUser } from '../dev/smtpd/user';
import { progress, table } from './report';

/**
 * Real smtpd with queue=rest (the bridge, the functions in their own process,
 * the Firestore emulator, all on this machine) against real smtpd with its own
 * queue=fs, same config and load, in one run. Messages are relayed to a local
 * sink. The MTA is paused while messages are sent, so acceptance and delivery
 * are measured apart.
 */
const ROOT = path.join(__dirname, '../..');
const BACKEND = 'restbench';
const TOKEN = randomBytes(16).toString('hex');

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

interface Run {
  scenario: string;
  queue: 'fs' | 'rest';
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
  const service = await startFunctions(emulator.host);
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
      for (const queue of ['fs', 'rest'] as const) {
        runs.push(await runScenario(scenario, queue, body(scenario.bytes), { service: service.url, sink, logDir, clients: o.clients }));
      }
    }
  } finally {
    await sink.stop();
    service.child.kill('SIGTERM');
    await emulator.stop();
    uninstallBridge(BACKEND);
    rmSync(logDir, { recursive: true, force: true });
  }
  return { table: report(runs, o.clients), results: { options: o, runs } };
}

async function runScenario(
  scenario: Scenario,
  queue: 'fs' | 'rest',
  body: Buffer,
  env: { service: string; sink: Sink; logDir: string; clients: number },
): Promise<Run> {
  const statsFile = path.join(env.logDir, `${queue}-${scenario.recipients}-${scenario.bytes}.json`);
  const logFile = path.join(env.logDir, `${queue}-${scenario.recipients}-${scenario.bytes}.log`);
  const smtpd = await startSmtpd({
    relayPort: env.sink.port,
    queue: queue === 'rest' ? `${BACKEND}:${env.service}` : undefined,
    env: { QUEUE_TOKEN: TOKEN, QUEUE_REST_INSTANCE: `bench-${randomBytes(3).toString('hex')}`, QUEUE_REST_LOG: logFile, QUEUE_REST_STATS_FILE: statsFile, METADATA_SERVER_DETECTION: 'none' },
  });
  try {
    if (queue === 'rest') await waitFor('the start-up walk', () => (existsSync(logFile) && readFileSync(logFile, 'utf8').includes('walk done') ? true : undefined), 30_000);
    await smtpd.smtpctl('pause', 'mta');
    env.sink.messages.length = 0;
    const recipients = Array.from({ length: scenario.recipients }, (_, i) => `r${i}@relay.test`);
    const mail = { from: 'bench@example.test', to: recipients };
    const clients = Array.from({ length: env.clients }, () => openSmtpClient(smtpd.port));
    const latencies: number[] = [];
    let failures = 0;
    let acceptSeconds: number;
    try {
      // one untimed message per connection: smtpd here sometimes takes 5 s to greet (its resolver waits for an unreachable DNS server)
      await Promise.all(clients.map((client) => client.send({ ...mail, body: 'warm-up\n' })));
      let next = 0;
      const bar = progress(scenario.messages, `${queue} ${scenario.name}`);
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
      bar.stop();
    } finally {
      for (const client of clients) client.close();
    }
    const expected = (latencies.length + clients.length) * scenario.recipients;
    const deliveryStarted = performance.now();
    await smtpd.smtpctl('resume', 'mta');
    const delivered = () => env.sink.messages.reduce((n, m) => n + m.to.length, 0);
    await waitFor(`${expected} deliveries at the sink`, () => (delivered() >= expected ? true : undefined), 600_000, () => `${delivered()} so far`);
    const deliverSeconds = (performance.now() - deliveryStarted) / 1000;
    if (queue === 'rest') await sleep(500); // the last envelope deletes
    await smtpd.stop();
    latencies.sort((a, b) => a - b);
    const run: Run = {
      scenario: scenario.name,
      queue,
      messages: latencies.length,
      acceptedPerSecond: round(latencies.length / acceptSeconds),
      deliveredPerSecond: round(latencies.length / deliverSeconds),
      smtpP50Ms: round(percentile(latencies, 0.5)),
      smtpP99Ms: round(percentile(latencies, 0.99)),
      failures,
    };
    if (queue === 'rest') {
      const stats = JSON.parse(readFileSync(statsFile, 'utf8'));
      run.bridge = { acceptRequestsPerMessage: stats.acceptRequestsPerMessage, httpRequests: stats.httpRequests, http: stats.http, smtpd: stats.smtpd };
    }
    return run;
  } finally {
    await smtpd.stop();
  }
}

/** The functions as `npm start` serves them, in a process of their own, on the given emulator. */
async function startFunctions(emulatorHost: string): Promise<{ url: string; child: ChildProcess }> {
  const port = await freePort();
  const child = spawn(process.execPath, [path.join(ROOT, 'dist/bin/serve.js')], {
    env: { ...process.env, DATASTORE_EMULATOR_HOST: emulatorHost, PORT: String(port), QUEUE_TOKEN: TOKEN, QUEUE_NAMESPACE: `bench-${randomBytes(3).toString('hex')}`, LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const url = `http://127.0.0.1:${port}`;
  await waitFor('the functions', () => fetch(`${url}/envelopeWalk`).then(() => true, () => undefined), 30_000);
  return { url, child };
}

function report(runs: Run[], clients: number): string {
  const rows: (string | number)[][] = [];
  for (const run of runs) {
    const fs = runs.find((r) => r.scenario === run.scenario && r.queue === 'fs')!;
    rows.push([
      run.scenario,
      `queue=${run.queue}`,
      run.messages,
      run.acceptedPerSecond,
      run.queue === 'rest' ? round(run.acceptedPerSecond / fs.acceptedPerSecond) : '',
      run.deliveredPerSecond,
      run.queue === 'rest' ? round(run.deliveredPerSecond / fs.deliveredPerSecond) : '',
      run.smtpP50Ms,
      run.smtpP99Ms,
      run.bridge?.acceptRequestsPerMessage ?? '',
      run.failures,
    ]);
  }
  const main = table(
    `smtpd, queue=rest against queue=fs, ${clients} SMTP clients, relayed to a local sink (this machine; MTA paused while sending)`,
    ['scenario', 'queue', 'msgs', 'accepted/s', 'rest/fs', 'delivered/s', 'rest/fs', 'SMTP p50 ms', 'SMTP p99 ms', 'HTTP req/accepted msg', 'failed'],
    rows,
  );
  const ops = new Map<string, (string | number)[]>();
  for (const run of runs.filter((r) => r.bridge)) {
    for (const [side, summaries] of [['smtpd', run.bridge!.smtpd], ['HTTP', run.bridge!.http]] as const) {
      for (const [op, s] of Object.entries(summaries)) {
        const name = `${side} ${op}`;
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
  return main + perOp;
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}
