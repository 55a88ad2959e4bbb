import { closeSync, mkdtempSync, openSync, readSync, rmdirSync, unlinkSync, writeSync } from 'node:fs';
import path from 'node:path';
import { msgidOf, type Evpid, type Msgid } from '../lib/ids';
import type { Logger } from '../lib/log';

/** What an entry costs in memory besides its bytes (map entry, Buffer object, index), roughly. */
const ENTRY_OVERHEAD = 200;

/**
 * The bridge's copy of the envelopes smtpd knows through it, so that
 * ENVELOPE_LOAD can still answer while the service cannot: smtpd drops an
 * envelope whose LOAD comes back empty from its schedule (backend.ts). It is
 * a cache of the service, not a second queue: it starts empty, the walk at
 * INIT fills it, and it is gone when the bridge stops. Up to `memoryBytes`
 * stay in memory, the rest in a file (SpillFile) that exists on disk only
 * as long as it takes to unlink it. Nothing here throws: a copy that cannot
 * keep an envelope logs it and goes without.
 */
export class EnvelopeCopy {
  private readonly inMemory = new Map<Evpid, Buffer>();
  private readonly spilled = new Map<Evpid, Slot>();
  private readonly byMessage = new Map<Msgid, Set<Evpid>>();
  /** performance.now() when each envelope's bytes were last known to be the service's (a read sent, or a write of this bridge). */
  private readonly knownAt = new Map<Evpid, number>();
  private memoryUsed = 0;
  private spill?: SpillFile;
  private spillFailed = false;

  constructor(
    private readonly memoryBytes: number,
    private readonly tmpDir: string,
    private readonly log: Logger,
  ) {}

  get size(): number {
    return this.inMemory.size + this.spilled.size;
  }

  /** How many envelopes are in the spill file. */
  get spilledCount(): number {
    return this.spilled.size;
  }

  has(evpid: Evpid): boolean {
    return this.inMemory.has(evpid) || this.spilled.has(evpid);
  }

  /** Whether any envelope of the message is here: smtpd knows the message through this bridge. */
  hasMessage(msgid: Msgid): boolean {
    return this.byMessage.has(msgid);
  }

  /** The envelopes of the message that are here. */
  evpidsOf(msgid: Msgid): Evpid[] {
    return [...(this.byMessage.get(msgid) ?? [])];
  }

  get(evpid: Evpid): Buffer | undefined {
    const kept = this.inMemory.get(evpid);
    if (kept) return kept;
    const slot = this.spilled.get(evpid);
    if (!slot || !this.spill) return undefined;
    try {
      return this.spill.read(slot);
    } catch (err) {
      this.log.error({ err, evpid }, `cannot read envelope ${evpid} back from the spill file`);
      this.delete(evpid);
      return undefined;
    }
  }

  /**
   * The bytes, if they were known to be the service's at or after `since`:
   * while nothing else may have changed the envelope since then, they are
   * the service's still.
   */
  getKnownSince(evpid: Evpid, since: number): Buffer | undefined {
    return (this.knownAt.get(evpid) ?? -Infinity) >= since ? this.get(evpid) : undefined;
  }

  /**
   * Keeps `data` for `evpid`, known to be the service's bytes at `knownAt`
   * (performance.now(); by default never); answers false, keeping what it
   * had, if it cannot.
   */
  set(evpid: Evpid, data: Buffer, knownAt = -Infinity): boolean {
    const old = this.inMemory.get(evpid);
    const memoryAfter = this.memoryUsed - (old ? old.length + ENTRY_OVERHEAD : 0) + data.length + ENTRY_OVERHEAD;
    if (memoryAfter <= this.memoryBytes) {
      this.delete(evpid);
      this.inMemory.set(evpid, Buffer.from(data));
      this.memoryUsed += data.length + ENTRY_OVERHEAD;
    } else {
      const slot = this.spillWrite(evpid, data);
      if (!slot) return false;
      this.delete(evpid);
      this.spilled.set(evpid, slot);
    }
    const msgid = msgidOf(evpid);
    const evpids = this.byMessage.get(msgid) ?? new Set<Evpid>();
    evpids.add(evpid);
    this.byMessage.set(msgid, evpids);
    this.knownAt.set(evpid, knownAt);
    return true;
  }

  delete(evpid: Evpid): void {
    const kept = this.inMemory.get(evpid);
    if (kept) {
      this.inMemory.delete(evpid);
      this.memoryUsed -= kept.length + ENTRY_OVERHEAD;
    }
    const slot = this.spilled.get(evpid);
    if (slot) {
      this.spilled.delete(evpid);
      this.spill?.release(slot);
    }
    this.knownAt.delete(evpid);
    const msgid = msgidOf(evpid);
    const evpids = this.byMessage.get(msgid);
    if (evpids?.delete(evpid) && evpids.size === 0) this.byMessage.delete(msgid);
  }

  /** Deletes every envelope of the message; answers their evpids. */
  deleteMessage(msgid: Msgid): Evpid[] {
    const evpids = [...(this.byMessage.get(msgid) ?? [])];
    for (const evpid of evpids) this.delete(evpid);
    return evpids;
  }

  close(): void {
    this.inMemory.clear();
    this.spilled.clear();
    this.byMessage.clear();
    this.knownAt.clear();
    this.memoryUsed = 0;
    this.spill?.close();
    this.spill = undefined;
  }

  private spillWrite(evpid: Evpid, data: Buffer): Slot | undefined {
    try {
      this.spill ??= new SpillFile(this.tmpDir);
      const slot = this.spill.write(data);
      this.spillFailed = false;
      return slot;
    } catch (err) {
      // once per run of failures, not once per envelope
      if (!this.spillFailed) this.log.error({ err, evpid }, `cannot spill envelopes to ${this.tmpDir}: LOAD cannot answer them while the service is unreachable`);
      this.spillFailed = true;
      return undefined;
    }
  }
}

interface Slot {
  at: number;
  length: number;
}

/**
 * Envelopes past the memory budget, in a file of the bridge's tmp folder
 * that is unlinked (with the private folder made for it) as soon as it is
 * open: only this process can reach it, and it vanishes with the process
 * however that ends. Each envelope takes a slot of the next power of two
 * from 256 bytes up; a freed slot is reused by the next envelope of its
 * size class, so the file never grows past the most envelopes held at once.
 */
class SpillFile {
  private readonly fd: number;
  private end = 0;
  private readonly free = new Map<number, number[]>();

  constructor(parent: string) {
    const dir = mkdtempSync(path.join(parent, 'queue-rest-envelopes-'));
    const file = path.join(dir, 'envelopes');
    try {
      this.fd = openSync(file, 'wx+', 0o600);
    } finally {
      try {
        unlinkSync(file);
      } catch {
        // never created
      }
      rmdirSync(dir);
    }
  }

  write(data: Buffer): Slot {
    const size = slotSize(data.length);
    const reused = this.free.get(size)?.pop();
    const at = reused ?? this.end;
    try {
      for (let done = 0; done < data.length; ) done += writeSync(this.fd, data, done, data.length - done, at + done);
    } catch (err) {
      if (reused !== undefined) this.free.get(size)!.push(reused);
      throw err;
    }
    if (reused === undefined) this.end += size;
    return { at, length: data.length };
  }

  read(slot: Slot): Buffer {
    const data = Buffer.allocUnsafe(slot.length);
    for (let done = 0; done < slot.length; ) {
      const n = readSync(this.fd, data, done, slot.length - done, slot.at + done);
      if (n === 0) throw new Error(`spill file ends inside the slot at ${slot.at}`);
      done += n;
    }
    return data;
  }

  release(slot: Slot): void {
    const size = slotSize(slot.length);
    const offsets = this.free.get(size) ?? [];
    offsets.push(slot.at);
    this.free.set(size, offsets);
  }

  close(): void {
    closeSync(this.fd);
  }
}

function slotSize(length: number): number {
  let size = 256;
  while (size < length) size *= 2;
  return size;
}
