import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { freePort } from './emulator';

/**
 * Runs Debian's real smtpd in the foreground, on a loopback port, with a
 * config of its own in a temp dir. Every smtpd on a machine shares the spool
 * and the control socket, so only one runs at a time.
 */

const SMTPD = '/usr/sbin/smtpd';
const SMTPCTL = '/usr/sbin/smtpctl';
const SPOOL = '/var/spool/smtpd';
const SPOOL_QUEUE_DIRS = ['queue', 'incoming', 'corrupt', 'temporary', 'purge', 'offline'];
const TEST_USER = 'qharness';
// smtpd 6.8 (crypto.c KEY_SIZE) takes the key bytes as they are and refuses any other length
const ENCRYPTION_KEY_LENGTH = 32;

export interface SmtpdOptions {
  /** Value for `-B queue=...`; undefined runs smtpd's own fs queue (no -B flag). */
  queue?: string;
  /** Extra environment for smtpd, which its queue backend inherits. */
  env?: Record<string, string>;
  /** Mail for relay.test is relayed to smtp://127.0.0.1:relayPort. */
  relayPort: number;
  /** `queue compression` */
  compression?: boolean;
  /** `queue encryption <key>`; smtpd 6.8 wants exactly 32 characters. */
  encryption?: string;
  /** -v -T queue: debug output plus one line per queue backend call. */
  trace?: boolean;
  /**
   * Keep what the fs queue in /var/spool/smtpd holds from before. By default
   * it is emptied first, so mail left by an earlier run cannot turn up; a
   * test that restarts smtpd on queued mail sets this.
   */
  keepSpool?: boolean;
  /** How long to wait for smtpd to answer EHLO; default 20 s. */
  startTimeoutMs?: number;
  /**
   * Run in a mount namespace of its own, with its own spool and /run (for the
   * control socket), so that several smtpd can run on one machine: a pool of
   * MX. Needs unshare(1) and root.
   */
  isolated?: boolean;
}

export interface Smtpd {
  /** SMTP port on 127.0.0.1. */
  port: number;
  /** Its temp dir: smtpd.conf, the recipients table, maildirs/. */
  dir: string;
  pid: number;
  /** Where mail for user@example.test lands. */
  maildir(user: string): string;
  /** Everything smtpd printed so far, stdout and stderr interleaved. */
  output(): string;
  waitForOutput(re: RegExp, ms?: number): Promise<void>;
  /** Runs smtpctl (e.g. 'show', 'queue' or 'schedule', 'all') against this smtpd; resolves with its stdout. */
  smtpctl(...args: string[]): Promise<string>;
  /** The smtpctl command line for this smtpd, e.g. for queue-rest takeover --smtpctl. */
  smtpctlCommand: string;
  /** The exit code; null when a signal ended it. */
  exited: Promise<number | null>;
  /** SIGTERM and wait for exit; smtpd sends CLOSE to its queue backend first. */
  stop(): Promise<number | null>;
  /** Sends a signal (default SIGKILL) to the smtpd parent and waits until all its processes are gone. */
  kill(signal?: NodeJS.Signals): Promise<void>;
}

const running = new Set<Smtpd>();
const isolatedPids = new Set<number>();
const tempDirs = new Set<string>();
const processGroups = new Set<number>();

// if the test process ends without cleanup, smtpd must not outlive it: the next run would refuse to start
process.once('exit', () => {
  for (const pgid of processGroups) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

let cachedUser: { name: string; uid: number; gid: number } | undefined;

/** The throwaway system user local mail is delivered as; created with useradd the first time. */
export function testUser(): { name: string; uid: number; gid: number } {
  if (cachedUser) return cachedUser;
  let entry = getent(TEST_USER);
  if (!entry) {
    const added = spawnSync(
      'useradd',
      ['--system', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', '--comment', 'smtpd test harness', TEST_USER],
      { encoding: 'utf8' },
    );
    if (added.error || added.status !== 0) {
      throw new Error(`cannot create the test user ${TEST_USER} with useradd (are we root?): ${added.error?.message ?? added.stderr}`);
    }
    entry = getent(TEST_USER);
    if (!entry) throw new Error(`useradd created ${TEST_USER} but getent does not find it`);
  }
  cachedUser = entry;
  return entry;
}

function getent(name: string): { name: string; uid: number; gid: number } | undefined {
  const result = spawnSync('getent', ['passwd', name], { encoding: 'utf8' });
  if (result.status !== 0) return undefined;
  const fields = result.stdout.trim().split(':');
  return { name, uid: Number(fields[2]), gid: Number(fields[3]) };
}

/** Live (not zombie) processes named smtpd, any instance on the machine. */
export function smtpdPids(): number[] {
  return liveProcesses()
    .filter((p) => p.comm === 'smtpd')
    .map((p) => p.pid);
}

function liveProcesses(): { pid: number; comm: string; pgrp: number }[] {
  const found: { pid: number; comm: string; pgrp: number }[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // comm is in parentheses and may itself contain spaces or parentheses
    const open = stat.indexOf('(');
    const close = stat.lastIndexOf(')');
    const [state, , pgrp] = stat.slice(close + 2).split(' ');
    if (state === 'Z' || state === 'X') continue;
    found.push({ pid: Number(name), comm: stat.slice(open + 1, close), pgrp: Number(pgrp) });
  }
  return found;
}

function groupAlive(pgid: number): boolean {
  return liveProcesses().some((p) => p.pgrp === pgid);
}

function emptySpool(): void {
  for (const sub of SPOOL_QUEUE_DIRS) {
    const dir = path.join(SPOOL, sub);
    let entries: string[];
    try {
      entries = readdirSync(dir);
    } catch {
      continue; // smtpd creates the spool on its first start
    }
    for (const entry of entries) rmSync(path.join(dir, entry), { recursive: true, force: true });
  }
}

function quote(value: string): string {
  if (/["\\\n]/.test(value)) throw new Error(`cannot quote ${JSON.stringify(value)} for smtpd.conf`);
  return `"${value}"`;
}

export function smtpdConfig(o: { dir: string; port: number; relayPort: number; compression?: boolean; encryption?: string }): string {
  const lines = [
    `table recipients file:${path.join(o.dir, 'recipients')}`,
    `listen on 127.0.0.1 port ${o.port}`,
  ];
  if (o.compression) lines.push('queue compression');
  if (o.encryption !== undefined) lines.push(`queue encryption ${quote(o.encryption)}`);
  lines.push(
    // "virtual" and "local" are keywords, hence the quoted names and a table not called virtual
    `action "local" maildir ${quote(path.join(o.dir, 'maildirs', '%{rcpt.user}'))} virtual <recipients>`,
    `action "relay" relay host smtp://127.0.0.1:${o.relayPort}`,
    'match from any for domain "example.test" action "local"',
    'match from any for domain "relay.test" action "relay"',
    'match from any for any reject',
    '',
  );
  return lines.join('\n');
}

export async function startSmtpd(options: SmtpdOptions): Promise<Smtpd> {
  const others = options.isolated ? [] : smtpdPids().filter((pid) => !isolatedPids.has(pid));
  if (others.length) {
    throw new Error(
      `smtpd is already running (pid ${others.join(', ')}). Every smtpd on this machine shares the spool ${SPOOL} ` +
        `and the control socket /var/run/smtpd.sock, so the test harness will not start another one. Stop it first.`,
    );
  }
  if (options.encryption !== undefined && Buffer.byteLength(options.encryption) !== ENCRYPTION_KEY_LENGTH) {
    throw new Error(`smtpd 6.8 takes a queue encryption key of exactly ${ENCRYPTION_KEY_LENGTH} bytes, not ${Buffer.byteLength(options.encryption)}`);
  }
  const user = testUser();
  if (!options.keepSpool && !options.isolated) emptySpool();

  const dir = mkdtempSync(path.join(os.tmpdir(), 'smtpd-harness-'));
  tempDirs.add(dir);
  // the delivery user has to get through the temp dir to reach the maildirs
  chmodSync(dir, 0o755);
  const maildirs = path.join(dir, 'maildirs');
  mkdirSync(maildirs, { mode: 0o755 });
  chownSync(maildirs, user.uid, user.gid);
  // a catch-all: any local part at example.test is delivered as the test user
  writeFileSync(path.join(dir, 'recipients'), `@example.test ${user.name}\n`);
  const port = await freePort();
  const configFile = path.join(dir, 'smtpd.conf');
  writeFileSync(configFile, smtpdConfig({ dir, port, relayPort: options.relayPort, compression: options.compression, encryption: options.encryption }));

  const args = ['-d', '-f', configFile];
  if (options.trace) args.push('-v', '-T', 'queue');
  if (options.queue !== undefined) args.push('-B', `queue=${options.queue}`);
  // its own process group, so that stop() can also reach smtpd's children and the queue backend
  const [command, commandArgs] = options.isolated ? isolatedCommand(dir, args) : [SMTPD, args];
  const child = spawn(command, commandArgs, { cwd: dir, env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const pid = child.pid;
  if (pid === undefined) {
    const error = await new Promise<Error>((resolve) => child.once('error', resolve));
    throw new Error(`cannot run ${SMTPD}: ${error.message}`);
  }
  processGroups.add(pid);
  if (options.isolated) isolatedPids.add(pid);
  const smtpctlCommand = options.isolated ? `nsenter --mount=/proc/${pid}/ns/mnt ${SMTPCTL}` : SMTPCTL;

  let output = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => (output += s));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (output += s));
  const exited = whenExited(child);
  let hasExited = false;
  void exited.then(() => {
    hasExited = true;
    running.delete(smtpd);
  });

  const describe = () => `smtpd ${args.join(' ')} (pid ${pid}, dir ${dir}) printed:\n${output || '(nothing)'}`;

  const waitGroupGone = async () => {
    const deadline = Date.now() + 5_000;
    while (groupAlive(pid) && Date.now() < deadline) await sleep(50);
    if (groupAlive(pid)) signalGroup(pid, 'SIGKILL');
    while (groupAlive(pid)) await sleep(50);
    processGroups.delete(pid);
  };

  const smtpd: Smtpd = {
    port,
    dir,
    pid,
    maildir: (name) => path.join(maildirs, name),
    output: () => output,
    async waitForOutput(re, ms = 15_000) {
      const deadline = Date.now() + ms;
      while (!re.test(output)) {
        if (Date.now() > deadline) throw new Error(`smtpd did not print ${re} within ${ms} ms; ${describe()}`);
        if (hasExited) throw new Error(`smtpd exited before it printed ${re}; ${describe()}`);
        await sleep(50);
      }
    },
    smtpctlCommand,
    async smtpctl(...ctlArgs) {
      if (hasExited) throw new Error(`smtpctl ${ctlArgs.join(' ')}: smtpd is not running; ${describe()}`);
      try {
        const [ctl, ...prefix] = smtpctlCommand.split(' ');
        const { stdout } = await promisify(execFile)(ctl, [...prefix, ...ctlArgs], { encoding: 'utf8', timeout: 15_000 });
        return stdout;
      } catch (error) {
        const e = error as Error & { stderr?: string };
        throw new Error(`smtpctl ${ctlArgs.join(' ')} failed: ${e.stderr || e.message}; ${describe()}`);
      }
    },
    exited,
    async stop() {
      if (!hasExited) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => signalGroup(pid, 'SIGKILL'), 15_000);
        await exited;
        clearTimeout(timer);
      }
      await waitGroupGone();
      return exited;
    },
    async kill(signal = 'SIGKILL') {
      if (!hasExited) {
        child.kill(signal);
        const timer = setTimeout(() => signalGroup(pid, 'SIGKILL'), 15_000);
        await exited;
        clearTimeout(timer);
      }
      await waitGroupGone();
    },
  };
  running.add(smtpd);

  try {
    await waitUntilAnswering(port, () => hasExited, options.startTimeoutMs ?? 20_000);
  } catch (error) {
    await smtpd.kill('SIGKILL');
    throw new Error(`${(error as Error).message}; ${describe()}`);
  }
  return smtpd;
}

/**
 * Stops every smtpd the harness started, removes their temp dirs and empties
 * the fs queue they leave in the spool: for afterEach/afterAll.
 */
export async function stopAllSmtpd(): Promise<void> {
  await Promise.all([...running].map((smtpd) => smtpd.stop()));
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
  if (smtpdPids().length === 0) emptySpool();
}

/**
 * smtpd in a mount namespace of its own: its spool and /run (where the
 * control socket and pid file go) are folders of its temp dir. unshare execs
 * sh, which execs smtpd, so the child's pid is smtpd's.
 */
function isolatedCommand(dir: string, args: string[]): [string, string[]] {
  const spool = path.join(dir, 'spool');
  const run = path.join(dir, 'run');
  // the mount point: it exists only once some smtpd has run on this machine
  mkdirSync(SPOOL, { recursive: true, mode: 0o711 });
  mkdirSync(spool, { mode: 0o711 });
  chmodSync(spool, 0o711);
  mkdirSync(run, { mode: 0o755 });
  const quoted = [SMTPD, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const script = `mount --bind '${spool}' ${SPOOL} && mount --bind '${run}' /run && exec ${quoted}`;
  return ['unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script]];
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // already gone
  }
}

function whenExited(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    child.once('exit', (code) => {
      // 'close' also waits for the output pipes, which a surviving grandchild may hold open
      const timer = setTimeout(() => resolve(code), 1_000);
      child.once('close', () => {
        clearTimeout(timer);
        resolve(code);
      });
    });
  });
}

async function waitUntilAnswering(port: number, exited: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  let lastError = 'no attempt';
  while (Date.now() < deadline) {
    if (exited()) throw new Error('smtpd exited before it accepted SMTP connections');
    try {
      await ehlo(port);
      return;
    } catch (error) {
      lastError = (error as Error).message;
    }
    await sleep(100);
  }
  throw new Error(`smtpd did not answer EHLO on 127.0.0.1:${port} within ${ms} ms (last: ${lastError})`);
}

/** Connects, waits for the 220 greeting, says EHLO, waits for the last 250 line, and quits. */
function ehlo(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let received = '';
    let saidEhlo = false;
    const fail = (error: Error) => {
      socket.destroy();
      reject(error);
    };
    socket.setTimeout(2_000, () => fail(new Error('no answer within 2 s')));
    socket.on('error', fail);
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      received += chunk;
      if (!saidEhlo && /^220 .*\r?\n/m.test(received)) {
        saidEhlo = true;
        received = '';
        socket.write('EHLO harness.test\r\n');
      } else if (saidEhlo && /^250 .*\r?\n/m.test(received)) {
        socket.end('QUIT\r\n');
        socket.destroy();
        resolve();
      } else if (/^[45]\d\d .*\r?\n/m.test(received)) {
        fail(new Error(`refused: ${received.trim()}`));
      }
    });
  });
}
