import { ftruncateSync, writeSync } from 'node:fs';
import type { Logger } from '../lib/log';
import { Backend } from './backend';
import { SmtpdChannel } from './channel';
import { HttpQueueStore } from './client';
import { BridgeConfigError, loadBridgeConfig, type BridgeConfig } from './config';
import { BridgeCounters } from './counters';
import { defaultLogTarget, openBridgeLog } from './logging';
import { promText, writeAtomically } from './metrics';
import type { UserIds } from './privileges';
import { dispatch, failureReply, PROC, PROC_NAMES, type QueueBackend } from './protocol';
import { bridgeUser, RootSetup } from './root-setup';
import { unavailableBackend } from './unavailable';

/**
 * The bridge at work, from start to exit: it sets itself up as root
 * (bridge/root-setup.ts), then answers smtpd on its queue socket, fd 0, with
 * a Backend over the service, or with failures when it cannot work
 * (bridge/unavailable.ts), until smtpd closes the socket.
 */
export async function serve(arg: string | undefined): Promise<void> {
  let config: BridgeConfig | undefined;
  let problem: string | undefined;
  try {
    config = loadBridgeConfig(arg);
  } catch (err) {
    problem = (err as Error).message;
  }
  let user: UserIds | undefined;
  if (config) {
    try {
      user = bridgeUser(config);
    } catch (err) {
      problem = (err as Error).message;
    }
  }
  // without a config, the reason must still reach the operator when smtpd runs as a daemon (stderr is /dev/null)
  const targets = config ? [config.log] : [defaultLogTarget(), 'stderr'];
  const { log, flush, problems } = openBridgeLog(targets, config?.logLevel ?? 'info', config?.instance ?? '-', user);
  for (const line of problems) log.error(line);
  outliveSignalsAndErrors(log);

  const counters = new BridgeCounters(config?.instance);
  const root = new RootSetup();
  let backend: QueueBackend | undefined;
  let bridge: Backend | undefined;
  let client: HttpQueueStore | undefined;
  try {
    if (!config || !user) throw new BridgeConfigError(problem ?? 'misconfigured');
    await root.run(config, user, log);
    client = new HttpQueueStore({
      baseUrl: config.url,
      token: config.token,
      idToken: root.idToken,
      timeoutMs: config.timeoutMs,
      budgetMs: config.retryBudgetMs,
      inlineMax: config.inlineMax,
      limits: config.limits,
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
      discoverer: root.discoverer,
      journal: root.journal,
      takeover: config.takeover,
      drainOnClose: config.drainOnClose,
    });
    log.info({ url: config.url, auth: config.auth, imsg: config.imsg }, `queue-rest ${config.instance} serving smtpd with ${config.url}`);
  } catch (err) {
    log.fatal({ err }, `queue-rest cannot work: ${(err as Error).message}. Every queue request fails until smtpd is restarted with a working set-up.`);
    backend = unavailableBackend((err as Error).message);
    bridge = undefined;
    client = undefined;
    root.abandon(user, log);
  }

  const snapshot = () => counters.snapshot(bridge?.pendingWrites ?? 0);
  let metricsFailing = false;
  const writeMetrics = () => {
    if (!config?.metricsFile) return;
    const pool = { leaseSure: bridge?.leaseSure ?? false, draining: bridge?.draining ?? false, localEnvelopes: bridge?.localEnvelopes.envelopes ?? 0, takenOver: bridge?.takenOver ?? 0 };
    try {
      writeAtomically(config.metricsFile, promText(snapshot(), pool));
      if (metricsFailing) log.info(`metrics written to ${config.metricsFile} again`);
      metricsFailing = false;
    } catch (err) {
      // said once, not every 5 s
      if (!metricsFailing) log.error({ err }, `cannot write the metrics to ${config.metricsFile}: its folder must be writable by the bridge's user`);
      metricsFailing = true;
    }
  };
  const writeStats = () => {
    writeMetrics();
    if (root.statsFd === undefined) return;
    try {
      ftruncateSync(root.statsFd, 0);
      writeSync(root.statsFd, JSON.stringify(snapshot(), null, 2) + '\n', 0);
    } catch (err) {
      log.warn({ err }, `cannot write the counters to ${config?.statsFile}`);
    }
  };
  process.on('SIGUSR1', () => {
    writeStats();
    log.info({ stats: snapshot() }, 'counters');
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
      log.warn({ err, request: name }, `${name} failed; answered as a failure: ${(err as Error)?.message ?? err}`);
      return failureReply(m.type);
    }
  });
  await channel.run();
  await bridge?.close();
  root.discoverer?.close();
  clearInterval(timer);
  writeStats();
  log.info({ stats: snapshot() }, 'smtpd closed the queue socket: exiting');
  await client?.close();
  flush();
}

/** smtpd would go down with the bridge: the signals that stop services are ignored, and a throw is only logged. */
function outliveSignalsAndErrors(log: Logger): void {
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
}
