import { readFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { bodyOf, freePort, sendMail, startSink, waitFor } from '../../dev/mail';
import { startSmtpd, type Smtpd } from '../../dev/smtpd/process';
import type { Envelope, QueueStore } from '../../lib/store';
import { bridgeEnv, deliveredTo, QUEUE_TRANSFORMS, deliverToOneAndToMany, expectSameBytes, relayedBody, testBody } from './e2e';

/**
 * Real smtpd with the installed bridge on a REST queue, wherever the queue
 * runs: the functions in this process (test/e2e/queue-rest.test.ts) or as
 * deployed, one process each behind a front (test/e2e/deployed-shape.test.ts).
 */
export interface RestQueue {
  /** The name the bridge is installed under (installedBridgeSuite). */
  backend: string;
  /** The base URL the bridge calls. */
  url(): string;
  /** The queue behind that URL, read directly. */
  store(): QueueStore;
  /** A folder the bridge's user can write its log, state and stats to. */
  logDir(): string;
}

export const INSTANCE = 'mx-e2e';

/** smtpd on the REST queue, once its queue is ready: smtpd answers SMTP before, and the walk's end says it is. */
export async function restSmtpd(queue: RestQueue, options: { relayPort: number; compression?: boolean; encryption?: string }): Promise<Smtpd> {
  const smtpd = await startSmtpd({
    ...options,
    queue: `${queue.backend}:${queue.url()}`,
    env: bridgeEnv({ instance: INSTANCE, logDir: queue.logDir(), stats: 'stats.json', timeoutMs: 2_000, retryBudgetMs: 3_000 }),
    trace: true,
    keepSpool: true,
  });
  await smtpd.waitForOutput(/queue_envelope_walk\(\) -> -1/, 30_000);
  return smtpd;
}

export async function queueContents(queue: RestQueue): Promise<Envelope[]> {
  const all: Envelope[] = [];
  let cursor: string | undefined;
  do {
    const page = await queue.store().envelopeWalk({ owner: INSTANCE, cursor });
    all.push(...page.items);
    cursor = page.cursor ?? undefined;
  } while (cursor);
  return all;
}

export async function queueEmpty(queue: RestQueue, smtpd: Smtpd): Promise<void> {
  await waitFor('the REST queue to be empty', async () => ((await queueContents(queue)).length === 0 ? true : undefined), 30_000, () => smtpd.output());
}

export function bridgeLog(queue: RestQueue): string {
  return readFileSync(path.join(queue.logDir(), 'bridge.log'), 'utf8');
}

/** What mail does through the REST queue: delivered byte-identical at every size, kept across restarts, bounced, stored opaque. */
export function restDeliveryTests(queue: RestQueue): void {
  test('mail to 1 and to 25 local recipients is delivered byte-identical through the REST queue, which is empty after', async () => {
    const smtpd = await restSmtpd(queue, { relayPort: await freePort() });
    await deliverToOneAndToMany(smtpd);
    await queueEmpty(queue, smtpd);
    expect(smtpd.output()).toMatch(/queue_message_commit\([0-9a-f]{8}\) -> 1/);
    expect(await smtpd.stop()).toBe(0);
    const stats = JSON.parse(readFileSync(path.join(queue.logDir(), 'stats.json'), 'utf8'));
    expect(stats.acceptedMessages).toBe(2);
    expect(stats.http.messageCommit.count).toBe(2);
    expect(stats.http.envelopeCreate).toBeUndefined();
  });

  test('every size from 3 MB to 5 MB, across the inline limit of 4 MiB, is delivered byte-identical', async () => {
    const smtpd = await restSmtpd(queue, { relayPort: await freePort() });
    const sizes = [3_000_000, 3_250_000, 3_500_000, 3_750_000, 4 * 1024 * 1024 - 1, 4 * 1024 * 1024 + 1, 4_250_000, 4_500_000, 4_750_000, 5_000_000];
    for (const [i, size] of sizes.entries()) {
      const body = testBody(size, `size ${size}`);
      const sent = await sendMail({ port: smtpd.port, from: 'sender@example.test', to: [`size${i}@example.test`], body });
      expect(sent.accepted).toEqual([`size${i}@example.test`]);
      const [message] = await deliveredTo(smtpd, `size${i}`);
      expectSameBytes(bodyOf(message), body, `a body of ${size} bytes`);
    }
    await queueEmpty(queue, smtpd);
  });

  test('a 30 MiB message goes through', async () => {
    const smtpd = await restSmtpd(queue, { relayPort: await freePort() });
    const body = testBody(30 * 1024 * 1024, 'big');
    await sendMail({ port: smtpd.port, from: 'sender@example.test', to: ['big@example.test'], body });
    const [message] = await deliveredTo(smtpd, 'big');
    expectSameBytes(bodyOf(message), body, 'big');
    await queueEmpty(queue, smtpd);
  });

  test('mail for a relay that is down stays queued and updated, is found by the walk after a restart, and is delivered exactly once', async () => {
    const relayPort = await freePort();
    const body = testBody(5_000, 'relay');
    const first = await restSmtpd(queue, { relayPort });
    await sendMail({ port: first.port, from: 'sender@example.test', to: ['later@relay.test'], body });
    await first.waitForOutput(/to=<later@relay\.test>.*result="TempFail"/, 30_000);
    await first.waitForOutput(/queue_envelope_update\([0-9a-f]{16}\) -> 1/, 10_000);
    const [queued] = await queueContents(queue);
    expect(queued.data.toString()).toMatch(/^errorline: .*Network error on destination MXs/m);
    expect(queued.data.toString()).toMatch(/^retry: 1$/m);
    expect(await first.stop()).toBe(0);

    const second = await restSmtpd(queue, { relayPort });
    expect(second.output()).toContain(`queue_envelope_walk() -> ${queued.data.length} (${queued.evpid})`);
    const sink = await startSink({ port: relayPort });
    await second.smtpctl('schedule', 'all');
    await waitFor('the message at the sink', () => (sink.messages.length ? true : undefined), 30_000, () => second.output());
    await queueEmpty(queue, second);
    await second.smtpctl('schedule', 'all');
    await sleep(1_000);
    expect(sink.messages).toHaveLength(1);
    expectSameBytes(relayedBody(sink.messages[0].data), body, 'relayed');
  });

  describe.each(QUEUE_TRANSFORMS)('with %s', (_name, queueOptions, looksTransformed) => {
    test('the service stores only opaque bytes and the mail goes through', async () => {
      const sink = await startSink();
      const smtpd = await restSmtpd(queue, { relayPort: sink.port, ...queueOptions });
      await smtpd.smtpctl('pause', 'mta');
      const body = testBody(100_000, 'opaque');
      await sendMail({ port: smtpd.port, from: 'sender@example.test', to: ['local@example.test', 'held@relay.test'], body });
      const [local] = await deliveredTo(smtpd, 'local');
      expectSameBytes(bodyOf(local), body, 'local');

      const [held] = await waitFor('the held envelope in the service', async () => {
        const contents = await queueContents(queue);
        return contents.length === 1 ? contents : undefined;
      });
      expect(looksTransformed(held.data)).toBe(true);
      expect(held.data.includes(Buffer.from('held@relay.test'))).toBe(false);
      const stored = await queue.store().messageRead(held.evpid.slice(0, 8));
      expect(looksTransformed(stored.data)).toBe(true);
      expect(stored.data.includes(Buffer.from('opaque line'))).toBe(false);

      await smtpd.smtpctl('resume', 'mta');
      const [relayed] = await waitFor('the message at the sink', () => (sink.messages.length ? sink.messages : undefined), 30_000, () => smtpd.output());
      expectSameBytes(relayedBody(relayed.data), body, 'relayed');
      await queueEmpty(queue, smtpd);
    });
  });

  test('a bounce is created on the committed message and delivered to the sender', async () => {
    const sink = await startSink({ rejectRecipient: (rcpt) => rcpt.startsWith('nobody@') });
    const smtpd = await restSmtpd(queue, { relayPort: sink.port });
    await sendMail({ port: smtpd.port, from: 'sender@example.test', to: ['nobody@relay.test', 'somebody@relay.test'], subject: 'will bounce', body: 'hello\n' });
    const [bounce] = await deliveredTo(smtpd, 'sender');
    expect(bounce.toString()).toMatch(/^nobody@relay\.test: 550 no such user here/m);
    const msgid = /queue_message_commit\(([0-9a-f]{8})\) -> 1/.exec(smtpd.output())![1];
    const afterCommit = smtpd.output().slice(smtpd.output().indexOf(`queue_message_commit(${msgid})`));
    expect(afterCommit).toMatch(new RegExp(`queue_envelope_create\\(${msgid}[0-9a-f]{8}, \\d+\\) -> 1`));
    expect(sink.messages.map((m) => m.to)).toEqual([['somebody@relay.test']]);
    await queueEmpty(queue, smtpd);
  });
}
