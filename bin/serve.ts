import { randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import '../functions';
import { startEmulator, type Emulator } from '../dev/emulator';
import { localSettings } from '../dev/local-settings';
import { ConfigError, loadConfig } from '../lib/config';
import { createLogger } from '../lib/log';
import { createQueueServer, listen } from '../lib/server';
import { serviceFor, useService } from '../lib/service';

/**
 * `npm start`: every queue function in one process on http://127.0.0.1:8080,
 * backed by a Datastore emulator that it starts itself, or by the one at
 * DATASTORE_EMULATOR_HOST, or by a real project (QUEUE_DATASTORE=gcp).
 */
const log = createLogger({ name: 'serve' });
const local = localSettings();
process.env.METADATA_SERVER_DETECTION ??= 'none';

async function main(): Promise<void> {
  prepareToken();
  const config = loadConfig();
  if (config.auth.mode === 'none') {
    log.warn('QUEUE_AUTH=none: every request is accepted without a token. For local use only.');
  }
  if (config.auth.mode === 'tokens' && !config.auth.adminToken) {
    log.warn('QUEUE_AUTH=tokens without QUEUE_ADMIN_TOKEN: only administrators whose credentials were issued before can issue others');
  }
  const emulator = await prepareStorage(config.datastore.namespace, config.store);
  // the emulator's project, now that it is known
  config.datastore.projectId ??= process.env.DATASTORE_PROJECT_ID;
  const { store, credentials } = serviceFor(config);
  useService({ config, store, credentials });

  const server = createQueueServer();
  const host = process.env.HOST ?? local.functions.host;
  const port = await listen(server, Number(process.env.PORT ?? local.functions.port), host);
  log.info({ url: `http://${host}:${port}`, auth: config.auth.mode }, `queue functions at http://${host}:${port}/<functionName>`);

  const stop = async (signal: string) => {
    log.info(`${signal}: stopping`);
    server.close();
    server.closeAllConnections();
    await store.close();
    await emulator?.stop();
    process.exit(0);
  };
  process.once('SIGINT', () => void stop('SIGINT'));
  process.once('SIGTERM', () => void stop('SIGTERM'));
}

/** For local use, a token file that does not exist yet is created with a fresh random token. */
function prepareToken(): void {
  const file = process.env.QUEUE_TOKEN_FILE;
  if (process.env.QUEUE_TOKEN || !file || existsSync(file)) return;
  writeFileSync(file, randomBytes(32).toString('hex') + '\n', { mode: 0o600, flag: 'wx' });
  log.info({ file }, `created a new queue token in ${file}`);
}

async function prepareStorage(namespace: string, kind: 'datastore' | 'memory'): Promise<Emulator | undefined> {
  if (kind === 'memory') {
    log.warn('data: in this process memory (QUEUE_STORE=memory); lost when it stops');
    return undefined;
  }
  if (process.env.DATASTORE_EMULATOR_HOST) {
    process.env.DATASTORE_PROJECT_ID ??= 'local-queue';
    log.info(
      `data: the Datastore emulator at ${process.env.DATASTORE_EMULATOR_HOST}, project ${process.env.DATASTORE_PROJECT_ID}, ` +
        `namespace ${namespace}; it lives as long as that emulator keeps it`,
    );
    return undefined;
  }
  if (process.env.QUEUE_DATASTORE === 'gcp') {
    const project = process.env.DATASTORE_PROJECT_ID ?? process.env.GOOGLE_CLOUD_PROJECT ?? 'the default project';
    log.info(`data: Cloud Datastore of ${project}, namespace ${namespace}; durable`);
    return undefined;
  }
  const dataDir = process.env.QUEUE_EMULATOR_DATA;
  const emulator = await startEmulator(
    dataDir ? { kind: 'datastore', dataDir, port: emulatorPort() } : { kind: 'firestore', port: emulatorPort() },
  );
  process.env.DATASTORE_EMULATOR_HOST = emulator.host;
  process.env.DATASTORE_PROJECT_ID ??= 'local-queue';
  log.info(
    { emulator: emulator.host, namespace },
    dataDir
      ? `data: the legacy Datastore emulator at ${emulator.host}, stored in ${dataDir}; survives a restart`
      : `data: the Firestore emulator in Datastore mode at ${emulator.host}, in memory; lost when npm start stops (set QUEUE_EMULATOR_DATA=DIR to keep it)`,
  );
  return emulator;
}

/** QUEUE_EMULATOR_PORT, or firebase.json's; 0 takes any free port. */
function emulatorPort(): number | undefined {
  const port = Number(process.env.QUEUE_EMULATOR_PORT ?? local.firestore.port);
  return port === 0 ? undefined : port;
}

main().catch((err: unknown) => {
  if (err instanceof ConfigError) log.error(err.message);
  else log.error({ err }, 'cannot start');
  process.exit(1);
});
