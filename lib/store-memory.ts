import { decodeCursor, encodeCursor, pageBudget } from './cursor';
import { conflict, notFound, rolledBack } from './errors';
import { msgidOf, type Evpid, type Msgid } from './ids';
import {
  byteRange,
  checkBody,
  checkCommit,
  checkCreate,
  checkEnvelope,
  checkOwner,
  checkUpdate,
  checkWrite,
  chunkCount,
  isNewerUpdate,
  isSameCommit,
  sha256hex,
  toChunks,
} from './rules';
import { newSnapshotTime } from './snapshot';
import {
  CHUNK_BYTES,
  DEFAULT_LIMITS,
  type Commit,
  TAKEOVER_DEFAULT,
  TAKEOVER_MAX,
  type Envelope,
  type EnvelopeUpdate,
  type InstanceInfo,
  type Limits,
  type MessageInfo,
  type MessageWalk,
  type OwnerCheck,
  type Page,
  type PageRequest,
  type QueueCount,
  type QueueStore,
  type ReadRange,
  type Takeover,
} from './store';

interface StoredEnvelope {
  data: Buffer;
  createdAt: number;
  /** Of the last versioned update; 0 before any. */
  version: number;
}

interface StoredMessage {
  info: MessageInfo;
  chunks: Map<number, Buffer>;
  envelopes: Map<Evpid, StoredEnvelope>;
}

/**
 * A QueueStore in process memory: the reference driver for the contract,
 * and a queue for tests and single-process experiments. Nothing survives the
 * process. Every method runs to completion before another starts, so each is
 * atomic.
 */
export class MemoryQueueStore implements QueueStore {
  private readonly messages = new Map<Msgid, StoredMessage>();
  /** Deleted msgids, until when they stay fenced. */
  private readonly tombstones = new Map<Msgid, number>();
  private readonly instances = new Map<string, Omit<InstanceInfo, 'alive' | 'claims'>>();
  /** Messages claimed for each instance, ever. */
  private readonly claims = new Map<string, number>();

  constructor(readonly limits: Limits = DEFAULT_LIMITS) {}

  async messageCreate(msgids: Msgid[], owner: string): Promise<void> {
    checkCreate(msgids);
    const rolledBack = msgids.filter((msgid) => this.isFenced(msgid));
    const taken = msgids.filter((msgid) => {
      const m = this.messages.get(msgid);
      return rolledBack.includes(msgid) || (m && (m.info.state !== 'incoming' || m.info.owner !== owner));
    });
    if (taken.length > 0) {
      throw conflict(`${taken.length} of the msgids are taken`, { taken, ...(rolledBack.length > 0 && { rolledBack }) });
    }
    for (const msgid of msgids) {
      this.tombstones.delete(msgid);
      if (this.messages.has(msgid)) continue;
      this.messages.set(msgid, {
        info: { msgid, state: 'incoming', owner, size: null, sha256: null, createdAt: new Date(), committedAt: null },
        chunks: new Map(),
        envelopes: new Map(),
      });
    }
  }

  async messageWrite(msgid: Msgid, offset: number, data: Buffer, owner: string): Promise<void> {
    checkWrite(msgid, offset, data, this.limits);
    if (this.isFenced(msgid)) throw rolledBack(msgid);
    const m = this.incoming(msgid, { owner });
    for (const chunk of toChunks(data, offset / CHUNK_BYTES)) m.chunks.set(chunk.index, Buffer.from(chunk.data));
  }

  async messageCommit(commit: Commit): Promise<{ created: boolean }> {
    checkCommit(commit, this.limits);
    const { msgid } = commit;
    if (this.isFenced(msgid)) throw rolledBack(msgid);
    const existing = this.messages.get(msgid);
    if (existing && existing.info.state !== 'incoming') {
      if (isSameCommit(existing.info, commit)) return { created: false };
      throw conflict(`message ${msgid} is already committed with another body`, { msgid });
    }
    let chunks: Map<number, Buffer>;
    if (commit.body) {
      chunks = new Map(toChunks(commit.body).map((c) => [c.index, Buffer.from(c.data)]));
    } else {
      const m = this.incoming(msgid, commit);
      chunks = m.chunks;
      checkBody(msgid, commit.size, commit.sha256, this.assemble(chunks, commit.size));
    }
    const envelopes = new Map(existing?.envelopes);
    const now = Date.now();
    for (const { evpid, data } of commit.envelopes ?? []) {
      const old = envelopes.get(evpid);
      if (old && !old.data.equals(data)) throw conflict(`envelope ${evpid} exists with other bytes`, { evpid });
      envelopes.set(evpid, old ?? { data: Buffer.from(data), createdAt: now, version: 0 });
    }
    this.tombstones.delete(msgid);
    this.messages.set(msgid, {
      info: {
        msgid,
        state: 'queued',
        owner: commit.owner,
        size: commit.size,
        sha256: commit.sha256,
        createdAt: existing?.info.createdAt ?? new Date(now),
        committedAt: new Date(now),
      },
      chunks,
      envelopes,
    });
    return { created: true };
  }

  async messageDelete(msgid: Msgid, check?: OwnerCheck): Promise<{ deleted: boolean }> {
    if (this.isFenced(msgid)) return { deleted: false };
    const m = this.messages.get(msgid);
    if (m) checkOwner(m.info, check);
    this.bury(msgid);
    return { deleted: m !== undefined };
  }

  async messageRead(msgid: Msgid, read: ReadRange & OwnerCheck = {}): Promise<{ info: MessageInfo; data: Buffer }> {
    const m = this.committed(msgid, read);
    const size = m.info.size ?? 0;
    const { start, end } = byteRange(size, read.offset, read.length);
    const body = this.assemble(m.chunks, size);
    if (start === 0 && end === size && sha256hex(body) !== m.info.sha256) {
      m.info.state = 'corrupt';
      throw conflict(`message ${msgid} body does not match its sha256; quarantined`, { msgid, reason: 'corrupt' });
    }
    return { info: { ...m.info }, data: body.subarray(start, end) };
  }

  async messageWalk(msgid: Msgid, page: PageRequest & OwnerCheck = {}): Promise<MessageWalk> {
    const m = this.messages.get(msgid);
    if (!m) throw notFound('msgid', msgid);
    checkOwner(m.info, page);
    const pos = page.cursor ? decodeCursor(page.cursor) : { t0: Date.now() };
    const after = pos.m === msgid ? pos.e : undefined;
    const { items, more } = this.take([...sortedEntries(m.envelopes)].filter(([evpid]) => !after || evpid > after), page);
    const last = items.at(-1);
    return {
      message: { ...m.info },
      items,
      cursor: more && last ? encodeCursor({ t0: pos.t0, m: msgid, e: last.evpid }) : null,
    };
  }

  async messageCorrupt(msgid: Msgid, check?: OwnerCheck): Promise<MessageInfo> {
    const m = this.committed(msgid, check);
    m.info.state = 'corrupt';
    return { ...m.info };
  }

  async messageUncorrupt(msgid: Msgid, check?: OwnerCheck): Promise<MessageInfo> {
    const m = this.committed(msgid, check);
    m.info.state = 'queued';
    return { ...m.info };
  }

  async envelopeCreate(envelope: Envelope, check?: OwnerCheck): Promise<{ created: boolean }> {
    checkEnvelope(envelope, this.limits);
    if (this.isFenced(msgidOf(envelope.evpid))) throw rolledBack(msgidOf(envelope.evpid));
    const m = this.messageOf(envelope.evpid, check);
    const old = m.envelopes.get(envelope.evpid);
    if (old) {
      if (old.data.equals(envelope.data)) return { created: false };
      throw conflict(`envelope ${envelope.evpid} exists with other bytes`, { evpid: envelope.evpid });
    }
    m.envelopes.set(envelope.evpid, { data: Buffer.from(envelope.data), createdAt: Date.now(), version: 0 });
    return { created: true };
  }

  async envelopeDelete(evpid: Evpid, check?: OwnerCheck): Promise<{ deleted: boolean; messageDeleted: boolean }> {
    const m = this.messages.get(msgidOf(evpid));
    if (!m) return { deleted: false, messageDeleted: false };
    checkOwner(m.info, check);
    const deleted = m.envelopes.delete(evpid);
    const messageDeleted = m.info.state !== 'incoming' && m.envelopes.size === 0;
    if (messageDeleted) this.messages.delete(m.info.msgid);
    return { deleted, messageDeleted };
  }

  async envelopeLoad(evpid: Evpid, check?: OwnerCheck): Promise<Buffer> {
    const stored = this.messageOf(evpid, check).envelopes.get(evpid);
    if (!stored) throw notFound('evpid', evpid);
    return Buffer.from(stored.data);
  }

  async envelopeUpdate(update: EnvelopeUpdate, check?: OwnerCheck): Promise<void> {
    checkUpdate(update, this.limits);
    const stored = this.messageOf(update.evpid, check).envelopes.get(update.evpid);
    if (!stored) throw notFound('evpid', update.evpid);
    if (!isNewerUpdate(update, stored)) return;
    stored.data = Buffer.from(update.data);
    stored.version = update.version ?? stored.version;
  }

  async envelopeWalk(page: PageRequest & { owner?: string } = {}): Promise<Page<Envelope>> {
    const pos = page.cursor ? decodeCursor(page.cursor) : { t0: await newSnapshotTime() };
    const candidates: [Evpid, StoredEnvelope][] = [];
    for (const [msgid, m] of sortedEntries(this.messages)) {
      if (pos.m && msgid < pos.m) continue;
      const { info } = m;
      if (info.state !== 'queued' || (info.committedAt?.getTime() ?? Infinity) > pos.t0) continue;
      if ((info.claimedAt?.getTime() ?? 0) > pos.t0) continue;
      if (page.owner !== undefined && info.owner !== page.owner) continue;
      for (const [evpid, stored] of sortedEntries(m.envelopes)) {
        if (msgid === pos.m && (!pos.e || evpid <= pos.e)) continue;
        if (stored.createdAt <= pos.t0) candidates.push([evpid, stored]);
      }
    }
    const { items, more } = this.take(candidates, page);
    const last = items.at(-1);
    return { items, cursor: more && last ? encodeCursor({ t0: pos.t0, m: msgidOf(last.evpid), e: last.evpid }) : null };
  }

  async messagePurge(owner: string, keep: Msgid[] = []): Promise<number> {
    const kept = new Set(keep);
    let purged = 0;
    for (const [msgid, m] of this.messages) {
      if (m.info.state === 'incoming' && m.info.owner === owner && !kept.has(msgid)) {
        this.bury(msgid);
        purged++;
      }
    }
    this.sweepTombstones();
    return purged;
  }

  async instanceHeartbeat(instance: string, leaseMs: number, state: { walkDone?: boolean; startedAt?: Date } = {}): Promise<InstanceInfo> {
    const now = Date.now();
    const record = {
      instance,
      leaseUntil: new Date(now + leaseMs),
      heartbeatAt: new Date(now),
      startedAt: state.startedAt ?? this.instances.get(instance)?.startedAt ?? new Date(now),
      walkDone: state.walkDone ?? false,
    };
    this.instances.set(instance, record);
    this.sweepTombstones();
    return { ...record, alive: true, claims: this.claims.get(instance) ?? 0 };
  }

  async instanceList(): Promise<InstanceInfo[]> {
    const now = Date.now();
    return [...this.instances.values()]
      .sort((a, b) => a.instance.localeCompare(b.instance))
      .map((i) => ({ ...i, alive: i.leaseUntil.getTime() > now, claims: this.claims.get(i.instance) ?? 0 }));
  }

  async queueTakeover(claimant: string, options: { from?: string[]; limit?: number } = {}): Promise<Takeover> {
    const now = Date.now();
    const dead = new Set(
      (await this.instanceList())
        .filter((i) => !i.alive && i.instance !== claimant && (!options.from || options.from.includes(i.instance)))
        .map((i) => i.instance),
    );
    const limit = Math.min(Math.max(options.limit ?? TAKEOVER_DEFAULT, 1), TAKEOVER_MAX);
    const result: Takeover = { claimed: [], purged: 0, more: false };
    for (const [msgid, m] of sortedEntries(this.messages)) {
      if (!dead.has(m.info.owner)) continue;
      if (m.info.state === 'incoming') {
        this.bury(msgid);
        result.purged++;
      } else if (m.info.state === 'queued') {
        if (result.claimed.length === limit) {
          result.more = true;
          continue;
        }
        result.claimed.push({ msgid, from: m.info.owner, evpids: [...m.envelopes.keys()].sort() });
        m.info.owner = claimant;
        m.info.claimedAt = new Date(now);
      }
    }
    this.claims.set(claimant, (this.claims.get(claimant) ?? 0) + result.claimed.length);
    return result;
  }

  async queueCounts(): Promise<QueueCount[]> {
    const counts = new Map<string, QueueCount>();
    for (const { info } of this.messages.values()) {
      const key = `${info.owner}\0${info.state}`;
      const count = counts.get(key) ?? { owner: info.owner, state: info.state, messages: 0 };
      count.messages++;
      counts.set(key, count);
    }
    return [...counts.values()].sort((a, b) => a.owner.localeCompare(b.owner) || a.state.localeCompare(b.state));
  }

  async close(): Promise<void> {}

  /** Deletes a message and fences its msgid with a tombstone. */
  private bury(msgid: Msgid): void {
    this.messages.delete(msgid);
    this.tombstones.set(msgid, Date.now() + this.limits.tombstoneMs);
  }

  private isFenced(msgid: Msgid): boolean {
    return (this.tombstones.get(msgid) ?? 0) > Date.now();
  }

  private sweepTombstones(): void {
    const now = Date.now();
    for (const [msgid, until] of this.tombstones) if (until <= now) this.tombstones.delete(msgid);
  }

  private take(entries: [Evpid, StoredEnvelope][], page: PageRequest): { items: Envelope[]; more: boolean } {
    const { limit, maxBytes } = pageBudget(page);
    const items: Envelope[] = [];
    let bytes = 0;
    for (const [evpid, stored] of entries) {
      if (items.length === limit || (items.length > 0 && bytes + stored.data.length > maxBytes)) {
        return { items, more: true };
      }
      items.push({ evpid, data: Buffer.from(stored.data) });
      bytes += stored.data.length;
    }
    return { items, more: false };
  }

  private assemble(chunks: Map<number, Buffer>, size: number): Buffer {
    const parts: Buffer[] = [];
    for (let i = 0; i < chunkCount(size); i++) parts.push(chunks.get(i) ?? Buffer.alloc(0));
    return Buffer.concat(parts);
  }

  private incoming(msgid: Msgid, check: OwnerCheck): StoredMessage {
    const m = this.messages.get(msgid);
    if (!m) throw notFound('msgid', msgid);
    if (m.info.state !== 'incoming') throw conflict(`message ${msgid} is already committed`, { msgid });
    checkOwner(m.info, check);
    return m;
  }

  private committed(msgid: Msgid, check?: OwnerCheck): StoredMessage {
    const m = this.messages.get(msgid);
    if (!m || m.info.state === 'incoming') throw notFound('msgid', msgid);
    checkOwner(m.info, check);
    return m;
  }

  private messageOf(evpid: Evpid, check?: OwnerCheck): StoredMessage {
    const m = this.messages.get(msgidOf(evpid));
    if (!m) throw notFound('evpid', evpid);
    checkOwner(m.info, check);
    return m;
  }
}

function sortedEntries<V>(map: Map<string, V>): [string, V][] {
  return [...map].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}
