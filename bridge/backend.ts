import { setTimeout as sleep } from 'node:timers/promises';
import { LRUCache } from 'lru-cache';
import { QueueError } from '../lib/errors';
import { msgidOf, randomEvpid, randomMsgid, type Evpid, type Msgid } from '../lib/ids';
import type { Logger } from '../lib/log';
import { sha256hex } from '../lib/rules';
import { CREATE_BATCH_MAX, type Envelope, type QueueStore } from '../lib/store';
import { BodyFiles, readAllAndClose } from './bodyfile';
import { Lease } from './lease';
import { ENVELOPE_BUFFER, PROC_QUEUE_API_VERSION, type QueueBackend } from './protocol';
import { WriteBehind } from './write-behind';

export interface BackendOptions {
  store: QueueStore;
  /** This instance: the owner of every message it accepts. */
  owner: string;
  log: Logger;
  /** Folder for the unlinked files MESSAGE_FD_R hands out. */
  tmpDir: string;
  /** Bodies just committed are kept for their first delivery, up to this many bytes in all. */
  cacheBytes?: number;
  /** How long INIT may wait for the start-up work (purge, first reservations, first walk page). */
  initWaitMs?: number;
  /** Answer ENVELOPE_DELETE at once and delete in the background (see WriteBehind). */
  asyncDelete?: boolean;
  /** How long CLOSE and EOF wait for background writes (default: 15 s). */
  drainMs?: number;
  /** This instance's lease on its messages (default: 60 s). */
  leaseMs?: number;
}

const RESERVE_LOW = 4;
const WALK_PAGE = 200;
const WALK_WAIT_MS = 50;
/** Past this many, envelope deletes wait for the service again instead of queueing. */
const WRITE_BEHIND_MAX = 10_000;

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
  private readonly drainMs: number;
  private readonly walk: StartupWalk;
  private readonly lease: Lease;
  private closed = false;

  constructor(options: BackendOptions) {
    this.store = options.store;
    this.owner = options.owner;
    this.log = options.log;
    this.files = new BodyFiles(options.tmpDir);
    this.initWaitMs = options.initWaitMs ?? 3_000;
    this.later = new WriteBehind(options.log);
    this.asyncDelete = options.asyncDelete ?? true;
    this.drainMs = options.drainMs ?? 15_000;
    const max = options.cacheBytes ?? 64 * 1024 * 1024;
    this.bodies = new LRUCache({ maxSize: Math.max(max, 1), sizeCalculation: (body) => Math.max(body.length, 1), maxEntrySize: Math.max(max / 4, 1) });
    // bodies kept while the lease was sure may belong to another instance by the time it is sure again
    this.lease = new Lease(this.store, this.owner, options.leaseMs ?? 60_000, this.log, () => this.bodies.clear());
    this.walk = new StartupWalk(() => this.lease.markWalkDone());
  }

  async init(version: number): Promise<void> {
    if (version !== PROC_QUEUE_API_VERSION) this.log.warn({ version }, `smtpd speaks queue API version ${version}, this bridge ${PROC_QUEUE_API_VERSION}`);
    const startup = (async () => {
      await this.lease.renew();
      this.lease.start();
      await this.takeOver();
      // after the takeover, so that what it claimed is this instance's when the walk's snapshot is taken
      this.walk.start(this.store, this.owner, this.log);
      try {
        const purged = await this.store.messagePurge(this.owner, []);
        if (purged > 0) this.log.info({ purged }, `purged ${purged} uncommitted messages left by an earlier run`);
      } catch (err) {
        this.log.warn({ err }, 'could not purge uncommitted messages of an earlier run; they stay until the next start');
      }
      this.refill();
      await Promise.all([this.reserving, this.walk.firstPage()]);
    })();
    await within(startup, this.initWaitMs);
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

  /** Background writes not done yet. */
  get pendingWrites(): number {
    return this.later.pending;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // the lease is left to run out rather than released: a restart keeps its mail
    this.lease.stop();
    const left = await this.later.drain(this.drainMs);
    if (left > 0) this.log.warn({ left }, `${left} background writes were not done; their mail may be delivered again after a restart`);
    if (this.reserved.splice(0).length > 0) {
      await this.store.messagePurge(this.owner, [...this.incoming.keys()]).catch((err: unknown) => {
        this.log.warn({ err }, 'could not release reserved msgids; the next start purges them');
      });
    }
  }

  async messageCreate(): Promise<Msgid> {
    if (this.reserved.length <= RESERVE_LOW) this.refill();
    if (this.reserved.length === 0) await this.reserving;
    const msgid = this.reserved.shift();
    if (!msgid) throw new Error('no msgid reserved: the queue service is unavailable');
    this.incoming.set(msgid, new Map());
    return msgid;
  }

  async messageDelete(msgid: Msgid): Promise<boolean> {
    this.incoming.delete(msgid);
    this.bodies.delete(msgid);
    await this.later.settled(msgid);
    try {
      await this.store.messageDelete(msgid, { owner: this.owner });
      return true;
    } catch (err) {
      // smtpd gave up on this message; a rollback left undone would leave it in the queue
      this.log.warn({ err, msgid }, `rollback of ${msgid} failed; retrying in the background`);
      this.later.add(msgid, `rollback of ${msgid}`, () => this.store.messageDelete(msgid, { owner: this.owner }).then(() => undefined), isFinal);
      return false;
    }
  }

  async messageCommit(msgid: Msgid, fd: number): Promise<boolean> {
    const body = readAllAndClose(fd);
    const held = this.incoming.get(msgid) ?? new Map<Evpid, Buffer>();
    const envelopes: Envelope[] = [...held].map(([evpid, data]) => ({ evpid, data }));
    for (const e of envelopes) this.walk.exclude(e.evpid);
    await this.store.messageCommit({ msgid, owner: this.owner, size: body.length, sha256: sha256hex(body), body, envelopes });
    this.incoming.delete(msgid);
    this.bodies.set(msgid, body);
    return true;
  }

  async messageFd(msgid: Msgid): Promise<number> {
    if (!this.lease.isSure()) throw new Error(`not delivering ${msgid}: the lease may have run out and another instance may own it`);
    const body = this.bodies.get(msgid) ?? (await this.store.messageRead(msgid, { owner: this.owner })).data;
    return this.files.open(body);
  }

  async envelopeCreate(msgid: Msgid, data: Buffer): Promise<Evpid> {
    const held = this.incoming.get(msgid);
    if (held) {
      let evpid = randomEvpid(msgid);
      while (held.has(evpid)) evpid = randomEvpid(msgid);
      held.set(evpid, Buffer.from(data));
      return evpid;
    }
    // a committed message: smtpd adds bounces to the original
    await this.later.settled(msgid);
    for (let attempt = 1; ; attempt++) {
      const evpid = randomEvpid(msgid);
      this.walk.exclude(evpid);
      try {
        await this.store.envelopeCreate({ evpid, data }, { owner: this.owner });
        return evpid;
      } catch (err) {
        const clash = err instanceof QueueError && err.code === 'conflict' && err.details.reason === undefined;
        if (!clash || attempt === 3) throw err;
      }
    }
  }

  async envelopeDelete(evpid: Evpid): Promise<boolean> {
    const msgid = msgidOf(evpid);
    const held = this.incoming.get(msgid);
    if (held) return held.delete(evpid);
    const remove = async () => {
      const { messageDeleted } = await this.store.envelopeDelete(evpid, { owner: this.owner });
      if (messageDeleted) this.bodies.delete(msgid);
    };
    if (this.asyncDelete && !this.closed && this.later.pending < WRITE_BEHIND_MAX) {
      this.later.add(msgid, `delete of envelope ${evpid}`, remove, isFinal);
    } else {
      await remove();
    }
    return true;
  }

  async envelopeLoad(evpid: Evpid): Promise<Buffer> {
    const held = this.incoming.get(msgidOf(evpid))?.get(evpid);
    return held ?? this.store.envelopeLoad(evpid, { owner: this.owner });
  }

  async envelopeUpdate(evpid: Evpid, data: Buffer): Promise<boolean> {
    const held = this.incoming.get(msgidOf(evpid));
    if (held?.has(evpid)) {
      held.set(evpid, Buffer.from(data));
      return true;
    }
    await this.store.envelopeUpdate({ evpid, data }, { owner: this.owner });
    return true;
  }

  envelopeWalk(): Promise<{ evpid: Evpid; data: Buffer } | 'again' | 'done'> {
    return this.walk.next();
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
class StartupWalk {
  constructor(private readonly onDone: () => void) {}

  private store?: QueueStore;
  private owner = '';
  private log?: Logger;
  private buffer: Envelope[] = [];
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

  async next(): Promise<{ evpid: Evpid; data: Buffer } | 'again' | 'done'> {
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

  private take(): { evpid: Evpid; data: Buffer } | undefined {
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
    this.fetching = this.store
      .envelopeWalk({ owner: this.owner, cursor: this.cursor, limit: WALK_PAGE })
      .then((page) => {
        this.buffer.push(...page.items);
        this.cursor = page.cursor;
        this.failures = 0;
      })
      .catch((err: unknown) => {
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
