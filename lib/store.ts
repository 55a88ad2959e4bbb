import type { Evpid, Msgid } from './ids';

/**
 * The contract of the queue. The functions and the bridge only ever talk to
 * a QueueStore: the queue layer (lib/queue.ts) over a storage driver
 * (lib/storage.ts: Datastore, memory, or one you write), or the HTTP client
 * of the functions (bridge/client.ts). test/contract runs the same
 * behaviours against each.
 *
 * Semantics are smtpd's (docs/api.md has the HTTP view):
 * - A message is `incoming` from messageCreate until messageCommit makes it
 *   `queued`, together with its envelopes, in one atomic step. A `corrupt`
 *   message is quarantined: out of walks, still readable.
 * - Ids are the caller's: creates insert if absent and never overwrite.
 * - Every mutation may be retried after a lost answer: repeating it succeeds
 *   and changes nothing more.
 * - `owner` names the instance that holds a message. Where an operation takes
 *   `{ owner }`, a message held by another owner is refused with a `conflict`
 *   (reason `not_owner`); without it, no ownership check is made (admin use).
 * - A rollback is final. messageDelete and messagePurge leave a tombstone for
 *   each msgid they delete, in the same atomic step, for `limits.tombstoneMs`.
 *   While it lasts, nothing can bring the message back: messageCommit,
 *   messageWrite and envelopeCreate are refused with a `conflict` (reason
 *   `rolled_back`) and write nothing, and messageCreate counts the id as
 *   taken. Reads treat it as gone. This fences requests that arrive late,
 *   e.g. a commit the client gave up on that reaches storage after the
 *   rollback. Expired tombstones are deleted when the id is reserved again,
 *   and in bounded batches by instanceHeartbeat and messagePurge.
 * - Failures are QueueErrors (lib/errors.ts): not_found, conflict, too_large,
 *   bad_request, unavailable, and the storage_* errors of a set-up to fix.
 *   Anything else is a bug.
 * - Bodies and envelopes are opaque bytes (smtpd may compress or encrypt).
 */
export interface QueueStore {
  readonly limits: Limits;

  /**
   * Reserves msgids as incoming messages of `owner`, all or none: if any id
   * is taken, throws conflict with `details.taken` and reserves nothing. An
   * id that `owner` already holds as incoming counts as reserved (a retry).
   * An id rolled back less than a tombstone's lifetime ago is taken (listed
   * in `details.rolledBack` too). At most CREATE_BATCH_MAX ids at once.
   */
  messageCreate(msgids: Msgid[], owner: string): Promise<void>;

  /**
   * Stores `data` at byte `offset` of an incoming message's body. `offset`
   * is a multiple of CHUNK_BYTES and every part but the last is a whole
   * number of chunks. Writing the same part again is harmless. Nothing is
   * visible until messageCommit. Refused (`rolled_back`) after messageDelete.
   */
  messageWrite(msgid: Msgid, offset: number, data: Buffer, owner: string): Promise<void>;

  /**
   * Makes an incoming message queued: checks the body (inline `body`, or the
   * parts written before) against `size` and `sha256`, makes it durable, and
   * makes the message and all its envelopes (those in `envelopes` and any
   * created before) visible at once. A repeated commit of the same body
   * answers `{ created: false }`; a different body for a committed msgid is
   * a conflict. A message not reserved first is committed too, if its id is
   * free. A commit after messageDelete of the message is refused (conflict,
   * reason `rolled_back`) and makes nothing visible, whether the deleted
   * message was incoming or already committed.
   */
  messageCommit(commit: Commit): Promise<{ created: boolean }>;

  /**
   * Deletes a message, its body and its envelopes, whatever its state, and
   * leaves a tombstone for its msgid (also when there was nothing to delete,
   * so that a commit still on its way cannot create it). Deleting again
   * answers `{ deleted: false }` and changes nothing.
   */
  messageDelete(msgid: Msgid, check?: OwnerCheck): Promise<{ deleted: boolean }>;

  /**
   * Returns the committed body, whole or the byte range asked for. A body
   * whose bytes no longer match its sha256 is quarantined (made corrupt) and
   * reported as a conflict with reason `corrupt`.
   */
  messageRead(msgid: Msgid, read?: ReadRange & OwnerCheck): Promise<{ info: MessageInfo; data: Buffer }>;

  /** The message's metadata and its envelopes, in evpid order, paged. */
  messageWalk(msgid: Msgid, page?: PageRequest & OwnerCheck): Promise<MessageWalk>;

  /** Quarantines a committed message: out of every walk, still readable. */
  messageCorrupt(msgid: Msgid, check?: OwnerCheck): Promise<MessageInfo>;

  /** Puts a quarantined message back in the queue. */
  messageUncorrupt(msgid: Msgid, check?: OwnerCheck): Promise<MessageInfo>;

  /**
   * Adds an envelope to an incoming or a committed message (smtpd adds
   * bounces to committed ones). The same evpid with the same bytes again is
   * `{ created: false }`; with other bytes, a conflict. Refused
   * (`rolled_back`) after messageDelete of its message.
   */
  envelopeCreate(envelope: Envelope, check?: OwnerCheck): Promise<{ created: boolean }>;

  /**
   * Deletes an envelope. Deleting the last envelope of a committed message
   * deletes the message and its body in the same atomic step. Deleting what
   * is already gone is `{ deleted: false }`.
   */
  envelopeDelete(evpid: Evpid, check?: OwnerCheck): Promise<{ deleted: boolean; messageDeleted: boolean }>;

  /**
   * Deletes envelopes of one message (at most DELETE_BATCH_MAX) in one
   * atomic step, as envelopeDelete does each: the message goes with its
   * last envelope. `deleted` lists those that were there. Evpids of more
   * than one message are refused (`bad_request`), and nothing is deleted.
   */
  envelopesDelete(evpids: Evpid[], check?: OwnerCheck): Promise<{ deleted: Evpid[]; messageDeleted: boolean }>;

  /** The envelope's bytes exactly as stored. */
  envelopeLoad(evpid: Evpid, check?: OwnerCheck): Promise<Buffer>;

  /**
   * Replaces an existing envelope's bytes. With a `version`, a late update
   * never overwrites a newer one: an update whose version is lower than the
   * one stored is refused (conflict, reason `stale`) and changes nothing; the
   * same version again with the same bytes succeeds (a retry), with other
   * bytes it is stale. Without a version the update is unconditional and
   * keeps the stored version.
   */
  envelopeUpdate(envelope: EnvelopeUpdate, check?: OwnerCheck): Promise<void>;

  /**
   * Pages through the envelopes of queued messages (of `owner` if given), in
   * evpid order. The first page fixes a snapshot time: later pages skip
   * messages committed and envelopes created after it, so a walk hands out
   * each envelope that existed when it began once, and nothing newer.
   */
  envelopeWalk(page?: PageRequest & { owner?: string }): Promise<Page<Envelope>>;

  /**
   * Deletes `owner`'s incoming messages except `keep`, leaving a tombstone for
   * each as messageDelete does; returns how many.
   */
  messagePurge(owner: string, keep?: Msgid[]): Promise<number>;

  /**
   * Records that `instance` is alive for `leaseMs` from now (a pool of MX on
   * one queue, docs/pool.md). `walkDone` says its smtpd has loaded
   * the queue, after which messages may be fed to it one by one. `startedAt`
   * says when the instance started; a heartbeat without it keeps what the
   * instance said before (its first heartbeat's time if it never did).
   *
   * A drain (docs/pool.md: Planned drain): `drain: 'ask'` (an administrator,
   * or the instance itself) marks a live instance draining, and renews
   * nothing. From then on its heartbeats are refused (conflict, reason
   * `draining`), so that a bridge that does not know drains lets its lease
   * lapse and fences itself as for any lapse; `drain: 'done'` (the
   * instance, once it has fenced itself) ends its lease at once, for the
   * survivors to claim its mail. A heartbeat that says the instance started
   * after the drain was asked (a restart) ends the drain and renews.
   */
  instanceHeartbeat(instance: string, leaseMs: number, state?: HeartbeatState): Promise<InstanceInfo>;

  /** Every instance that ever sent a heartbeat, with its lease. */
  instanceList(): Promise<InstanceInfo[]>;

  /**
   * Gives `claimant` the queued messages of instances whose lease has expired
   * (of those in `from`, if given), each atomically: of two claimants racing
   * for a message, exactly one gets it. Also deletes those instances'
   * uncommitted messages. At most `limit` messages per call; `more` says
   * whether orphans are left. An owner that never sent a heartbeat is not an
   * instance and keeps its messages. With `share`, the claimant takes at
   * most its share of each dead instance's orphans this call: ceil(orphans /
   * live instances), so that the survivors' rounds spread them.
   */
  queueTakeover(claimant: string, options?: TakeoverOptions): Promise<Takeover>;

  /** How many messages each owner has, by state. */
  queueCounts(): Promise<QueueCount[]>;

  close(): Promise<void>;
}

export const CHUNK_BYTES = 1_000_000;

/** Most msgids one messageCreate reserves (the legacy Datastore allows 25 entity groups per transaction). */
export const CREATE_BATCH_MAX = 12;
/** Most envelopes one envelopesDelete takes: well within a Datastore commit's 500 mutations, with a message's chunks. */
export const DELETE_BATCH_MAX = 100;

export type MessageState = 'incoming' | 'queued' | 'corrupt';

export interface Limits {
  /** Largest body accepted; larger ones are refused with too_large. */
  maxMessageBytes: number;
  /** Largest envelope accepted. */
  maxEnvelopeBytes: number;
  /**
   * How long a deleted msgid stays fenced by its tombstone. It must outlast
   * any request that can still be on its way (client and storage deadlines,
   * a function's timeout), by far.
   */
  tombstoneMs: number;
}

export const DEFAULT_LIMITS: Limits = {
  // smtpd's default max-message-size is 35 MiB; queue encryption adds a few bytes
  maxMessageBytes: 36 * 1024 * 1024,
  // smtpd keeps an envelope in a buffer of sizeof(struct envelope), about 7.5 KB
  maxEnvelopeBytes: 8192,
  tombstoneMs: 24 * 3600 * 1000,
};

export interface Envelope {
  evpid: Evpid;
  data: Buffer;
}

export interface EnvelopeUpdate extends Envelope {
  /**
   * Chosen by the caller, increasing with each update it makes (e.g. a
   * hybrid clock: the time in microseconds, or one more than the last one);
   * at least 1.
   */
  version?: number;
}

export interface Commit {
  msgid: Msgid;
  owner: string;
  size: number;
  /** Lowercase hex sha256 of the whole body. */
  sha256: string;
  /** The whole body; omitted when it was sent with messageWrite. */
  body?: Buffer;
  /** Envelopes to create with the commit, all with this msgid. */
  envelopes?: Envelope[];
}

export interface OwnerCheck {
  owner?: string;
}

export interface ReadRange {
  offset?: number;
  length?: number;
}

export interface PageRequest {
  cursor?: string;
  /** Most envelopes in one page. */
  limit?: number;
  /** Most envelope bytes in one page (at least one envelope is returned). */
  maxBytes?: number;
}

export const PAGE_DEFAULT = 100;
export const PAGE_MAX = 1000;
export const PAGE_BYTES_DEFAULT = 4 * 1024 * 1024;
/** The largest `maxBytes` a page may be asked for. */
export const PAGE_BYTES_MAX = 16 * 1024 * 1024;

export interface Page<T> {
  items: T[];
  /** Pass back for the next page; null when the walk is done. */
  cursor: string | null;
}

export interface MessageInfo {
  msgid: Msgid;
  state: MessageState;
  owner: string;
  /** When the message last changed owner by a takeover, if ever. */
  claimedAt?: Date | null;
  /** Body size and sha256, known once committed. */
  size: number | null;
  sha256: string | null;
  createdAt: Date;
  committedAt: Date | null;
}

export interface MessageWalk extends Page<Envelope> {
  message: MessageInfo;
}

export interface InstanceInfo {
  instance: string;
  /** Until when the instance owns its messages without renewing. */
  leaseUntil: Date;
  heartbeatAt: Date;
  /** When the instance says it started (its first heartbeat, if it does not say). */
  startedAt: Date;
  walkDone: boolean;
  /** Whether the lease still holds, by the store's clock. */
  alive: boolean;
  /** How many messages have been claimed for it by takeovers, ever: when it grows, the instance has mail its smtpd does not know. */
  claims: number;
  /** A drain was asked: its heartbeats are refused until it restarts, and it hands its mail to the survivors. */
  draining: boolean;
}

export interface HeartbeatState {
  walkDone?: boolean;
  startedAt?: Date;
  drain?: 'ask' | 'done';
  /** The bridge's background writes not landed yet: the service logs it (docs/metrics.md) and stores nothing of it. */
  pendingWrites?: number;
}

export interface TakeoverOptions {
  from?: string[];
  limit?: number;
  /** Take at most ceil(orphans / live instances) of each dead instance's orphans. */
  share?: boolean;
}

export interface Takeover {
  claimed: { msgid: Msgid; from: string; evpids: Evpid[] }[];
  /** Uncommitted messages of dead instances deleted. */
  purged: number;
  more: boolean;
}

export interface QueueCount {
  owner: string;
  state: MessageState;
  messages: number;
  /** When the oldest of them was created. */
  oldestAt?: Date;
}

export const TAKEOVER_DEFAULT = 100;
export const TAKEOVER_MAX = 1000;
