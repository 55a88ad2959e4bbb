import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { appYamlMismatch, deployOptions, RUNTIME } from '../bin/deploy/plan';
import { parseConfigFile, loadBridgeConfig } from '../bridge/config';
import { FUNCTION_NAMES } from '../lib/api';
import { loadConfig } from '../lib/config';
import { readSecretsFromManager } from '../lib/secret';

/**
 * The deploy layout, checked offline with gcloud's own code: the dry-run's
 * commands parse and make a whole project from zero, .gcloudignore uploads exactly what a build needs, app.yaml
 * is valid, and firebase.json routes every function.
 */
const ROOT = path.join(__dirname, '..');
const SDK = '/usr/lib/google-cloud-sdk';

function run(command: string, args: string[], env: Record<string, string> = {}) {
  const result = spawnSync(command, args, { cwd: ROOT, encoding: 'utf8', env: { ...process.env, CLOUDSDK_CORE_DISABLE_PROMPTS: '1', ...env } });
  if (result.error) throw new Error(`${command} could not run (${result.error.message}); the tests need the Google Cloud SDK`);
  return { status: result.status, out: result.stdout, err: result.stderr };
}

const PROJECT = 'mail-queue-1';
// a gcloud configuration of its own, without an account, out of the checkout and node_modules
const GCLOUD_ENV = { CLOUDSDK_CONFIG: path.join(tmpdir(), 'queue-rest-gcloud-empty') };
const IAM = ['--iam', `--mx=mx1=mx1-bridge@${PROJECT}.iam.gserviceaccount.com`, '--mx=mx2=vm@other-project.iam.gserviceaccount.com', '--admin=ops@example.com'];

/** The printed dry-run of `npm run deploy -- ARGS --dry-run`. */
function dryRun(...args: string[]): string {
  const result = run(process.execPath, ['dist/bin/deploy.js', '--dry-run', ...args]);
  expect(result.err).toBe('');
  expect(result.status).toBe(0);
  return result.out;
}

/** Splits a printed command line as sh does (single quotes, and '\'' inside them). */
function shellWords(line: string): string[] {
  const words: string[] = [];
  for (const [, quoted, plain] of line.matchAll(/'((?:[^']|'\\'')*)'|(\S+)/g)) words.push(quoted !== undefined ? quoted.replace(/'\\''/g, "'") : plain);
  return words;
}

/** Every gcloud command the text prints, with what it reads on stdin. */
function gcloudCommands(text: string): { argv: string[]; stdin?: string }[] {
  return text
    .split('\n')
    .filter((line) => !line.startsWith('#') && line.includes('gcloud '))
    .map((line) => {
      const command = line.slice(line.indexOf('gcloud ')).split(/ [<>|)]|\)$/)[0];
      return { argv: shellWords(command), stdin: line.includes('| gcloud ') ? 'a'.repeat(64) : undefined };
    });
}

/** The bridge configuration files the text prints (cat > queue-rest.NAME.conf <<'EOF' … EOF). */
function printedConfigs(text: string): Map<string, string> {
  return new Map([...text.matchAll(/^cat > queue-rest\.(\S+)\.conf <<'EOF'\n([\s\S]*?)^EOF$/gm)].map(([, name, body]) => [name, body]));
}

/** The lines of the commands, to check order: each needle must come after the one before it. */
function expectInOrder(text: string, needles: (string | RegExp)[]): void {
  let at = 0;
  for (const needle of needles) {
    const rest = text.slice(at);
    const index = typeof needle === 'string' ? rest.indexOf(needle) : rest.search(needle);
    if (index < 0) throw new Error(`not found after offset ${at}: ${needle}`);
    at += index + 1;
  }
}

const deployLines = (text: string) => text.split('\n').filter((l) => l.startsWith('gcloud functions deploy '));

describe('npm run deploy -- --setup --dry-run, for a new project', () => {
  test('per-MX tokens by default: APIs, a Datastore-mode database, the secret from stdin, service accounts, least roles, then every function, public, as the runtime account', () => {
    const text = dryRun('--setup', `--project=${PROJECT}`);
    const run = `queue-rest-run@${PROJECT}.iam.gserviceaccount.com`;
    const build = `queue-rest-build@${PROJECT}.iam.gserviceaccount.com`;
    expectInOrder(text, [
      /^gcloud services enable cloudfunctions.googleapis.com run.googleapis.com cloudbuild.googleapis.com artifactregistry.googleapis.com secretmanager.googleapis.com datastore.googleapis.com firestore.googleapis.com iam.googleapis.com/m,
      "gcloud firestore databases describe '--database=(default)' '--format=value(type)'",
      '# if missing:',
      "gcloud firestore databases create '--database=(default)' --location=us-central1 --type=datastore-mode",
      'gcloud secrets describe queue-admin-token',
      '# if missing:',
      "openssl rand -hex 32 | tr -d '\\n' | gcloud secrets create queue-admin-token --data-file=-",
      `gcloud iam service-accounts describe ${run}`,
      '# if missing:',
      'gcloud iam service-accounts create queue-rest-run',
      `gcloud iam service-accounts describe ${build}`,
      '# if missing:',
      'gcloud iam service-accounts create queue-rest-build',
      `gcloud projects add-iam-policy-binding ${PROJECT} --member=serviceAccount:${run} --role=roles/datastore.user`,
      `gcloud secrets add-iam-policy-binding queue-admin-token --member=serviceAccount:${run} --role=roles/secretmanager.secretAccessor`,
      `--member=serviceAccount:${build} --role=roles/logging.logWriter`,
      `--member=serviceAccount:${build} --role=roles/artifactregistry.writer`,
      `--member=serviceAccount:${build} --role=roles/storage.objectAdmin`,
      '# --- deploy ---',
      ...FUNCTION_NAMES.map((name) => `gcloud functions deploy ${name} `),
      '# --- connect each MX',
    ]);
    expect(text).not.toMatch(/roles\/(owner|editor)|add-invoker-policy-binding|app create/);
    const deploys = deployLines(text);
    expect(deploys).toHaveLength(FUNCTION_NAMES.length);
    for (const line of deploys) {
      const name = line.split(' ')[3];
      expect(shellWords(line)).toEqual(
        expect.arrayContaining([
          `--entry-point=${name}`,
          '--gen2',
          '--runtime=nodejs24',
          '--trigger-http',
          '--allow-unauthenticated',
          '--source=.',
          `--service-account=${run}`,
          `--build-service-account=projects/${PROJECT}/serviceAccounts/${build}`,
          '--set-env-vars=QUEUE_AUTH=tokens,QUEUE_NAMESPACE=opensmtpd',
          '--set-secrets=QUEUE_ADMIN_TOKEN=queue-admin-token:latest',
          `--project=${PROJECT}`,
        ]),
      );
    }
  });

  test('without --setup it deploys alone, the same way', () => {
    const text = dryRun(`--project=${PROJECT}`);
    expect(text).not.toMatch(/describe|services enable|add-iam-policy-binding/);
    expect(deployLines(text)).toEqual(deployLines(dryRun('--setup', `--project=${PROJECT}`)));
  });

  test('--iam: not public, each MX mapped to its service account, every MX and administrator an invoker of every function', () => {
    const text = dryRun('--setup', `--project=${PROJECT}`, ...IAM);
    expect(text).toContain(`gcloud iam service-accounts create mx1-bridge '--display-name=opensmtpd-queue-rest mx1-bridge' --project=${PROJECT}`);
    expect(text).not.toContain('gcloud iam service-accounts create vm ');
    expect(text).not.toMatch(/secrets (create|describe)/);
    for (const line of deployLines(text)) {
      const words = shellWords(line);
      expect(words).toEqual(expect.arrayContaining(['--no-allow-unauthenticated', '--clear-secrets']));
      const env = words.find((w) => w.startsWith('--set-env-vars='))!.slice('--set-env-vars='.length);
      // gcloud splits KEY=VALUE pairs at commas unless ^;^ names another delimiter (gcloud topic escaping)
      expect(env.startsWith('^;^')).toBe(true);
      expect(Object.fromEntries(env.slice(3).split(';').map((pair) => [pair.slice(0, pair.indexOf('=')), pair.slice(pair.indexOf('=') + 1)]))).toEqual({
        QUEUE_AUTH: 'iam',
        QUEUE_NAMESPACE: 'opensmtpd',
        QUEUE_IAM_MX: `mx1=mx1-bridge@${PROJECT}.iam.gserviceaccount.com,mx2=vm@other-project.iam.gserviceaccount.com`,
        QUEUE_IAM_ADMINS: 'ops@example.com',
      });
    }
    const invokers = text.split('\n').filter((l) => l.startsWith('gcloud functions add-invoker-policy-binding '));
    expect(invokers).toHaveLength(3 * FUNCTION_NAMES.length);
    for (const member of [`serviceAccount:mx1-bridge@${PROJECT}.iam.gserviceaccount.com`, 'serviceAccount:vm@other-project.iam.gserviceaccount.com', 'user:ops@example.com']) {
      expect(invokers.filter((l) => l.includes(`--member=${member} `)).map((l) => l.split(' ')[3])).toEqual([...FUNCTION_NAMES]);
    }
    expect(text.indexOf('add-invoker-policy-binding')).toBeGreaterThan(text.lastIndexOf('gcloud functions deploy'));
  });

  test('--target=appengine: the App Engine app and its one service, running as the runtime account', () => {
    const text = dryRun('--setup', `--project=${PROJECT}`, '--target=appengine');
    expectInOrder(text, [
      /^gcloud services enable appengine.googleapis.com /m,
      'gcloud firestore databases create',
      'gcloud secrets create queue-admin-token',
      'gcloud iam service-accounts create queue-rest-run',
      'gcloud app describe',
      '# if missing:',
      `gcloud app create --region=us-central --project=${PROJECT}`,
      `gcloud app deploy app.yaml --service-account=queue-rest-run@${PROJECT}.iam.gserviceaccount.com --quiet --project=${PROJECT}`,
    ]);
    expect(text).not.toMatch(/cloudfunctions|queue-rest-build|gcloud functions/);
  });

  test('options that cannot work together are refused before anything runs', () => {
    for (const args of [
      ['--iam'], // no MX
      ['--iam', '--mx=mx1'], // no service account
      ['--iam', '--mx=mx1=a@b.iam.gserviceaccount.com', '--token-secret=t'],
      ['--iam', '--mx=mx1=a@b.iam.gserviceaccount.com', '--target=appengine'],
      ['--token-secret=t', '--admin-token-secret=a'],
      ['--mx=mx1=a@b.iam.gserviceaccount.com'], // a service account without --iam
      ['--admin=ops@example.com'],
      ['--only=nope'],
      ['--mx=mx1', '--mx=mx1'],
      ['--iam', '--mx=mx1=a@b.iam.gserviceaccount.com', '--mx=mx2=a@b.iam.gserviceaccount.com'],
      ['--iam', '--mx=mx1=a@b.iam.gserviceaccount.com', '--admin=a@b.iam.gserviceaccount.com'],
      ['--admin-token-secret=a b'],
      ['--target=appengine', '--token-secret=t'], // app.yaml says tokens
    ]) {
      const result = run(process.execPath, ['dist/bin/deploy.js', '--dry-run', `--project=${PROJECT}`, ...args]);
      expect([args, result.status]).toEqual([args, 2]);
      expect(result.out).toBe('');
    }
    expect(run(process.execPath, ['dist/bin/deploy.js', '--dry-run']).status).toBe(2);
  });

  test("gcloud's parser accepts every printed command, the one fed a secret on stdin included (it stops only for want of credentials)", async () => {
    const texts = [
      dryRun('--setup', `--project=${PROJECT}`),
      dryRun('--setup', `--project=${PROJECT}`, '--token-secret=queue-token', '--database=queue'),
      dryRun('--setup', `--project=${PROJECT}`, ...IAM),
      dryRun('--setup', `--project=${PROJECT}`, '--target=appengine'),
    ];
    const seen = new Set<string>();
    const commands = texts.flatMap(gcloudCommands).filter(({ argv }) => {
      // one of each shape: the functions, accounts and roles differ only in their names
      const shape = argv
        .map((a) => a.replace(/^(--(?:member|role|display-name|iam-account))=.*/, '$1=X').replace(/^[^-=]*@.*|^(message|envelope|instance|queue|credential)[A-Z]\w*$/, 'NAME'))
        .join(' ')
        .replace(/=(message|envelope|instance|queue|credential)[A-Z]\w*/g, '=NAME');
      return !seen.has(shape) && seen.add(shape);
    });
    expect(commands.some((c) => c.stdin !== undefined && c.argv.includes('--data-file=-'))).toBe(true);
    expect(commands.length).toBeGreaterThan(15);
    // a scratch folder, with app.yaml and index.yaml: gcloud makes some output files (a key's) before it asks for credentials
    const cwd = mkdtempSync(path.join(tmpdir(), 'deploy-parse-'));
    for (const file of ['app.yaml', 'index.yaml']) copyFileSync(path.join(ROOT, file), path.join(cwd, file));
    const parsed = async ({ argv, stdin }: { argv: string[]; stdin?: string }) => {
      const child = spawn('gcloud', argv.slice(1), { cwd, env: { ...process.env, CLOUDSDK_CORE_DISABLE_PROMPTS: '1', ...GCLOUD_ENV } });
      child.stdin.end(stdin ?? '');
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const [status] = (await once(child, 'close')) as [number];
      return { command: argv.join(' '), status, stderr };
    };
    const results = [];
    for (let i = 0; i < commands.length; i += 4) results.push(...(await Promise.all(commands.slice(i, i + 4).map(parsed))));
    rmSync(cwd, { recursive: true, force: true });
    for (const { command, status, stderr } of results) {
      expect([command, status]).not.toEqual([command, 0]);
      expect([command, stderr]).not.toEqual([command, expect.stringMatching(/unrecognized arguments|Invalid value|Invalid choice|argument .* expected|Bad syntax|At most one of/)]);
      expect([command, stderr]).toEqual([command, expect.stringMatching(/credentialed accounts|gcloud auth login|gcloud config set account/)]);
    }
  }, 120_000);

  test("the bridge configuration it prints last parses with the bridge's own parser and names the deployed auth mode", () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'deploy-conf-'));
    try {
      const cases: [string[], string, 'token' | 'iam', string[]][] = [
        [[], `https://us-central1-${PROJECT}.cloudfunctions.net`, 'token', ['mx1']],
        [['--mx=a', '--mx=b'], `https://us-central1-${PROJECT}.cloudfunctions.net`, 'token', ['a', 'b']],
        [['--token-secret=queue-token', '--region=europe-west1'], `https://europe-west1-${PROJECT}.cloudfunctions.net`, 'token', ['mx1']],
        [IAM, `https://us-central1-${PROJECT}.cloudfunctions.net`, 'iam', ['mx1', 'mx2', 'admin']],
        [['--target=appengine'], `https://${PROJECT}.REGION_ID.r.appspot.com`, 'token', ['mx1']],
      ];
      for (const [args, url, auth, names] of cases) {
        const text = dryRun('--setup', `--project=${PROJECT}`, ...args);
        const configs = printedConfigs(text);
        expect([...configs.keys()]).toEqual(names);
        for (const [name, body] of configs) {
          const settings = parseConfigFile(body);
          const file = path.join(dir, `${name}.conf`);
          writeFileSync(file, body, { mode: 0o644 });
          const config = loadBridgeConfig(file, { QUEUE_TOKEN: 'a-token-of-the-right-length' });
          expect(config).toMatchObject({ url, auth });
          if (name === 'admin') continue;
          expect(config.instance).toBe(name);
          expect(settings['token-file']).toBe(auth === 'token' ? '/etc/opensmtpd/queue-rest.token' : undefined);
        }
        if (auth === 'token') {
          const secret = args.find((a) => a.startsWith('--token-secret='))?.split('=')[1] ?? 'queue-admin-token';
          expect(text).toContain(`gcloud secrets versions access latest --secret=${secret} --project=${PROJECT} > `);
          expect(text).toContain("'install -m 600 /dev/null /etc/opensmtpd/queue-rest.token && cat > /etc/opensmtpd/queue-rest.token'");
        }
        if (!args.includes('--token-secret=queue-token') && auth === 'token') {
          for (const name of names) expect(text).toContain(`QUEUE_ADMIN_TOKEN_FILE=admin.token queue-rest credential issue ${name} ${url} > ${name}.token`);
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('npm run deploy -- --setup, run (against a stand-in gcloud that logs what it is asked)', () => {
  const FAKE_GCLOUD = [
    '#!/bin/sh',
    'printf "%s\\n" "$*" >> "$GCLOUD_LOG"',
    'case "$*" in',
    '  *"databases describe"*) [ -n "$DB_TYPE" ] && { echo "$DB_TYPE"; exit 0; }; exit 1 ;;',
    '  *" describe "*) [ -n "$PRESENT" ] && exit 0; exit 1 ;;',
    '  *"secrets create"*) cat > "$SECRET_OUT" ;;',
    'esac',
    'exit 0',
    '',
  ].join('\n');

  function deployWith(scenario: Record<string, string>) {
    const dir = mkdtempSync(path.join(tmpdir(), 'deploy-run-'));
    try {
      writeFileSync(path.join(dir, 'gcloud'), FAKE_GCLOUD, { mode: 0o755 });
      const env = { PATH: `${dir}:${process.env.PATH}`, GCLOUD_LOG: path.join(dir, 'log'), SECRET_OUT: path.join(dir, 'secret'), ...scenario };
      const result = run(process.execPath, ['dist/bin/deploy.js', '--setup', `--project=${PROJECT}`, '--only=messageCommit'], env);
      const read = (file: string) => (existsSync(path.join(dir, file)) ? readFileSync(path.join(dir, file), 'utf8') : '');
      return { ...result, asked: read('log').trim().split('\n'), secret: read('secret') };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  test('in a new project it creates each thing after its describe, feeds the secret on stdin, and ends with the bridge configuration', () => {
    const { status, out, asked, secret } = deployWith({});
    expect(status).toBe(0);
    expect(secret).toMatch(/^[0-9a-f]{64}$/); // no newline
    expect(asked.join('\n')).not.toContain(secret);
    expect(out).not.toContain(secret);
    expectInOrder(asked.join('\n'), [
      'services enable',
      'firestore databases describe',
      'firestore databases create',
      'secrets describe queue-admin-token',
      'secrets create queue-admin-token --data-file=-',
      'iam service-accounts describe queue-rest-run@',
      'iam service-accounts create queue-rest-run',
      'projects add-iam-policy-binding',
      'functions deploy messageCommit',
    ]);
    expect(printedConfigs(out).get('mx1')).toBe(`url https://us-central1-${PROJECT}.cloudfunctions.net\nauth token\ntoken-file /etc/opensmtpd/queue-rest.token\ninstance mx1\n`);
  });

  test('run again on a project that has it all, it creates nothing and deploys', () => {
    const { status, asked } = deployWith({ PRESENT: '1', DB_TYPE: 'DATASTORE_MODE' });
    expect(status).toBe(0);
    // but the index of index.yaml: its create runs on every deploy, and leaves one that exists as it is
    expect(asked.filter((a) => / create /.test(a))).toEqual([expect.stringMatching(/^datastore indexes create index.yaml /)]);
    expect(asked.at(-1)).toMatch(/^functions deploy messageCommit /);
  });

  test('a Firestore Native database stops it before anything is deployed, saying what to do', () => {
    const { status, err, asked } = deployWith({ PRESENT: '1', DB_TYPE: 'FIRESTORE_NATIVE' });
    expect(status).toBe(1);
    expect(err).toMatch(/not in Datastore mode .* --database=NAME/);
    expect(asked.some((a) => a.startsWith('functions deploy'))).toBe(false);
  });
});

describe('the App Engine service', () => {
  test("app.yaml's QUEUE_ variables are what the default App Engine deploy sets up, and anything else is named", () => {
    const appYaml = readFileSync(path.join(ROOT, 'app.yaml'), 'utf8');
    const options = deployOptions({ project: PROJECT, target: 'appengine' });
    expect(appYamlMismatch(appYaml, options)).toBeUndefined();
    expect(appYamlMismatch(appYaml, deployOptions({ project: PROJECT, target: 'appengine', namespace: 'other' }))).toMatch(/QUEUE_NAMESPACE: other/);
    expect(appYamlMismatch(appYaml.replace('QUEUE_AUTH: tokens', 'QUEUE_AUTH: tokens\n  QUEUE_TOKEN_SECRET: left-over'), options)).toMatch(/QUEUE_TOKEN_SECRET/);
  });

  test("starts in per-MX tokens mode with the administrators' token from the secret app.yaml names", async () => {
    const appYaml = readFileSync(path.join(ROOT, 'app.yaml'), 'utf8');
    const env: NodeJS.ProcessEnv = Object.fromEntries([...appYaml.matchAll(/^ {2}([A-Z_]+): (\S+)$/gm)].map(([, key, value]) => [key, value]));
    const asked: string[] = [];
    await readSecretsFromManager(env, async (name) => {
      asked.push(name);
      return 'b'.repeat(64);
    });
    expect(asked).toEqual(['queue-admin-token']);
    expect(loadConfig(env).auth).toEqual({ mode: 'tokens', adminToken: 'b'.repeat(64) });
    const given = { ...env, QUEUE_ADMIN_TOKEN: undefined, QUEUE_ADMIN_TOKEN_FILE: '/run/secret' };
    await readSecretsFromManager(given, async () => {
      throw new Error('not asked when the token is given otherwise');
    });
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
    expect(result.out.trim()).toBe(`${RUNTIME} Environment.STANDARD exec node dist/bin/app.js`);
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
