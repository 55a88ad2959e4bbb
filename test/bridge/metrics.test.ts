import { mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { BridgeCounters } from '../../bridge/counters';
import { promText, writeAtomically } from '../../bridge/metrics';

const POOL = { leaseSure: true, draining: false, localEnvelopes: 12, takenOver: 3 };

function counters(): BridgeCounters {
  const c = new BridgeCounters('mx"1');
  c.smtpd.record('MESSAGE_COMMIT', 4);
  c.smtpd.record('MESSAGE_COMMIT', 6, false);
  c.http.record('messageCommit', 3);
  return c;
}

describe('the Prometheus text exposition of the bridge counters', () => {
  test('every sample line is NAME{LABELS} VALUE, and each metric has one HELP and one TYPE before its samples', () => {
    const text = promText(counters().snapshot(2), POOL);
    expect(text.endsWith('\n')).toBe(true);
    const lines = text.trimEnd().split('\n');
    const declared = new Map<string, string>();
    for (const line of lines) {
      const meta = /^# (HELP|TYPE) ([a-z_]+) (.+)$/.exec(line);
      if (meta) {
        if (meta[1] === 'TYPE') {
          expect(declared.has(meta[2])).toBe(false);
          expect(['counter', 'gauge']).toContain(meta[3]);
          declared.set(meta[2], meta[3]);
        }
        continue;
      }
      const sample = /^([a-z_]+)\{((?:[a-z_]+="(?:[^"\\]|\\.)*",?)*)\} (-?[0-9.e+]+)$/.exec(line);
      expect(sample).not.toBeNull();
      expect(declared.has(sample![1])).toBe(true);
      if (declared.get(sample![1]) === 'counter') expect(sample![1]).toMatch(/_total$/);
    }
  });

  test('counts, failures, latencies in seconds by quantile, the pool state, with the instance escaped in every label set', () => {
    const text = promText(counters().snapshot(2), POOL);
    expect(text).toContain('queue_rest_smtpd_calls_total{instance="mx\\"1",op="MESSAGE_COMMIT"} 2\n');
    expect(text).toContain('queue_rest_smtpd_call_failures_total{instance="mx\\"1",op="MESSAGE_COMMIT"} 1\n');
    expect(text).toContain('queue_rest_http_request_seconds{instance="mx\\"1",function="messageCommit",quantile="0.99"} 0.003\n');
    expect(text).toContain('queue_rest_pending_writes{instance="mx\\"1"} 2\n');
    expect(text).toContain('queue_rest_accepted_messages_total{instance="mx\\"1"} 2\n');
    expect(text).toContain('queue_rest_lease_sure{instance="mx\\"1"} 1\n');
    expect(text).toContain('queue_rest_draining{instance="mx\\"1"} 0\n');
    expect(text).toContain('queue_rest_taken_over_messages_total{instance="mx\\"1"} 3\n');
  });
});

describe('the .prom file', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(path.join(tmpdir(), 'metrics-test-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  test('is replaced whole by a rename, and leaves no temporary file behind', () => {
    const file = path.join(dir, 'queue-rest.prom');
    writeAtomically(file, 'a 1\n');
    writeAtomically(file, 'a 2\n');
    expect(readFileSync(file, 'utf8')).toBe('a 2\n');
    expect(readdirSync(dir)).toEqual(['queue-rest.prom']);
  });

  test('a link planted where the file goes is replaced, not followed', () => {
    const target = path.join(dir, 'elsewhere');
    writeFileSync(target, 'untouched');
    const file = path.join(dir, 'queue-rest.prom');
    symlinkSync(target, file);
    symlinkSync(target, `${file}.${process.pid}.tmp`);
    writeAtomically(file, 'a 1\n');
    expect(readFileSync(target, 'utf8')).toBe('untouched');
    expect(readFileSync(file, 'utf8')).toBe('a 1\n');
  });
});
