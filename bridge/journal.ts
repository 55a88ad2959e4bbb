import { fdatasyncSync, fstatSync, ftruncateSync, readSync, writeSync } from 'node:fs';
import { z } from 'zod';
import { Evpid, Msgid } from '../lib/ids';
import type { Logger } from '../lib/log';
import { b64, Base64 } from '../lib/wire';

/** A write smtpd was told is done before the service had it. */
export type Pending =
  | { op: 'delete'; evpid: Evpid }
  | { op: 'create'; evpid: Evpid; data: Buffer }
  | { op: 'update'; evpid: Evpid; data: Buffer }
  | { op: 'rollback'; msgid: Msgid };

const Line = z.union([
  z.object({ n: z.number().int().positive(), op: z.literal('delete'), evpid: Evpid }),
  z.object({ n: z.number().int().positive(), op: z.enum(['create', 'update']), evpid: Evpid, data: Base64 }),
  z.object({ n: z.number().int().positive(), op: z.literal('rollback'), msgid: Msgid }),
  z.object({ done: z.number().int().positive() }),
]);

/**
 * The bridge's journal of writes it answered smtpd for before the service
 * had them (bridge/write-behind.ts): envelope deletes after delivery,
 * bounces and updates that did not land in time, rollbacks. Each is on disk
 * (fdatasync) before smtpd hears of it, so a bridge killed before they land
 * replays them at its next start, before its walk: a delivered envelope is
 * not walked and delivered again, and a bounce smtpd was told exists is not
 * lost. One JSON line per write, then a line when it landed (or was refused
 * for good); the file is emptied whenever nothing is pending. Replaying a
 * write that did land is harmless: each is idempotent in the service.
 */
export class WriteJournal {
  private lastSeq = 0;
  private readonly open = new Set<number>();
  private failed = false;

  private constructor(
    private readonly fd: number,
    private readonly log: Logger,
    /** What an earlier run left pending, in the order it was written. */
    readonly leftover: { seq: number; write: Pending }[],
  ) {
    for (const { seq } of leftover) this.open.add(seq);
    this.lastSeq = Math.max(0, ...leftover.map((l) => l.seq));
  }

  /** Reads what an earlier run left in the file open (read and append) as `fd`. */
  static read(fd: number, log: Logger): WriteJournal {
    const bytes = readAll(fd);
    // a line torn by a kill while writing it was never answered; cut it, or the next line would join it
    const end = bytes.lastIndexOf(0x0a) + 1;
    if (end < bytes.length) ftruncateSync(fd, end);
    const text = bytes.subarray(0, end).toString('utf8');
    const pending = new Map<number, Pending>();
    let bad = 0;
    for (const raw of text.split('\n')) {
      if (!raw) continue;
      let parsed: z.infer<typeof Line> | undefined;
      try {
        parsed = Line.parse(JSON.parse(raw));
      } catch {
        bad++;
        continue;
      }
      if ('done' in parsed) pending.delete(parsed.done);
      else pending.set(parsed.n, toPending(parsed));
    }
    if (bad > 0) log.warn({ lines: bad }, `${bad} unreadable lines in the journal of pending writes, skipped`);
    const leftover = [...pending].sort(([a], [b]) => a - b).map(([seq, write]) => ({ seq, write }));
    return new WriteJournal(fd, log, leftover);
  }

  /** How many writes are not landed yet. */
  get pending(): number {
    return this.open.size;
  }

  /** Puts `write` on disk; throws if it cannot, and then nothing must be answered as done. */
  record(write: Pending): number {
    const seq = ++this.lastSeq;
    const line = { n: seq, ...write, ...('data' in write ? { data: b64(write.data) } : {}) };
    this.append(JSON.stringify(line) + '\n');
    fdatasyncSync(this.fd);
    this.open.add(seq);
    return seq;
  }

  /** The write landed, or was refused for good. Not synced: replaying it once more is harmless. */
  done(seq: number): void {
    if (!this.open.delete(seq)) return;
    try {
      if (this.open.size === 0) ftruncateSync(this.fd, 0);
      else this.append(JSON.stringify({ done: seq }) + '\n');
    } catch (err) {
      if (!this.failed) this.log.error({ err }, 'cannot write to the journal of pending writes');
      this.failed = true;
    }
  }

  private append(text: string): void {
    const bytes = Buffer.from(text);
    for (let at = 0; at < bytes.length; ) at += writeSync(this.fd, bytes, at);
  }
}

function toPending(line: Exclude<z.infer<typeof Line>, { done: number }>): Pending {
  switch (line.op) {
    case 'delete':
      return { op: 'delete', evpid: line.evpid };
    case 'rollback':
      return { op: 'rollback', msgid: line.msgid };
    default:
      return { op: line.op, evpid: line.evpid, data: line.data };
  }
}

function readAll(fd: number): Buffer {
  const size = fstatSync(fd).size;
  const bytes = Buffer.alloc(size);
  for (let at = 0; at < size; ) {
    const n = readSync(fd, bytes, at, size - at, at);
    if (n === 0) return bytes.subarray(0, at);
    at += n;
  }
  return bytes;
}
