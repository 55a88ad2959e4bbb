import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort, openSmtpClient, startSink, waitFor, type Sink } from '../../dev/mail';
import { startSmtpd, type Smtpd } from '../../dev/smtpd/process';
import { bridgeEnv, installedBridgeSuite } from '../support/e2e';
import { startFaultFront } from '../support/fault-front';
import { startService } from '../support/service';
import { uniqueNamespace } from '../support/stores';

/**
 * Recovery after an outage, with more envelopes than smtpd's envelope cache
 * holds (1,024), so that smtpd must LOAD them from the queue: 3 messages of
 * 400 recipients wait for a relay that is down; smtpd restarts (its cache is
 * empty), the relay comes back while the queue service is unreachable for a
 * minute and every delivery comes due. Once the service is back, every
 * envelope must be delivered, exactly once, about as fast as smtpd's own fs
 * queue delivers the same backlog when its relay comes back.
 */
jest.setTimeout(600_000);

const BACKEND = 'resttest';
const MESSAGES = 3;
const RECIPIENTS = 400;
const OUTAGE_MS = 60_000;

const suite = installedBridgeSuite(BACKEND, 'queue-outage');

const rcpts = (m: number) => Array.from({ length: RECIPIENTS }, (_, i) => `m${m}r${i}@relay.test`);

async function queueBacklog(smtpd: Smtpd): Promise<void> {
  const client = openSmtpClient(smtpd.port);
  try {
    for (let m = 0; m < MESSAGES; m++) await client.send({ from: 'sender@example.test', to: rcpts(m), subject: `backlog ${m}`, body: `backlog ${m}\n` });
  } finally {
    client.close();
  }
  const total = MESSAGES * RECIPIENTS;
  // each failed first delivery updates its envelope
  const updated = () => smtpd.output().match(/queue_envelope_update\([0-9a-f]{16}\) -> 1/g)?.length ?? 0;
  await waitFor(`${total} envelopes to fail their first delivery`, () => (updated() >= total ? true : undefined), 120_000, () => smtpd.output().slice(-2000));
}

/** Recipients the sink got, each with how many times. */
function received(sink: Sink): Map<string, number> {
  const counts = new Map<string, number>();
  for (const m of sink.messages) for (const rcpt of m.to) counts.set(rcpt, (counts.get(rcpt) ?? 0) + 1);
  return counts;
}

/** Repeats `smtpctl schedule all` until every recipient arrived; answers the ms that took. */
async function drained(smtpd: Smtpd, sink: Sink, ms: number): Promise<number> {
  const started = Date.now();
  const total = MESSAGES * RECIPIENTS;
  await waitFor(
    `${total} recipients at the sink`,
    async () => {
      if (received(sink).size >= total) return true;
      await smtpd.smtpctl('schedule', 'all').catch(() => undefined);
      return undefined;
    },
    ms,
    () => `${received(sink).size} of ${total} arrived\n${smtpd.output().slice(-3000)}`,
  );
  return Date.now() - started;
}

function expectEachOnce(sink: Sink): void {
  const counts = received(sink);
  const twice = [...counts].filter(([, n]) => n > 1).map(([rcpt]) => rcpt);
  expect({ received: counts.size, twice }).toEqual({ received: MESSAGES * RECIPIENTS, twice: [] });
}

test('after a minute of outage with 1,200 deliveries due, every envelope is delivered exactly once, within a minute, as with the fs queue', async () => {
  // the yardstick: smtpd's own queue, the same backlog, its relay coming back
  const fsRelay = await freePort();
  const fs = await startSmtpd({ relayPort: fsRelay, trace: true });
  await queueBacklog(fs);
  const fsSink = await startSink({ port: fsRelay });
  const fsMs = await drained(fs, fsSink, 120_000);
  expectEachOnce(fsSink);
  await fs.stop();
  await fsSink.stop();

  const service = await startService({ namespace: uniqueNamespace('outage') });
  const front = await startFaultFront(service.port);
  try {
    const relayPort = await freePort();
    const env = bridgeEnv({ instance: 'mx-outage', logDir: suite.logDir(), stats: 'stats.json', timeoutMs: 2_000, retryBudgetMs: 5_000 });
    const start = async () => {
      const smtpd = await startSmtpd({ queue: `${BACKEND}:${front.url}`, relayPort, env, trace: true, keepSpool: true });
      await smtpd.waitForOutput(/queue_envelope_walk\(\) -> -1/, 120_000);
      return smtpd;
    };
    let smtpd = await start();
    await queueBacklog(smtpd);
    await smtpd.stop();
    smtpd = await start(); // an empty envelope cache: every delivery must LOAD

    // from the first delivery's read of a body (LOADs cost no request while the lease holds: the bridge's copy answers them)
    front.arm('messageFd', 'kill', OUTAGE_MS);
    const sink = await startSink({ port: relayPort });
    await smtpd.smtpctl('schedule', 'all');
    await waitFor('the outage to begin', () => (front.hit() ? true : undefined), 30_000);
    const during = setInterval(() => void smtpd.smtpctl('schedule', 'all').catch(() => undefined), 10_000);
    await front.healed();
    clearInterval(during);
    const healedAt = Date.now();
    const timeline: string[] = [];
    if (process.env.DEBUG_OUTAGE) {
      let calls: Record<string, number> = {};
      front.onRequest = (fn) => (calls[fn] = (calls[fn] ?? 0) + 1);
      const tick = setInterval(() => {
        timeline.push(`${((Date.now() - healedAt) / 1000).toFixed(0)}s: ${received(sink).size} arrived; requests ${JSON.stringify(calls)}`);
        calls = {};
      }, 1_000);
      tick.unref();
    }
    const restMs = await drained(smtpd, sink, 180_000);
    if (process.env.DEBUG_OUTAGE) {
      console.log(timeline.join('\n'));
      writeFileSync(path.join(suite.logDir(), 'smtpd.trace'), smtpd.output());
    }
    await sleep(3_000);
    expectEachOnce(sink);
    expect(smtpd.output()).not.toMatch(/queue-proc: (bad response|pipe closed|exiting)/);
    // eslint-disable-next-line no-console
    console.log(`after the outage: ${MESSAGES * RECIPIENTS} envelopes delivered in ${(restMs / 1000).toFixed(1)} s (queue=fs, relay back: ${(fsMs / 1000).toFixed(1)} s)`);
    expect(restMs).toBeLessThan(60_000);
  } finally {
    await front.stop();
    await service.stop();
  }
});
