import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { bridgeInstructions } from './deploy/bridge';
import { appYamlMismatch, deployOptions, DeployOptionsError, deployPlan, RUNTIME } from './deploy/plan';
import { appEngineHost, DeployError, runPlan } from './deploy/run';
import { printedPlan } from './deploy/shell';

/**
 * `npm run deploy -- --project=P [options]`: deploys the queue with gcloud,
 * one Cloud Function per operation (gen2, nodejs24, HTTP) or all of them as
 * one App Engine service, and ends with each MX's bridge configuration and
 * how its credential gets there. --setup first sets the project up from zero,
 * idempotently; --dry-run prints every gcloud command instead. The steps
 * themselves are in deploy/plan.ts (README: Deploy).
 */
const USAGE = `usage: npm run deploy -- --project=P [--setup] [--dry-run] [--region=us-central1] [--target=functions|appengine]
       [--admin-token-secret=queue-admin-token]                 one credential per MX (the default): public URL, token checked first
       [--iam --mx=INSTANCE=SA_EMAIL... [--admin=EMAIL...]]      not public: Google checks each MX's ID token first
       [--token-secret=SECRET]                                 one shared token: a single MX, or development
       [--mx=INSTANCE...] [--namespace=opensmtpd] [--database=ID] [--database-location=LOC] [--only=fn1,fn2]`;

const ROOT = path.join(__dirname, '..', '..');

function main(): number {
  const { values } = parseArgs({
    options: {
      project: { type: 'string' },
      region: { type: 'string' },
      target: { type: 'string' },
      iam: { type: 'boolean' },
      'token-secret': { type: 'string' },
      'admin-token-secret': { type: 'string' },
      mx: { type: 'string', multiple: true },
      admin: { type: 'string', multiple: true },
      namespace: { type: 'string' },
      database: { type: 'string' },
      'database-location': { type: 'string' },
      only: { type: 'string' },
      setup: { type: 'boolean' },
      'dry-run': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const options = deployOptions(values);
  if (options.target === 'appengine') {
    const problem = appYamlMismatch(readFileSync(path.join(ROOT, 'app.yaml'), 'utf8'), options);
    if (problem) throw new DeployOptionsError(problem);
  }
  const steps = deployPlan(options);
  const print = (line: string) => process.stdout.write(`${line}\n`);
  const what = `project ${options.project}, ${options.target} in ${options.region}, ${RUNTIME}, QUEUE_AUTH=${options.auth}`;
  if (values['dry-run']) {
    print(`# npm run deploy, dry run (nothing was run): ${what}\n`);
    print(printedPlan(steps));
    print(bridgeInstructions(options));
    return 0;
  }
  print(`# npm run deploy: ${what}`);
  runPlan(steps, ROOT, print);
  const host = options.target === 'appengine' ? appEngineHost(options.project) : undefined;
  print('');
  print(bridgeInstructions(options, host ? `https://${host}` : undefined));
  return 0;
}

try {
  process.exitCode = main();
} catch (err) {
  if (!(err instanceof DeployOptionsError || err instanceof DeployError)) throw err;
  process.stderr.write(`deploy: ${err.message}\n${err instanceof DeployOptionsError ? `${USAGE}\n` : ''}`);
  process.exitCode = err instanceof DeployOptionsError ? 2 : 1;
}
