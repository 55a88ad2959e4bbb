import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type { Command, Step } from './plan';
import { commandLine } from './shell';

export class DeployError extends Error {
  override name = 'DeployError';
}

const GRANT_ATTEMPTS = 5;
const GRANT_PAUSE_MS = 10_000;

function spawnCommand(command: Command, quiet: boolean, cwd?: string) {
  const [program, ...args] = command.argv;
  const input = command.stdin === 'random-token' ? randomBytes(32).toString('hex') : undefined;
  return spawnSync(program, args, {
    cwd,
    encoding: 'utf8',
    input,
    stdio: [input === undefined ? 'inherit' : 'pipe', quiet ? 'pipe' : 'inherit', quiet ? 'pipe' : 'inherit'],
  });
}

const sleep = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/**
 * Runs the steps in order: a step whose describe succeeds is skipped (after
 * checking what it printed, when it must say something); any other failure
 * stops the deploy. A role granted to a service account just created may be
 * refused for a few seconds until IAM sees the account, so grants are retried.
 * `root` is the checkout: what `--source=.` and app.yaml name.
 */
export function runPlan(steps: readonly Step[], root: string, print: (line: string) => void): void {
  for (const step of steps) {
    print(`# ${step.why}`);
    if (step.describe) {
      const found = spawnCommand(step.describe, true, root);
      if (found.status === 0) {
        if (step.expect && found.stdout.trim() !== step.expect.output) throw new DeployError(step.expect.otherwise);
        print('#   present: skipped');
        continue;
      }
    }
    print(commandLine(step.create));
    const grant = step.create.argv.includes('add-iam-policy-binding');
    for (let attempt = 1; ; attempt++) {
      const result = spawnCommand(step.create, grant, root);
      if (result.status === 0) break;
      if (!grant || attempt === GRANT_ATTEMPTS) {
        const why = result.error?.message ?? `exit ${result.status}${grant ? `: ${result.stderr.trim()}` : ''}`;
        throw new DeployError(`${step.create.argv.slice(0, 4).join(' ')} failed (${why})`);
      }
      print(`#   refused (${result.stderr.trim().split('\n').at(-1)}); again in ${GRANT_PAUSE_MS / 1000} s`);
      sleep(GRANT_PAUSE_MS);
    }
  }
}

/** The App Engine app's host name, or undefined when gcloud cannot say. */
export function appEngineHost(project: string): string | undefined {
  const result = spawnCommand({ argv: ['gcloud', 'app', 'describe', '--format=value(defaultHostname)', `--project=${project}`] }, true);
  return result.status === 0 && result.stdout.trim() ? result.stdout.trim() : undefined;
}
