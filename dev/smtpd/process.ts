import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { freePort } from '../emulator';
import { checkEncryptionKey, writeSmtpdFiles } from './config';
import { waitUntilAnswering } from './ehlo';
import { inNamespaceOf, isolatedCommand } from './namespace';
import { signalGroup, smtpdPids, waitGroupGone } from './proc';
import { emptySpool, SPOOL } from './spool';
import { testUser } from './user';

/**
 * Runs Debian's real smtpd in the foreground, on a loopback port, with a
 * config of its own in a temp dir. Every smtpd on a machine shares the spool
 * and the control socket, so only one runs at a time, unless each runs
 * isolated in a mount namespace of its own (namespace.ts).
 */

const SMTPD = '/usr/sbin/smtpd';
const SMTPCTL = '/usr/sbin/smtpctl';

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
  for (const pgid of processGroups) signalGroup(pgid, 'SIGKILL');
});

export async function startSmtpd(options: SmtpdOptions): Promise<Smtpd> {
  const others = options.isolated ? [] : smtpdPids().filter((pid) => !isolatedPids.has(pid));
  if (others.length) {
    throw new Error(
      `smtpd is already running (pid ${others.join(', ')}). Every smtpd on this machine shares the spool ${SPOOL} ` +
        `and the control socket /var/run/smtpd.sock, so the test harness will not start another one. Stop it first.`,
    );
  }
  checkEncryptionKey(options.encryption);
  const user = testUser();
  if (!options.keepSpool && !options.isolated) emptySpool();

  const dir = mkdtempSync(path.join(os.tmpdir(), 'smtpd-harness-'));
  tempDirs.add(dir);
  const port = await freePort();
  const { configFile, maildirs } = writeSmtpdFiles(dir, user, { port, relayPort: options.relayPort, compression: options.compression, encryption: options.encryption });

  const args = ['-d', '-f', configFile];
  if (options.trace) args.push('-v', '-T', 'queue');
  if (options.queue !== undefined) args.push('-B', `queue=${options.queue}`);
  // its own process group, so that stop() can also reach smtpd's children and the queue backend
  const [command, commandArgs] = options.isolated ? isolatedCommand(dir, [SMTPD, ...args]) : [SMTPD, args];
  const child = spawn(command, commandArgs, { cwd: dir, env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const pid = child.pid;
  if (pid === undefined) {
    const error = await new Promise<Error>((resolve) => child.once('error', resolve));
    throw new Error(`cannot run ${SMTPD}: ${error.message}`);
  }
  processGroups.add(pid);
  if (options.isolated) isolatedPids.add(pid);
  const smtpctlCommand = options.isolated ? inNamespaceOf(pid, SMTPCTL) : SMTPCTL;

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

  /** Signals smtpd, and waits until it and every process of its group are gone; SIGKILL after 15 s. */
  const end = async (signal: NodeJS.Signals) => {
    if (!hasExited) {
      child.kill(signal);
      const timer = setTimeout(() => signalGroup(pid, 'SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    }
    await waitGroupGone(pid);
    processGroups.delete(pid);
    return exited;
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
    stop: () => end('SIGTERM'),
    async kill(signal = 'SIGKILL') {
      await end(signal);
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
