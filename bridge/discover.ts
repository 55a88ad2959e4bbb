import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { createInterface } from 'node:readline';
import type { Evpid } from '../lib/ids';
import type { Logger } from '../lib/log';

/**
 * Hands envelopes that smtpd does not know yet (mail taken over from a dead
 * instance) to the running smtpd with `smtpctl discover EVPID`, which needs
 * root, while the bridge gives root up. As in OpenSMTPD's privilege
 * separation, the privilege stays with a process that can do exactly one
 * thing: the shell loop below, started as root before the bridge drops it,
 * reads one evpid a line, refuses anything but 16 lowercase hex digits, runs
 * the one command, and answers `ok EVPID` when smtpctl says it discovered
 * one envelope, else `fail EVPID`. It never takes a
 * msgid (`smtpctl discover MSGID` crashes smtpd 6.8 with a proc queue).
 */
export const DISCOVER_SCRIPT = `
PATH=/usr/sbin:/usr/bin:/sbin:/bin
while IFS= read -r evpid; do
  case "$evpid" in
    ????????????????) ;;
    *) echo "refused"; continue ;;
  esac
  case "$evpid" in
    *[!0-9a-f]*) echo "refused"; continue ;;
  esac
  case "$(/usr/sbin/smtpctl discover "$evpid" 2>/dev/null)" in
    "1 envelope discovered") echo "ok $evpid" ;;
    *) echo "fail $evpid" ;;
  esac
done
`;

/**
 * What became of a discover: smtpd has the envelope (ok), does not (fail:
 * smtpctl said so), or may have it (unknown: the helper died on the way).
 * smtpd exits on an envelope it is given twice, so an unknown one is never
 * tried again.
 */
export type Discovered = 'ok' | 'fail' | 'unknown';

/** What the bridge needs of it (tests give a fake). */
export interface SmtpdDiscover {
  discover(evpid: Evpid): Promise<Discovered>;
}

export class Discoverer implements SmtpdDiscover {
  private readonly child: ChildProcessByStdio<Writable, Readable, null>;
  private readonly waiting = new Map<Evpid, (result: Discovered) => void>();
  private gone = false;

  /** Starts the helper; call while still root. */
  constructor(private readonly log: Logger) {
    this.child = spawn('/bin/sh', ['-c', DISCOVER_SCRIPT], { stdio: ['pipe', 'pipe', 'ignore'], env: {} });
    this.child.on('error', (err) => this.end(`cannot run the discover helper: ${err.message}`));
    this.child.on('exit', (code, signal) => this.end(`the discover helper exited (${signal ?? code})`));
    this.child.stdin.on('error', () => undefined);
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      const [word, evpid] = line.split(' ');
      const resolve = evpid ? this.waiting.get(evpid) : undefined;
      if (!resolve) return;
      this.waiting.delete(evpid);
      resolve(word === 'ok' ? 'ok' : 'fail');
    });
  }

  /**
   * Tells smtpd about an envelope it does not know. Never wait for it while
   * smtpd waits for an answer from this bridge: smtpd loads the envelope
   * from its queue to schedule it, and would wait for the bridge that waits
   * for it. The helper runs one smtpctl at a time, for as long as it takes.
   */
  discover(evpid: Evpid): Promise<Discovered> {
    if (this.gone) return Promise.resolve('fail');
    if (this.waiting.has(evpid)) return Promise.resolve('unknown');
    return new Promise<Discovered>((resolve) => {
      this.waiting.set(evpid, resolve);
      this.child.stdin.write(`${evpid}\n`);
    });
  }

  close(): void {
    this.child.stdin.end();
  }

  private end(why: string): void {
    if (this.gone) return;
    this.gone = true;
    if (this.waiting.size > 0) this.log.error({ evpids: [...this.waiting.keys()] }, `${why}: smtpd may or may not know these envelopes; they are not handed to it again`);
    else this.log.warn(why);
    for (const resolve of this.waiting.values()) resolve('unknown');
    this.waiting.clear();
  }
}
