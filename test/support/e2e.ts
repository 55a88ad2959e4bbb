import { chmodSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { installBridge, uninstallBridge } from '../../bin/install-bridge';
import { bodyOf, readMaildir, sendMail, stopAllSinks, waitFor } from '../../dev/mail';
import { stopAllSmtpd, type Smtpd } from '../../dev/smtpd/process';
import { testUser } from '../../dev/smtpd/user';
import { TEST_TOKEN } from './service';

/** What the end-to-end tests with real smtpd share. */

/**
 * A body that exercises what SMTP transport may change: lines that are only
 * a dot or start with one (dot-stuffing), "From " lines, tabs, trailing
 * spaces, UTF-8, and long lines. LF endings, because smtpd stores and
 * delivers LF; nodemailer sends CRLF on the wire.
 */
export function testBody(size: number, seed = 'harness'): Buffer {
  const samples = ['.', '..', '.leading dot', 'From the start of a line', '\tindented\t', 'trailing spaces   ', 'grüße, ça va? — ok', ''];
  const lines: string[] = [];
  let length = 0;
  for (let i = 0; length < size; i++) {
    const line = i % 5 === 4 ? samples[(i / 5) % samples.length | 0] : `${seed} line ${i} ${'x'.repeat((i * 37) % 900)}`;
    lines.push(line);
    length += Buffer.byteLength(line) + 1;
  }
  return Buffer.from(lines.join('\n') + '\n');
}

export function expectSameBytes(actual: Buffer, expected: Buffer, what: string): void {
  if (actual.equals(expected)) return;
  let at = 0;
  while (at < actual.length && at < expected.length && actual[at] === expected[at]) at++;
  const around = (b: Buffer) => JSON.stringify(b.subarray(Math.max(0, at - 40), at + 40).toString('latin1'));
  throw new Error(
    `${what}: ${actual.length} bytes delivered, ${expected.length} sent, first difference at byte ${at}\n` +
      `delivered: ${around(actual)}\nsent:      ${around(expected)}`,
  );
}

/** The body as the sink got it, with the CRLF line ends of the wire turned back into LF. */
export function relayedBody(data: Buffer): Buffer {
  return Buffer.from(bodyOf(data).toString('latin1').replace(/\r\n/g, '\n'), 'latin1');
}

export async function deliveredTo(smtpd: Smtpd, user: string, count = 1): Promise<Buffer[]> {
  return waitFor(
    `${count} message(s) in the maildir of ${user}@example.test`,
    () => {
      const messages = readMaildir(smtpd.maildir(user));
      return messages.length >= count ? messages : undefined;
    },
    30_000,
    () => smtpd.output(),
  );
}

/** `smtpctl show queue` lines for envelopes to rcpt. */
export async function queued(smtpd: Smtpd, rcpt: string): Promise<string[]> {
  const listing = await smtpd.smtpctl('show', 'queue');
  return listing.split('\n').filter((line) => line.split('|')[5] === rcpt);
}

/** Mail to 1 and then to 25 local recipients: each maildir gets its message, body byte-identical. */
export async function deliverToOneAndToMany(smtpd: Smtpd): Promise<void> {
  const single = testBody(20_000, 'single');
  const sent = await sendMail({ port: smtpd.port, from: 'sender@example.test', to: ['solo@example.test'], body: single });
  expect(sent.accepted).toEqual(['solo@example.test']);
  const [solo] = await deliveredTo(smtpd, 'solo');
  expectSameBytes(bodyOf(solo), single, 'solo');

  const many = Array.from({ length: 25 }, (_, i) => `r${String(i + 1).padStart(2, '0')}@example.test`);
  const body = testBody(50_000, 'many');
  const result = await sendMail({ port: smtpd.port, from: 'sender@example.test', to: many, body });
  expect(result.accepted).toEqual(many);
  expect(result.rejected).toEqual([]);
  for (const rcpt of many) {
    const messages = await deliveredTo(smtpd, rcpt.split('@')[0]);
    expect(messages).toHaveLength(1);
    expect(messages[0].toString('latin1')).toContain(`Delivered-To: ${rcpt}`);
    expectSameBytes(bodyOf(messages[0]), body, rcpt);
  }
}

/**
 * A suite of real-smtpd tests with the bridge installed as queue-NAME: the
 * install, a log folder its user can write, and the smtpd and sinks of each
 * test stopped after it. Answers the log folder (set once beforeAll ran).
 */
export function installedBridgeSuite(name: string, logPrefix: string): { logDir(): string } {
  let logDir = '';
  beforeAll(() => {
    testUser();
    installBridge({ name });
    logDir = mkdtempSync(path.join(tmpdir(), `${logPrefix}-`));
    chmodSync(logDir, 0o755);
  });
  afterEach(async () => {
    await stopAllSinks();
    await stopAllSmtpd();
  });
  afterAll(() => {
    uninstallBridge(name);
  });
  return { logDir: () => logDir };
}

/**
 * What smtpd passes the installed bridge in these suites: the test token,
 * the instance, its log (and counters, if named) and journal in `logDir`,
 * and its deadlines.
 */
export function bridgeEnv(o: { instance: string; logDir: string; log?: string; stats?: string; timeoutMs: number; retryBudgetMs: number }): Record<string, string> {
  return {
    QUEUE_TOKEN: TEST_TOKEN,
    QUEUE_REST_INSTANCE: o.instance,
    QUEUE_REST_LOG: path.join(o.logDir, o.log ?? 'bridge.log'),
    QUEUE_REST_STATE: path.join(o.logDir, 'state'),
    ...(o.stats && { QUEUE_REST_STATS_FILE: path.join(o.logDir, o.stats) }),
    QUEUE_REST_TIMEOUT: String(o.timeoutMs),
    QUEUE_REST_RETRY_BUDGET: String(o.retryBudgetMs),
    METADATA_SERVER_DETECTION: 'none',
  };
}

/**
 * smtpd's queue transforms, as `startSmtpd` options, each with how its
 * output looks on disk or in the service: gzip's magic, or the version byte
 * of smtpd's encrypted format.
 */
export const QUEUE_TRANSFORMS: [string, { compression?: boolean; encryption?: string }, (stored: Buffer) => boolean][] = [
  ['queue compression', { compression: true }, (stored) => stored.subarray(0, 2).equals(Buffer.from([0x1f, 0x8b]))],
  ['queue encryption', { encryption: '0123456789abcdef0123456789abcdef' }, (stored) => stored[0] === 0x01],
];
