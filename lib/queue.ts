import { PageFill, WalkCursors, type WalkScope } from './cursor';
import { badRequest, conflict, notFound, QueueError, rolledBack } from './errors';
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
} from './rules';
import {
  chunkRows,
  claimCount,
  committedRecord,
  envelopeRow,
  incomingInfo,
  isFencing,
  isTombstone,
  messageRow,
  NO_ENVELOPES,
  tallyOf,
  tallyRow,
  tallyWith,
  tallyWithout,
  toInfo,
  toInstance,
} from './records';
import { ServiceKey } from './service-key';
import { newSnapshotTime } from './snapshot';
import { KeyExists, key, type CommittedRecord, type Found, type Key, type Kind, type Records, type Row, type Storage, type Transaction } from './storage';
import {
  CHUNK_BYTES,
  DEFAULT_LIMITS,
  DELETE_BATCH_MAX,
  PAGE_MAX,
  TAKEOVER_DEFAULT,
  TAKEOVER_MAX,
  type Commit,
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
  type HeartbeatState,
  type Takeover,
  type TakeoverOptions,
} from './store';

export interface QueueOptions {
  limits?: Limits;
  /** Told when sweeping expired tombstones fails; the call that swept still succeeds. */
  onSweepError?: (err: unknown) => void;
}

/** Most envelopes one round of a walk page looks up: a full page and the one that tells whether the walk ends there. */
const WALK_ROUND_MAX = PAGE_MAX + 1;
/** Messages claimed per transaction: few, so that claimants racing for the same orphans rarely wait on each other. */
const CLAIM_BATCH = 10;
/** Most expired tombstones one sweep deletes, and how many per transaction (the legacy Datastore emulator allows 25 entity groups). */
const SWEEP_MAX = 200;
const SWEEP_BATCH = 20;
/** What a record costs in a write beside its bytes: key and framing. */
const RECORD_OVERHEAD = 200;
const CHILD_KINDS = ['Chunk', 'Envelope', 'Tally'] as const;

/**
 * The queue: every rule of the QueueStore contract (lib/store.ts), over a
 * Storage driver that only puts, gets, queries and commits atomically
 * (lib/storage.ts). It plays the part of OpenSMTPD's queue_backend.c: limits,
 * id and ownership checks, the life cycle of messages and envelopes, the
 * tombstones that make a rollback final, page budgets, leases and takeovers.
 *
 * How the records make each step atomic with few round trips
 * (docs/storage.md): a message is an Incoming record until its commit
 * inserts the Message record, so the insert itself checks that the message
 * was neither committed nor rolled back, and a small commit is one write.
 * The tombstone of a deleted message sits at its Message key for the same
 * reason. Transactions only look keys up, never query (the Firestore
 * emulator locks a queried kind whole), hence the Tally of each message's
 * envelopes, which tells an envelope delete whether it is the last.
 */
export class Queue implements QueueStore {
  readonly limits: Limits;
  private readonly onSweepError: (err: unknown) => void;
  private readonly cursors: WalkCursors;

  constructor(
    private readonly storage: Storage,
    options: QueueOptions = {},
  ) {
    this.limits = options.limits ?? DEFAULT_LIMITS;
    this.onSweepError = options.onSweepError ?? (() => undefined);
    this.cursors = new WalkCursors(new ServiceKey(storage, 'cursor'));
  }

  async messageCreate(msgids: Msgid[], owner: string): Promise<void> {
    checkCreate(msgids);
    const unique = [...new Set(msgids)];
    await this.storage.transaction(async (tx) => {
      const found = await tx.get([...unique.map(key.message), ...unique.map(key.incoming)]);
      const now = Date.now();
      const rolledBack = unique.filter((m) => isFencing(found.get(key.message(m)), now));
      const taken = unique.filter((m) => {
        const message = found.get(key.message(m));
        const incoming = found.get(key.incoming(m));
        return (message && (!isTombstone(message) || isFencing(message, now))) || (incoming && incoming.owner !== owner);
      });
      if (taken.length > 0) {
        throw conflict(`${taken.length} of the msgids are taken`, { taken, ...(rolledBack.length > 0 && { rolledBack }) });
      }
      const createdAt = new Date();
      for (const msgid of unique) {
        // an expired tombstone: the commit's insert of the Message record must find the key free
        if (found.has(key.message(msgid))) tx.delete([key.message(msgid)]);
        if (!found.has(key.incoming(msgid))) tx.put({ key: key.incoming(msgid), data: { owner, createdAt, bodyVersion: 0 } });
      }
    });
  }

  async messageWrite(msgid: Msgid, offset: number, data: Buffer, owner: string): Promise<void> {
    checkWrite(msgid, offset, data, this.limits);
    await this.writeIncoming(msgid, owner, chunkRows(msgid, data, offset / CHUNK_BYTES));
  }

  async messageCommit(commit: Commit): Promise<{ created: boolean }> {
    checkCommit(commit, this.limits);
    const createdAt = new Date();
    const envelopes = (commit.envelopes ?? []).map((e) => envelopeRow(e.evpid, e.data, createdAt));
    if (commit.body && commit.size + bytesOf(envelopes) <= this.storage.maxWriteBytes) {
      try {
        return await this.commitInOneWrite(commit, envelopes);
      } catch (err) {
        if (!(err instanceof KeyExists)) throw err;
        // committed before (a retry), rolled back, or an envelope was created before the commit
      }
    }
    const existing = await this.getOne(key.message(commit.msgid));
    if (isFencing(existing)) throw rolledBack(commit.msgid);
    const committed = committedRecord(existing);
    if (committed) return recommit(toInfo(commit.msgid, committed), commit);
    if (commit.body) {
      await this.messageCreate([commit.msgid], commit.owner);
      await this.messageWrite(commit.msgid, 0, commit.body, commit.owner);
    }
    return this.commitWrittenBody(commit, envelopes);
  }

  async messageDelete(msgid: Msgid, check?: OwnerCheck): Promise<{ deleted: boolean }> {
    return this.storage.transaction(async (tx) => {
      const children = await this.childrenOf(msgid);
      const found = await tx.get([key.message(msgid), key.incoming(msgid)]);
      const message = found.get(key.message(msgid));
      if (isFencing(message)) return { deleted: false };
      const stored = committedRecord(message) ?? found.get(key.incoming(msgid));
      if (stored) checkOwner({ msgid, owner: stored.owner }, check);
      tx.delete([...children, key.incoming(msgid)]);
      // also when nothing was there: a commit still on its way must not create the message
      tx.put(this.tombstone(msgid, stored ? stored.owner : (check?.owner ?? null)));
      return { deleted: stored !== undefined };
    });
  }

  async messageRead(msgid: Msgid, read: ReadRange & OwnerCheck = {}): Promise<{ info: MessageInfo; data: Buffer }> {
    const stored = committedRecord(await this.getOne(key.message(msgid)));
    if (!stored) throw notFound('msgid', msgid);
    const info = toInfo(msgid, stored);
    checkOwner(info, read);
    const size = info.size ?? 0;
    const { start, end } = byteRange(size, read.offset, read.length);
    const first = Math.floor(start / CHUNK_BYTES);
    const body = await this.readChunks(msgid, first, Math.ceil(end / CHUNK_BYTES));
    if (start === 0 && end === size && sha256hex(body) !== info.sha256) {
      await this.setState(msgid, 'corrupt', {}).catch(() => undefined);
      throw conflict(`message ${msgid} body does not match its sha256; quarantined`, { msgid, reason: 'corrupt' });
    }
    const from = start - first * CHUNK_BYTES;
    return { info, data: body.subarray(from, from + (end - start)) };
  }

  async messageWalk(msgid: Msgid, page: PageRequest & OwnerCheck = {}): Promise<MessageWalk> {
    const found = await this.storage.get([key.message(msgid), key.incoming(msgid)]);
    const committed = committedRecord(found.get(key.message(msgid)));
    const incoming = found.get(key.incoming(msgid));
    if (!committed && !incoming) throw notFound('msgid', msgid);
    const message = committed ? toInfo(msgid, committed) : incomingInfo(msgid, incoming!);
    checkOwner(message, page);
    const scope: WalkScope = { walk: `message ${msgid}`, owner: page.owner ?? null };
    const pos = page.cursor ? await this.cursors.decode(page.cursor, scope) : { t0: Date.now() };
    const fill = new PageFill(page);
    const { rows, more } = await this.envelopesOf(msgid, pos.e, fill.limit);
    for (const row of rows) if (!fill.add(row)) break;
    const last = fill.items.at(-1);
    const cut = fill.items.length < rows.length || more;
    return { message, items: fill.items, cursor: cut && last ? await this.cursors.encode(scope, { t0: pos.t0, m: msgid, e: last.evpid }) : null };
  }

  async messageCorrupt(msgid: Msgid, check?: OwnerCheck): Promise<MessageInfo> {
    return this.setState(msgid, 'corrupt', check ?? {});
  }

  async messageUncorrupt(msgid: Msgid, check?: OwnerCheck): Promise<MessageInfo> {
    return this.setState(msgid, 'queued', check ?? {});
  }

  async envelopeCreate(envelope: Envelope, check?: OwnerCheck): Promise<{ created: boolean }> {
    checkEnvelope(envelope, this.limits);
    const msgid = msgidOf(envelope.evpid);
    return this.storage.transaction(async (tx) => {
      const found = await envelopeContext(tx, envelope.evpid, check, { refuseRolledBack: true });
      const existing = found.get(key.envelope(envelope.evpid));
      if (existing) {
        if (existing.data.equals(envelope.data)) return { created: false };
        throw envelopeClash(envelope.evpid);
      }
      tx.put(envelopeRow(envelope.evpid, envelope.data, new Date()));
      tx.put(tallyRow(msgid, tallyWith(tallyOf(found, msgid), [envelope.evpid])));
      return { created: true };
    });
  }

  async envelopeDelete(evpid: Evpid, check?: OwnerCheck): Promise<{ deleted: boolean; messageDeleted: boolean }> {
    const { deleted, messageDeleted } = await this.envelopesDelete([evpid], check);
    return { deleted: deleted.length > 0, messageDeleted };
  }

  async envelopesDelete(evpids: Evpid[], check?: OwnerCheck): Promise<{ deleted: Evpid[]; messageDeleted: boolean }> {
    const msgid = messageOfAll(evpids);
    const asked = [...new Set(evpids)];
    return this.storage.transaction(async (tx) => {
      const found = await messageContext(tx, msgid, asked, check).catch(ignoreNotFound);
      const deleted = asked.filter((evpid) => found?.has(key.envelope(evpid)));
      if (!found || deleted.length === 0) return { deleted: [], messageDeleted: false };
      const committed = committedRecord(found.get(key.message(msgid)));
      const left = deleted.reduce(tallyWithout, tallyOf(found, msgid));
      const envelopes = deleted.map((evpid) => key.envelope(evpid));
      if (committed && left.count === 0) {
        const chunks = range(0, Number(committed.chunks)).map((i) => key.chunk(msgid, i));
        tx.delete([...chunks, ...envelopes, key.tally(msgid), key.message(msgid)]);
        return { deleted, messageDeleted: true };
      }
      tx.delete(envelopes);
      tx.put(tallyRow(msgid, left));
      return { deleted, messageDeleted: false };
    });
  }

  async envelopeLoad(evpid: Evpid, check?: OwnerCheck): Promise<Buffer> {
    const stored = (await envelopeContext(this.storage, evpid, check)).get(key.envelope(evpid));
    if (!stored) throw notFound('evpid', evpid);
    return stored.data;
  }

  async envelopeUpdate(update: EnvelopeUpdate, check?: OwnerCheck): Promise<void> {
    checkUpdate(update, this.limits);
    await this.storage.transaction(async (tx) => {
      const stored = (await envelopeContext(tx, update.evpid, check)).get(key.envelope(update.evpid));
      if (!stored) throw notFound('evpid', update.evpid);
      const version = Number(stored.version ?? 0);
      if (!isNewerUpdate(update, { data: stored.data, version })) return;
      tx.put(envelopeRow(update.evpid, update.data, stored.createdAt, update.version ?? version));
    });
  }

  async envelopeWalk(page: PageRequest & { owner?: string } = {}): Promise<Page<Envelope>> {
    const scope: WalkScope = { walk: 'envelopes', owner: page.owner ?? null };
    const pos = page.cursor ? await this.cursors.decode(page.cursor, scope) : { t0: await newSnapshotTime() };
    const fill = new PageFill(page);
    let after: { m?: string; e?: string } = pos;
    for (;;) {
      // one envelope more than the page takes tells whether the walk ends with it
      const wanted = Math.min(fill.limit - fill.items.length + 1, WALK_ROUND_MAX);
      // and the message the last page stopped in may come first
      const limit = wanted + 1;
      const batch = await this.storage.query({
        kind: 'Message',
        equal: { state: 'queued', ...(page.owner !== undefined && { owner: page.owner }) },
        ...(after.e === undefined ? { after: after.m } : { from: after.m }),
        limit,
      });
      const inSnapshot = batch.filter(({ data }) => {
        const { committedAt, claimedAt } = data as CommittedRecord;
        return committedAt.getTime() <= pos.t0 && (claimedAt?.getTime() ?? 0) <= pos.t0;
      });
      const listed = await this.envelopeLists(inSnapshot.map((row) => row.key.id));
      const evpids = [...listed.values()]
        .flat()
        .filter((evpid) => after.e === undefined || msgidOf(evpid) !== after.m || evpid > after.e)
        .slice(0, wanted);
      const found = await this.storage.get(evpids.map(key.envelope));
      for (const evpid of evpids) {
        // gone since its tally was read: deleted, so not handed out
        const stored = found.get(key.envelope(evpid));
        if (!stored) continue;
        const next = { evpid, data: stored.data };
        if (fill.isFull(next)) {
          const last = fill.items.at(-1)!;
          return { items: fill.items, cursor: await this.cursors.encode(scope, { t0: pos.t0, m: msgidOf(last.evpid), e: last.evpid }) };
        }
        if (stored.createdAt.getTime() <= pos.t0) fill.add(next);
      }
      if (evpids.length === wanted) {
        after = { m: msgidOf(evpids.at(-1)!), e: evpids.at(-1) };
      } else if (batch.length === limit) {
        after = { m: batch.at(-1)!.key.id };
      } else {
        return { items: fill.items, cursor: null };
      }
    }
  }

  async messagePurge(owner: string, keep: Msgid[] = []): Promise<number> {
    const kept = new Set(keep);
    const incoming = await this.storage.queryKeys({ kind: 'Incoming', equal: { owner } });
    let purged = 0;
    for (const { id: msgid } of incoming) {
      if (kept.has(msgid)) continue;
      const removed = await this.storage.transaction(async (tx) => {
        const children = await this.childrenOf(msgid);
        const found = await tx.get([key.message(msgid), key.incoming(msgid)]);
        if (found.get(key.incoming(msgid))?.owner !== owner) return false;
        if (committedRecord(found.get(key.message(msgid)))) {
          // a committed message of the same id keeps its children
          tx.delete([key.incoming(msgid)]);
        } else {
          tx.delete([...children, key.incoming(msgid)]);
          tx.put(this.tombstone(msgid, owner));
        }
        return true;
      });
      if (removed) purged++;
    }
    await this.sweepTombstones();
    return purged;
  }

  async instanceHeartbeat(instance: string, leaseMs: number, state: HeartbeatState = {}): Promise<InstanceInfo> {
    // one write, not a transaction: a renewal racing a drain's ask may overwrite it, and `queue-rest drain` asks again
    const found = await this.storage.get([key.instance(instance), key.claims(instance)]);
    const now = new Date();
    const data = heartbeatRecord(instance, found.get(key.instance(instance)), leaseMs, state, now);
    await this.storage.write({ put: [{ key: key.instance(instance), data }] });
    await this.sweepTombstones();
    return toInstance(instance, data, now.getTime(), found.get(key.claims(instance)));
  }

  async instanceList(): Promise<InstanceInfo[]> {
    const [rows, claims] = await Promise.all([this.storage.query({ kind: 'Instance' }), this.storage.query({ kind: 'Claims' })]);
    const claimsOf = new Map(claims.map((row) => [row.key.id, row.data]));
    const now = Date.now();
    return rows.map((row) => toInstance(row.key.id, row.data, now, claimsOf.get(row.key.id))).sort((a, b) => a.instance.localeCompare(b.instance));
  }

  async queueTakeover(claimant: string, options: TakeoverOptions = {}): Promise<Takeover> {
    const limit = Math.min(Math.max(options.limit ?? TAKEOVER_DEFAULT, 1), TAKEOVER_MAX);
    const expired = await this.storage.queryKeys({ kind: 'Instance', before: { field: 'leaseUntil', time: new Date() } });
    const dead = expired.map((k) => k.id).filter((i) => i !== claimant && (!options.from || options.from.includes(i)));
    const result: Takeover = { claimed: [], purged: 0, more: false };
    const live = options.share && dead.length > 0 ? await this.liveInstances(claimant) : 1;
    for (const owner of dead) {
      result.purged += await this.messagePurge(owner);
      const left = limit - result.claimed.length;
      // one more than wanted tells whether orphans are left once this page is full
      const orphans = await this.storage.queryKeys({ kind: 'Message', equal: { owner, state: 'queued' }, limit: options.share ? TAKEOVER_MAX + 1 : left + 1 });
      const wanted = Math.min(left, options.share ? claimShare(orphans.length, live) : left);
      // in a random order, so that claimants racing for the same orphans mostly take different ones
      const msgids = shuffle(orphans.map((k) => k.id)).slice(0, wanted);
      for (let i = 0; i < msgids.length; i += CLAIM_BATCH) {
        const claimed = await this.claim(msgids.slice(i, i + CLAIM_BATCH), owner, claimant);
        for (const [msgid, evpids] of await this.envelopeLists(claimed)) result.claimed.push({ msgid, from: owner, evpids });
      }
      if (orphans.length > wanted) {
        result.more = true;
        if (result.claimed.length >= limit) break;
      }
    }
    return result;
  }

  async queueCounts(): Promise<QueueCount[]> {
    const [committedOwners, incomingOwners] = await Promise.all([this.storage.fieldValues('Message', 'owner'), this.storage.fieldValues('Incoming', 'owner')]);
    const wanted: Omit<QueueCount, 'messages'>[] = [
      ...committedOwners.flatMap((owner) => [
        { owner, state: 'corrupt' as const },
        { owner, state: 'queued' as const },
      ]),
      ...incomingOwners.map((owner) => ({ owner, state: 'incoming' as const })),
    ];
    const counts = await Promise.all(
      wanted.map(async ({ owner, state }) => {
        if (state === 'incoming') return { messages: await this.storage.count({ kind: 'Incoming', equal: { owner } }) };
        const mail = { kind: 'Message' as const, equal: { owner, state } };
        // the oldest needs index.yaml's composite index: while Datastore still builds it, the counts come without it
        const earliest = this.storage.query({ ...mail, earliestFirst: 'createdAt', limit: 1 }).catch(() => []);
        const [messages, [oldest]] = await Promise.all([this.storage.count(mail), earliest]);
        const oldestAt = oldest && committedRecord(oldest.data)?.createdAt;
        return { messages, ...(oldestAt && { oldestAt }) };
      }),
    );
    return wanted
      .map((count, i) => ({ ...count, ...counts[i] }))
      .filter((count) => count.messages > 0)
      .sort((a, b) => a.owner.localeCompare(b.owner) || a.state.localeCompare(b.state));
  }

  close(): Promise<void> {
    return this.storage.close();
  }

  /** The fast commit: one atomic write that cannot overwrite a committed or rolled-back message. */
  private async commitInOneWrite(commit: Commit, envelopes: Row<'Envelope'>[]): Promise<{ created: boolean }> {
    const now = new Date();
    await this.storage.write({
      // the tally exists already if envelopes were created on the incoming message: then the insert fails
      insert: [messageRow(commit, now), tallyRow(commit.msgid, tallyWith(NO_ENVELOPES, envelopes.map((e) => e.key.id))), ...envelopes],
      put: chunkRows(commit.msgid, commit.body!),
      delete: [key.incoming(commit.msgid)],
    });
    return { created: true };
  }

  /** The commit of a body written in parts: verify it, then flip in one transaction. */
  private async commitWrittenBody(commit: Commit, envelopes: Row<'Envelope'>[]): Promise<{ created: boolean }> {
    const { msgid } = commit;
    if (bytesOf(envelopes) > this.storage.maxWriteBytes) {
      await this.writeIncoming(msgid, commit.owner, envelopes, true);
      envelopes = [];
    }
    const incoming = await this.getOne(key.incoming(msgid));
    if (!incoming) throw notFound('msgid', msgid);
    checkOwner({ msgid, owner: incoming.owner }, commit);
    checkBody(msgid, commit.size, commit.sha256, await this.readChunks(msgid, 0, chunkCount(commit.size)));
    return this.storage.transaction(async (tx) => {
      const seen = await tx.get([key.message(msgid), key.incoming(msgid), key.tally(msgid), ...envelopes.map((e) => e.key)]);
      const message = seen.get(key.message(msgid));
      if (isFencing(message)) throw rolledBack(msgid);
      const committed = committedRecord(message);
      if (committed) return recommit(toInfo(msgid, committed), commit);
      const current = seen.get(key.incoming(msgid));
      if (!current) throw notFound('msgid', msgid);
      checkOwner({ msgid, owner: current.owner }, commit);
      if (current.bodyVersion !== incoming.bodyVersion) throw conflict(`message ${msgid} body changed while it was committed`, { msgid });
      // over an expired tombstone too, which this transaction has read
      tx.put(messageRow(commit, new Date(), current.createdAt));
      tx.delete([key.incoming(msgid)]);
      const added: Evpid[] = [];
      for (const e of envelopes) {
        const existing = seen.get(e.key);
        if (!existing) {
          tx.put(e);
          added.push(e.key.id);
        } else if (!existing.data.equals(e.data.data)) {
          throw envelopeClash(e.key.id);
        }
      }
      tx.put(tallyRow(msgid, tallyWith(tallyOf(seen, msgid), added)));
      return { created: true };
    });
  }

  /**
   * Writes chunks or envelopes of an incoming message in batches that fit a
   * write, each checking that the message is still `owner`'s and not yet
   * committed. Envelopes keep bytes already stored for them (`keepExisting`).
   */
  private async writeIncoming(msgid: Msgid, owner: string, rows: Row<'Chunk' | 'Envelope'>[], keepExisting = false): Promise<void> {
    for (const batch of batches(rows, this.storage.maxWriteBytes)) {
      await this.storage.transaction(async (tx) => {
        const found = await tx.get([key.message(msgid), key.incoming(msgid), key.tally(msgid), ...(keepExisting ? batch.map((e) => e.key) : [])]);
        const message = found.get(key.message(msgid));
        if (isFencing(message)) throw rolledBack(msgid);
        if (committedRecord(message)) throw conflict(`message ${msgid} is already committed`, { msgid });
        const incoming = found.get(key.incoming(msgid));
        if (!incoming) throw notFound('msgid', msgid);
        checkOwner({ msgid, owner: incoming.owner }, { owner });
        const added: Evpid[] = [];
        for (const row of batch) {
          const existing = found.get(row.key);
          if (existing && !existing.data.equals(row.data.data)) throw envelopeClash(row.key.id);
          if (!existing && row.key.kind === 'Envelope') added.push(row.key.id);
          tx.put(row);
        }
        if (added.length > 0) tx.put(tallyRow(msgid, tallyWith(tallyOf(found, msgid), added)));
        tx.put({ key: key.incoming(msgid), data: { ...incoming, bodyVersion: Number(incoming.bodyVersion) + 1 } });
      });
    }
  }

  private async setState(msgid: Msgid, state: 'queued' | 'corrupt', check: OwnerCheck): Promise<MessageInfo> {
    return this.storage.transaction(async (tx) => {
      const stored = committedRecord((await tx.get([key.message(msgid)])).get(key.message(msgid)));
      if (!stored) throw notFound('msgid', msgid);
      checkOwner({ msgid, owner: stored.owner }, check);
      const data = { ...stored, state };
      tx.put({ key: key.message(msgid), data });
      return toInfo(msgid, data);
    });
  }

  /** Moves messages from a dead owner to `claimant` in one transaction; answers those it moved. */
  private async claim(msgids: Msgid[], from: string, claimant: string): Promise<Msgid[]> {
    return this.storage.transaction(async (tx) => {
      const found = await tx.get([key.instance(from), key.claims(claimant), ...msgids.map(key.message)]);
      const instance = found.get(key.instance(from));
      if (!instance || instance.leaseUntil.getTime() >= Date.now()) return [];
      const claimedAt = new Date();
      const moved: Msgid[] = [];
      for (const msgid of msgids) {
        const row = committedRecord(found.get(key.message(msgid)));
        if (!row || row.owner !== from || row.state !== 'queued') continue;
        tx.put({ key: key.message(msgid), data: { ...row, owner: claimant, claimedAt } });
        moved.push(msgid);
      }
      // the claimant's bridge learns from its heartbeat that it has mail its smtpd does not know
      if (moved.length > 0) tx.put({ key: key.claims(claimant), data: { count: claimCount(found.get(key.claims(claimant))) + moved.length } });
      return moved;
    });
  }

  /**
   * Deletes up to SWEEP_MAX expired tombstones, each checked again in the
   * transaction that deletes it. Housekeeping for the calls that run it (a
   * heartbeat must not lose its lease over it): a failure is reported and
   * left to the next sweep.
   */
  private async sweepTombstones(): Promise<number> {
    try {
      const expired = await this.storage.queryKeys({ kind: 'Message', before: { field: 'expiresAt', time: new Date() }, limit: SWEEP_MAX });
      // in a random order, so that instances sweeping at the same time mostly take different ones
      const keys = shuffle(expired);
      let swept = 0;
      for (let i = 0; i < keys.length; i += SWEEP_BATCH) {
        swept += await this.storage.transaction(async (tx) => {
          const batch = keys.slice(i, i + SWEEP_BATCH);
          const found = await tx.get(batch);
          const now = Date.now();
          const gone = batch.filter((k) => {
            const row = found.get(k);
            return isTombstone(row) && !isFencing(row, now);
          });
          if (gone.length > 0) tx.delete(gone);
          return gone.length;
        });
      }
      return swept;
    } catch (err) {
      this.onSweepError(err);
      return 0;
    }
  }

  /** How many instances hold a lease and are not draining, the claimant counted among them. */
  private async liveInstances(claimant: string): Promise<number> {
    const now = Date.now();
    const rows = await this.storage.query({ kind: 'Instance' });
    return Math.max(rows.filter((row) => row.key.id === claimant || (row.data.leaseUntil.getTime() > now && !row.data.draining)).length, 1);
  }

  private tombstone(msgid: Msgid, owner: string | null): Row<'Message'> {
    const deletedAt = new Date();
    const expiresAt = new Date(deletedAt.getTime() + this.limits.tombstoneMs);
    return { key: key.message(msgid), data: { state: 'tombstone', owner, deletedAt, expiresAt } };
  }

  private async getOne<K extends Kind>(k: Key<K>): Promise<Records[K] | undefined> {
    return (await this.storage.get([k])).get(k);
  }

  /** Chunks `first` to `end` (exclusive) of a body, joined; missing ones are empty. */
  private async readChunks(msgid: Msgid, first: number, end: number): Promise<Buffer> {
    const keys = range(first, end).map((i) => key.chunk(msgid, i));
    const found = await this.storage.get(keys);
    return Buffer.concat(keys.map((k) => found.get(k)?.data ?? Buffer.alloc(0)));
  }

  private async envelopesOf(msgid: Msgid, after: Evpid | undefined, limit: number) {
    const rows = await this.storage.query({ kind: 'Envelope', msgid, after, limit });
    return { rows: rows.map((row) => ({ evpid: row.key.id, data: row.data.data, createdAt: row.data.createdAt })), more: rows.length === limit };
  }

  /**
   * The evpids of each message, in order: one lookup of their tallies, and
   * a query for each tally written before they were listed in it.
   */
  private async envelopeLists(msgids: Msgid[]): Promise<Map<Msgid, Evpid[]>> {
    if (msgids.length === 0) return new Map();
    const found = await this.storage.get(msgids.map(key.tally));
    const lists = await Promise.all(
      msgids.map(async (msgid) => tallyOf(found, msgid).evpids ?? (await this.storage.queryKeys({ kind: 'Envelope', msgid })).map((k) => k.id).sort()),
    );
    return new Map(msgids.map((msgid, i) => [msgid, lists[i]]));
  }

  /**
   * Every record under a message key (its chunks, envelopes and tally), for
   * the transaction that deletes them to delete. The queries are not part of
   * the transaction (which only looks keys up), but run in each of its
   * attempts: the legacy emulator aborts them when they meet a write to the
   * message, like a transaction, and an attempt after a commit landed must
   * see what the commit wrote. A child written after the queries would only
   * be invisible garbage: nothing reads children without a committed Message.
   */
  private async childrenOf(msgid: Msgid) {
    const results = await Promise.all(CHILD_KINDS.map((kind) => this.storage.queryKeys({ kind, msgid })));
    return results.flat();
  }
}

/**
 * The message an envelope belongs to, looked up with the envelope and the
 * tally; refuses other owners. A rolled-back message is not found, or
 * refused as such (`refuseRolledBack`).
 */
function envelopeContext(reader: Pick<Transaction, 'get'>, evpid: Evpid, check?: OwnerCheck, options: { refuseRolledBack?: boolean } = {}): Promise<Found> {
  return messageContext(reader, msgidOf(evpid), [evpid], check, options);
}

/** The message (committed or incoming), its tally and these envelopes of it; not_found without the message, not_owner for another's. */
async function messageContext(
  reader: Pick<Transaction, 'get'>,
  msgid: Msgid,
  evpids: Evpid[],
  check?: OwnerCheck,
  options: { refuseRolledBack?: boolean } = {},
): Promise<Found> {
  const found = await reader.get([key.message(msgid), key.incoming(msgid), key.tally(msgid), ...evpids.map((evpid) => key.envelope(evpid))]);
  const message = found.get(key.message(msgid));
  const stored = committedRecord(message) ?? found.get(key.incoming(msgid));
  if (!stored && options.refuseRolledBack && isFencing(message)) throw rolledBack(msgid);
  if (!stored) throw notFound('evpid', evpids[0]);
  checkOwner({ msgid, owner: stored.owner }, check);
  return found;
}

/** The one message these envelopes belong to. */
function messageOfAll(evpids: Evpid[]): Msgid {
  if (evpids.length === 0 || evpids.length > DELETE_BATCH_MAX) throw badRequest(`give 1 to ${DELETE_BATCH_MAX} envelopes`, { envelopes: evpids.length });
  const msgid = msgidOf(evpids[0]);
  const other = evpids.find((evpid) => msgidOf(evpid) !== msgid);
  if (other) throw badRequest('the envelopes must all belong to one message', { msgid, other });
  return msgid;
}

function ignoreNotFound(err: unknown): undefined {
  if (err instanceof QueueError && err.code === 'not_found') return undefined;
  throw err;
}

function recommit(info: MessageInfo, commit: Commit): { created: boolean } {
  if (isSameCommit(info, commit)) return { created: false };
  throw conflict(`message ${commit.msgid} is already committed with another body`, { msgid: commit.msgid });
}

/**
 * What one claimant takes of a dead instance's orphans in a round of
 * automatic takeovers: its share among the live instances, at least one,
 * so that the survivors' rounds spread them.
 */
export function claimShare(orphans: number, live: number): number {
  return Math.ceil(orphans / Math.max(live, 1));
}

/**
 * An instance's record after a heartbeat (lib/store.ts instanceHeartbeat):
 * a renewal, a drain asked or done, or a refusal while draining.
 */
function heartbeatRecord(instance: string, stored: Records['Instance'] | undefined, leaseMs: number, state: HeartbeatState, now: Date): Records['Instance'] {
  if (state.drain === 'ask') {
    if (!stored) throw notFound('instance', instance);
    if (stored.leaseUntil <= now) throw conflict(`instance ${instance} holds no lease: nothing to drain`, { instance, reason: 'no_lease' });
    return { ...stored, draining: 1 };
  }
  const restarted = state.startedAt !== undefined && stored !== undefined && state.startedAt.getTime() > stored.startedAt.getTime();
  if (stored?.draining && !restarted) {
    // a lease ends strictly before the takeovers that come after it
    if (state.drain === 'done') return { ...stored, leaseUntil: new Date(Math.min(stored.leaseUntil.getTime(), now.getTime() - 1)), heartbeatAt: now };
    throw conflict(`instance ${instance} is draining: its lease is not renewed, its mail goes to the survivors`, { instance, reason: 'draining' });
  }
  if (state.drain === 'done') throw conflict(`instance ${instance} is not draining`, { instance, reason: 'not_draining' });
  return {
    leaseUntil: new Date(now.getTime() + leaseMs),
    heartbeatAt: now,
    // an instance that does not say when it started keeps what it said before
    startedAt: state.startedAt ?? stored?.startedAt ?? now,
    walkDone: state.walkDone ? 1 : 0,
  };
}

function envelopeClash(evpid: Evpid) {
  return conflict(`envelope ${evpid} exists with other bytes`, { evpid });
}

function shuffle<T>(items: T[]): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [items[i], items[j]] = [items[j], items[i]];
  }
  return items;
}

function range(from: number, to: number): number[] {
  return Array.from({ length: Math.max(to - from, 0) }, (_, i) => from + i);
}

function bytesOf(rows: Row<'Chunk' | 'Envelope'>[]): number {
  return rows.reduce((sum, row) => sum + row.data.data.length + RECORD_OVERHEAD, 0);
}

function* batches<R extends Row<'Chunk' | 'Envelope'>>(rows: R[], maxBytes: number): Generator<R[]> {
  let batch: R[] = [];
  let bytes = 0;
  for (const row of rows) {
    const size = bytesOf([row]);
    if (batch.length > 0 && bytes + size > maxBytes) {
      yield batch;
      batch = [];
      bytes = 0;
    }
    batch.push(row);
    bytes += size;
  }
  if (batch.length > 0) yield batch;
}
