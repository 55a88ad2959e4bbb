import { readdirSync, rmSync } from 'node:fs';
import path from 'node:path';

/** The fs queue in smtpd's spool, which every smtpd on the machine shares unless it runs isolated (namespace.ts). */

export const SPOOL = '/var/spool/smtpd';
const SPOOL_QUEUE_DIRS = ['queue', 'incoming', 'corrupt', 'temporary', 'purge', 'offline'];

export function emptySpool(): void {
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
