import { spawn } from 'node:child_process';
import { mkdirSync, openSync } from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { createLogger, type Logger } from '../lib/log';

/** Syslog priorities of the mail facility, by Cloud Logging severity. */
const PRIORITY: Record<string, number> = { DEBUG: 7, INFO: 6, WARNING: 4, ERROR: 3, CRITICAL: 2 };
const MAIL = 2 * 8;

export interface BridgeLog {
  log: Logger;
  /** Writes out what is buffered; call before exiting. */
  flush(): void;
}

/**
 * The bridge's log: one JSON object per line, to syslog (mail facility, tag
 * queue-rest, through logger(1), which keeps each line's priority), to a
 * file, or to stderr. smtpd gives a daemonized bridge /dev/null as stderr.
 */
export function openBridgeLog(target: string, level: string, instance: string): BridgeLog {
  if (target === 'syslog') {
    const logger = spawn('logger', ['--prio-prefix', '-t', `queue-rest[${process.pid}]`], { stdio: ['pipe', 'ignore', 'ignore'] });
    logger.on('error', () => undefined);
    logger.stdin.on('error', () => undefined);
    logger.unref();
    const stream = {
      write(line: string) {
        const severity = /"severity":"([A-Z]+)"/.exec(line)?.[1] ?? 'INFO';
        logger.stdin.write(`<${MAIL + (PRIORITY[severity] ?? 6)}>${line}`);
      },
    };
    return { log: createLogger({ level, name: 'queue-rest', destination: stream }).child({ instance }), flush: () => logger.stdin.end() };
  }
  // opened here, synchronously, while the bridge is still root and before anything logs
  let fd = 2;
  if (target !== 'stderr') {
    mkdirSync(path.dirname(target), { recursive: true });
    fd = openSync(target, 'a', 0o640);
  }
  const destination = pino.destination({ dest: fd, sync: false });
  return {
    log: createLogger({ level, name: 'queue-rest', destination }).child({ instance }),
    flush: () => {
      try {
        destination.flushSync();
      } catch {
        // nothing was written yet
      }
    },
  };
}
