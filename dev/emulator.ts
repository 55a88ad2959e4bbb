import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Starts the Datastore emulators that ship with the Google Cloud SDK, with
 * plain java (no gcloud), on 127.0.0.1. `firestore` is the Firestore
 * emulator in Datastore mode, the main target; `datastore` is the legacy
 * Datastore emulator, which can enforce index.yaml.
 */
export type EmulatorKind = 'firestore' | 'datastore';

export interface EmulatorOptions {
  kind?: EmulatorKind;
  port?: number;
  /** Legacy emulator only: fail queries that need an index not in this index.yaml. */
  indexFile?: string;
  /** Legacy emulator only: keep the data in this folder, across restarts (created if missing). */
  dataDir?: string;
  heapMb?: number;
}

export interface Emulator {
  kind: EmulatorKind;
  /** host:port, for DATASTORE_EMULATOR_HOST or the store's apiEndpoint. */
  host: string;
  pid: number;
  stop(): Promise<void>;
}

const SDK_ROOTS = [process.env.CLOUDSDK_ROOT_DIR, '/usr/lib/google-cloud-sdk', '/usr/share/google-cloud-sdk', '/opt/google-cloud-sdk'];

const JARS: Record<EmulatorKind, { jar: string; main: string; package: string }> = {
  firestore: {
    jar: 'platform/cloud-firestore-emulator/cloud-firestore-emulator.jar',
    main: 'com.google.cloud.datastore.emulator.firestore.CloudFirestore',
    package: 'google-cloud-cli-firestore-emulator',
  },
  datastore: {
    jar: 'platform/cloud-datastore-emulator/CloudDatastore.jar',
    main: 'com.google.cloud.datastore.emulator.CloudDatastore',
    package: 'google-cloud-cli-datastore-emulator',
  },
};

export function findEmulatorJar(kind: EmulatorKind): string {
  const { jar, package: pkg } = JARS[kind];
  for (const root of SDK_ROOTS) {
    if (root && existsSync(path.join(root, jar))) return path.join(root, jar);
  }
  const looked = SDK_ROOTS.filter(Boolean).map((r) => path.join(r!, jar)).join(', ');
  throw new Error(
    `The ${kind} emulator jar is missing (looked at ${looked}). Install the Google Cloud SDK's ${pkg} ` +
      `package, or set CLOUDSDK_ROOT_DIR to the SDK's folder. Tests cannot run without it.`,
  );
}

function checkJava(): void {
  const java = spawnSync('java', ['-version'], { encoding: 'utf8' });
  if (java.error || java.status !== 0) {
    throw new Error('java is missing: the Datastore emulators need a Java runtime (Debian: apt-get install default-jre-headless).');
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

export async function startEmulator(options: EmulatorOptions = {}): Promise<Emulator> {
  const kind = options.kind ?? 'firestore';
  const jar = findEmulatorJar(kind);
  checkJava();
  const port = options.port ?? (await freePort());
  const args = [`-Xmx${options.heapMb ?? 512}m`, '-Duser.language=en', '-cp', jar, JARS[kind].main, 'start', '--host=127.0.0.1', `--port=${port}`];
  if (kind === 'firestore') {
    args.push('--database-mode=datastore-mode');
  } else if (options.dataDir) {
    // the Firestore emulator cannot export Datastore-mode data; the legacy one keeps it on disk
    const dir = path.resolve(options.dataDir);
    if (!existsSync(path.join(dir, 'WEB-INF'))) {
      const created = spawnSync('java', ['-cp', jar, JARS[kind].main, 'create', dir], { encoding: 'utf8' });
      if (created.status !== 0) throw new Error(`cannot create emulator data in ${dir}: ${created.stderr}`);
    }
    args.push('--store_on_disk=true', '--consistency=1.0', dir);
  } else {
    args.push('--testing');
    if (options.indexFile) args.push('--require_indexes', `--index_file=${path.resolve(options.indexFile)}`);
  }
  const child = spawn('java', args, { stdio: ['ignore', 'pipe', 'pipe'], detached: false });
  const output: string[] = [];
  const keep = (b: Buffer) => {
    output.push(b.toString());
    if (output.length > 50) output.shift();
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const host = `127.0.0.1:${port}`;
  await waitReady(child, host, output);
  return { kind, host, pid: child.pid!, stop: () => stopChild(child) };
}

async function waitReady(child: ChildProcess, host: string, output: string[]): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) {
      throw new Error(`the emulator exited with code ${child.exitCode} before it was ready:\n${output.join('')}`);
    }
    try {
      const res = await fetch(`http://${host}/`);
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  child.kill('SIGKILL');
  throw new Error(`the emulator did not answer on ${host} within 60 s:\n${output.join('')}`);
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}
