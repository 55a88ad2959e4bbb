/**
 * Counters and latency percentiles, per operation. The bridge keeps one for
 * smtpd's calls and one for its HTTP round trips; the benchmarks use it too.
 */
export interface Summary {
  count: number;
  errors: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  meanMs: number;
}

/** Keeps the last `keep` samples of each operation, which is what the percentiles are taken over. */
export class Stats {
  private readonly ops = new Map<string, { count: number; errors: number; samples: number[]; next: number }>();

  constructor(private readonly keep = 10_000) {}

  record(op: string, ms: number, ok = true): void {
    let entry = this.ops.get(op);
    if (!entry) this.ops.set(op, (entry = { count: 0, errors: 0, samples: [], next: 0 }));
    entry.count++;
    if (!ok) entry.errors++;
    if (entry.samples.length < this.keep) entry.samples.push(ms);
    else entry.samples[entry.next++ % this.keep] = ms;
  }

  count(op: string): number {
    return this.ops.get(op)?.count ?? 0;
  }

  total(): number {
    let sum = 0;
    for (const entry of this.ops.values()) sum += entry.count;
    return sum;
  }

  summary(): Record<string, Summary> {
    const out: Record<string, Summary> = {};
    for (const [op, entry] of [...this.ops].sort(([a], [b]) => a.localeCompare(b))) {
      const sorted = [...entry.samples].sort((a, b) => a - b);
      out[op] = {
        count: entry.count,
        errors: entry.errors,
        p50Ms: round(percentile(sorted, 0.5)),
        p90Ms: round(percentile(sorted, 0.9)),
        p99Ms: round(percentile(sorted, 0.99)),
        maxMs: round(sorted.at(-1) ?? 0),
        meanMs: round(sorted.reduce((a, b) => a + b, 0) / Math.max(sorted.length, 1)),
      };
    }
    return out;
  }
}

export function percentile(sorted: number[], q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
