import { closeSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import type { Summary } from './stats';

/** What the bridge's counters file holds (bridge/counters.ts), as far as the metrics show it. */
export interface MetricsSnapshot {
  instance?: string;
  startedAt: string;
  acceptedMessages: number;
  pendingWrites: number;
  smtpd: Record<string, Summary>;
  http: Record<string, Summary>;
}

/** The pool's view of this bridge: its lease, a drain, the local copy, what automatic takeovers claimed. */
export interface PoolState {
  leaseSure: boolean;
  draining: boolean;
  localEnvelopes: number;
  takenOver: number;
}

const QUANTILES = [
  ['0.5', 'p50Ms'],
  ['0.9', 'p90Ms'],
  ['0.99', 'p99Ms'],
] as const;

/**
 * The bridge's counters in Prometheus's text exposition format (version
 * 0.0.4), for node_exporter's textfile collector. Latencies are over the
 * last samples each operation keeps (bridge/stats.ts), hence gauges by
 * quantile rather than a summary with a sum.
 */
export function promText(snapshot: MetricsSnapshot, pool: PoolState): string {
  const base = { instance: snapshot.instance ?? '-' };
  const out: string[] = [];
  const metric = (name: string, type: 'counter' | 'gauge', help: string, samples: [Record<string, string>, number][]) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) out.push(`${name}${labelText({ ...base, ...labels })} ${value}`);
  };
  const perOp = (ops: Record<string, Summary>, label: string, pick: (s: Summary) => number) => Object.entries(ops).map(([op, s]) => [{ [label]: op }, pick(s)] as [Record<string, string>, number]);
  const latencies = (ops: Record<string, Summary>, label: string) =>
    Object.entries(ops).flatMap(([op, s]) => QUANTILES.map(([q, field]) => [{ [label]: op, quantile: q }, s[field] / 1000] as [Record<string, string>, number]));

  metric('queue_rest_start_time_seconds', 'gauge', 'When the bridge started, in seconds since the epoch.', [[{}, Date.parse(snapshot.startedAt) / 1000]]);
  metric('queue_rest_accepted_messages_total', 'counter', 'Messages smtpd committed through the bridge.', [[{}, snapshot.acceptedMessages]]);
  metric('queue_rest_pending_writes', 'gauge', 'Background writes answered to smtpd that have not landed in the service yet.', [[{}, snapshot.pendingWrites]]);
  metric('queue_rest_lease_sure', 'gauge', '1 while the lease is sure (the bridge hands out bodies), else 0.', [[{}, Number(pool.leaseSure)]]);
  metric('queue_rest_draining', 'gauge', '1 once a drain of this instance was asked.', [[{}, Number(pool.draining)]]);
  metric('queue_rest_local_envelopes', 'gauge', 'Envelopes in the local copy.', [[{}, pool.localEnvelopes]]);
  metric('queue_rest_taken_over_messages_total', 'counter', "Messages of dead instances this bridge's automatic takeover claimed.", [[{}, pool.takenOver]]);
  metric('queue_rest_smtpd_calls_total', 'counter', 'smtpd queue calls answered, by operation.', perOp(snapshot.smtpd, 'op', (s) => s.count));
  metric('queue_rest_smtpd_call_failures_total', 'counter', 'smtpd queue calls answered as failures, by operation.', perOp(snapshot.smtpd, 'op', (s) => s.errors));
  metric('queue_rest_smtpd_call_seconds', 'gauge', 'Latency of smtpd queue calls over the last samples, by operation and quantile.', latencies(snapshot.smtpd, 'op'));
  metric('queue_rest_http_requests_total', 'counter', 'HTTP requests to the service, by function.', perOp(snapshot.http, 'function', (s) => s.count));
  metric('queue_rest_http_request_failures_total', 'counter', 'HTTP requests that failed (network, 5xx), by function.', perOp(snapshot.http, 'function', (s) => s.errors));
  metric('queue_rest_http_request_seconds', 'gauge', 'Latency of HTTP requests over the last samples, by function and quantile.', latencies(snapshot.http, 'function'));
  return out.join('\n') + '\n';
}

function labelText(labels: Record<string, string>): string {
  const pairs = Object.entries(labels).map(([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')}"`);
  return `{${pairs.join(',')}}`;
}

/**
 * Replaces `file` with `text` at once, as the textfile collector needs (it
 * may read at any moment): written to a new file beside it, then renamed
 * over it. The bridge has given root up by then; the new file is created
 * exclusively and without following a link, so nothing planted in the
 * folder redirects the write.
 */
export function writeAtomically(file: string, text: string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    unlinkSync(tmp);
  } catch {
    // none left from before
  }
  const fd = openSync(tmp, 'wx', 0o644);
  try {
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
}
