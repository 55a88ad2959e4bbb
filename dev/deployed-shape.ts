import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { FUNCTION_NAMES } from '../lib/api';
import { functionRoute, noSuchFunction } from '../lib/server';
import { freePort } from './emulator';
import { waitFor } from './mail';

/**
 * The queue as `gcloud functions deploy` leaves it, on this machine: the
 * upload set alone (`gcloud meta list-files-for-upload`), installed and
 * built as Google's Node.js buildpack does, each function in a
 * functions-framework process of its own, and a front that routes /NAME to
 * NAME's process as REGION-PROJECT.cloudfunctions.net does. Nothing is
 * shared between the functions but the Datastore.
 */
// this file runs compiled (dist/dev/) and, in tests, from its source (dev/)
const ROOT = existsSync(path.join(__dirname, '../package.json')) ? path.join(__dirname, '..') : path.join(__dirname, '../..');
const LOOPBACK_PRELOAD = path.join(ROOT, 'dist/dev/listen-on-loopback.js');
/** Outside the checkout: Node would find the checkout's node_modules from any folder inside it. */
const SCRATCH = path.join(tmpdir(), 'queue-rest-deployed-shape');
const BUILT = '.built';

export interface UploadBuild {
  /** The folder the upload set was copied to and built in. */
  dir: string;
  /** How long the install and build took; 0 when an earlier build of the same upload set was reused. */
  buildMs: number;
}

function run(command: string, args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv }): string {
  const result = spawnSync(command, args, { cwd: options.cwd, encoding: 'utf8', env: { ...process.env, ...options.env } });
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} failed (${result.status ?? result.error?.message}):\n${result.stdout}${result.stderr}`);
  }
  return result.stdout;
}

/** The files `gcloud functions deploy --source=.` uploads, as .gcloudignore selects them. */
export function uploadSet(): string[] {
  return run('gcloud', ['meta', 'list-files-for-upload', '.'], { cwd: ROOT }).trim().split('\n').sort();
}

/**
 * The upload set copied to a scratch folder outside the checkout and built
 * as the buildpack does (GoogleCloudPlatform/buildpacks, cmd/nodejs/npm):
 * with a gcp-build script, `npm ci` with NODE_ENV=development, then
 * `npm run gcp-build`, then `npm prune` with NODE_ENV=production, which
 * removes the devDependencies. A build is kept and reused for the same
 * upload set, Node.js and npm (its content hash names the folder).
 */
export function buildUploadSet(): UploadBuild {
  const files = uploadSet();
  const npmVersion = run('npm', ['--version'], { cwd: ROOT }).trim();
  const hash = createHash('sha256').update(`${process.version} npm ${npmVersion}\n`);
  for (const file of files) hash.update(`${file}\n`).update(readFileSync(path.join(ROOT, file)));
  const dir = path.join(SCRATCH, hash.digest('hex').slice(0, 16));
  if (existsSync(path.join(dir, BUILT))) return { dir, buildMs: 0 };

  const started = Date.now();
  rmSync(SCRATCH, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  for (const file of files) cpSync(path.join(ROOT, file), path.join(dir, file));
  run('npm', ['ci', '--quiet', '--no-audit', '--no-fund'], { cwd: dir, env: { NODE_ENV: 'development' } });
  run('npm', ['run', 'gcp-build'], { cwd: dir });
  run('npm', ['prune', '--omit=dev', '--no-audit', '--no-fund'], { cwd: dir, env: { NODE_ENV: 'production' } });
  writeFileSync(path.join(dir, BUILT), `${files.join('\n')}\n`);
  return { dir, buildMs: Date.now() - started };
}

/** Every native addon and addon build file under `dir` (binding.gyp, *.node), relative to it. */
export function nativeAddonFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((file) => path.basename(file) === 'binding.gyp' || file.endsWith('.node'))
    .sort();
}

export interface DeployedShape {
  /** The front's base URL: the functions at URL/<functionName>. */
  url: string;
  /** Each function's own process, by name. */
  processes: Map<string, ChildProcess>;
  /** What the function's process wrote (stdout and stderr), to explain a failure. */
  output(name: string): string;
  stop(): Promise<void>;
}

/**
 * Starts every function from an upload build, each with
 * `functions-framework --target=NAME` from the build's own node_modules on a
 * loopback port of its own, and the front. `env` is what a deploy sets
 * (bin/deploy.ts: QUEUE_AUTH, QUEUE_NAMESPACE, the secrets) plus where the
 * Datastore is; the rest of each process's environment is what Cloud Run
 * gives a function, not this process's.
 */
export async function startDeployedShape(options: { dir: string; env: Record<string, string> }): Promise<DeployedShape> {
  if (!existsSync(LOOPBACK_PRELOAD)) throw new Error(`${LOOPBACK_PRELOAD} is missing: run npm run build first`);
  const framework = path.join(options.dir, 'node_modules/.bin/functions-framework');
  const ports = new Map<string, number>();
  const processes = new Map<string, ChildProcess>();
  const outputs = new Map<string, string>();
  const output = (name: string) => outputs.get(name) ?? '';
  const front = http.createServer();
  const agent = new http.Agent({ keepAlive: true });

  const stop = async () => {
    front.closeAllConnections();
    await new Promise<void>((resolve) => front.close(() => resolve()));
    agent.destroy();
    await Promise.all([...processes.values()].map(stopProcess));
  };

  try {
    for (const name of FUNCTION_NAMES) {
      const port = await freePort();
      const child = spawn(process.execPath, ['--require', LOOPBACK_PRELOAD, framework, `--target=${name}`, '--signature-type=http'], {
        cwd: options.dir,
        env: {
          PATH: process.env.PATH,
          HOME: process.env.HOME,
          NODE_ENV: 'production',
          PORT: String(port),
          K_SERVICE: name.toLowerCase(),
          K_REVISION: `${name.toLowerCase()}-00001-loc`,
          K_CONFIGURATION: name.toLowerCase(),
          FUNCTION_TARGET: name,
          FUNCTION_SIGNATURE_TYPE: 'http',
          METADATA_SERVER_DETECTION: 'none',
          ...options.env,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      for (const stream of [child.stdout, child.stderr]) stream?.on('data', (chunk: Buffer) => outputs.set(name, (output(name) + chunk.toString()).slice(-64 * 1024)));
      processes.set(name, child);
      ports.set(name, port);
    }
    await Promise.all(
      FUNCTION_NAMES.map((name) =>
        waitFor(`${name} on port ${ports.get(name)}`, () => answers(ports.get(name)!, processes.get(name)!), 120_000, () => output(name)),
      ),
    );

    front.on('request', (req, res) => {
      const route = functionRoute(req.url);
      const port = route && ports.get(route.name);
      if (!route || !port) return noSuchFunction(res);
      const upstream = http.request({ host: '127.0.0.1', port, method: req.method, path: route.url, headers: req.headers, agent }, (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      });
      upstream.on('error', () => (res.headersSent ? res.destroy() : res.writeHead(502).end()));
      res.on('close', () => res.writableFinished || upstream.destroy());
      req.pipe(upstream);
    });
    await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', () => resolve()));
  } catch (err) {
    await stop();
    throw err;
  }
  const { port } = front.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, processes, output, stop };
}

/** Whether a function's process answers HTTP on its port yet (it has loaded its code); fails if the process died. */
function answers(port: number, child: ChildProcess): Promise<true | undefined> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.reject(new Error(`exited (${child.exitCode ?? child.signalCode})`));
  return new Promise((resolve) => {
    const probe = http.get({ host: '127.0.0.1', port, path: '/' }, (res) => {
      res.resume();
      resolve(true);
    });
    probe.on('error', () => resolve(undefined));
  });
}

function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}
