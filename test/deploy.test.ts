import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { FUNCTION_NAMES } from '../lib/api';

/**
 * The deploy layout, checked offline with gcloud's own code: the dry-run's
 * commands parse, .gcloudignore uploads exactly what a build needs, app.yaml
 * is valid, and firebase.json routes every function.
 */
const ROOT = path.join(__dirname, '..');
const SDK = '/usr/lib/google-cloud-sdk';

function run(command: string, args: string[], env: Record<string, string> = {}) {
  const result = spawnSync(command, args, { cwd: ROOT, encoding: 'utf8', env: { ...process.env, CLOUDSDK_CORE_DISABLE_PROMPTS: '1', ...env } });
  if (result.error) throw new Error(`${command} could not run (${result.error.message}); the tests need the Google Cloud SDK`);
  return { status: result.status, out: result.stdout, err: result.stderr };
}

function dryRun(...args: string[]): string[][] {
  const result = run(process.execPath, ['dist/bin/deploy.js', '--dry-run', ...args]);
  expect(result.status).toBe(0);
  return result.out
    .trim()
    .split('\n')
    .filter((line) => line.startsWith('gcloud '))
    .map((line) => line.split(' '));
}

describe('npm run deploy -- --dry-run', () => {
  test('prints one gen2, nodejs20, HTTP, non-public gcloud functions deploy per function', () => {
    const commands = dryRun('--project=p', '--token-secret=queue-token');
    expect(commands.map((c) => c[3])).toEqual([...FUNCTION_NAMES]);
    for (const c of commands) {
      expect(c.slice(0, 3)).toEqual(['gcloud', 'functions', 'deploy']);
      expect(c).toEqual(
        expect.arrayContaining([
          `--entry-point=${c[3]}`,
          '--gen2',
          '--runtime=nodejs20',
          '--trigger-http',
          '--no-allow-unauthenticated',
          '--source=.',
          '--set-secrets=QUEUE_TOKEN=queue-token:latest',
          '--set-env-vars=QUEUE_AUTH=iam,QUEUE_NAMESPACE=opensmtpd',
        ]),
      );
    }
  });

  test('a public deploy needs the shared token and sets QUEUE_AUTH=token', () => {
    expect(run(process.execPath, ['dist/bin/deploy.js', '--dry-run', '--public']).status).toBe(2);
    const [first] = dryRun('--public', '--token-secret=s', '--only=envelopeWalk');
    expect(first).toEqual(expect.arrayContaining(['--allow-unauthenticated', '--set-env-vars=QUEUE_AUTH=token,QUEUE_NAMESPACE=opensmtpd']));
  });

  test('one credential per MX: --admin-token-secret sets QUEUE_AUTH=tokens, public or not, and excludes the shared token', () => {
    for (const access of [[], ['--public']]) {
      const [first] = dryRun(...access, '--admin-token-secret=queue-admin-token', '--only=envelopeWalk');
      expect(first).toEqual(expect.arrayContaining(['--set-env-vars=QUEUE_AUTH=tokens,QUEUE_NAMESPACE=opensmtpd', '--set-secrets=QUEUE_ADMIN_TOKEN=queue-admin-token:latest']));
    }
    expect(run(process.execPath, ['dist/bin/deploy.js', '--dry-run', '--token-secret=t', '--admin-token-secret=a']).status).toBe(2);
  });

  test("gcloud accepts the printed commands' arguments (it stops only for want of credentials)", () => {
    const commands = [
      ...dryRun('--project=p', '--token-secret=t', '--only=messageCommit', '--invoker=serviceAccount:q@p.iam.gserviceaccount.com'),
      ...dryRun('--target=appengine', '--project=p'),
    ];
    expect(commands).toHaveLength(3);
    for (const [, ...args] of commands) {
      const result = run('gcloud', args, { CLOUDSDK_CONFIG: path.join(ROOT, 'node_modules/.cache/gcloud-empty') });
      expect(result.status).not.toBe(0);
      expect(result.err).not.toMatch(/unrecognized arguments|Invalid value|argument .* expected/);
      expect(result.err).toMatch(/credentialed accounts|gcloud auth login|gcloud config set account/);
    }
  });
});

describe('the deploy files', () => {
  test('.gcloudignore uploads the sources the build compiles and the package files, nothing else', () => {
    const result = run('gcloud', ['meta', 'list-files-for-upload', '.']);
    expect(result.status).toBe(0);
    const files = result.out.trim().split('\n').sort();
    const expected = [
      'package.json',
      'package-lock.json',
      'tsconfig.json',
      'tsconfig.deploy.json',
      'bin/app.ts',
      ...FUNCTION_NAMES.map((n) => `functions/${n}.ts`),
      'functions/index.ts',
    ];
    expect(files).toEqual(expect.arrayContaining(expected));
    const others = files.filter((f) => !expected.includes(f));
    expect(others.every((f) => /^lib\/[a-z-]+\.ts$/.test(f))).toBe(true);
    expect(files.some((f) => /^(test|dist|node_modules|bench|bridge|dev)\//.test(f) || f.includes('token'))).toBe(false);
  });

  test('the uploaded sources compile on their own with tsconfig.deploy.json', () => {
    const result = run(process.execPath, [require.resolve('typescript/bin/tsc'), '--noEmit', '-p', 'tsconfig.deploy.json', '--listFilesOnly']);
    expect(result.status).toBe(0);
    const own = result.out.split('\n').filter((f) => f.startsWith(ROOT) && !f.includes('node_modules'));
    expect(own.map((f) => path.relative(ROOT, f)).every((f) => /^(functions|lib)\/|^bin\/app\.ts$/.test(f))).toBe(true);
  });

  test("app.yaml is valid for gcloud's parser and starts the built app", () => {
    const python = `${SDK}/platform/bundledpythonunix/bin/python3`;
    expect(existsSync(python)).toBe(true);
    const script = [
      'import sys',
      `sys.path[:0] = ['${SDK}/lib', '${SDK}/lib/third_party']`,
      'from googlecloudsdk.api_lib.app import yaml_parsing',
      "info = yaml_parsing.ServiceYamlInfo.FromFile('app.yaml')",
      'print(info.runtime, info.env, info.parsed.entrypoint)',
    ].join('\n');
    const result = run(python, ['-c', script]);
    expect(result.err).toBe('');
    expect(result.out.trim()).toBe('nodejs20 Environment.STANDARD exec node dist/bin/app.js');
  });

  test('firebase.json routes every function and keeps the emulators on loopback', () => {
    const firebase = JSON.parse(readFileSync(path.join(ROOT, 'firebase.json'), 'utf8'));
    const rewrites = firebase.hosting.rewrites as { source: string; function: { functionId: string } }[];
    expect(rewrites.map((r) => [r.source, r.function.functionId])).toEqual(FUNCTION_NAMES.map((n) => [`/${n}`, n]));
    expect(existsSync(path.join(ROOT, firebase.hosting.public))).toBe(true);
    for (const emulator of ['functions', 'firestore', 'hub', 'logging']) expect(firebase.emulators[emulator].host).toBe('127.0.0.1');
  });
});

describe('npm run bridge:install -- --dry-run', () => {
  test('installs a root-owned copy out of the checkout, and a drop-in that gives Debian\'s smtpd the -B flag and the token file', () => {
    const result = run(process.execPath, ['dist/bin/install-bridge.js', '--dry-run', '--systemd=https://r-p.cloudfunctions.net']);
    expect(result.status).toBe(0);
    expect(result.out).toContain('would install /usr/local/lib/opensmtpd/queue-rest/{queue-rest.js,uwrap.node} (root:root, 0644)');
    expect(result.out).toContain('would install /usr/libexec/opensmtpd/queue-rest (root:root, 0755):');
    expect(result.out).toContain(`exec '${realpathSync(process.execPath)}' '/usr/local/lib/opensmtpd/queue-rest/queue-rest.js' "$@"`);
    expect(result.out).not.toContain(ROOT);
    expect(result.out).toContain('ExecStart=\nExecStart=/usr/sbin/smtpd -B queue=rest:https://r-p.cloudfunctions.net\n');
    expect(result.out).toContain('Environment=QUEUE_TOKEN_FILE=/etc/opensmtpd/queue-rest.token');
  });
});
