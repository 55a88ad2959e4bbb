import { QueueError } from '../lib/errors';
import type { Logger } from '../lib/log';
import type { InstanceInfo, QueueStore } from '../lib/store';

/** How often a delivery that finds the lease unsure may renew it. */
const ENSURE_INTERVAL_MS = 1_000;

/**
 * This instance's lease on its messages (docs/pool.md). It is renewed every
 * quarter lease; the service lets survivors take the messages over once it
 * has not been renewed for a whole lease. The bridge itself stops handing
 * out bodies once it has not managed to renew for half a lease, so that by
 * the time another instance may take its mail over, it has not started a
 * delivery for half a lease.
 *
 * A drain (docs/pool.md) is a lapse on purpose: once the service refuses a
 * renewal because a drain was asked, the lease is never sure again; the
 * bridge ends it (`end`) when its deliveries under way are over.
 */
export class Lease {
  /** performance.now() when the last successful renewal was sent. */
  private renewedAt = -Infinity;
  private timer?: NodeJS.Timeout;
  private walkDone = false;
  private held = false;
  /** performance.now() when the renewal was sent that began the current run of sure renewals. */
  private heldSince = Infinity;
  private readonly startedAt = new Date();
  private renewing?: Promise<boolean>;
  private lastEnsuredAt = -Infinity;
  private draining = false;

  constructor(
    private readonly store: QueueStore,
    private readonly instance: string,
    readonly leaseMs: number,
    private readonly log: Logger,
    /** Called when the lease stops being sure, e.g. to drop cached bodies. */
    private readonly onLapse: () => void,
    /** Called with what each renewal answers (claims made for this instance, for one). */
    private readonly onRenewed: (info: InstanceInfo) => void = () => undefined,
    /** Called once when the service says a drain was asked. */
    private readonly onDrain: () => void = () => undefined,
    /** The background writes not landed yet, which each renewal reports. */
    private readonly pendingWrites: () => number = () => 0,
  ) {}

  start(): void {
    this.timer ??= setInterval(() => void this.renew(), this.leaseMs / 4);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Renews now; a renewal already under way is shared rather than sent twice. */
  renew(): Promise<boolean> {
    this.renewing ??= this.sendRenewal().finally(() => (this.renewing = undefined));
    return this.renewing;
  }

  /**
   * Whether this instance may deliver, renewing first if it may not: after
   * an outage the mail waits for one renewal, not for the next tick of the
   * timer (a quarter lease). At most one such renewal a second.
   */
  async ensure(): Promise<boolean> {
    if (this.isSure()) return true;
    if (this.draining) return false;
    if (!this.renewing) {
      if (performance.now() - this.lastEnsuredAt < ENSURE_INTERVAL_MS) return false;
      this.lastEnsuredAt = performance.now();
    }
    return (await this.renew()) && this.isSure();
  }

  private async sendRenewal(): Promise<boolean> {
    const sentAt = performance.now();
    try {
      const info = await this.store.instanceHeartbeat(this.instance, this.leaseMs, { walkDone: this.walkDone, startedAt: this.startedAt, pendingWrites: this.pendingWrites() });
      // a lapse nobody noticed (no delivery asked) is still a lapse: what was kept while sure is dropped
      this.isSure();
      this.renewedAt = Math.max(this.renewedAt, sentAt);
      if (!this.held) {
        this.heldSince = sentAt;
        this.log.info({ leaseMs: this.leaseMs }, `lease of ${this.instance} held`);
      }
      this.held = true;
      this.onRenewed(info);
      return true;
    } catch (err) {
      if (isDrainAsked(err)) {
        this.startDrain();
        return false;
      }
      this.log.warn({ err }, `could not renew the lease of ${this.instance}`);
      this.isSure(); // notices a lapse now rather than at the next delivery
      return false;
    }
  }

  /** Whether a drain was asked: the lease is not renewed again. */
  get isDraining(): boolean {
    return this.draining;
  }

  private startDrain(): void {
    if (this.draining) return;
    this.draining = true;
    this.stop();
    this.renewedAt = -Infinity;
    this.held = false;
    this.log.warn(`drain of ${this.instance} asked: its lease is not renewed, no deliveries from now on; its mail goes to the survivors`);
    this.onLapse();
    this.onDrain();
  }

  /** Ends the lease of a draining instance at once: the survivors may claim its mail now. */
  async end(): Promise<boolean> {
    try {
      await this.store.instanceHeartbeat(this.instance, this.leaseMs, { startedAt: this.startedAt, drain: 'done' });
      return true;
    } catch (err) {
      this.log.error({ err }, `could not end the lease of ${this.instance}: the survivors take its mail when it runs out`);
      return false;
    }
  }

  /** A drain of this instance on its own (clean shutdown), then its end. */
  async drainNow(): Promise<boolean> {
    try {
      await this.store.instanceHeartbeat(this.instance, this.leaseMs, { drain: 'ask' });
    } catch (err) {
      this.log.error({ err }, `could not drain ${this.instance}: the survivors take its mail when its lease runs out`);
      return false;
    }
    this.draining = true;
    return this.end();
  }

  /**
   * Whether this instance may deliver: its lease was renewed less than half a
   * lease ago. The first time it is not, the lapse is logged and onLapse runs.
   */
  isSure(): boolean {
    const sure = !this.draining && performance.now() - this.renewedAt < this.leaseMs / 2;
    if (!sure && this.held) {
      this.held = false;
      this.log.error(`lease of ${this.instance} not renewed for half a lease: no deliveries until it is`);
      this.onLapse();
    }
    return sure;
  }

  /**
   * While the lease is sure, since when (performance.now()) it has been held
   * without a break: nobody can have taken this instance's mail over since
   * then, so what it learnt of its mail since then is still true. Undefined
   * while it is not sure.
   */
  sureSince(): number | undefined {
    return this.isSure() ? this.heldSince : undefined;
  }

  /** Tells the service that smtpd has loaded the queue: messages may now be fed to it one by one. */
  markWalkDone(): void {
    this.walkDone = true;
    void this.renew();
  }
}

/** The service refused a renewal because a drain of this instance was asked. */
function isDrainAsked(err: unknown): boolean {
  return err instanceof QueueError && err.code === 'conflict' && err.details.reason === 'draining';
}
