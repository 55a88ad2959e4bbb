import { Stats } from './stats';

/**
 * What the bridge counts: smtpd's calls and the HTTP round trips they cost.
 * Logged on SIGUSR1 and at exit, and written to the counters file (statsFile).
 */
export class BridgeCounters {
  readonly smtpd = new Stats();
  readonly http = new Stats();
  private readonly startedAt = new Date().toISOString();

  constructor(private readonly instance: string | undefined) {}

  snapshot(pendingWrites: number) {
    const commits = this.smtpd.count('MESSAGE_COMMIT');
    const acceptRequests = ['messageCreate', 'messageWrite', 'messageCommit'].reduce((sum, fn) => sum + this.http.count(fn), 0);
    return {
      instance: this.instance,
      pid: process.pid,
      startedAt: this.startedAt,
      updatedAt: new Date().toISOString(),
      httpRequests: this.http.total(),
      acceptedMessages: commits,
      acceptRequestsPerMessage: commits > 0 ? Math.round((acceptRequests / commits) * 1000) / 1000 : null,
      pendingWrites,
      smtpd: this.smtpd.summary(),
      http: this.http.summary(),
    };
  }
}
