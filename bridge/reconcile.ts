import type { Evpid } from '../lib/ids';
import type { Logger } from '../lib/log';
import type { QueueStore } from '../lib/store';
import type { SmtpdDiscover } from './discover';

const PAGE = 500;
const RETRY_MS = 10_000;
/** How long after smtpd's walk a round checks that the walk missed nothing. */
const CHECK_AFTER_WALK_MS = 5_000;

/**
 * Nothing this instance owns stays unknown to its running smtpd. smtpd
 * learns its queue once, from the walk at start-up; mail that becomes this
 * instance's later (taken over from a dead instance by this bridge, by
 * `queue-rest takeover`, or while the walk ran) must be handed to it with
 * `smtpctl discover`. A round runs when the instance's heartbeat says that
 * messages were claimed for it. It walks this owner's envelopes in the service
 * and discovers each that smtpd does not have; a round that could not hand
 * over everything is tried again later. One round also runs a few seconds
 * after the walk: a walk page that a storage answered wrongly (the legacy
 * Datastore emulator, restarting, answered one empty) would otherwise leave
 * mail unknown until the next start. Rounds run one at a time, never
 * before smtpd's walk is done (it would be given an envelope twice, and
 * exit), and never inside an smtpd call.
 */
export class Reconciler {
  private running?: Promise<void>;
  private again = false;
  private timer?: NodeJS.Timeout;
  private ready = false;
  private stopped = false;

  constructor(
    private readonly o: {
      store: QueueStore;
      owner: string;
      log: Logger;
      discoverer: SmtpdDiscover;
      /** Whether smtpd has the envelope through this bridge already (walked, accepted, created, discovered, loaded). */
      smtpdHas(evpid: Evpid): boolean;
      /** smtpd deleted it: it is not to be handed over, whatever the service lists. */
      smtpdDeleted(evpid: Evpid): boolean;
      /** Deletes it in the service again. */
      deleteAgain(evpid: Evpid): void;
      /** smtpd has it now. */
      handedOver(evpid: Evpid, data: Buffer): void;
    },
  ) {}

  /** smtpd's walk is done: from now on envelopes can be discovered, and a round asked for meanwhile runs. */
  start(): void {
    this.ready = true;
    if (this.again) {
      this.again = false;
      this.request();
    }
    this.later(CHECK_AFTER_WALK_MS);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  /** Asks for a round soon (after the one under way, if any). */
  request(): void {
    if (this.stopped) return;
    if (!this.ready || this.running) {
      this.again = true;
      return;
    }
    this.running = this.round()
      .catch((err: unknown) => {
        this.o.log.warn({ err }, 'reconcile: could not list this instance\'s envelopes; trying again later');
        this.later();
      })
      .finally(() => {
        this.running = undefined;
        if (this.again) {
          this.again = false;
          this.request();
        }
      });
  }

  /** Resolves when no round runs. */
  async settled(): Promise<void> {
    while (this.running) await this.running;
  }

  private later(ms = RETRY_MS): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.request(), ms);
    this.timer.unref();
  }

  private async stillOurs(evpid: Evpid): Promise<boolean> {
    try {
      await this.o.store.envelopeLoad(evpid, { owner: this.o.owner });
      return true;
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'not_found' || code === 'conflict') return false;
      throw err;
    }
  }

  private async round(): Promise<void> {
    let handed = 0;
    let failed = 0;
    let cursor: string | undefined;
    do {
      const page = await this.o.store.envelopeWalk({ owner: this.o.owner, cursor, limit: PAGE });
      for (const e of page.items) {
        if (this.stopped) return;
        if (this.o.smtpdHas(e.evpid)) continue;
        if (this.o.smtpdDeleted(e.evpid)) {
          this.o.deleteAgain(e.evpid);
          continue;
        }
        // the walk's pages are read as of its start: an envelope delivered since is not to be handed out
        if (!(await this.stillOurs(e.evpid)) || this.o.smtpdHas(e.evpid)) continue;
        const result = await this.o.discoverer.discover(e.evpid);
        if (result === 'fail') {
          failed++;
          continue;
        }
        // 'unknown' counts as handed over: smtpd exits on an envelope it is given twice
        this.o.handedOver(e.evpid, e.data);
        if (result === 'ok') handed++;
      }
      cursor = page.cursor ?? undefined;
    } while (cursor);
    if (handed > 0) this.o.log.warn({ handed }, `reconcile: handed ${handed} envelopes this instance owns to smtpd`);
    if (failed > 0) {
      this.o.log.error({ failed }, `reconcile: smtpctl discover failed for ${failed} envelopes; trying again in ${RETRY_MS / 1000} s`);
      this.later();
    }
  }
}
