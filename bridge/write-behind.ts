import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../lib/log';

/** How a background write ended: it landed, the service refused it for good, or the bridge stopped first. */
export type Outcome = 'done' | 'dropped' | 'stopped';

/**
 * Writes smtpd does not wait for (envelope deletes after delivery, which
 * smtpd does not even check, rollbacks and updates that did not land in
 * time): each runs after the earlier ones of the same message, a few
 * messages at a time, and is retried until it succeeds or fails for good.
 * A call smtpd gave up waiting for can be tracked too, so that what is
 * queued for its message after it waits until it is over and lands after
 * it. Nothing here is awaited without a bound by an smtpd call. What is
 * still pending when the bridge stops is in its journal (bridge/journal.ts),
 * and the next start replays it.
 */
export class WriteBehind {
  private readonly chains = new Map<string, Promise<void>>();
  private readonly slots: (() => void)[] = [];
  private running = 0;
  private stopped = false;
  pending = 0;

  constructor(
    private readonly log: Logger,
    private readonly concurrency = 8,
    private readonly retryMs = 2_000,
  ) {}

  /** Queues `work` after everything queued for `key`; resolves once it is done, dropped, or the bridge stopped, saying which. */
  add(key: string, what: string, work: () => Promise<void>, isFinal: (err: unknown) => boolean): Promise<Outcome> {
    let outcome: Outcome = 'stopped';
    return this.enqueue(key, async () => {
      outcome = await this.attempt(what, work, isFinal);
    }).then(() => outcome);
  }

  /** Makes what is queued for `key` from now on wait until `running`, a request already sent, is over. */
  track(key: string, running: Promise<unknown>): void {
    const over = () => undefined;
    void this.enqueue(key, () => running.then(over, over));
  }

  /** Whether anything queued or tracked for `key` is not over yet. */
  busy(key: string): boolean {
    return this.chains.has(key);
  }

  /** Waits up to `ms` for everything queued, then stops retrying; answers how many were left. */
  async drain(ms: number): Promise<number> {
    const left = await this.settle(ms);
    this.stopped = true;
    return left;
  }

  /** Waits up to `ms` for everything queued, which goes on either way; answers how many were left. */
  async settle(ms: number): Promise<number> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(this.chains.values()), new Promise<void>((resolve) => (timer = setTimeout(resolve, Math.max(ms, 0))))]);
    clearTimeout(timer);
    return this.pending;
  }

  private enqueue(key: string, step: () => Promise<void>): Promise<void> {
    this.pending++;
    const next = (this.chains.get(key) ?? Promise.resolve()).then(step).finally(() => {
      this.pending--;
      if (this.chains.get(key) === next) this.chains.delete(key);
    });
    this.chains.set(key, next);
    return next;
  }

  private async attempt(what: string, work: () => Promise<void>, isFinal: (err: unknown) => boolean): Promise<Outcome> {
    for (let attempt = 1; !this.stopped; attempt++) {
      await this.acquire();
      try {
        await work();
        return 'done';
      } catch (err) {
        if (isFinal(err)) {
          this.log.error({ err }, `${what}: failed for good, dropped`);
          return 'dropped';
        }
        this.log.warn({ err, attempt }, `${what}: failed, will retry`);
      } finally {
        this.release();
      }
      await sleep(Math.min(this.retryMs * attempt, 30_000));
    }
    this.log.warn(`${what}: not done before the bridge stopped`);
    return 'stopped';
  }

  private async acquire(): Promise<void> {
    if (this.running < this.concurrency) {
      this.running++;
      return;
    }
    await new Promise<void>((resolve) => this.slots.push(resolve));
  }

  private release(): void {
    const next = this.slots.shift();
    if (next) next();
    else this.running--;
  }
}
