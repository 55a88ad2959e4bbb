import { setTimeout as sleep } from 'node:timers/promises';
import { LRUCache } from 'lru-cache';
import { QueueError } from '../lib/errors';
import { msgidOf, randomEvpid, randomMsgid, type Evpid, type Msgid } from '../lib/ids';
import type { Logger } from '../lib/log';
import { sha256hex } from '../lib/rules';
import { CREATE_BATCH_MAX, DELETE_BATCH_MAX, PAGE_MAX, type Envelope, type QueueStore } from '../lib/store';
import { BodyFiles, readAllAndClose } from './bodyfile';
import type { SmtpdDiscover } from './discover';
import { EnvelopeCopy } from './envelope-copy';
import type { Pending, WriteJournal } from './journal';
import { Lease } from './lease';
import { ENVELOPE_BUFFER, PROC_QUEUE_API_VERSION, type QueueBackend } from './protocol';
import { Reconciler } from './reconcile';
import { WriteBehind, type Outcome } from './write-behind';

export interface BackendOptions {
  store: QueueStore;
  /** This instance: the owner of every message it accepts. */
  owner: string;
  log: Logger;
  /** Folder for the unlinked files MESSAGE_FD_R hands out, and for the local copy's spill file. */
  tmpDir: string;
  /** Bodies just committed are kept for their first delivery, up to this many bytes in all. */
  cacheBytes?: number;
  /** How long INIT may wait for the start-up work (purge, first reservations, first walk page). */
  initWaitMs?: number;
  /** Answer ENVELOPE_DELETE at once and delete in the background (see WriteBehind). */
  asyncDelete?: boolean;
  /** Deadline of one HTTP attempt: the client's `timeout` (default: 5 s). */
  timeoutMs?: number;
  /** How long a request may keep retrying: the client's `retry-budget` (default: 15 s). No smtpd call waits longer than timeoutMs + retryBudgetMs. */
  retryBudgetMs?: number;
  /** How long CLOSE and EOF wait for background writes (default: the retry budget). */
  drainMs?: number;
  /** This instance's lease on its messages (default: 60 s). */
  leaseMs?: number;
  /** Bytes of envelopes the local copy keeps in memory; the rest go to a file in tmpDir (default: 32 MiB). */
  envelopeMemoryBytes?: number;
  /** Pause before a background write is tried again; it grows with each attempt (default: 2 s). */
  writeRetryMs?: number;
  /** Hands mail this instance comes to own to its running smtpd (bridge/reconcile.ts); none: mail is handed over at the next start only. */
  discoverer?: SmtpdDiscover;
  /** Where writes answered before they landed are kept until they do, and replayed from at start; none: a bridge killed before they land loses them. */
  journal?: WriteJournal;
  /** auto: with a discoverer, take a share of dead instances' mail at every renewal; start: only at start-up (default: auto). */
  takeover?: 'auto' | 'start';
  /** Hand this instance's mail to the survivors when smtpd closes the queue (default: no, the lease runs out). */
  drainOnClose?: boolean;
}

const RESERVE_LOW = 4;
/** The walk asks for the largest page the service gives: on Datastore a page costs a few calls whatever its size. */
export const WALK_PAGE = PAGE_MAX;
const WALK_WAIT_MS = 50;
/** Past this many, envelope deletes wait for the service again (within the call's bound) instead of queueing. */
const WRITE_BEHIND_MAX = 10_000;
const NO_ENVELOPE = Buffer.alloc(0);
/** How long the walk waits for the replay of an earlier run's pending writes; deletes are kept out of the walk either way. */
const REPLAY_WAIT_MS = 60_000;
/** Orphans one automatic takeover round claims at most, whatever the share. */
const AUTO_TAKEOVER_MAX = 200;
/** How often a drain looks whether the deliveries under way are over. */
const DRAIN_POLL_MS = 200;

/**
 * The queue as smtpd sees it, on top of the queue API. What makes it one
 * HTTP round trip per accepted message:
 * - msgids are reserved with the service ahead of time, 12 per request, in
 *   the background, so MESSAGE_CREATE usually needs no request;
 * - the envelopes of an incoming message are held here (smtpd never reads
 *   them before the commit) and go with MESSAGE_COMMIT, whose body travels
 *   inline: one atomic request;
 * - the body just committed is kept for the first delivery's MESSAGE_FD_R;
 * - envelope deletes after delivery are written behind (WriteBehind).
 * What keeps smtpd going whatever the service does:
 * - no call waits for the service longer than timeout + retry budget; a
 *   write that has not landed by then goes on in the background, after the
 *   earlier writes of its message;
 * - a copy of every envelope smtpd knows through this bridge (EnvelopeCopy)
 *   answers LOAD when the service does not, since smtpd forgets an envelope
 *   whose LOAD comes back empty.
 * Every failure is thrown to the protocol layer, which answers smtpd with a
 * failure it can take.
 */
export class Backend implements QueueBackend {
  private readonly store: QueueStore;
  private readonly owner: string;
  private readonly log: Logger;
  private readonly files: BodyFiles;
  private readonly bodies: LRUCache<Msgid, Buffer>;
  private readonly initWaitMs: number;
  private reserved: Msgid[] = [];
  private reserving?: Promise<void>;
  /** Envelopes of messages smtpd is receiving, until their commit. */
  private readonly incoming = new Map<Msgid, Map<Evpid, Buffer>>();
  private readonly later: WriteBehind;
  private readonly asyncDelete: boolean;
  /** The longest any smtpd call waits for the service. */
  private readonly timeoutMs: number;
  private readonly answerWithinMs: number;
  private readonly drainMs: number;
  private readonly walk: StartupWalk;
  private readonly lease: Lease;
  private readonly copy: EnvelopeCopy;
  /** Envelopes whose bytes in the copy the service may not have yet (written behind). */
  private readonly unsent = new Set<Evpid>();
  /** Envelopes with an update queued behind; it sends whatever the copy holds when it runs. */
  private readonly updating = new Set<Evpid>();
  /** Envelopes smtpd deleted whose delete has not landed yet. */
  private readonly deleting = new Set<Evpid>();
  /** Deletes written behind and not sent yet, by message: the first of a message to run sends them all in one request. */
  private readonly deletesWaiting = new Map<Msgid, Set<Evpid>>();
  /** Whether the service takes several envelopes in one delete (one deployed before it did answers 400). */
  private batchDeletes = true;
  /** Envelopes smtpd has through this bridge: it must never be handed one of them again. */
  private readonly smtpdHas = new Set<Evpid>();
  /**
   * Envelopes smtpd deleted, as far back as this bridge remembers: never to
   * be handed to it again, whatever the service lists. A storage that
   * answers wrongly (the Datastore emulator, restarting, has found nothing
   * where it had an envelope) can leave one there after its delete landed.
   */
  private readonly smtpdDeleted = new LRUCache<Evpid, true>({ max: 100_000 });
  private readonly reconciler?: Reconciler;
  private readonly journal?: WriteJournal;
  /** Journal entries of updates written behind, per envelope: all are done once the latest bytes land. */
  private readonly updatesJournaled = new Map<Evpid, (() => void)[]>();
  /** Messages claimed for this instance so far, as its last heartbeat said. */
  private claimsSeen?: number;
  private closed = false;
  private readonly autoTakeover: boolean;
  private readonly drainOnClose: boolean;
  private walked = false;
  private takingOver?: Promise<void>;
  /** Messages the automatic takeover rounds claimed. */
  private claimedLive = 0;
  private handingOver?: Promise<void>;
  /**
   * Deliveries under way, as far as the bridge can tell: the envelopes
   * smtpd had of each message whose body it was handed, until smtpd deletes
   * or updates each (the delivery's outcome). A drain waits for them.
   */
  private readonly delivering = new Map<Msgid, { evpids: Set<Evpid>; at: number }>();

  constructor(options: BackendOptions) {
    this.store = options.store;
    this.owner = options.owner;
    this.log = options.log;
    this.files = new BodyFiles(options.tmpDir);
    this.initWaitMs = options.initWaitMs ?? 3_000;
    this.autoTakeover = (options.takeover ?? 'auto') === 'auto' && options.discoverer !== undefined;
    this.drainOnClose = options.drainOnClose ?? false;
    this.later = new WriteBehind(options.log, undefined, options.writeRetryMs);
    this.asyncDelete = options.asyncDelete ?? true;
    const retryBudgetMs = options.retryBudgetMs ?? 15_000;
    this.timeoutMs = options.timeoutMs ?? 5_000;
    this.answerWithinMs = this.timeoutMs + retryBudgetMs;
    this.drainMs = options.drainMs ?? retryBudgetMs;
    const max = options.cacheBytes ?? 64 * 1024 * 1024;
    this.bodies = new LRUCache({ maxSize: Math.max(max, 1), sizeCalculation: (body) => Math.max(body.length, 1), maxEntrySize: Math.max(max / 4, 1) });
    // bodies kept while the lease was sure may belong to another instance by the time it is sure again
    this.lease = new Lease(
      this.store,
      this.owner,
      options.leaseMs ?? 60_000,
      this.log,
      () => this.bodies.clear(),
      (info) => {
        // a takeover (this bridge's, or `queue-rest takeover` for this instance) gave it mail its smtpd does not know
        if (this.claimsSeen !== undefined && info.claims !== this.claimsSeen) this.reconcile();
        this.claimsSeen = info.claims;
        if (this.autoTakeover && this.walked) this.takeOverShare();
      },
      () => this.handOver(),
      () => this.later.pending,
    );
    this.copy = new EnvelopeCopy(options.envelopeMemoryBytes ?? 32 * 1024 * 1024, options.tmpDir, this.log);
    this.journal = options.journal;
    if (options.discoverer) {
      this.reconciler = new Reconciler({
        store: this.store,
        owner: this.owner,
        log: this.log,
        discoverer: options.discoverer,
        smtpdHas: (evpid) => this.smtpdHas.has(evpid) || this.deleting.has(evpid),
        smtpdDeleted: (evpid) => this.smtpdDeleted.has(evpid),
        deleteAgain: (evpid) => this.deleteBehind(evpid, `delete of envelope ${evpid} again: smtpd deleted it, the service still lists it`),
        handedOver: (evpid, data) => {
          this.smtpdHas.add(evpid);
          this.copy.set(evpid, data);
        },
      });
    }
    this.walk = new StartupWalk(() => {
      this.walked = true;
      this.lease.markWalkDone();
      // a round asked for while the walk ran (claims made after its snapshot) runs now
      this.reconciler?.start();
    });
  }

  /** Asks for a round of handing smtpd the mail it does not know (after a takeover). */
  reconcile(): void {
    this.reconciler?.request();
  }

  async init(version: number): Promise<void> {
    if (version !== PROC_QUEUE_API_VERSION) this.log.warn({ version }, `smtpd speaks queue API version ${version}, this bridge ${PROC_QUEUE_API_VERSION}`);
    const startup = (async () => {
      await this.lease.renew();
      this.lease.start();
      await this.takeOver();
      // what an earlier run answered smtpd for lands before the walk: no delivered envelope walked again, no bounce missed
      await within(this.replayJournal(), REPLAY_WAIT_MS);
      // after the takeover, so that what it claimed is this instance's when the walk's snapshot is taken
      this.walk.start(this.store, this.owner, this.log);
      try {
        // INIT may have stopped waiting before this point, and smtpd may be receiving mail already
        const purged = await this.store.messagePurge(this.owner, [...this.reserved, ...this.incoming.keys()]);
        if (purged > 0) this.log.info({ purged }, `purged ${purged} uncommitted messages left by an earlier run`);
      } catch (err) {
        this.log.warn({ err }, 'could not purge uncommitted messages of an earlier run; they stay until the next start');
      }
      this.refill();
      await Promise.all([this.reserving, this.walk.firstPage()]);
    })();
    await within(startup, Math.min(this.initWaitMs, this.answerWithinMs));
  }

  /** Claims the messages of instances whose lease has expired; the walk then hands them to smtpd. */
  private async takeOver(): Promise<void> {
    let claimed = 0;
    let purged = 0;
    try {
      for (let more = true, rounds = 0; more && rounds < 100; rounds++) {
        const takeover = await this.store.queueTakeover(this.owner, { limit: 200 });
        for (const { msgid, from } of takeover.claimed) this.log.info({ msgid, from }, `took over message ${msgid} from ${from}`);
        claimed += takeover.claimed.length;
        purged += takeover.purged;
        more = takeover.more;
      }
    } catch (err) {
      this.log.warn({ err }, 'could not take over the messages of dead instances; the next start or `queue-rest takeover` will');
    }
    if (claimed > 0 || purged > 0) this.log.warn({ claimed, purged }, `took over ${claimed} messages of dead instances`);
  }

  /**
   * One round of automatic takeover, at a renewal: this instance's share of
   * each dead instance's orphans (lib/queue.ts claimShare), so that the
   * survivors' rounds spread them, handed to smtpd by a reconcile round at
   * once. Never while the lease is unsure or draining: mail claimed then
   * would wait for a delivery this instance cannot make.
   */
  private takeOverShare(): void {
    if (this.takingOver || this.closed || !this.lease.isSure()) return;
    this.takingOver = (async () => {
      try {
        const { claimed } = await this.store.queueTakeover(this.owner, { share: true, limit: AUTO_TAKEOVER_MAX });
        if (claimed.length === 0) return;
        this.claimedLive += claimed.length;
        const from = [...new Set(claimed.map((c) => c.from))];
        this.log.warn({ claimed: claimed.length, from }, `took over ${claimed.length} messages of dead instances (${from.join(', ')}) into the running smtpd`);
        this.reconcile();
      } catch (err) {
        this.log.warn({ err }, 'automatic takeover round failed; the next renewal tries again');
      }
    })().finally(() => (this.takingOver = undefined));
  }

  /**
   * A drain was asked (docs/pool.md: Planned drain). The lease already
   * fences this bridge: no body is handed out from now on, so smtpd starts
   * no delivery. The bridge waits for the deliveries under way to end (at
   * most half a lease, as long as a lapse gives them) and for its background
   * writes to land (a delete not landed would have the survivors deliver
   * again), then ends its lease, and the survivors claim the mail at once.
   */
  private handOver(): void {
    this.handingOver ??= (async () => {
      this.reconciler?.stop();
      this.reserved = [];
      const leaseMs = this.lease.leaseMs;
      const until = performance.now() + leaseMs / 2;
      while (this.delivering.size > 0 && performance.now() < until) await sleep(DRAIN_POLL_MS);
      if (this.delivering.size > 0) this.log.warn({ messages: this.delivering.size }, `drain: ${this.delivering.size} deliveries still under way after half a lease; handing over anyway, as a lapse would`);
      const settleBy = performance.now() + Math.max(until - performance.now(), this.drainMs);
      const left = await this.later.settle(settleBy - performance.now());
      // a delete sent while smtpd waited (async-delete no) is not a background write
      while (this.deleting.size > 0 && performance.now() < settleBy) await sleep(DRAIN_POLL_MS);
      if (left > 0 || this.deleting.size > 0) {
        this.log.error({ left, deleting: this.deleting.size }, `drain: ${left + this.deleting.size} writes have not landed; the lease runs out instead of ending now`);
        return;
      }
      if (await this.lease.end()) this.log.warn(`drain: lease of ${this.owner} ended; the survivors take its mail`);
    })();
  }

  /** Whether the lease is sure: this bridge hands out bodies, and trusts what it knows of its mail. */
  get leaseSure(): boolean {
    return this.lease.isSure();
  }

  /** Whether a drain of this instance was asked. */
  get draining(): boolean {
    return this.lease.isDraining;
  }

  /** Messages of dead instances the automatic takeover rounds claimed. */
  get takenOver(): number {
    return this.claimedLive;
  }

  /** Background writes not done yet. */
  get pendingWrites(): number {
    return this.later.pending;
  }

  /** The local copy of envelopes: how many, and how many of them are in its spill file. */
  get localEnvelopes(): { envelopes: number; spilled: number } {
    return { envelopes: this.copy.size, spilled: this.copy.spilledCount };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const deadline = this.deadline();
    // the lease is left to run out rather than released: a restart keeps its mail
    this.lease.stop();
    this.reconciler?.stop();
    const left = await this.later.drain(Math.min(this.drainMs, deadline - Date.now()));
    if (left > 0) {
      const fate = this.journal ? 'the next start replays them from the journal' : 'without a journal, their mail may be delivered again after a restart';
      this.log.warn({ left }, `${left} background writes were not done; ${fate}`);
    }
    // smtpd is stopping: nothing is delivered here any more; with every delete landed, the survivors may take the rest
    if (this.drainOnClose && left === 0 && !this.lease.isDraining && Date.now() < deadline) {
      if (await this.lease.drainNow()) this.log.warn(`drained on close: lease of ${this.owner} ended; the survivors take its mail`);
    }
    if (this.reserved.splice(0).length > 0 && Date.now() < deadline) {
      try {
        await this.bounded(this.store.messagePurge(this.owner, [...this.incoming.keys()]), deadline, 'release of reserved msgids');
      } catch (err) {
        this.log.warn({ err }, 'could not release reserved msgids; the next start purges them');
      }
    }
    this.copy.close();
  }

  async messageCreate(): Promise<Msgid> {
    // its msgids are the survivors' to purge once the lease ends: smtpd tells the client to try later (another MX)
    if (this.lease.isDraining) throw new Error('not accepting mail: this instance is drained');
    const deadline = this.deadline();
    if (this.reserved.length <= RESERVE_LOW) this.refill();
    if (this.reserved.length === 0 && this.reserving) await within(this.reserving, deadline - Date.now());
    const msgid = this.reserved.shift();
    if (!msgid) throw new Error('no msgid reserved: the queue service is unavailable');
    this.incoming.set(msgid, new Map());
    return msgid;
  }

  async messageDelete(msgid: Msgid): Promise<boolean> {
    return this.rollBack(msgid, this.deadline());
  }

  /**
   * Forgets the message and deletes it in the service. Sent at once, not
   * after a commit of the message still under way: the service leaves a
   * tombstone that refuses whatever of the message lands later, so the
   * message is never visible again, not even for a moment. A rollback that
   * does not land by the deadline is retried in the background, on its own.
   */
  private async rollBack(msgid: Msgid, deadline: number): Promise<boolean> {
    // on disk before anything: a bridge killed now still fences off a commit landing late
    const landed = this.remember({ op: 'rollback', msgid }) ?? (() => undefined);
    for (const evpid of this.incoming.get(msgid)?.keys() ?? []) this.smtpdHas.delete(evpid);
    this.incoming.delete(msgid);
    this.bodies.delete(msgid);
    for (const evpid of this.copy.deleteMessage(msgid)) {
      this.unsent.delete(evpid);
      this.smtpdHas.delete(evpid);
    }
    const rollback = () => this.store.messageDelete(msgid, { owner: this.owner });
    const sent = rollback();
    try {
      await this.bounded(sent, deadline, `rollback of ${msgid}`);
      landed();
      return true;
    } catch (err) {
      if (isFinal(err)) {
        landed();
        this.log.warn({ err, msgid }, `rollback of ${msgid} refused`);
        return false;
      }
      this.log.warn({ err, msgid }, `rollback of ${msgid} did not land in time; retrying in the background`);
      void this.behind(`rollback ${msgid}`, `rollback of ${msgid}`, async () => {
        if (!(await succeeded(sent))) await rollback();
      }, landed);
      return false;
    }
  }

  async messageCommit(msgid: Msgid, fd: number): Promise<boolean> {
    const deadline = this.deadline();
    const body = readAllAndClose(fd);
    const held = this.incoming.get(msgid) ?? new Map<Evpid, Buffer>();
    const envelopes: Envelope[] = [...held].map(([evpid, data]) => ({ evpid, data }));
    for (const e of envelopes) this.walk.exclude(e.evpid);
    const sentAt = performance.now();
    const commit = this.store.messageCommit({ msgid, owner: this.owner, size: body.length, sha256: sha256hex(body), body, envelopes });
    try {
      await this.bounded(commit, deadline, `commit of ${msgid}`, msgid);
    } catch (err) {
      // smtpd sends no MESSAGE_DELETE after a failed commit (it tells its client 4xx, and the client sends
      // the mail again): the bridge rolls back itself, in the background, so that an attempt still under way
      // that lands late is refused by the tombstone, and the message is never delivered twice
      void this.rollBack(msgid, 0);
      throw err;
    }
    this.incoming.delete(msgid);
    this.bodies.set(msgid, body);
    for (const e of envelopes) this.copy.set(e.evpid, e.data, sentAt);
    return true;
  }

  async messageFd(msgid: Msgid): Promise<number> {
    const deadline = this.deadline();
    // after an outage, one renewal rather than a wait for the next one; no longer than one request may take
    await within(this.lease.ensure(), Math.min(this.timeoutMs, deadline - Date.now()));
    if (!this.lease.isSure()) throw new Error(`not delivering ${msgid}: the lease may have run out and another instance may own it`);
    let body = this.bodies.get(msgid);
    try {
      body ??= (await this.bounded(this.store.messageRead(msgid, { owner: this.owner }), deadline, `read of ${msgid}`)).data;
    } catch (err) {
      // the service's word on the message's envelopes, not the copy's, from now on
      if (isFinal(err)) this.copy.deleteMessage(msgid);
      throw err;
    }
    // a drain that began during the read may be ending the lease already: it has not seen this delivery
    if (!this.lease.isSure()) throw new Error(`not delivering ${msgid}: the lease stopped being sure while its body was read`);
    const fd = this.files.open(body);
    this.deliveryStarts(msgid);
    return fd;
  }

  private deliveryStarts(msgid: Msgid): void {
    const now = performance.now();
    // an outcome smtpd never told (it crashed, say) is not waited for beyond a lease
    for (const [m, d] of this.delivering) if (now - d.at > this.lease.leaseMs) this.delivering.delete(m);
    const evpids = this.copy.evpidsOf(msgid);
    if (evpids.length > 0) this.delivering.set(msgid, { evpids: new Set(evpids), at: now });
  }

  /** smtpd deleted or updated the envelope: its delivery attempt, if one was under way, is over. */
  private deliveryEnds(evpid: Evpid): void {
    const msgid = msgidOf(evpid);
    const d = this.delivering.get(msgid);
    if (d?.evpids.delete(evpid) && d.evpids.size === 0) this.delivering.delete(msgid);
  }

  async envelopeCreate(msgid: Msgid, data: Buffer): Promise<Evpid> {
    const held = this.incoming.get(msgid);
    if (held) {
      let evpid = randomEvpid(msgid);
      while (held.has(evpid)) evpid = randomEvpid(msgid);
      held.set(evpid, Buffer.from(data));
      this.smtpdHas.add(evpid);
      return evpid;
    }
    return this.createBounce(msgid, data);
  }

  /**
   * smtpd adds bounces (failure, delay and success notices) to the committed
   * original. It does so before it deletes the envelope that bounced
   * (queue.c: queue_bounce, then queue_envelope_delete), so while this
   * create is on its way the message still has that envelope in the
   * service, and deletes of its other envelopes still pending cannot make
   * it the last one: whichever order they land in, the message stays, and
   * the service checks "last envelope" and inserts an envelope atomically
   * each. When writes of the message are pending, the bounce is queued
   * behind them anyway (and the delete of the envelope that bounced, which
   * comes next, behind it), so that it is answered at once.
   */
  private async createBounce(msgid: Msgid, data: Buffer): Promise<Evpid> {
    const deadline = this.deadline();
    // a message smtpd knows through this bridge: its bounce can be written behind, LOAD answers it from the copy
    const known = this.copy.hasMessage(msgid);
    for (let attempt = 1; ; attempt++) {
      const evpid = this.newEvpid(msgid);
      this.walk.exclude(evpid);
      this.smtpdHas.add(evpid);
      if (known && this.later.busy(msgid)) {
        if (!this.createBehind(evpid, data)) throw new Error(`bounce ${evpid} not created: the local copy cannot keep it`);
        return evpid;
      }
      const sentAt = performance.now();
      const sent = this.store.envelopeCreate({ evpid, data }, { owner: this.owner });
      try {
        await this.bounded(sent, deadline, `bounce ${evpid}`, msgid);
        this.copy.set(evpid, data, sentAt);
        return evpid;
      } catch (err) {
        if (isTaken(err) && attempt < 3) continue;
        // when smtpd is told there is no bounce but it lands after all, the walk of the next start hands it out
        if (isFinal(err) || !known || !this.createBehind(evpid, data, sent)) throw err;
        this.log.warn({ err, evpid }, `bounce ${evpid} did not land in time; written behind`);
        return evpid;
      }
    }
  }

  /** Queues the create of a bounce smtpd is told exists; the copy answers its LOAD until it lands. */
  private createBehind(evpid: Evpid, data: Buffer, sent?: Promise<unknown>): boolean {
    const landed = this.remember({ op: 'create', evpid, data });
    if (!landed) return false;
    if (!this.copy.set(evpid, data, performance.now())) {
      landed();
      return false;
    }
    this.unsent.add(evpid);
    const create = async () => {
      if (!sent || !(await succeeded(sent))) {
        try {
          await this.store.envelopeCreate({ evpid, data }, { owner: this.owner });
        } catch (err) {
          if (isGone(err)) this.forget(evpid);
          throw err;
        }
      }
      // an update made since is queued after this and sends the newer bytes
      if (this.copy.get(evpid)?.equals(data)) this.unsent.delete(evpid);
    };
    void this.behind(msgidOf(evpid), `create of bounce ${evpid}`, create, landed);
    return true;
  }

  async envelopeDelete(evpid: Evpid): Promise<boolean> {
    const msgid = msgidOf(evpid);
    const held = this.incoming.get(msgid);
    this.smtpdHas.delete(evpid);
    this.deliveryEnds(evpid);
    if (held) return held.delete(evpid);
    const deadline = this.deadline();
    this.forget(evpid);
    this.smtpdDeleted.set(evpid, true);
    const what = `delete of envelope ${evpid}`;
    if (this.asyncDelete && !this.closed && this.later.pending < WRITE_BEHIND_MAX && this.deleteBehind(evpid, what)) return true;
    return (await this.writeNowOrBehind(msgid, what, this.removeEnvelope(evpid), deadline, { op: 'delete', evpid })) === 'done';
  }

  /** The delete of an envelope smtpd deleted, in the service; `deleting` holds it until it lands or is refused. */
  private removeEnvelope(evpid: Evpid): () => Promise<void> {
    this.deleting.add(evpid);
    return async () => {
      try {
        const { messageDeleted } = await this.store.envelopeDelete(evpid, { owner: this.owner });
        if (messageDeleted) this.bodies.delete(msgidOf(evpid));
        this.deleting.delete(evpid);
      } catch (err) {
        if (isFinal(err)) this.deleting.delete(evpid);
        throw err;
      }
    };
  }

  /**
   * Queues the delete behind, journaled; false if the journal cannot keep
   * it. smtpd deletes the envelopes of a message delivered to several
   * recipients one after the other: those still waiting when the first
   * request of the message is sent go in it, in one transaction rather than
   * one each. A delete that an earlier request of its message took along
   * waits for it in the message's queue, and has nothing left to send.
   */
  private deleteBehind(evpid: Evpid, what: string): boolean {
    const landed = this.remember({ op: 'delete', evpid });
    if (!landed) return false;
    const msgid = msgidOf(evpid);
    this.deleting.add(evpid);
    const group = this.deletesWaiting.get(msgid) ?? new Set<Evpid>();
    group.add(evpid);
    this.deletesWaiting.set(msgid, group);
    let batch: Evpid[] | undefined;
    const send = async () => {
      // the same batch on every attempt
      batch ??= this.takeDeletes(msgid, group, evpid);
      if (batch.length > 0) await this.removeEnvelopes(msgid, batch);
    };
    void this.queueBehind(msgid, what, send, landed);
    return true;
  }

  /** The deletes of the group not sent yet, `evpid` among them; none if a request sent before took it. */
  private takeDeletes(msgid: Msgid, group: Set<Evpid>, evpid: Evpid): Evpid[] {
    if (!group.has(evpid)) return [];
    const batch = [evpid, ...[...group].filter((other) => other !== evpid).slice(0, DELETE_BATCH_MAX - 1)];
    for (const taken of batch) group.delete(taken);
    if (group.size === 0 && this.deletesWaiting.get(msgid) === group) this.deletesWaiting.delete(msgid);
    return batch;
  }

  private async removeEnvelopes(msgid: Msgid, batch: Evpid[]): Promise<void> {
    try {
      if (batch.length === 1 || !this.batchDeletes) {
        for (const evpid of batch) await this.removeEnvelope(evpid)();
        return;
      }
      const { messageDeleted } = await this.store.envelopesDelete(batch, { owner: this.owner }).catch(async (err: unknown) => {
        if (!(err instanceof QueueError && err.code === 'bad_request')) throw err;
        this.batchDeletes = false;
        this.log.warn({ err }, 'the queue service takes one envelope per delete (an older version): deleting one at a time');
        for (const evpid of batch) await this.removeEnvelope(evpid)();
        return { messageDeleted: false };
      });
      if (messageDeleted) this.bodies.delete(msgid);
      for (const evpid of batch) this.deleting.delete(evpid);
    } catch (err) {
      if (isFinal(err)) for (const evpid of batch) this.deleting.delete(evpid);
      throw err;
    }
  }

  /**
   * The service's answer if it gives one in time; the local copy's if it
   * does not. Empty only for an envelope that is gone or no longer this
   * instance's: smtpd drops an envelope whose LOAD is empty from its
   * schedule (queue.c, "failed to load envelope"), and would not try it
   * again until it restarts.
   */
  async envelopeLoad(evpid: Evpid): Promise<Buffer> {
    const held = this.incoming.get(msgidOf(evpid))?.get(evpid);
    if (held) return held;
    // whatever the service still has until the delete lands
    if (this.deleting.has(evpid)) return NO_ENVELOPE;
    // the service has older bytes, or none yet
    const newer = this.unsent.has(evpid) ? this.copy.get(evpid) : undefined;
    if (newer) return newer;
    // Only this bridge changes this instance's envelopes while its lease
    // holds, so bytes it has known since the lease began to hold are the
    // service's still: LOAD costs no request, as with smtpd's fs queue.
    const sureSince = this.lease.sureSince();
    const current = sureSince === undefined ? undefined : this.copy.getKnownSince(evpid, sureSince);
    if (current) return current;
    // Otherwise the service answers, and the copy only when it does not.
    // Whether the lease is sure changes none of this. It is usually not
    // sure because of the same outage, and the mail is then still ours: an
    // empty answer would make smtpd forget it. The copy's answer lets smtpd
    // at most start a delivery, and MESSAGE_FD_R hands out no body while
    // the lease is not sure, so smtpd tempfails it and tries again later;
    // if another instance has taken the message over by then, the service
    // says not_owner and the answer is empty, as it should be.
    const sentAt = performance.now();
    try {
      const data = await this.bounded(this.store.envelopeLoad(evpid, { owner: this.owner }), this.deadline(), `load of ${evpid}`);
      this.copy.set(evpid, data, sentAt);
      // smtpd asks for what it has: from a walk, or a discover made by someone else
      this.smtpdHas.add(evpid);
      return data;
    } catch (err) {
      if (isGone(err)) {
        this.forget(evpid);
        this.smtpdHas.delete(evpid);
        this.log.info({ err, evpid }, `envelope ${evpid} is gone or no longer this instance's: smtpd drops it`);
        return NO_ENVELOPE;
      }
      const kept = this.copy.get(evpid);
      if (kept) {
        this.log.warn({ err, evpid }, `envelope ${evpid} loaded from the local copy: the service did not answer`);
        return kept;
      }
      this.log.error({ err, evpid }, `envelope ${evpid} not loaded: the service did not answer and the local copy does not have it; smtpd drops it until it restarts`);
      throw err;
    }
  }

  /**
   * smtpd takes r=0 for a warning only (queue.c: "could not update
   * envelope"): it keeps the envelope scheduled, and its envelope cache
   * keeps the bytes from before. So an update of an envelope the copy has
   * that does not land in time is kept in the copy, answered 1 and written
   * behind: the next LOAD answers the new bytes, from the copy until the
   * service has them. An envelope the copy does not have is answered 0
   * when its update does not land, as nothing could answer its LOAD.
   */
  async envelopeUpdate(evpid: Evpid, data: Buffer): Promise<boolean> {
    const msgid = msgidOf(evpid);
    this.deliveryEnds(evpid);
    const held = this.incoming.get(msgid);
    if (held?.has(evpid)) {
      held.set(evpid, Buffer.from(data));
      return true;
    }
    // a drained bridge's attempts were put off by its own fence: kept from the service, the survivors
    // get the envelope as it was, without the retry smtpd counted, and try it at once rather than minutes later
    if (this.lease.isDraining) {
      this.copy.set(evpid, data);
      return true;
    }
    const known = this.copy.has(evpid);
    // after the writes of the message still pending, or it could land before an older update of the envelope
    if (known && (this.later.busy(msgid) || this.unsent.has(evpid))) {
      if (!this.updateBehind(evpid, data)) throw new Error(`update of ${evpid} not kept: neither the journal nor the local copy can keep it`);
      return true;
    }
    const sentAt = performance.now();
    try {
      await this.bounded(this.store.envelopeUpdate({ evpid, data }, { owner: this.owner }), this.deadline(), `update of ${evpid}`, msgid);
      this.copy.set(evpid, data, sentAt);
      return true;
    } catch (err) {
      if (isGone(err)) {
        this.forget(evpid);
        this.log.info({ err, evpid }, `update of ${evpid} refused: the envelope is gone or no longer this instance's`);
        return false;
      }
      if (!known || isFinal(err) || !this.updateBehind(evpid, data)) throw err;
      this.log.warn({ err, evpid }, `update of ${evpid} did not land in time; written behind`);
      return true;
    }
  }

  /**
   * Keeps `data` in the journal and the copy, and queues a write of the
   * copy's bytes unless one is queued already: it sends the latest bytes.
   * False if they cannot be kept.
   */
  private updateBehind(evpid: Evpid, data: Buffer): boolean {
    const landed = this.remember({ op: 'update', evpid, data });
    if (!landed) return false;
    if (!this.copy.set(evpid, data, performance.now())) {
      landed();
      return false;
    }
    this.updatesJournaled.set(evpid, [...(this.updatesJournaled.get(evpid) ?? []), landed]);
    this.unsent.add(evpid);
    if (this.updating.has(evpid)) return true;
    this.updating.add(evpid);
    const update = async () => {
      for (;;) {
        const data = this.copy.get(evpid);
        if (!data || !this.unsent.has(evpid)) return;
        try {
          await this.store.envelopeUpdate({ evpid, data }, { owner: this.owner });
        } catch (err) {
          if (isGone(err)) this.forget(evpid);
          throw err;
        }
        if (this.copy.get(evpid)?.equals(data)) {
          this.unsent.delete(evpid);
          return;
        }
      }
    };
    // the journal's entries for it are done when the job is: it sent the latest bytes, or they are no longer needed
    const allLanded = () => {
      for (const landed of this.updatesJournaled.get(evpid) ?? []) landed();
      this.updatesJournaled.delete(evpid);
    };
    void this.behind(msgidOf(evpid), `update of ${evpid}`, update, allLanded, () => this.updating.delete(evpid));
    return true;
  }

  async envelopeWalk(): Promise<WalkedEnvelope | 'again' | 'done'> {
    const next = await this.walk.next();
    if (typeof next === 'object') {
      this.copy.set(next.evpid, next.data, next.readAt);
      this.smtpdHas.add(next.evpid);
    }
    return next;
  }

  private deadline(): number {
    return Date.now() + this.answerWithinMs;
  }

  /**
   * Waits for a request until the smtpd call's deadline. One still running
   * then is left to finish, and writes queued for its message after it wait
   * for it, so that the bridge's writes of a message land in order.
   */
  private async bounded<T>(request: Promise<T>, deadline: number, what: string, msgid?: Msgid): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), Math.max(deadline - Date.now(), 0))));
    try {
      const first = await Promise.race([request.then((value) => ({ value })), late]);
      if (first !== 'late') return first.value;
    } finally {
      clearTimeout(timer);
    }
    request.catch(() => undefined); // nobody waits for its outcome any more
    if (msgid) {
      this.deletesWaiting.delete(msgid);
      this.later.track(msgid, request);
    }
    throw new QueueError('unavailable', `${what}: no answer within ${this.answerWithinMs} ms`, { timedOut: true });
  }

  /**
   * A write smtpd waits for: sent at once if nothing of its message is
   * pending, else queued behind what is. One that does not land by the
   * deadline, or fails in a way that may pass, is retried in the background
   * after the attempt under way. Answers 'done', 'behind', or the service's
   * refusal.
   */
  private async writeNowOrBehind(msgid: Msgid, what: string, write: () => Promise<unknown>, deadline: number, pending: Pending): Promise<'done' | 'behind' | QueueError> {
    const retry = async (after?: Promise<unknown>) => {
      if (!after || !(await succeeded(after))) await write();
    };
    const retryBehind = (after?: Promise<unknown>) => void this.behind(msgid, what, () => retry(after), this.remember(pending) ?? (() => undefined));
    if (this.later.busy(msgid)) {
      retryBehind();
      return 'behind';
    }
    const sent = write();
    try {
      await this.bounded(sent, deadline, what, msgid);
      return 'done';
    } catch (err) {
      if (isFinal(err)) return err as QueueError;
      this.log.warn({ err }, `${what} did not land in time; retrying in the background`);
      retryBehind(sent);
      return 'behind';
    }
  }

  /**
   * Puts a write smtpd is about to be told is done in the journal; answers
   * what to call once it has landed, or undefined if the journal cannot
   * keep it (then smtpd must not be told it is done). Without a journal
   * there is nothing to keep.
   */
  private remember(write: Pending): (() => void) | undefined {
    const journal = this.journal;
    if (!journal) return () => undefined;
    try {
      const seq = journal.record(write);
      return () => journal.done(seq);
    } catch (err) {
      this.log.error({ err }, `cannot keep a pending write in the journal: ${(err as Error).message}`);
      return undefined;
    }
  }

  /**
   * Queues a write in the background; `landed` once it has, or was refused
   * for good (not when the bridge stopped first). Deletes queued after it
   * must land after it, so none of them joins a delete queued before it.
   */
  private behind(key: string, what: string, work: () => Promise<void>, landed: () => void, after?: () => void): Promise<void> {
    this.deletesWaiting.delete(key);
    return this.queueBehind(key, what, work, landed, after);
  }

  private queueBehind(key: string, what: string, work: () => Promise<void>, landed: () => void, after?: () => void): Promise<void> {
    return this.later.add(key, what, work, isFinal).then((outcome: Outcome) => {
      after?.();
      if (outcome !== 'stopped') landed();
    });
  }

  /**
   * Sends what an earlier run answered smtpd for but had not landed when it
   * stopped, each write once: an envelope deleted is only deleted (and
   * never walked), a bounce is created and then given its latest bytes.
   * Resolves once all have landed or were refused for good.
   */
  private async replayJournal(): Promise<void> {
    const leftover = this.journal?.leftover ?? [];
    if (leftover.length === 0) return;
    this.log.warn({ writes: leftover.length }, `replaying ${leftover.length} writes an earlier run answered smtpd for but had not landed`);
    const journal = this.journal!;
    const byKey = new Map<string, { seqs: number[]; writes: Pending[] }>();
    for (const { seq, write } of leftover) {
      const key = write.op === 'rollback' ? `rollback ${write.msgid}` : write.evpid;
      const group = byKey.get(key) ?? { seqs: [], writes: [] };
      group.seqs.push(seq);
      group.writes.push(write);
      byKey.set(key, group);
    }
    const check = { owner: this.owner };
    const replays = [...byKey].map(([key, { seqs, writes }]) => {
      const landed = () => seqs.forEach((seq) => journal.done(seq));
      const first = writes[0];
      if (first.op === 'rollback') {
        return this.behind(key, `replayed ${key}`, async () => void (await this.store.messageDelete(first.msgid, check)), landed);
      }
      const evpid = first.evpid;
      const create = writes.find((w) => w.op === 'create');
      const update = writes.filter((w) => w.op === 'update').at(-1);
      const deleted = writes.some((w) => w.op === 'delete');
      if (deleted) {
        this.deleting.add(evpid);
        this.walk.exclude(evpid);
      }
      const work = async () => {
        if (deleted) {
          await this.store.envelopeDelete(evpid, check);
          this.deleting.delete(evpid);
          return;
        }
        if (create) {
          try {
            await this.store.envelopeCreate({ evpid, data: create.data }, check);
          } catch (err) {
            // it landed, and an update after it too
            if (!isTaken(err)) throw err;
          }
        }
        if (update) await this.store.envelopeUpdate({ evpid, data: update.data }, check);
      };
      const settled = () => {
        // a delete refused for good leaves nothing pending either
        if (deleted) this.deleting.delete(evpid);
        landed();
      };
      return this.behind(msgidOf(evpid), `replayed write of ${evpid}`, work, settled);
    });
    await Promise.all(replays);
  }

  private forget(evpid: Evpid): void {
    this.copy.delete(evpid);
    this.unsent.delete(evpid);
  }

  private newEvpid(msgid: Msgid): Evpid {
    for (;;) {
      const evpid = randomEvpid(msgid);
      if (!this.copy.has(evpid) && !this.deleting.has(evpid) && !this.smtpdDeleted.has(evpid)) return evpid;
    }
  }

  /** Reserves another batch of msgids in the background, one batch at a time. */
  private refill(): void {
    if (this.reserving || this.closed) return;
    this.reserving = (async () => {
      for (let attempt = 1; attempt <= 3; attempt++) {
        const known = new Set([...this.reserved, ...this.incoming.keys()]);
        const batch = new Set<Msgid>();
        while (batch.size < CREATE_BATCH_MAX) {
          const msgid = randomMsgid();
          if (!known.has(msgid)) batch.add(msgid);
        }
        try {
          await this.store.messageCreate([...batch], this.owner);
          this.reserved.push(...batch);
          return;
        } catch (err) {
          const taken = err instanceof QueueError && err.code === 'conflict';
          if (!taken || attempt === 3) {
            this.log.warn({ err }, 'could not reserve msgids');
            return;
          }
        }
      }
    })().finally(() => {
      this.reserving = undefined;
    });
  }
}

/**
 * smtpd's start-up walk: it asks for one envelope at a time, every 10 µs,
 * between other work, until it gets -1. Pages are fetched ahead in the
 * background; when none is ready the answer is "nothing this time" after a
 * short wait, so smtpd neither blocks nor spins. Envelopes are handed out
 * once each, and never one that this bridge created after INIT (smtpd
 * already has those).
 */
interface WalkedEnvelope extends Envelope {
  readAt: number;
}

class StartupWalk {
  constructor(private readonly onDone: () => void) {}

  private store?: QueueStore;
  private owner = '';
  private log?: Logger;
  /** Envelopes of the pages fetched, each with when its page was asked for (performance.now()). */
  private buffer: WalkedEnvelope[] = [];
  private cursor: string | null | undefined;
  private fetching?: Promise<void>;
  private failures = 0;
  private retryAt = 0;
  private finished = false;
  private readonly handedOut = new Set<Evpid>();
  private readonly excluded = new Set<Evpid>();

  start(store: QueueStore, owner: string, log: Logger): void {
    this.store = store;
    this.owner = owner;
    this.log = log;
    this.fetch();
  }

  /** An envelope smtpd learnt of live; while the walk runs it must not hand it out again. */
  exclude(evpid: Evpid): void {
    if (!this.finished) this.excluded.add(evpid);
  }

  /** Resolves once the first page is in (or failed): its request fixes the walk's snapshot time. */
  async firstPage(): Promise<void> {
    await this.fetching;
  }

  async next(): Promise<WalkedEnvelope | 'again' | 'done'> {
    if (!this.store) {
      await sleep(WALK_WAIT_MS);
      return 'again';
    }
    for (;;) {
      const e = this.take();
      if (e) return e;
      if (this.finished || (this.cursor === null && !this.fetching)) return this.finish();
      if (!this.fetching) {
        const wait = this.retryAt - Date.now();
        if (wait > 0) {
          await sleep(Math.min(wait, 100));
          return 'again';
        }
        this.fetch();
      }
      const arrived = await Promise.race([this.fetching!.then(() => true), sleep(WALK_WAIT_MS).then(() => false)]);
      if (!arrived) return 'again';
    }
  }

  private take(): WalkedEnvelope | undefined {
    while (this.buffer.length > 0) {
      const e = this.buffer.shift()!;
      if (this.excluded.has(e.evpid) || this.handedOut.has(e.evpid)) continue;
      if (e.data.length === 0 || e.data.length > ENVELOPE_BUFFER) {
        this.log?.error({ evpid: e.evpid, bytes: e.data.length }, `envelope ${e.evpid} does not fit smtpd's buffer; not walked`);
        continue;
      }
      this.handedOut.add(e.evpid);
      if (this.buffer.length < WALK_PAGE / 4 && this.cursor) this.fetch();
      return e;
    }
    return undefined;
  }

  private fetch(): void {
    if (this.fetching || this.finished || this.cursor === null || !this.store) return;
    const readAt = performance.now();
    this.fetching = this.store
      .envelopeWalk({ owner: this.owner, cursor: this.cursor, limit: WALK_PAGE })
      .then((page) => {
        this.buffer.push(...page.items.map((e) => ({ ...e, readAt })));
        this.cursor = page.cursor;
        this.failures = 0;
      })
      .catch((err: unknown) => {
        if (isFinal(err) && this.cursor) {
          // a cursor the service no longer takes (one of its earlier version): a walk cannot resume from it
          this.log?.error({ err }, 'walk cursor refused: the walk ends here; the reconciler hands smtpd what it did not get');
          this.cursor = null;
          return;
        }
        this.failures++;
        this.retryAt = Date.now() + Math.min(100 * 2 ** this.failures, 10_000);
        this.log?.warn({ err, failures: this.failures }, 'walk page failed; retrying');
      })
      .finally(() => {
        this.fetching = undefined;
      });
  }

  private finish(): 'done' {
    if (!this.finished) {
      this.finished = true;
      this.log?.info({ envelopes: this.handedOut.size }, `walk done: ${this.handedOut.size} envelopes loaded into smtpd`);
      this.handedOut.clear();
      this.excluded.clear();
      this.onDone();
    }
    return 'done';
  }
}

/** Waits for `work`, but no longer than `ms`; the work goes on either way. */
async function within(work: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([work, new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}

/** A request the service refused for good: retrying cannot help. */
function isFinal(err: unknown): boolean {
  return err instanceof QueueError && err.code !== 'unavailable';
}

/** The evpid is taken already: by another envelope, or by this one's earlier attempt. */
function isTaken(err: unknown): boolean {
  return err instanceof QueueError && err.code === 'conflict' && err.details.reason === undefined;
}

/** The service's definite word that an envelope is not this instance's to load or change: gone, or taken over. */
function isGone(err: unknown): boolean {
  return err instanceof QueueError && (err.code === 'not_found' || (err.code === 'conflict' && err.details.reason === 'not_owner'));
}

/** Whether a request sent earlier succeeded, once it is over. */
function succeeded(request: Promise<unknown>): Promise<boolean> {
  return request.then(
    () => true,
    () => false,
  );
}
