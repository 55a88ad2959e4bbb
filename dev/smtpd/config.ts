import { chmodSync, chownSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { SystemUser } from './user';

/**
 * What one smtpd of the harness is configured with, in its temp dir:
 * smtpd.conf, the recipients table, and maildirs/ for local delivery.
 */

// smtpd 6.8 (crypto.c KEY_SIZE) takes the key bytes as they are and refuses any other length
const ENCRYPTION_KEY_LENGTH = 32;

export interface SmtpdConfigOptions {
  port: number;
  relayPort: number;
  compression?: boolean;
  encryption?: string;
}

export function checkEncryptionKey(key: string | undefined): void {
  if (key !== undefined && Buffer.byteLength(key) !== ENCRYPTION_KEY_LENGTH) {
    throw new Error(`smtpd 6.8 takes a queue encryption key of exactly ${ENCRYPTION_KEY_LENGTH} bytes, not ${Buffer.byteLength(key)}`);
  }
}

/** Writes smtpd's files into `dir`; mail for any local part at example.test goes to `user`. */
export function writeSmtpdFiles(dir: string, user: SystemUser, o: SmtpdConfigOptions): { configFile: string; maildirs: string } {
  // the delivery user has to get through the temp dir to reach the maildirs
  chmodSync(dir, 0o755);
  const maildirs = path.join(dir, 'maildirs');
  mkdirSync(maildirs, { mode: 0o755 });
  chownSync(maildirs, user.uid, user.gid);
  writeFileSync(path.join(dir, 'recipients'), `@example.test ${user.name}\n`);
  const configFile = path.join(dir, 'smtpd.conf');
  writeFileSync(configFile, smtpdConfig({ dir, ...o }));
  return { configFile, maildirs };
}

export function smtpdConfig(o: SmtpdConfigOptions & { dir: string }): string {
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

function quote(value: string): string {
  if (/["\\\n]/.test(value)) throw new Error(`cannot quote ${JSON.stringify(value)} for smtpd.conf`);
  return `"${value}"`;
}
