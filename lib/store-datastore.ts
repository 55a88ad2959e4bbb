import { setTimeout as sleep } from 'node:timers/promises';
import { Datastore, DatastoreClient, PropertyFilter, and, type Key, type Query, type Transaction } from '@google-cloud/datastore';
import type { google } from '@google-cloud/datastore/build/protos/protos';
import { decodeCursor, encodeCursor, pageBudget } from './cursor';
import { conflict, notFound, QueueError, rolledBack, unavailable } from './errors';
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
  type Takeover,
} from './store';

export interface DatastoreQueueOptions {
  projectId?: string;
  /** One namespace per queue; '' is Datastore's default namespace. */
  namespace?: string;
  databaseId?: string;
  /** host:port of an emulator; otherwise DATASTORE_EMULATOR_HOST or Google's endpoint. */
  apiEndpoint?: string;
  /** Deadline of each storage call. */
  timeoutMs?: number;
  limits?: Limits;
  /** Told when sweeping expired tombstones fails; the call that swept still succeeds. */
  onSweepError?: (err: unknown) => void;
}

/**
 * Entities (docs/storage.md):
 *   Incoming/<msgid>                  a reserved, uncommitted message: owner, createdAt, bodyVersion
 *   Message/<msgid>                   a committed message: state, owner, size, sha256, chunks, createdAt, committedAt, claimedAt
 *                                     or a deleted one's tombstone: state 'tombstone', owner, deletedAt, expiresAt
 *   Message/<msgid>/Chunk/<000000>    a piece of the body, CHUNK_BYTES at most
 *   Message/<msgid>/Envelope/<evpid>  an envelope: data, createdAt, version (of the last versioned update)
 *   Message/<msgid>/Tally/envelopes   how many envelopes the message has: count
 *   Instance/<instance>               an MX of the pool: leaseUntil, heartbeatAt, startedAt, walkDone
 * Chunks and envelopes of an incoming message already sit under its Message
 * key, but nothing reads them until the Message entity exists, so a commit is
 * the single atomic insert of that entity (plus whatever fits with it).
 * Transactions only look keys up, never query: the Firestore emulator locks a
 * query's whole kind, so two deletes on different messages would wait on each
 * other. Hence the tally, which tells an envelope delete whether it is the last.
 * The tombstone sits at the Message key so that the commit's insert of the
 * Message entity, which fails if anything is there, is also the check that
 * the message was not rolled back: no read, no transaction on the accept path.
 */
const INDEXED: Record<string, readonly string[]> = {
  Message: ['state', 'owner', 'expiresAt'],
  Incoming: ['owner'],
  Envelope: [],
  Chunk: [],
  Tally: [],
  Instance: ['leaseUntil'],
};

/** Datastore's 4 MiB request cap on the emulators, with room for keys and framing. */
const WRITE_BATCH_BYTES = 3_500_000;
const CHILD_KINDS = ['Chunk', 'Envelope', 'Tally'];
/** A transaction aborted by contention is run again this many times, with backoff, before it answers unavailable. */
const TX_ATTEMPTS = 10;
const WALK_MESSAGES = 50;
const WALK_PARALLEL = 8;
const WALK_ENVELOPES_PER_QUERY = 200;
/** Messages claimed per transaction: few, so that claimants racing for the same orphans rarely wait on each other. */
const CLAIM_BATCH = 10;
/** Most expired tombstones one sweep deletes, and how many per transaction (the legacy emulator allows 25 entity groups). */
const SWEEP_MAX = 200;
const SWEEP_BATCH = 20;
const TOMBSTONE = 'tombstone';

type Props = Record<string, string | number | Date | Buffer | null>;
type Stored = Props & { [Datastore.KEY]: Key };
interface Entity {
  key: Key;
  data: Props;
}

export class DatastoreQueueStore implements QueueStore {
  readonly limits: Limits;
  private readonly ds: Datastore;
  private readonly gax: { timeout: number; maxRetries: number };
  private readonly onSweepError: (err: unknown) => void;
  private raw?: DatastoreClient;

  constructor(options: DatastoreQueueOptions = {}) {
    this.limits = options.limits ?? DEFAULT_LIMITS;
    this.onSweepError = options.onSweepError ?? (() => undefined);
    this.ds = new Datastore({
      projectId: options.projectId,
      namespace: options.namespace || undefined,
      databaseId: options.databaseId,
      apiEndpoint: options.apiEndpoint,
    });
    this.gax = { timeout: options.timeoutMs ?? 10_000, maxRetries: 2 };
  }

  async messageCreate(msgids: Msgid[], owner: string): Promise<void> {
    checkCreate(msgids);
    const unique = [...new Set(msgids)];
    await this.transaction(async (tx) => {
      const found = await this.lookup(tx, [...unique.map((m) => this.messageKey(m)), ...unique.map((m) => this.incomingKey(m))]);
      const now = Date.now();
      const rolledBack = unique.filter((m) => isFencing(found.get(this.messageKey(m)), now));
      const taken = unique.filter((m) => {
        const message = found.get(this.messageKey(m));
        const incoming = found.get(this.incomingKey(m));
        return (message && (!isTombstone(message) || isFencing(message, now))) || (incoming && incoming.owner !== owner);
      });
      if (taken.length > 0) {
        throw conflict(`${taken.length} of the msgids are taken`, { taken, ...(rolledBack.length > 0 && { rolledBack }) });
      }
      const createdAt = new Date();
      for (const msgid of unique) {
        // an expired tombstone: the commit's insert of the Message entity must find the key free
        if (found.has(this.messageKey(msgid))) tx.delete(this.messageKey(msgid));
        if (!found.has(this.incomingKey(msgid))) {
          tx.insert(this.entity(this.incomingKey(msgid), { owner, createdAt, bodyVersion: 0 }));
        }
      }
    });
  }

  async messageWrite(msgid: Msgid, offset: number, data: Buffer, owner: string): Promise<void> {
    checkWrite(msgid, offset, data, this.limits);
    const chunks = toChunks(data, offset / CHUNK_BYTES).map((c) => this.entity(this.chunkKey(msgid, c.index), { data: c.data }));
    await this.writeIncoming(msgid, owner, chunks);
  }

  async messageCommit(commit: Commit): Promise<{ created: boolean }> {
    checkCommit(commit, this.limits);
    const envelopes = (commit.envelopes ?? []).map((e) => this.envelopeEntity(e.evpid, e.data, new Date()));
    if (commit.body && commit.size + bytesOf(envelopes) <= WRITE_BATCH_BYTES) {
      try {
        return await this.commitInOneWrite(commit, envelopes);
      } catch (err) {
        if (grpcCode(err) !== ALREADY_EXISTS) throw storageError(err);
        // committed before (a retry), or an envelope was created before the commit
      }
    }
    const existing = await this.get(this.messageKey(commit.msgid));
    if (isFencing(existing)) throw rolledBack(commit.msgid);
    const committed = committedRow(existing);
    if (committed) return this.recommit(toInfo(commit.msgid, committed), commit);
    if (commit.body) {
      await this.messageCreate([commit.msgid], commit.owner);
      await this.messageWrite(commit.msgid, 0, commit.body, commit.owner);
    }
    return this.commitWrittenBody(commit, envelopes);
  }

  async messageDelete(msgid: Msgid, check?: OwnerCheck): Promise<{ deleted: boolean }> {
    return this.transaction(async (tx) => {
      const children = await this.descendants(msgid);
      const found = await this.lookup(tx, [this.messageKey(msgid), this.incomingKey(msgid)]);
      const message = found.get(this.messageKey(msgid));
      if (isFencing(message)) return { deleted: false };
      const stored = committedRow(message) ?? found.get(this.incomingKey(msgid));
      if (stored) checkOwner({ msgid, owner: String(stored.owner) }, check);
      tx.delete([...children, this.incomingKey(msgid)]);
      // also when nothing was there: a commit still on its way must not create the message
      tx.upsert(this.tombstoneEntity(msgid, stored ? String(stored.owner) : (check?.owner ?? null)));
      return { deleted: stored !== undefined };
    });
  }

  async messageRead(msgid: Msgid, read: ReadRange & OwnerCheck = {}): Promise<{ info: MessageInfo; data: Buffer }> {
    const stored = committedRow(await this.get(this.messageKey(msgid)));
    if (!stored) throw notFound('msgid', msgid);
    const info = toInfo(msgid, stored);
    checkOwner(info, read);
    const size = info.size ?? 0;
    const { start, end } = byteRange(size, read.offset, read.length);
    const first = Math.floor(start / CHUNK_BYTES);
    const last = Math.ceil(end / CHUNK_BYTES);
    const keys = range(first, last).map((i) => this.chunkKey(msgid, i));
    const found = keys.length > 0 ? await this.lookup(this.ds, keys) : new Map<Key, Stored>();
    const body = Buffer.concat(keys.map((k) => (found.get(k)?.data as Buffer | undefined) ?? Buffer.alloc(0)));
    if (start === 0 && end === size && sha256hex(body) !== info.sha256) {
      await this.setState(msgid, 'corrupt', {}).catch(() => undefined);
      throw conflict(`message ${msgid} body does not match its sha256; quarantined`, { msgid, reason: 'corrupt' });
    }
    const from = start - first * CHUNK_BYTES;
    return { info, data: body.subarray(from, from + (end - start)) };
  }

  async messageWalk(msgid: Msgid, page: PageRequest & OwnerCheck = {}): Promise<MessageWalk> {
    const found = await this.lookup(this.ds, [this.messageKey(msgid), this.incomingKey(msgid)]);
    const committed = committedRow(found.get(this.messageKey(msgid)));
    const incoming = found.get(this.incomingKey(msgid));
    if (!committed && !incoming) throw notFound('msgid', msgid);
    const message = committed ? toInfo(msgid, committed) : incomingInfo(msgid, incoming!);
    checkOwner(message, page);
    const pos = page.cursor ? decodeCursor(page.cursor) : { t0: Date.now() };
    const { limit, maxBytes } = pageBudget(page);
    const after = pos.m === msgid ? pos.e : undefined;
    const { rows, more } = await this.envelopesOf(msgid, after, limit);
    const items: Envelope[] = [];
    let bytes = 0;
    for (const row of rows) {
      if (items.length > 0 && bytes + row.data.length > maxBytes) break;
      items.push(row);
      bytes += row.data.length;
    }
    const last = items.at(-1);
    const cut = items.length < rows.length || more;
    return { message, items, cursor: cut && last ? encodeCursor({ t0: pos.t0, m: msgid, e: last.evpid }) : null };
  }

  async messageCorrupt(msgid: Msgid, check?: OwnerCheck): Promise<MessageInfo> {
    return this.setState(msgid, 'corrupt', check ?? {});
  }

  async messageUncorrupt(msgid: Msgid, check?: OwnerCheck): Promise<MessageInfo> {
    return this.setState(msgid, 'queued', check ?? {});
  }

  async envelopeCreate(envelope: Envelope, check?: OwnerCheck): Promise<{ created: boolean }> {
    checkEnvelope(envelope, this.limits);
    return this.transaction(async (tx) => {
      const { found } = await this.envelopeContext(tx, envelope.evpid, check, { refuseRolledBack: true });
      const existing = found.get(this.envelopeKey(envelope.evpid));
      if (existing) {
        if ((existing.data as Buffer).equals(envelope.data)) return { created: false };
        throw conflict(`envelope ${envelope.evpid} exists with other bytes`, { evpid: envelope.evpid });
      }
      tx.insert(this.envelopeEntity(envelope.evpid, envelope.data, new Date()));
      const msgid = msgidOf(envelope.evpid);
      tx.upsert(this.tallyEntity(msgid, tallyOf(found.get(this.tallyKey(msgid))) + 1));
      return { created: true };
    });
  }

  async envelopeDelete(evpid: Evpid, check?: OwnerCheck): Promise<{ deleted: boolean; messageDeleted: boolean }> {
    const msgid = msgidOf(evpid);
    return this.transaction(async (tx) => {
      const { found } = await this.envelopeContext(tx, evpid, check).catch((err: unknown) => {
        if (err instanceof QueueError && err.code === 'not_found') return { found: undefined };
        throw err;
      });
      if (!found || !found.has(this.envelopeKey(evpid))) return { deleted: false, messageDeleted: false };
      const committed = committedRow(found.get(this.messageKey(msgid)));
      const left = tallyOf(found.get(this.tallyKey(msgid))) - 1;
      if (committed && left <= 0) {
        const chunks = range(0, Number(committed.chunks)).map((i) => this.chunkKey(msgid, i));
        tx.delete([...chunks, this.envelopeKey(evpid), this.tallyKey(msgid), this.messageKey(msgid)]);
        return { deleted: true, messageDeleted: true };
      }
      tx.delete(this.envelopeKey(evpid));
      tx.upsert(this.tallyEntity(msgid, Math.max(left, 0)));
      return { deleted: true, messageDeleted: false };
    });
  }

  async envelopeLoad(evpid: Evpid, check?: OwnerCheck): Promise<Buffer> {
    const { found } = await this.envelopeContext(this.ds, evpid, check);
    const stored = found.get(this.envelopeKey(evpid));
    if (!stored) throw notFound('evpid', evpid);
    return stored.data as Buffer;
  }

  async envelopeUpdate(update: EnvelopeUpdate, check?: OwnerCheck): Promise<void> {
    checkUpdate(update, this.limits);
    await this.transaction(async (tx) => {
      const { found } = await this.envelopeContext(tx, update.evpid, check);
      const stored = found.get(this.envelopeKey(update.evpid));
      if (!stored) throw notFound('evpid', update.evpid);
      const version = Number(stored.version ?? 0);
      if (!isNewerUpdate(update, { data: stored.data as Buffer, version })) return;
      tx.update(this.envelopeEntity(update.evpid, update.data, stored.createdAt as Date, update.version ?? version));
    });
  }

  async envelopeWalk(page: PageRequest & { owner?: string } = {}): Promise<Page<Envelope>> {
    const pos = page.cursor ? decodeCursor(page.cursor) : { t0: await newSnapshotTime() };
    const { limit, maxBytes } = pageBudget(page);
    const items: Envelope[] = [];
    let bytes = 0;
    let after: { m?: string; e?: string } = pos;
    const cursorAt = (m: string, e: string) => encodeCursor({ t0: pos.t0, m, e });
    for (;;) {
      const batch = await this.queuedMessages(page.owner, after.m, WALK_MESSAGES);
      const messages = batch.filter((row) => !(row[Datastore.KEY].name === after.m && after.e === undefined));
      for (let w = 0; w < messages.length; w += WALK_PARALLEL) {
        const window = messages.slice(w, w + WALK_PARALLEL);
        const fetched = await Promise.all(
          window.map((row) => {
            const msgid = row[Datastore.KEY].name!;
            const claimedAt = (row.claimedAt as Date | null | undefined)?.getTime() ?? 0;
            if ((row.committedAt as Date).getTime() > pos.t0 || claimedAt > pos.t0) return { msgid, rows: [], more: false };
            const from = msgid === after.m ? after.e : undefined;
            return this.envelopesOf(msgid, from, Math.min(limit - items.length + 1, WALK_ENVELOPES_PER_QUERY)).then((r) => ({ msgid, ...r }));
          }),
        );
        for (const { msgid, rows, more } of fetched) {
          for (const row of rows) {
            if (items.length === limit || (items.length > 0 && bytes + row.data.length > maxBytes)) {
              const last = items.at(-1)!;
              return { items, cursor: cursorAt(msgidOf(last.evpid), last.evpid) };
            }
            if (row.createdAt.getTime() <= pos.t0) {
              items.push({ evpid: row.evpid, data: row.data });
              bytes += row.data.length;
            }
          }
          if (more) return { items, cursor: cursorAt(msgid, rows.at(-1)!.evpid) };
          after = { m: msgid };
        }
      }
      if (batch.length < WALK_MESSAGES) return { items, cursor: null };
    }
  }

  async messagePurge(owner: string, keep: Msgid[] = []): Promise<number> {
    const kept = new Set(keep);
    const rows = await this.query(this.ds, this.ds.createQuery('Incoming').filter(new PropertyFilter('owner', '=', owner)).select('__key__'));
    let purged = 0;
    for (const row of rows) {
      const msgid = row[Datastore.KEY].name!;
      if (kept.has(msgid)) continue;
      const removed = await this.transaction(async (tx) => {
        const children = await this.descendants(msgid);
        const found = await this.lookup(tx, [this.messageKey(msgid), this.incomingKey(msgid)]);
        const incoming = found.get(this.incomingKey(msgid));
        if (!incoming || incoming.owner !== owner) return false;
        if (committedRow(found.get(this.messageKey(msgid)))) {
          // a committed message of the same id keeps its children
          tx.delete(this.incomingKey(msgid));
        } else {
          tx.delete([...children, this.incomingKey(msgid)]);
          tx.upsert(this.tombstoneEntity(msgid, owner));
        }
        return true;
      });
      if (removed) purged++;
    }
    await this.sweepTombstones();
    return purged;
  }

  async instanceHeartbeat(instance: string, leaseMs: number, state: { walkDone?: boolean; startedAt?: Date } = {}): Promise<InstanceInfo> {
    const now = new Date();
    const data = {
      leaseUntil: new Date(now.getTime() + leaseMs),
      heartbeatAt: now,
      startedAt: state.startedAt ?? now,
      walkDone: state.walkDone ? 1 : 0,
    };
    try {
      await this.ds.save(this.entity(this.instanceKey(instance), data), { timeout: this.gax.timeout });
    } catch (err) {
      throw storageError(err);
    }
    const claims = (await this.lookup(this.ds, [this.claimsKey(instance)])).get(this.claimsKey(instance));
    await this.sweepTombstones();
    return toInstance(instance, data, now.getTime(), claims);
  }

  async instanceList(): Promise<InstanceInfo[]> {
    const [rows, claims] = await Promise.all([this.query(this.ds, this.ds.createQuery('Instance')), this.query(this.ds, this.ds.createQuery('Claims'))]);
    const claimsOf = new Map(claims.map((row) => [row[Datastore.KEY].name!, row]));
    const now = Date.now();
    return rows
      .map((row) => toInstance(row[Datastore.KEY].name!, row, now, claimsOf.get(row[Datastore.KEY].name!)))
      .sort((a, b) => a.instance.localeCompare(b.instance));
  }

  async queueTakeover(claimant: string, options: { from?: string[]; limit?: number } = {}): Promise<Takeover> {
    const limit = Math.min(Math.max(options.limit ?? TAKEOVER_DEFAULT, 1), TAKEOVER_MAX);
    const expired = await this.query(this.ds, this.ds.createQuery('Instance').filter(new PropertyFilter('leaseUntil', '<', new Date())).select('__key__'));
    const dead = expired.map((row) => row[Datastore.KEY].name!).filter((i) => i !== claimant && (!options.from || options.from.includes(i)));
    const result: Takeover = { claimed: [], purged: 0, more: false };
    for (const owner of dead) {
      result.purged += await this.messagePurge(owner);
      const wanted = limit - result.claimed.length;
      if (wanted <= 0) {
        result.more = true;
        break;
      }
      const filter = and([new PropertyFilter('owner', '=', owner), new PropertyFilter('state', '=', 'queued')]);
      const rows = await this.query(this.ds, this.ds.createQuery('Message').filter(filter).select('__key__').limit(wanted + 1));
      if (rows.length > wanted) result.more = true;
      // in a random order, so that claimants racing for the same orphans mostly take different ones
      const msgids = shuffle(rows.slice(0, wanted).map((row) => row[Datastore.KEY].name!));
      for (let i = 0; i < msgids.length; i += CLAIM_BATCH) {
        const claimed = await this.claim(msgids.slice(i, i + CLAIM_BATCH), owner, claimant);
        const evpids = await Promise.all(claimed.map((msgid) => this.envelopeIds(msgid)));
        claimed.forEach((msgid, j) => result.claimed.push({ msgid, from: owner, evpids: evpids[j] }));
      }
    }
    return result;
  }

  async queueCounts(): Promise<QueueCount[]> {
    const counts = new Map<string, QueueCount>();
    const add = (owner: string, state: QueueCount['state']) => {
      const key = `${owner}\0${state}`;
      const count = counts.get(key) ?? { owner, state, messages: 0 };
      count.messages++;
      counts.set(key, count);
    };
    const inState = (state: string) => this.query(this.ds, this.ds.createQuery('Message').filter(new PropertyFilter('state', '=', state)));
    const [queued, corrupt, incoming] = await Promise.all([inState('queued'), inState('corrupt'), this.query(this.ds, this.ds.createQuery('Incoming'))]);
    for (const row of [...queued, ...corrupt]) add(String(row.owner), row.state === 'corrupt' ? 'corrupt' : 'queued');
    for (const row of incoming) add(String(row.owner), 'incoming');
    return [...counts.values()].sort((a, b) => a.owner.localeCompare(b.owner) || a.state.localeCompare(b.state));
  }

  /** Moves messages from a dead owner to `claimant` in one transaction; answers those it moved. */
  private async claim(msgids: Msgid[], from: string, claimant: string): Promise<Msgid[]> {
    return this.transaction(async (tx) => {
      const found = await this.lookup(tx, [this.instanceKey(from), this.claimsKey(claimant), ...msgids.map((m) => this.messageKey(m))]);
      const instance = found.get(this.instanceKey(from));
      if (!instance || (instance.leaseUntil as Date).getTime() >= Date.now()) return [];
      const claimedAt = new Date();
      const moved: Msgid[] = [];
      for (const msgid of msgids) {
        const row = found.get(this.messageKey(msgid));
        if (!row || row.owner !== from || row.state !== 'queued') continue;
        tx.update(this.entity(this.messageKey(msgid), { ...stripKey(row), owner: claimant, claimedAt }));
        moved.push(msgid);
      }
      // the claimant's bridge learns from its heartbeat that it has mail its smtpd does not know
      if (moved.length > 0) tx.upsert(this.entity(this.claimsKey(claimant), { count: claimCount(found.get(this.claimsKey(claimant))) + moved.length }));
      return moved;
    });
  }

  private async envelopeIds(msgid: Msgid): Promise<Evpid[]> {
    const rows = await this.query(this.ds, this.envelopeQuery(msgid).select('__key__'));
    return rows.map((row) => row[Datastore.KEY].name!).sort();
  }

  async close(): Promise<void> {
    await this.raw?.close();
    for (const client of this.ds.clients_.values()) await (client as { close?: () => unknown }).close?.();
  }

  /** The fast commit: one atomic write that cannot overwrite a committed message. */
  private async commitInOneWrite(commit: Commit, envelopes: Entity[]): Promise<{ created: boolean }> {
    const now = new Date();
    const chunks = toChunks(commit.body!).map((c) => this.entity(this.chunkKey(commit.msgid, c.index), { data: c.data }));
    await this.singleUseCommit({
      // the tally exists already if envelopes were created on the incoming message: then the insert fails
      insert: [this.messageEntity(commit, now), this.tallyEntity(commit.msgid, envelopes.length), ...envelopes],
      upsert: chunks,
      delete: [this.incomingKey(commit.msgid)],
    });
    return { created: true };
  }

  /** The commit of a body written in parts: verify it, then flip in one transaction. */
  private async commitWrittenBody(commit: Commit, envelopes: Entity[]): Promise<{ created: boolean }> {
    const { msgid } = commit;
    if (bytesOf(envelopes) > WRITE_BATCH_BYTES) {
      await this.writeIncoming(msgid, commit.owner, envelopes, true);
      envelopes = [];
    }
    const incoming = await this.get(this.incomingKey(msgid));
    if (!incoming) throw notFound('msgid', msgid);
    checkOwner({ msgid, owner: String(incoming.owner) }, commit);
    const version = incoming.bodyVersion;
    const parts = range(0, chunkCount(commit.size)).map((i) => this.chunkKey(msgid, i));
    const found = parts.length > 0 ? await this.lookup(this.ds, parts) : new Map<Key, Stored>();
    checkBody(msgid, commit.size, commit.sha256, Buffer.concat(parts.map((k) => (found.get(k)?.data as Buffer) ?? Buffer.alloc(0))));
    return this.transaction(async (tx) => {
      const seen = await this.lookup(tx, [this.messageKey(msgid), this.incomingKey(msgid), this.tallyKey(msgid), ...envelopes.map((e) => e.key)]);
      const message = seen.get(this.messageKey(msgid));
      if (isFencing(message)) throw rolledBack(msgid);
      const committed = committedRow(message);
      if (committed) return this.recommit(toInfo(msgid, committed), commit);
      const current = seen.get(this.incomingKey(msgid));
      if (!current) throw notFound('msgid', msgid);
      checkOwner({ msgid, owner: String(current.owner) }, commit);
      if (current.bodyVersion !== version) throw conflict(`message ${msgid} body changed while it was committed`, { msgid });
      const entity = this.messageEntity(commit, new Date(), current.createdAt as Date);
      // over an expired tombstone, which this transaction has read
      if (message) tx.upsert(entity);
      else tx.insert(entity);
      tx.delete(this.incomingKey(msgid));
      let count = tallyOf(seen.get(this.tallyKey(msgid)));
      for (const e of envelopes) {
        const existing = seen.get(e.key);
        if (!existing) {
          tx.insert(e);
          count++;
        } else if (!(existing.data as Buffer).equals(e.data.data as Buffer)) {
          throw conflict(`envelope ${e.key.name} exists with other bytes`, { evpid: e.key.name });
        }
      }
      tx.upsert(this.tallyEntity(msgid, count));
      return { created: true };
    });
  }

  private recommit(info: MessageInfo, commit: Commit): { created: boolean } {
    if (isSameCommit(info, commit)) return { created: false };
    throw conflict(`message ${commit.msgid} is already committed with another body`, { msgid: commit.msgid });
  }

  /**
   * Writes chunks or envelopes of an incoming message in batches that fit a
   * request, each checking that the message is still `owner`'s and not yet
   * committed. Envelopes keep bytes already stored for them (`keepExisting`).
   */
  private async writeIncoming(msgid: Msgid, owner: string, entities: Entity[], keepExisting = false): Promise<void> {
    for (const batch of batches(entities, WRITE_BATCH_BYTES)) {
      await this.transaction(async (tx) => {
        const found = await this.lookup(tx, [
          this.messageKey(msgid),
          this.incomingKey(msgid),
          this.tallyKey(msgid),
          ...(keepExisting ? batch.map((e) => e.key) : []),
        ]);
        const message = found.get(this.messageKey(msgid));
        if (isFencing(message)) throw rolledBack(msgid);
        if (committedRow(message)) throw conflict(`message ${msgid} is already committed`, { msgid });
        const incoming = found.get(this.incomingKey(msgid));
        if (!incoming) throw notFound('msgid', msgid);
        checkOwner({ msgid, owner: String(incoming.owner) }, { owner });
        let added = 0;
        for (const e of batch) {
          const existing = found.get(e.key);
          if (existing && !(existing.data as Buffer).equals(e.data.data as Buffer)) {
            throw conflict(`envelope ${e.key.name} exists with other bytes`, { evpid: e.key.name });
          }
          if (!existing && e.key.kind === 'Envelope') added++;
        }
        tx.upsert(batch);
        if (added > 0) tx.upsert(this.tallyEntity(msgid, tallyOf(found.get(this.tallyKey(msgid))) + added));
        tx.update(this.entity(this.incomingKey(msgid), { ...stripKey(incoming), bodyVersion: Number(incoming.bodyVersion) + 1 }));
      });
    }
  }

  private async setState(msgid: Msgid, state: 'queued' | 'corrupt', check: OwnerCheck): Promise<MessageInfo> {
    return this.transaction(async (tx) => {
      const stored = committedRow((await this.lookup(tx, [this.messageKey(msgid)])).get(this.messageKey(msgid)));
      if (!stored) throw notFound('msgid', msgid);
      checkOwner({ msgid, owner: String(stored.owner) }, check);
      const data = { ...stripKey(stored), state };
      tx.update(this.entity(this.messageKey(msgid), data));
      return toInfo(msgid, data);
    });
  }

  /**
   * The message an envelope belongs to, looked up with the envelope; refuses
   * other owners. A rolled-back message is not found, or refused as such.
   */
  private async envelopeContext(reader: Datastore | Transaction, evpid: Evpid, check?: OwnerCheck, options: { refuseRolledBack?: boolean } = {}) {
    const msgid = msgidOf(evpid);
    const found = await this.lookup(reader, [this.messageKey(msgid), this.incomingKey(msgid), this.envelopeKey(evpid), this.tallyKey(msgid)]);
    const message = found.get(this.messageKey(msgid));
    const stored = committedRow(message) ?? found.get(this.incomingKey(msgid));
    if (!stored && options.refuseRolledBack && isFencing(message)) throw rolledBack(msgid);
    if (!stored) throw notFound('evpid', evpid);
    checkOwner({ msgid, owner: String(stored.owner) }, check);
    return { found };
  }

  /**
   * Deletes up to SWEEP_MAX expired tombstones, each checked again in the
   * transaction that deletes it. Housekeeping for the calls that run it (a
   * heartbeat must not lose its lease over it): a failure is reported and
   * left to the next sweep.
   */
  private async sweepTombstones(): Promise<number> {
    try {
      const expired = new PropertyFilter('expiresAt', '<', new Date());
      const rows = await this.query(this.ds, this.ds.createQuery('Message').filter(expired).select('__key__').limit(SWEEP_MAX));
      // in a random order, so that instances sweeping at the same time mostly take different ones
      const keys = shuffle(rows.map((row) => row[Datastore.KEY]));
      let swept = 0;
      for (let i = 0; i < keys.length; i += SWEEP_BATCH) {
        swept += await this.transaction(async (tx) => {
          const batch = keys.slice(i, i + SWEEP_BATCH);
          const found = await this.lookup(tx, batch);
          const now = Date.now();
          const gone = batch.filter((key) => isTombstone(found.get(key)) && !isFencing(found.get(key), now));
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

  private async envelopesOf(msgid: Msgid, after: Evpid | undefined, limit: number) {
    let query = this.envelopeQuery(msgid).order('__key__').limit(limit);
    if (after) query = query.filter(new PropertyFilter('__key__', '>', this.envelopeKey(after)));
    const rows = await this.query(this.ds, query);
    return {
      rows: rows.map((row) => ({
        evpid: row[Datastore.KEY].name!,
        data: row.data as Buffer,
        createdAt: row.createdAt as Date,
      })),
      more: rows.length === limit,
    };
  }

  private async queuedMessages(owner: string | undefined, from: string | undefined, limit: number): Promise<Stored[]> {
    const filters: PropertyFilter<string>[] = [new PropertyFilter('state', '=', 'queued')];
    if (owner !== undefined) filters.push(new PropertyFilter('owner', '=', owner));
    if (from) filters.push(new PropertyFilter('__key__', '>=', this.messageKey(from)));
    return this.query(this.ds, this.ds.createQuery('Message').filter(and(filters)).order('__key__').limit(limit));
  }

  private envelopeQuery(msgid: Msgid) {
    return this.ds.createQuery('Envelope').hasAncestor(this.messageKey(msgid));
  }

  /**
   * Every entity under a message key (its chunks, envelopes and tally), for
   * the transaction that deletes them to delete. The query is not part of the
   * transaction (which only looks keys up), but runs in each of its attempts:
   * the legacy emulator aborts it when it meets a write to the message, like
   * a transaction, and an attempt after a commit landed must see what the
   * commit wrote. A child written after the query would only be invisible
   * garbage: nothing reads children without a committed Message entity.
   */
  private async descendants(msgid: Msgid): Promise<Key[]> {
    const results = await Promise.all(
      CHILD_KINDS.map((kind) => this.query(this.ds, this.ds.createQuery(kind).hasAncestor(this.messageKey(msgid)).select('__key__'))),
    );
    return results.flatMap((rows) => rows.map((row) => row[Datastore.KEY]));
  }

  private async transaction<T>(work: (tx: Transaction) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const tx = this.ds.transaction();
      try {
        await tx.run({ gaxOptions: this.gax });
        const result = await work(tx);
        await tx.commit({ timeout: this.gax.timeout });
        return result;
      } catch (err) {
        await tx.rollback().catch(() => undefined);
        if (isAborted(err) && attempt < TX_ATTEMPTS) {
          await sleep(Math.min(1000, 25 * 2 ** attempt) * (0.5 + Math.random() / 2));
          continue;
        }
        throw storageError(err);
      }
    }
  }

  private async lookup(reader: Datastore | Transaction, keys: Key[]): Promise<KeyMap> {
    try {
      const [rows] = await reader.get(keys, { gaxOptions: this.gax });
      const found = new KeyMap();
      for (const row of rows as Stored[]) found.set(row[Datastore.KEY], row);
      return found;
    } catch (err) {
      throw storageError(err);
    }
  }

  private async query(reader: Datastore | Transaction, query: Query): Promise<Stored[]> {
    try {
      const [rows] = await reader.runQuery(query, { gaxOptions: this.gax });
      return rows as Stored[];
    } catch (err) {
      throw storageError(err);
    }
  }

  private async get(key: Key): Promise<Stored | undefined> {
    return (await this.lookup(this.ds, [key])).get(key);
  }

  private async singleUseCommit(mutations: { insert: Entity[]; upsert: Entity[]; delete: Key[] }): Promise<void> {
    const projectId = await this.ds.getProjectId();
    this.raw ??= new DatastoreClient({ ...this.ds.options });
    const databaseId = this.ds.options.databaseId ?? '';
    const toKey = (key: Key) => protoKey(key, projectId, databaseId, this.ds.namespace ?? '');
    const toEntity = (e: Entity) => protoEntity(toKey(e.key), e.data, INDEXED[e.key.kind]);
    await this.raw.commit(
      {
        projectId,
        databaseId,
        mode: 'TRANSACTIONAL',
        singleUseTransaction: { readWrite: {} },
        mutations: [
          ...mutations.insert.map((e) => ({ insert: toEntity(e) })),
          ...mutations.upsert.map((e) => ({ upsert: toEntity(e) })),
          ...mutations.delete.map((k) => ({ delete: toKey(k) })),
        ],
      },
      { timeout: this.gax.timeout },
    );
  }

  private entity(key: Key, data: Props): Entity & { excludeFromIndexes: string[] } {
    const indexed = INDEXED[key.kind] ?? [];
    return { key, data, excludeFromIndexes: Object.keys(data).filter((name) => !indexed.includes(name)) };
  }

  private messageEntity(commit: Commit, committedAt: Date, createdAt = committedAt) {
    return this.entity(this.messageKey(commit.msgid), {
      state: 'queued',
      owner: commit.owner,
      size: commit.size,
      sha256: commit.sha256,
      chunks: chunkCount(commit.size),
      createdAt,
      committedAt,
    });
  }

  private envelopeEntity(evpid: Evpid, data: Buffer, createdAt: Date, version = 0) {
    return this.entity(this.envelopeKey(evpid), { data, createdAt, ...(version > 0 && { version }) });
  }

  private tombstoneEntity(msgid: Msgid, owner: string | null) {
    const deletedAt = new Date();
    const expiresAt = new Date(deletedAt.getTime() + this.limits.tombstoneMs);
    return this.entity(this.messageKey(msgid), { state: TOMBSTONE, owner, deletedAt, expiresAt });
  }

  private tallyEntity(msgid: Msgid, count: number) {
    return this.entity(this.tallyKey(msgid), { count });
  }

  private tallyKey(msgid: Msgid): Key {
    return this.ds.key(['Message', msgid, 'Tally', 'envelopes']);
  }

  private instanceKey(instance: string): Key {
    return this.ds.key(['Instance', instance]);
  }

  /** How many messages have been claimed for an instance, ever: apart from Instance, which heartbeats overwrite blindly. */
  private claimsKey(instance: string): Key {
    return this.ds.key(['Claims', instance]);
  }

  private messageKey(msgid: Msgid): Key {
    return this.ds.key(['Message', msgid]);
  }

  private incomingKey(msgid: Msgid): Key {
    return this.ds.key(['Incoming', msgid]);
  }

  private envelopeKey(evpid: Evpid): Key {
    return this.ds.key(['Message', msgidOf(evpid), 'Envelope', evpid]);
  }

  private chunkKey(msgid: Msgid, index: number): Key {
    return this.ds.key(['Message', msgid, 'Chunk', String(index).padStart(6, '0')]);
  }
}

/** Lookup results by key path, since Key objects do not compare by value. */
class KeyMap {
  private readonly rows = new Map<string, Stored>();
  set(key: Key, row: Stored) {
    this.rows.set(key.path.join('/'), row);
  }
  get(key: Key): Stored | undefined {
    return this.rows.get(key.path.join('/'));
  }
  has(key: Key): boolean {
    return this.rows.has(key.path.join('/'));
  }
}

function toInfo(msgid: Msgid, row: Props): MessageInfo {
  return {
    msgid,
    state: row.state === 'corrupt' ? 'corrupt' : 'queued',
    owner: String(row.owner),
    size: Number(row.size),
    sha256: String(row.sha256),
    createdAt: row.createdAt as Date,
    committedAt: row.committedAt as Date,
    claimedAt: (row.claimedAt as Date | undefined) ?? null,
  };
}

function toInstance(instance: string, row: Props, now: number, claims?: Props): InstanceInfo {
  const leaseUntil = row.leaseUntil as Date;
  return {
    instance,
    leaseUntil,
    heartbeatAt: row.heartbeatAt as Date,
    startedAt: row.startedAt as Date,
    walkDone: Boolean(row.walkDone),
    alive: leaseUntil.getTime() > now,
    claims: claimCount(claims),
  };
}

function claimCount(row: Props | undefined): number {
  return row ? Number(row.count) : 0;
}

function isTombstone(row: Props | undefined): boolean {
  return row?.state === TOMBSTONE;
}

/** A tombstone that still fences its msgid. */
function isFencing(row: Props | undefined, now = Date.now()): boolean {
  return isTombstone(row) && (row!.expiresAt as Date).getTime() > now;
}

/** The committed message a Message row holds, if it is not a tombstone. */
function committedRow<T extends Props>(row: T | undefined): T | undefined {
  return row && !isTombstone(row) ? row : undefined;
}

function tallyOf(row: Props | undefined): number {
  return row ? Number(row.count) : 0;
}

function incomingInfo(msgid: Msgid, row: Props): MessageInfo {
  return { msgid, state: 'incoming', owner: String(row.owner), size: null, sha256: null, createdAt: row.createdAt as Date, committedAt: null };
}

function stripKey(row: Stored): Props {
  const { [Datastore.KEY]: _key, ...data } = row;
  return data;
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

function bytesOf(entities: Entity[]): number {
  return entities.reduce((sum, e) => sum + ((e.data.data as Buffer | undefined)?.length ?? 0) + 200, 0);
}

function* batches(entities: Entity[], maxBytes: number): Generator<Entity[]> {
  let batch: Entity[] = [];
  let bytes = 0;
  for (const e of entities) {
    const size = bytesOf([e]);
    if (batch.length > 0 && bytes + size > maxBytes) {
      yield batch;
      batch = [];
      bytes = 0;
    }
    batch.push(e);
    bytes += size;
  }
  if (batch.length > 0) yield batch;
}

const ALREADY_EXISTS = 6;
const ABORTED = 10;
/** gRPC codes that mean storage is unreachable, overloaded or contended: worth retrying later. */
const UNAVAILABLE_CODES = new Set([1, 4, 8, ABORTED, 14]);

function grpcCode(err: unknown): number | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'number' ? code : undefined;
}

/** Contention: the transaction may succeed if run again. Reads inside it report it already wrapped. */
function isAborted(err: unknown): boolean {
  return grpcCode(err) === ABORTED || (err instanceof QueueError && err.details.grpcCode === ABORTED);
}

function storageError(err: unknown): unknown {
  if (err instanceof QueueError) return err;
  const code = grpcCode(err);
  if (code !== undefined && UNAVAILABLE_CODES.has(code)) {
    return unavailable(`storage unavailable (gRPC status ${code}); try again`, { grpcCode: code }, err);
  }
  return err;
}

function protoKey(key: Key, projectId: string, databaseId: string, namespaceId: string): google.datastore.v1.IKey {
  const path: google.datastore.v1.Key.IPathElement[] = [];
  for (let i = 0; i < key.path.length; i += 2) path.push({ kind: String(key.path[i]), name: String(key.path[i + 1]) });
  return { partitionId: { projectId, databaseId, namespaceId }, path };
}

function protoEntity(key: google.datastore.v1.IKey, data: Props, indexed: readonly string[] = []): google.datastore.v1.IEntity {
  const properties: Record<string, google.datastore.v1.IValue> = {};
  for (const [name, value] of Object.entries(data)) {
    properties[name] = { ...protoValue(value), excludeFromIndexes: !indexed.includes(name) };
  }
  return { key, properties };
}

function protoValue(value: Props[string]): google.datastore.v1.IValue {
  if (value === null) return { nullValue: 'NULL_VALUE' };
  if (Buffer.isBuffer(value)) return { blobValue: value };
  if (value instanceof Date) {
    const ms = value.getTime();
    return { timestampValue: { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 } };
  }
  if (typeof value === 'number') return { integerValue: value };
  return { stringValue: value };
}
