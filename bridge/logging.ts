import { spawn } from 'node:child_process';
import { existsSync, writeSync } from 'node:fs';
import pino from 'pino';
import { createLogger, type Logger } from '../lib/log';
import { openOwnedFile, type UserIds } from './privileges';

/** Syslog priorities of the mail facility, by Cloud Logging severity. */
const PRIORITY: Record<string, number> = { DEBUG: 7, INFO: 6, WARNING: 4, ERROR: 3, CRITICAL: 2 };
const MAIL = 2 * 8;
const LOGGER = '/usr/bin/logger';

/** Where logs go when there is no syslog: a daemonized smtpd gives the bridge /dev/null as stderr. */
export const DEFAULT_LOG_FILE = '/var/log/opensmtpd-queue-rest.log';

/** The syslog socket; QUEUE_REST_SYSLOG_SOCKET names another (a host whose syslog listens elsewhere). */
export function syslogSocket(env: NodeJS.ProcessEnv = process.env): string {
  return env.QUEUE_REST_SYSLOG_SOCKET ?? '/dev/log';
}

/** syslog if the host has it, else DEFAULT_LOG_FILE. */
export function defaultLogTarget(): string {
  return existsSync(syslogSocket()) ? 'syslog' : DEFAULT_LOG_FILE;
}

export interface BridgeLog {
  log: Logger;
  /** Writes out what is buffered; call before exiting. */
  flush(): void;
  /** Targets that could not be opened, and why; their lines went to the others. */
  problems: string[];
}

interface Sink {
  write(line: string): void;
  flush(): void;
}

/**
 * The bridge's log: one JSON object per line, to each target: syslog (mail
 * facility, tag queue-rest, through logger(1) running as the bridge's user,
 * which keeps each line's priority), a file (opened as privileges.ts opens
 * files, and given to the bridge's user), or stderr. A target that cannot be
 * opened is reported in `problems`, and the lines go to syslog or
 * DEFAULT_LOG_FILE instead, so that the reason is not lost.
 */
export function openBridgeLog(targets: string[], level: string, instance: string, user?: UserIds): BridgeLog {
  const problems: string[] = [];
  const sinks: Sink[] = [];
  const open = (target: string) => {
    try {
      sinks.push(openSink(target, user));
    } catch (err) {
      problems.push(`log ${target}: ${(err as Error).message}`);
    }
  };
  for (const target of targets) open(target);
  if (problems.length > 0 && !targets.includes('syslog')) open(defaultLogTarget());
  const stream = {
    write(line: string) {
      for (const sink of sinks) sink.write(line);
    },
  };
  return {
    log: createLogger({ level, name: 'queue-rest', destination: stream }).child({ instance }),
    flush: () => sinks.forEach((sink) => sink.flush()),
    problems,
  };
}

function openSink(target: string, user: UserIds | undefined): Sink {
  if (target === 'syslog') return syslogSink(user);
  // opened here, synchronously, while the bridge is still root and before anything logs
  const fd = target === 'stderr' ? 2 : openOwnedFile(target, user, { mode: 0o640, append: true });
  const destination = pino.destination({ dest: fd, sync: false });
  return {
    write: (line) => destination.write(line),
    flush: () => {
      try {
        destination.flushSync();
      } catch {
        // nothing was written yet
      }
    },
  };
}

function syslogSink(user: UserIds | undefined): Sink {
  const socket = syslogSocket();
  if (!existsSync(socket)) throw new Error(`no syslog socket ${socket}`);
  const ids = user && process.geteuid?.() === 0 ? { uid: user.uid, gid: user.gid } : {};
  // logger cuts messages at 1 KiB unless told otherwise; a line with a stack is longer
  const logger = spawn(LOGGER, ['--prio-prefix', '--size', '16384', '--socket', socket, '-t', `queue-rest[${process.pid}]`], {
    stdio: ['pipe', 'ignore', 'ignore'],
    ...ids,
  });
  logger.on('error', () => undefined);
  logger.stdin.on('error', () => undefined);
  logger.unref();
  return {
    write(line) {
      const severity = /"severity":"([A-Z]+)"/.exec(line)?.[1] ?? 'INFO';
      logger.stdin.write(`<${MAIL + (PRIORITY[severity] ?? 6)}>${line}`);
    },
    flush: () => logger.stdin.end(),
  };
}

/** For the one line that must get out when nothing else works: stderr and syslog, synchronously where possible. */
export function lastWords(line: string): void {
  try {
    writeSync(2, `${line}\n`);
  } catch {
    // no stderr
  }
  try {
    const { log, flush } = openBridgeLog([defaultLogTarget()], 'fatal', '-');
    log.fatal(line);
    flush();
  } catch {
    // nowhere to say it
  }
}
