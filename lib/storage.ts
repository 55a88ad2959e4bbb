import { msgidOf, type Evpid, type Msgid } from './ids';

/**
 * What a storage driver implements: typed records under keys, point reads,
 * a few queries, one blind atomic write and serializable transactions. The
 * queue layer (lib/queue.ts) owns every queue rule on top of it; a driver
 * holds none, it only keeps what it is given and hands it back.
 * docs/writing-a-store.md walks through writing one.
 *
 * - Records are the values of `Records`, keyed by `Key`. A driver stores
 *   the fields it is given and returns them unchanged: strings, numbers,
 *   Dates, Buffers and null. A missing record is `undefined`, never an error.
 * - Children of a message (Chunk, Envelope, Tally) carry its msgid in their
 *   key; a query may ask for the children of one message.
 * - Reads are strongly consistent: a read after a write that has answered
 *   sees it.
 * - A failure worth trying again later (unreachable, overloaded, contended)
 *   is thrown as `unavailable` (lib/errors.ts); storage the service may not
 *   use until an operator fixes its set-up, as one of the storage_* errors
 *   whose message says what to fix (lib/datastore-errors.ts); anything else
 *   is a bug.
 */
export interface Storage {
  /**
   * Most bytes of record data (Buffers, with some room per record) that one
   * `write` or transaction may carry; the queue splits larger writes.
   */
  readonly maxWriteBytes: number;

  /** Looks up records by key, all at once. */
  get(keys: Key[]): Promise<Found>;

  /** The records of one kind that match `query`, with their data. */
  query<K extends Kind>(query: Query<K>): Promise<Row<K>[]>;

  /** The keys of the records that match `query`, without their data. */
  queryKeys<K extends Kind>(query: Query<K>): Promise<Key<K>[]>;

  /**
   * How many records match `query`, counted where they are stored (its
   * `limit` is ignored): the queue's status runs it on every call, so it
   * must not read the records, nor cost a round trip per record.
   */
  count<K extends Kind>(query: Query<K>): Promise<number>;

  /**
   * The string values that `field` (of INDEXED_FIELDS) takes among the
   * records of `kind`, each once, in order; records without one are left
   * out. It must cost a round trip per value at most, not per record.
   */
  fieldValues(kind: Kind, field: string): Promise<string[]>;

  /**
   * One atomic write with no read before it: every mutation happens or none
   * does. If any `insert` finds its key taken, nothing is written and it
   * throws KeyExists. The queue's commit of a small message is this one
   * call, so it must cost one round trip.
   */
  write(mutations: Mutations): Promise<void>;

  /**
   * Runs `work` as one serializable transaction: what it reads with
   * `tx.get` stays as read until its writes are applied, all at once, after
   * `work` resolves. If `work` throws, nothing is written and the error is
   * passed on. A transaction that fails on contention is run again (so
   * `work` may run more than once); when attempts run out, `unavailable`.
   * `work` may also call the driver's own get and queries, outside the
   * transaction, but never `write` or another transaction.
   */
  transaction<T>(work: (tx: Transaction) => Promise<T>): Promise<T>;

  close(): Promise<void>;
}

export interface Transaction {
  get(keys: Key[]): Promise<Found>;
  /** Writes a record whatever is there (insert or replace). */
  put(row: Row): void;
  delete(keys: Key[]): void;
}

export interface Mutations {
  insert?: Row[];
  put?: Row[];
  delete?: Key[];
}

/**
 * Which records a query returns, in id order (msgid, evpid, chunk index as
 * its key id). With `before` the order may be any.
 */
export interface Query<K extends Kind = Kind> {
  kind: K;
  /** Only the children of this message (kinds Chunk, Envelope, Tally). */
  msgid?: Msgid;
  /** Fields (of INDEXED_FIELDS) that must have these values. */
  equal?: Record<string, string>;
  /** A time field (of INDEXED_FIELDS) that must be earlier than `time`. */
  before?: { field: string; time: Date };
  /** In the order of this time field (of INDEXED_FIELDS), earliest first, instead of id order; not with `before`, `from` or `after`. */
  earliestFirst?: string;
  /** Only ids from this one on (inclusive). */
  from?: string;
  /** Only ids after this one. */
  after?: string;
  limit?: number;
}

/** The fields queries filter on; a driver indexes these, and may leave the others unindexed. */
export const INDEXED_FIELDS: Record<Kind, readonly string[]> = {
  Message: ['state', 'owner', 'expiresAt', 'createdAt'],
  Incoming: ['owner'],
  Envelope: [],
  Chunk: [],
  Tally: [],
  Instance: ['leaseUntil'],
  Claims: [],
  Credential: [],
  ServiceKey: [],
};

/** Thrown by `write` when an insert finds its key taken. */
export class KeyExists extends Error {
  constructor(readonly key?: Key) {
    super(key ? `${keyPath(key)} exists` : 'a record to insert exists');
    this.name = 'KeyExists';
  }
}

/**
 * The records and their fields (docs/storage.md has the Datastore view).
 * Their names are kept as stored since the first release: data written
 * before stays readable.
 */
export interface Records {
  /** A reserved, uncommitted message. `bodyVersion` grows with each write of its parts. */
  Incoming: { owner: string; createdAt: Date; bodyVersion: number };
  /** A committed message, or a deleted one's tombstone. */
  Message: CommittedRecord | TombstoneRecord;
  /** A piece of a body, CHUNK_BYTES at most. */
  Chunk: { data: Buffer };
  /** `version` of the last versioned update; absent before any. */
  Envelope: { data: Buffer; createdAt: Date; version?: number };
  /**
   * How many envelopes a message has and which: `evpids` lists them,
   * space-separated in order. It is absent from tallies written before it
   * was kept, which only count.
   */
  Tally: { count: number; evpids?: string };
  /** An MX of the pool; walkDone is 0 or 1; draining is 1 from a drain's ask until the instance restarts. */
  Instance: { leaseUntil: Date; heartbeatAt: Date; startedAt: Date; walkDone: number; draining?: number };
  /** How many messages have been claimed for an instance, ever (apart from Instance, which heartbeats overwrite). */
  Claims: { count: number };
  /** A credential of QUEUE_AUTH=tokens, keyed by the hex sha256 of its token (lib/credentials.ts); the token itself is never stored. */
  Credential: { role: 'mx' | 'admin'; instance: string | null; issuedAt: Date; revokedAt: Date | null };
  /** A secret every instance of the service shares (lib/service-key.ts), never changed once made. */
  ServiceKey: { secret: Buffer; createdAt: Date };
}

export interface CommittedRecord {
  state: 'queued' | 'corrupt';
  owner: string;
  size: number;
  sha256: string;
  chunks: number;
  createdAt: Date;
  committedAt: Date;
  claimedAt?: Date | null;
}

export interface TombstoneRecord {
  state: 'tombstone';
  owner: string | null;
  deletedAt: Date;
  expiresAt: Date;
}

export type Kind = keyof Records;

export interface Key<K extends Kind = Kind> {
  kind: K;
  id: string;
  /** The message a Chunk, Envelope or Tally belongs to. */
  msgid?: Msgid;
}

export interface Row<K extends Kind = Kind> {
  key: Key<K>;
  data: Records[K];
}

export const key = {
  message: (msgid: Msgid): Key<'Message'> => ({ kind: 'Message', id: msgid }),
  incoming: (msgid: Msgid): Key<'Incoming'> => ({ kind: 'Incoming', id: msgid }),
  chunk: (msgid: Msgid, index: number): Key<'Chunk'> => ({ kind: 'Chunk', id: String(index).padStart(6, '0'), msgid }),
  envelope: (evpid: Evpid): Key<'Envelope'> => ({ kind: 'Envelope', id: evpid, msgid: msgidOf(evpid) }),
  tally: (msgid: Msgid): Key<'Tally'> => ({ kind: 'Tally', id: 'envelopes', msgid }),
  instance: (instance: string): Key<'Instance'> => ({ kind: 'Instance', id: instance }),
  claims: (instance: string): Key<'Claims'> => ({ kind: 'Claims', id: instance }),
  credential: (digest: string): Key<'Credential'> => ({ kind: 'Credential', id: digest }),
  serviceKey: (name: string): Key<'ServiceKey'> => ({ kind: 'ServiceKey', id: name }),
};

/** A key as one string: the path a driver may file the record under. */
export function keyPath(k: Key): string {
  return k.msgid ? `Message/${k.msgid}/${k.kind}/${k.id}` : `${k.kind}/${k.id}`;
}

/** Records found by a lookup, by key. */
export class Found {
  private readonly rows = new Map<string, unknown>();

  add(row: Row): void {
    this.rows.set(keyPath(row.key), row.data);
  }

  get<K extends Kind>(k: Key<K>): Records[K] | undefined {
    return this.rows.get(keyPath(k)) as Records[K] | undefined;
  }

  has(k: Key): boolean {
    return this.rows.has(keyPath(k));
  }
}
