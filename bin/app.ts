import '../functions';
import { loadConfig } from '../lib/config';
import { createLogger } from '../lib/log';
import { readSecretsFromManager } from '../lib/secret';
import { createQueueServer, listen } from '../lib/server';

/**
 * The App Engine entry point (app.yaml): every queue function in one
 * service, at the same paths as the deployed functions. App Engine sets PORT;
 * QUEUE_TOKEN_SECRET names the Secret Manager secret that holds the token
 * (QUEUE_ADMIN_TOKEN_SECRET the administrators' token of QUEUE_AUTH=tokens).
 */
const log = createLogger({ name: 'app' });

async function main(): Promise<void> {
  await readSecretsFromManager(process.env);
  const config = loadConfig();
  const port = await listen(createQueueServer(), Number(process.env.PORT ?? 8080), process.env.HOST ?? '0.0.0.0');
  log.info({ port, auth: config.auth.mode }, `queue functions listening on port ${port}`);
}

main().catch((err: unknown) => {
  log.error({ err }, 'cannot start');
  process.exit(1);
});
