import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { FUNCTION_NAMES } from '../lib/api';

/**
 * `npm run deploy -- [options]`: deploys every queue function with gcloud, one
 * `gcloud functions deploy` each (gen2, nodejs20, HTTP), or all of them as one
 * App Engine service (--target=appengine). --dry-run prints the commands.
 *
 * Authentication it sets up (README: Deploy):
 *   default   not public: Google's front end admits only callers with the
 *             Cloud Functions Invoker role (--invoker), checked on a Google ID
 *             token; QUEUE_AUTH=iam. With --token-secret, the shared token is
 *             required as well, in X-Queue-Token.
 *   --public  anyone may call the URL and the shared token (--token-secret,
 *             required) is the only check; QUEUE_AUTH=token. Needed behind
 *             Firebase Hosting, whose rewrites call functions without identity.
 *   --admin-token-secret
 *             instead of the shared token, one credential per MX
 *             (QUEUE_AUTH=tokens), with this secret as the administrators'
 *             bootstrap token; public or not.
 */
const USAGE = `usage: npm run deploy -- [--project=P] [--region=us-central1] [--target=functions|appengine]
       [--token-secret=SECRET | --admin-token-secret=SECRET] [--public] [--invoker=MEMBER]... [--service-account=SA]
       [--namespace=opensmtpd] [--database=ID] [--only=fn1,fn2] [--dry-run]`;

const { values } = parseArgs({
  options: {
    project: { type: 'string' },
    region: { type: 'string', default: 'us-central1' },
    target: { type: 'string', default: 'functions' },
    'token-secret': { type: 'string' },
    'admin-token-secret': { type: 'string' },
    public: { type: 'boolean', default: false },
    invoker: { type: 'string', multiple: true, default: [] },
    'service-account': { type: 'string' },
    namespace: { type: 'string', default: 'opensmtpd' },
    database: { type: 'string' },
    only: { type: 'string' },
    'dry-run': { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});

function fail(message: string): never {
  process.stderr.write(`deploy: ${message}\n${USAGE}\n`);
  process.exit(2);
}

function quote(arg: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

function functionCommands(): string[][] {
  const only = values.only?.split(',').filter(Boolean);
  for (const name of only ?? []) if (!(FUNCTION_NAMES as readonly string[]).includes(name)) fail(`no function named ${name}`);
  const names = only ?? [...FUNCTION_NAMES];
  const secret = values['token-secret'];
  const adminSecret = values['admin-token-secret'];
  if (secret && adminSecret) fail('--token-secret and --admin-token-secret exclude each other: one shared token, or one credential per MX');
  if (values.public && !secret && !adminSecret) fail('--public needs --token-secret or --admin-token-secret: a public function must check a token');
  const auth = adminSecret ? 'tokens' : values.public ? 'token' : 'iam';
  const env = [`QUEUE_AUTH=${auth}`, `QUEUE_NAMESPACE=${values.namespace}`];
  if (values.database) env.push(`QUEUE_DATABASE=${values.database}`);
  const common = [
    '--gen2',
    '--runtime=nodejs20',
    `--region=${values.region}`,
    ...(values.project ? [`--project=${values.project}`] : []),
    '--source=.',
    '--trigger-http',
    values.public ? '--allow-unauthenticated' : '--no-allow-unauthenticated',
    '--memory=512Mi',
    '--timeout=120s',
    `--set-env-vars=${env.join(',')}`,
    ...(secret ? [`--set-secrets=QUEUE_TOKEN=${secret}:latest`] : []),
    ...(adminSecret ? [`--set-secrets=QUEUE_ADMIN_TOKEN=${adminSecret}:latest`] : []),
    ...(values['service-account'] ? [`--service-account=${values['service-account']}`] : []),
    '--quiet',
  ];
  const commands = names.map((name) => ['gcloud', 'functions', 'deploy', name, `--entry-point=${name}`, ...common]);
  for (const member of values.invoker) {
    for (const name of names) {
      commands.push([
        'gcloud',
        'functions',
        'add-invoker-policy-binding',
        name,
        `--region=${values.region}`,
        ...(values.project ? [`--project=${values.project}`] : []),
        `--member=${member}`,
      ]);
    }
  }
  return commands;
}

function appEngineCommands(): string[][] {
  return [['gcloud', 'app', 'deploy', 'app.yaml', ...(values.project ? [`--project=${values.project}`] : []), '--quiet']];
}

function main(): void {
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (!['functions', 'appengine'].includes(values.target)) fail(`unknown --target ${values.target}`);
  const commands = values.target === 'appengine' ? appEngineCommands() : functionCommands();
  for (const command of commands) {
    process.stdout.write(`${command.map(quote).join(' ')}\n`);
    if (values['dry-run']) continue;
    const result = spawnSync(command[0], command.slice(1), { stdio: 'inherit' });
    if (result.status !== 0) fail(`${command.slice(0, 4).join(' ')} failed (exit ${result.status ?? result.error?.message})`);
  }
  if (!values['dry-run'] && values.target === 'functions' && !values.public && values.invoker.length === 0) {
    process.stdout.write('note: no --invoker given; grant the bridge\'s service account roles/cloudfunctions.invoker (or run.invoker) on each function.\n');
  }
}

main();
