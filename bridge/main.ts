import { ftruncateSync, writeSync } from 'node:fs';
import path from 'node:path';
import { GoogleAuth, type IdTokenClient } from 'google-auth-library';
import pino from 'pino';
import { createLogger } from '../lib/log';
import { admin, ADMIN_COMMANDS } from './admin';
import { Backend } from './backend';
import { closeQuietly, SmtpdChannel } from './channel';
import { Discoverer } from './discover';
import { HttpQueueStore } from './client';
import { WriteJournal } from './journal';
import { BridgeConfigError, loadBridgeConfig, type BridgeConfig } from './config';
import { defaultLogTarget, lastWords, openBridgeLog, type BridgeLog } from './logging';
import { DEFAULT_USER, dropRoot, isRoot, lookUpUser, openOwnedFile, type UserIds } from './privileges';
import { dispatch, failureReply, PROC, PROC_NAMES, type QueueBackend } from './protocol';
import { Stats } from './stats';

/**
 * queue-rest: the program smtpd runs for `-B queue=rest:ARG`, as root, with
 * its queue socket on fd 0. It must never take smtpd down: it answers every
 * request (a failure is r=0, an empty LOAD or no fd), ignores the signals
 * that stop services, and exits only when smtpd closes the socket. Run by an
 * administrator with a command first (status, show, takeover), it is the
 * queue's admin tool instead (bridge/admin.ts).
 */
const counters = { smtpd: new Stats(), http: new Stats() };
const startedAt = new Date().toISOString();

async function main(): Promise<void> {
  let config: BridgeConfig | undefined;
  let problem: string | undefined;
  try {
    config = loadBridgeConfig(process.argv[2]);
  } catch (err) {
    problem = (err as Error).message;
  }
  let user: UserIds | undefined;
  if (config) {
    try {
      user = lookUpUser(config.user ?? DEFAULT_USER);
    } catch (err) {
      problem = (err as Error).message;
    }
  }
  // without a config, the reason must still reach the operator when smtpd runs as a daemon (stderr is /dev/null)
  const targets = config ? [config.log] : [defaultLogTarget(), 'stderr'];
  const { log, flush, problems } = openBridgeLog(targets, config?.logLevel ?? 'info', config?.instance ?? '-', user);
  for (const line of problems) log.error(line);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () => log.info(`${signal} ignored: queue-rest ends when smtpd closes its socket`));
  }
  // a handler that throws would end the process, and smtpd with it
  const report = (what: string) => (err: unknown) => {
    try {
      log.error({ err }, what);
    } catch {
      // the log itself is broken
    }
  };
  process.on('uncaughtException', report('uncaught exception'));
  process.on('unhandledRejection', report('unhandled rejection'));

  let backend: QueueBackend | undefined;
  let bridge: Backend | undefined;
  let client: HttpQueueStore | undefined;
  let statsFd: number | undefined;
  let discoverer: Discoverer | undefined;
  try {
    if (!config || !user) throw new BridgeConfigError(problem ?? 'misconfigured');
    const idToken = config.auth === 'iam' ? await idTokens() : undefined;
    // the one thing the bridge does as root later, in a helper started now (bridge/discover.ts)
    discoverer = new Discoverer(log);
    if (config.statsFile) {
      try {
        statsFd = openOwnedFile(config.statsFile, user, { mode: 0o644, append: false });
      } catch (err) {
        log.error({ err }, `no counters file: ${(err as Error).message}`);
      }
    }
    const journal = openJournal(config, user, log);
    dropRoot(user);
    log.info({ uid: process.getuid?.(), gid: process.getgid?.() }, `running as ${user.name}`);
    client = new HttpQueueStore({
      baseUrl: config.url,
      token: config.token,
      idToken,
      timeoutMs: config.timeoutMs,
      budgetMs: config.retryBudgetMs,
      inlineMax: config.inlineMax,
      failFast: true,
      observe: (fn, ms, status) => counters.http.record(fn, ms, typeof status === 'number' && status < 500),
    });
    backend = bridge = new Backend({
      store: client,
      owner: config.instance,
      log,
      tmpDir: config.tmpDir,
      cacheBytes: config.cacheBytes,
      asyncDelete: config.asyncDelete,
      timeoutMs: config.timeoutMs,
      retryBudgetMs: config.retryBudgetMs,
      drainMs: config.retryBudgetMs,
      leaseMs: config.leaseMs,
      discoverer,
      journal,
    });
    log.info({ url: config.url, auth: config.auth, imsg: config.imsg }, `queue-rest ${config.instance} serving smtpd with ${config.url}`);
  } catch (err) {
    log.fatal({ err }, `queue-rest cannot work: ${(err as Error).message}. Every queue request fails until smtpd is restarted with a working set-up.`);
    backend = unavailable((err as Error).message);
    bridge = undefined;
    client = undefined;
    // a bridge that serves nothing hands nothing to smtpd: its root helper goes
    discoverer?.close();
    discoverer = undefined;
    stayUnprivileged(user, log);
  }

  const writeStats = () => {
    if (statsFd === undefined) return;
    try {
      ftruncateSync(statsFd, 0);
      writeSync(statsFd, JSON.stringify(statsSnapshot(config, bridge), null, 2) + '\n', 0);
    } catch (err) {
      log.warn({ err }, `cannot write the counters to ${config?.statsFile}`);
    }
  };
  process.on('SIGUSR1', () => {
    writeStats();
    log.info({ stats: statsSnapshot(config, bridge) }, 'counters');
  });
  const timer = setInterval(writeStats, 5_000);
  timer.unref();

  const channel = new SmtpdChannel(0, config?.imsg ?? '6.8', log, async (m) => {
    const started = performance.now();
    const name = PROC_NAMES[m.type] ?? `TYPE_${m.type}`;
    try {
      const reply = await dispatch(backend, m);
      counters.smtpd.record(name, performance.now() - started);
      if (m.type === PROC.CLOSE) writeStats();
      return reply;
    } catch (err) {
      counters.smtpd.record(name, performance.now() - started, false);
      log.warn({ err, request: name }, `${name} failed; answered as a failure`);
      return failureReply(m.type);
    }
  });
  await channel.run();
  await bridge?.close();
  discoverer?.close();
  clearInterval(timer);
  writeStats();
  log.info({ stats: statsSnapshot(config, bridge) }, 'smtpd closed the queue socket: exiting');
  await client?.close();
  flush();
  process.exit(0);
}

function statsSnapshot(config: BridgeConfig | undefined, bridge: Backend | undefined) {
  const http = counters.http.summary();
  const commits = counters.smtpd.count('MESSAGE_COMMIT');
  const acceptRequests = ['messageCreate', 'messageWrite', 'messageCommit'].reduce((sum, fn) => sum + counters.http.count(fn), 0);
  return {
    instance: config?.instance,
    pid: process.pid,
    startedAt,
    updatedAt: new Date().toISOString(),
    httpRequests: counters.http.total(),
    acceptedMessages: commits,
    acceptRequestsPerMessage: commits > 0 ? Math.round((acceptRequests / commits) * 1000) / 1000 : null,
    pendingWrites: bridge?.pendingWrites ?? 0,
    smtpd: counters.smtpd.summary(),
    http,
  };
}

/** The journal of pending writes, opened as root and handed to the bridge's user; none if it cannot be. */
function openJournal(config: BridgeConfig, user: UserIds, log: BridgeLog['log']): WriteJournal | undefined {
  const file = path.join(config.stateDir, `${config.instance}.journal`);
  try {
    return WriteJournal.read(openOwnedFile(file, user, { mode: 0o600, append: true, read: true, dirMode: 0o700 }), log);
  } catch (err) {
    log.error({ err }, `no journal of pending writes (${(err as Error).message}): a bridge killed before its background writes land loses them, and smtpd delivers that mail again`);
    return undefined;
  }
}

/** An ID token for each function's URL, from the service account in GOOGLE_APPLICATION_CREDENTIALS or the metadata server. */
async function idTokens(): Promise<(audience: string) => Promise<string>> {
  const auth = new GoogleAuth();
  await auth.getClient(); // reads the key file while the bridge is still root
  const clients = new Map<string, Promise<IdTokenClient>>();
  return async (audience) => {
    if (!clients.has(audience)) clients.set(audience, auth.getIdTokenClient(audience));
    const client = await clients.get(audience)!;
    return client.idTokenProvider.fetchIdToken(audience);
  };
}

/** A bridge that cannot serve still should not hold root while it answers failures. */
function stayUnprivileged(user: UserIds | undefined, log: BridgeLog['log']): void {
  if (!isRoot()) return;
  try {
    dropRoot(user && user.uid !== 0 ? user : lookUpUser('nobody'));
  } catch (err) {
    log.error({ err }, 'could not drop root either');
  }
}

/** The backend of a bridge that cannot work: every request fails, INIT and CLOSE succeed. */
function unavailable(why: string): QueueBackend {
  const fail = async (): Promise<never> => {
    throw new BridgeConfigError(why);
  };
  return {
    init: async () => undefined,
    close: async () => undefined,
    messageCreate: fail,
    messageDelete: fail,
    messageCommit: async (_msgid, fd) => {
      closeQuietly(fd);
      return fail();
    },
    messageFd: fail,
    envelopeCreate: fail,
    envelopeDelete: fail,
    envelopeLoad: fail,
    envelopeUpdate: fail,
    envelopeWalk: async () => 'done',
  };
}

function start(): void {
  const command = process.argv[2];
  if ((ADMIN_COMMANDS as readonly string[]).includes(command ?? '')) {
    admin(process.argv.slice(2)).then(
      (code) => process.exit(code),
      (err: unknown) => {
        process.stderr.write(`queue-rest ${command}: ${(err as Error).message}\n`);
        process.exit(1);
      },
    );
    return;
  }
  main().catch(failedToStart);
}

function failedToStart(err: unknown): void {
  // only a bug gets here; smtpd would die with us, so answer failures until it closes the socket
  lastWords(`queue-rest failed to start: ${(err as Error)?.stack ?? err}`);
  const log = createLogger({ name: 'queue-rest', destination: pino.destination(2) });
  void new SmtpdChannel(0, '6.8', log, async (m) => failureReply(m.type)).run().then(() => process.exit(0));
}

start();
