import type { Logger } from '../lib/log';
import type { InstanceInfo, QueueStore } from '../lib/store';

/**
 * This instance's lease on its messages (docs/pool.md). It is renewed every
 * quarter lease; the service lets survivors take the messages over once it
 * has not been renewed for a whole lease. The bridge itself stops handing
 * out bodies once it has not managed to renew for half a lease, so that by
 * the time another instance may take its mail over, it has not started a
 * delivery for half a lease.
 */
export class Lease {
  /** performance.now() when the last successful renewal was sent. */
  private renewedAt = -Infinity;
  private timer?: NodeJS.Timeout;
  private walkDone = false;
  private held = false;
  private readonly startedAt = new Date();

  constructor(
    private readonly store: QueueStore,
    private readonly instance: string,
    readonly leaseMs: number,
    private readonly log: Logger,
    /** Called when the lease stops being sure, e.g. to drop cached bodies. */
    private readonly onLapse: () => void,
    /** Called with what each renewal answers (claims made for this instance, for one). */
    private readonly onRenewed: (info: InstanceInfo) => void = () => undefined,
  ) {}

  start(): void {
    this.timer ??= setInterval(() => void this.renew(), this.leaseMs / 4);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  async renew(): Promise<boolean> {
    const sentAt = performance.now();
    try {
      const info = await this.store.instanceHeartbeat(this.instance, this.leaseMs, { walkDone: this.walkDone, startedAt: this.startedAt });
      this.renewedAt = Math.max(this.renewedAt, sentAt);
      this.onRenewed(info);
      if (!this.held) this.log.info({ leaseMs: this.leaseMs }, `lease of ${this.instance} held`);
      this.held = true;
      return true;
    } catch (err) {
      this.log.warn({ err }, `could not renew the lease of ${this.instance}`);
      this.isSure(); // notices a lapse now rather than at the next delivery
      return false;
    }
  }

  /**
   * Whether this instance may deliver: its lease was renewed less than half a
   * lease ago. The first time it is not, the lapse is logged and onLapse runs.
   */
  isSure(): boolean {
    const sure = performance.now() - this.renewedAt < this.leaseMs / 2;
    if (!sure && this.held) {
      this.held = false;
      this.log.error(`lease of ${this.instance} not renewed for half a lease: no deliveries until it is`);
      this.onLapse();
    }
    return sure;
  }

  /** Tells the service that smtpd has loaded the queue: messages may now be fed to it one by one. */
  markWalkDone(): void {
    this.walkDone = true;
    void this.renew();
  }
}
