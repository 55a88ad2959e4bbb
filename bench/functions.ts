import { writeFileSync } from 'node:fs';
import '../functions';
import { CountingStorage } from '../dev/counting-storage';
import { loadConfig } from '../lib/config';
import { createQueueServer, listen } from '../lib/server';
import { serviceOver, storageFor, useService } from '../lib/service';

/**
 * The functions as `npm start` serves them, on the storage QUEUE_STORE names,
 * with what they ask of that storage counted. On SIGUSR2 the counts so far
 * are written to BENCH_COUNTS_FILE, so the benchmark can tell the storage
 * operations of accepting mail from those of delivering it.
 */
async function main(): Promise<void> {
  if (process.env.DATASTORE_EMULATOR_HOST) process.env.DATASTORE_PROJECT_ID ??= 'bench';
  const config = loadConfig();
  config.datastore.projectId ??= process.env.DATASTORE_PROJECT_ID;
  const storage = new CountingStorage(storageFor(config));
  useService(serviceOver(config, storage));
  const server = createQueueServer();
  await listen(server, Number(process.env.PORT), '127.0.0.1');
  let signals = 0;
  process.on('SIGUSR2', () => writeFileSync(process.env.BENCH_COUNTS_FILE!, JSON.stringify({ signal: ++signals, ops: storage.ops })));
  process.once('SIGTERM', () => process.exit(0));
}

main().catch((err: unknown) => {
  process.stderr.write(`bench functions: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
