import { chmodSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { SPOOL } from './spool';

/**
 * smtpd in a mount namespace of its own: its spool and /run (where the
 * control socket and pid file go) are folders of its temp dir. unshare execs
 * sh, which execs smtpd, so the child's pid is smtpd's.
 */
export function isolatedCommand(dir: string, argv: string[]): [string, string[]] {
  const spool = path.join(dir, 'spool');
  const run = path.join(dir, 'run');
  // the mount point: it exists only once some smtpd has run on this machine
  mkdirSync(SPOOL, { recursive: true, mode: 0o711 });
  mkdirSync(spool, { mode: 0o711 });
  chmodSync(spool, 0o711);
  mkdirSync(run, { mode: 0o755 });
  const quoted = argv.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const script = `mount --bind '${spool}' ${SPOOL} && mount --bind '${run}' /run && exec ${quoted}`;
  return ['unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script]];
}

/** How to run `command` inside the mount namespace of process `pid`. */
export function inNamespaceOf(pid: number, command: string): string {
  return `nsenter --mount=/proc/${pid}/ns/mnt ${command}`;
}
