import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startEmulator, type Emulator } from '../../dev/emulator';
import { freePort, readMaildir, sendMail, SmtpError, startSink, stopAllSinks, waitFor, type Sink } from '../../dev/mail';
import { startSmtpd, stopAllSmtpd, type Smtpd } from '../../dev/smtpd/process';
import { smtpdPids } from '../../dev/smtpd/proc';
import type { Queue } from '../../lib/queue';
import { DEFAULT_LIMITS } from '../../lib/store';
import { bridgeEnv, installedBridgeSuite } from '../support/e2e';
import { startFaultFront, type FrontFault } from '../support/fault-front';
import { startService } from '../support/service';
import { datastoreQueue, uniqueNamespace } from '../support/stores';

/**
 * The fault matrix: each of smtpd's queue calls, each fault a service or a
 * network can have, with real smtpd, the installed bridge and the functions.
 * A fault starts with the first request of the call it targets and lasts
 * longer than the bridge's timeout and retry budget, so the bridge must give
 * smtpd an answer while the service still misbehaves. Each cell asserts,
 * with smtpd never restarted (except where the fault kills its bridge):
 * smtpd stayed up, every message answered 250 arrived exactly once after the
 * fault healed, every other one got a 4xx and never arrived, and smtpd's
 * queue and the service agree (both empty) at the end.
 */
jest.setTimeout(360_000);

const BACKEND = 'resttest';
const TIMEOUT_MS = 1000;
const BUDGET_MS = 2000;
const FAULT_MS = 4000;
const MESSAGES = 3;

type Call = 'COMMIT' | 'COMMIT_PARTS' | 'LOAD' | 'UPDATE' | 'DELETE' | 'FD_R' | 'WALK' | 'BOUNCE';
type Fault = FrontFault | 'storage-hang' | 'emulator-restart' | 'bridge-kill';

/**
 * The function each smtpd call reaches the service with. LOAD costs no
 * request while the lease holds (the bridge's copy answers it), so its row's
 * fault starts with the first request of the deliveries that LOAD: the read
 * of a body.
 */
const FUNCTION: Record<Call, string> = {
  COMMIT: 'messageCommit',
  COMMIT_PARTS: 'messageWrite',
  LOAD: 'messageFd',
  UPDATE: 'envelopeUpdate',
  DELETE: 'envelopeDelete',
  FD_R: 'messageFd',
  WALK: 'envelopeWalk',
  BOUNCE: 'envelopeCreate',
};

const CALLS = Object.keys(FUNCTION) as Call[];
const FAULTS: Fault[] = ['pause', 'kill', 'reset', 'status500', 'status503', 'storage-hang', 'emulator-restart', 'bridge-kill'];

interface Outcome {
  call: Call;
  fault: Fault;
  /** Envelopes: a recipient of a message, or for BOUNCE the bounce of a message. */
  sent: number;
  accepted: number;
  refused: number;
  /** Connection lost before smtpd answered the end of DATA (only when the bridge is killed). */
  unanswered: number;
  delivered: number;
  /** Envelopes delivered again although smtpd had been told their delete succeeded: the queue broke its promise. */
  duplicates: number;
  /**
   * Envelopes delivered again that smtpd never deleted: it died (with its
   * killed bridge) while their delivery was under way, before it heard the
   * relay's answer. SMTP's own at-least-once window, the same with the fs
   * queue; only where the bridge is killed.
   */
  redelivered: number;
  stranded: number;
  /** Refused with a 4xx, yet delivered: a rollback that came back. */
  resurrected: number;
  smtpdStayedUp: boolean;
  /** A message sent after the fault was accepted (COMMIT and COMMIT_PARTS). */
  recovered: boolean;
  queuesAgree: boolean;
  /** From the end of the fault to the last delivery. */
  recoveryMs: number;
}

const outcomes: Outcome[] = [];
const suite = installedBridgeSuite(BACKEND, 'queue-faults');

afterAll(() => {
  if (outcomes.length === 0) return;
  const table = matrixTable(outcomes);
  // eslint-disable-next-line no-console
  console.log(`fault matrix (sent/delivered/duplicates/stranded):\n${table}`);
  writeFileSync(path.join(suite.logDir(), 'matrix.json'), JSON.stringify(outcomes, null, 2));
  if (process.env.FAULT_MATRIX_DOC) writeFileSync(process.env.FAULT_MATRIX_DOC, table + '\n');
});

/** The queue service a row of the matrix runs on; the emulator-restart row needs the legacy emulator, which keeps its data on disk. */
async function serviceFor(fault: Fault) {
  let emulator: Emulator | undefined;
  let dataDir: string | undefined;
  let store: Queue | undefined;
  if (fault === 'emulator-restart') {
    dataDir = mkdtempSync(path.join(tmpdir(), 'queue-emulator-'));
    emulator = await startEmulator({ kind: 'datastore', dataDir });
    store = datastoreQueue({ apiEndpoint: emulator.host, projectId: 'queue-test', namespace: uniqueNamespace('faults'), limits: DEFAULT_LIMITS, timeoutMs: 2_000 });
  }
  const service = await startService({ store, namespace: uniqueNamespace('faults') });
  const front = await startFaultFront(service.port);
  return {
    service,
    front,
    emulatorOutput: () => emulator?.output() ?? '',
    async restartEmulator(): Promise<void> {
      const port = Number(emulator!.host.split(':')[1]);
      await emulator!.stop();
      emulator = await startEmulator({ kind: 'datastore', dataDir, port });
    },
    async stop() {
      await front.stop();
      await service.stop();
      await emulator?.stop();
    },
  };
}

function restSmtpd(name: string, url: string, relayPort: number, extra: Record<string, string> = {}): Promise<Smtpd> {
  return startSmtpd({
    queue: `${BACKEND}:${url}`,
    relayPort,
    keepSpool: true,
    trace: true,
    env: { ...bridgeEnv({ instance: name, logDir: suite.logDir(), log: `${name}.log`, timeoutMs: TIMEOUT_MS, retryBudgetMs: BUDGET_MS }), ...extra },
  });
}

async function ready(smtpd: Smtpd): Promise<Smtpd> {
  await smtpd.waitForOutput(/queue_envelope_walk\(\) -> -1/, 60_000);
  return smtpd;
}

const FATAL = /queue-proc: (bad response|pipe closed|exiting)|Connection reset by peer/;

/** The pid of the bridge the running smtpd started. */
function bridgePid(): number | undefined {
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(`/queue-${BACKEND}/queue-rest.js`)) return Number(name);
    } catch {
      // gone
    }
  }
  return undefined;
}

async function runCell(call: Call, fault: Fault): Promise<Outcome> {
  const row = await serviceFor(fault);
  const { front, service } = row;
  const name = `mx-${call.toLowerCase().replace('_', '-')}-${fault}`;
  const tag = `${call}/${fault}`;
  const relayPort = await freePort();
  const bodySize = call === 'COMMIT_PARTS' ? 300_000 : 2_000;
  const extra: Record<string, string> = call === 'COMMIT_PARTS' ? { QUEUE_REST_INLINE_MAX: '65536' } : {};
  let smtpd: Smtpd | undefined;
  let sink: Sink | undefined;
  let armed: Armed | undefined;
  try {
    const fn = FUNCTION[call];
    const arm = () => {
      armed = armFault(fault, fn, row);
    };
    let dead = false;
    /** The trace of every smtpd this cell ran, the one running last. */
    const earlierTraces: string[] = [];
    const start = async (): Promise<void> => {
      if (smtpd) earlierTraces.push(smtpd.output());
      smtpd = await restSmtpd(name, front.url, relayPort, extra);
      dead = false;
      void smtpd.exited.then(() => (dead = true));
      try {
        await ready(smtpd);
      } catch (err) {
        // the bridge killed in the middle of the walk takes smtpd with it: the next start is the test
        if (!(fault === 'bridge-kill' && dead)) throw err;
      }
    };
    const restart = async () => {
      await smtpd!.stop();
      await start();
    };
    /** smtpd's trace shows `re` `count` times, or smtpd is gone (its bridge was killed). */
    // LOAD's 1,110 deliveries to a relay that is down: the first try of each can take minutes on a busy machine
    const traced = (re: RegExp, count: number) => Promise.race([waitForTrace(smtpd!, re, count, count > 100 ? 180_000 : 60_000), smtpd!.exited]);

    // what each call needs smtpd to do, with the fault armed just before it
    const rejectBounces = (rcpt: string) => rcpt.startsWith('bounce');
    const subjects = Array.from({ length: MESSAGES }, (_, i) => `${tag} ${i}`);
    // LOAD: more envelopes than smtpd's envelope cache holds (1,024), or smtpd never loads one
    const perMessage = call === 'LOAD' ? 370 : 1;
    const recipients = (i: number) => Array.from({ length: perMessage }, (_, j) => (call === 'BOUNCE' ? `bounce${i}@relay.test` : `m${i}r${j}@relay.test`));
    const relayUpFirst = ['COMMIT', 'COMMIT_PARTS', 'DELETE', 'BOUNCE'].includes(call);
    if (relayUpFirst) sink = await startSink({ port: relayPort, rejectRecipient: call === 'BOUNCE' ? rejectBounces : undefined });
    await start();
    if (['COMMIT', 'COMMIT_PARTS', 'DELETE', 'BOUNCE', 'UPDATE'].includes(call)) arm();
    const answers = await sendAll(smtpd!, subjects, recipients, bodySize);
    if (call === 'UPDATE') await traced(/queue_envelope_update\([0-9a-f]{16}\) -> \d/, MESSAGES);
    if (['LOAD', 'FD_R'].includes(call)) {
      await traced(/queue_envelope_update\([0-9a-f]{16}\) -> 1/, MESSAGES * perMessage);
      await restart();
      arm();
      sink = await startSink({ port: relayPort });
      // smtpctl loses smtpd when the first LOAD kills the bridge
      await smtpd!.smtpctl('schedule', 'all').catch((err: unknown) => {
        if (fault !== 'bridge-kill') throw err;
      });
    }
    if (call === 'WALK') {
      await traced(/queue_envelope_update\([0-9a-f]{16}\) -> 1/, MESSAGES * perMessage);
      await smtpd!.stop();
      arm();
      await start();
      sink = await startSink({ port: relayPort });
    }
    sink ??= await startSink({ port: relayPort });

    // the fault runs its course: the bridge answered smtpd in time, whatever the service did
    await waitFor(`${tag}: the fault to hit`, () => (armed!.hit() ? true : undefined), 60_000, () => smtpd?.output().slice(-3000) ?? '');
    await armed!.healed;
    // smtpd exits with its queue backend (upstream: it never restarts one), once it notices
    if (fault === 'bridge-kill') await Promise.race([smtpd!.exited, sleep(10_000)]);
    const healedAt = Date.now();
    let smtpdStayedUp = !dead && smtpdPids().length > 0 && !FATAL.test(smtpd!.output());
    if (!smtpdStayedUp && fault === 'bridge-kill') {
      // what matters is what the restart finds
      await smtpd!.stop();
      await start();
      smtpdStayedUp = true;
    }
    // once the fault is over, mail is accepted again
    let recovered = true;
    if (call === 'COMMIT' || call === 'COMMIT_PARTS') {
      // as a sender would: again a few seconds later while it gets a 4xx (the storage may still be coming back)
      recovered = false;
      for (let attempt = 0; attempt < 5 && !recovered; attempt++) {
        if (attempt > 0) await sleep(2_000);
        const after = await sendAll(smtpd!, [`${tag} after ${attempt}`], () => ['after@relay.test'], bodySize);
        recovered = after[0].answer === 'accepted';
        answers.push(...after);
        subjects.push(`${tag} after ${attempt}`);
      }
    }

    // one delivery per envelope: a recipient of a message, or the bounce of a message to its sender
    const keys = (answer: Answer['answer']) =>
      answers.filter((a) => a.answer === answer).flatMap((a) => (call === 'BOUNCE' ? [a.subject] : a.recipients.map((r) => `${a.subject}|${r}`)));
    const accepted = keys('accepted');
    const refused = keys('refused');
    const unanswered = keys('unanswered');
    const arrivals = () => (call === 'BOUNCE' ? bounceArrivals(smtpd!, subjects) : sinkArrivals(sink!, subjects));
    const deadline = Date.now() + 60_000;
    let lastArrival = healedAt;
    let seen = 0;
    while (Date.now() < deadline) {
      const counts = arrivals();
      const total = [...counts.values()].reduce((a, b) => a + b, 0);
      if (total > seen) {
        seen = total;
        lastArrival = Date.now();
      }
      if (accepted.every((k) => counts.has(k)) && (await queueEmpty(smtpd!)) && (await storeEmpty(service.store, name))) break;
      await smtpd!.smtpctl('schedule', 'all').catch(() => undefined);
      await sleep(500);
    }
    await sleep(2_000); // anything late would arrive now
    const counts = arrivals();
    if (process.env.DEBUG_CELL) {
      writeFileSync(path.join(suite.logDir(), `${name}.trace`), [...earlierTraces, smtpd!.output()].join('\n'));
      writeFileSync(path.join(suite.logDir(), `${name}.sink`), (sink?.messages ?? []).map((m) => `${m.to.join(',')}\n${m.data}`).join('\n=====\n'));
    }
    const again =
      fault !== 'bridge-kill'
        ? new Map<string, number>()
        : call === 'BOUNCE'
          ? bouncedAgainAfterCrash(counts, subjects, earlierTraces.join('\n'))
          : againAfterCrash(sink!, subjects, earlierTraces.join('\n'));
    smtpdStayedUp &&= smtpdPids().length > 0 && !FATAL.test(smtpd!.output());
    const outcome: Outcome = {
      call,
      fault,
      sent: accepted.length + refused.length + unanswered.length,
      accepted: accepted.length,
      refused: refused.length,
      unanswered: unanswered.length,
      delivered: accepted.filter((k) => counts.has(k)).length,
      duplicates: [...counts].reduce((sum, [key, n]) => sum + Math.max(0, n - 1 - (again.get(key) ?? 0)), 0),
      redelivered: [...again.values()].reduce((a, b) => a + b, 0),
      stranded: accepted.filter((k) => !counts.has(k)).length,
      resurrected: refused.filter((k) => counts.has(k)).length,
      smtpdStayedUp,
      recovered,
      queuesAgree: (await queueEmpty(smtpd!)) && (await storeEmpty(service.store, name)),
      recoveryMs: Math.max(0, lastArrival - healedAt),
    };
    outcomes.push(outcome);
    if (process.env.DEBUG_EMULATOR && !outcome.queuesAgree) console.log(row.emulatorOutput());
    return outcome;
  } finally {
    armed?.release();
    await stopAllSinks();
    await stopAllSmtpd();
    await row.stop();
  }
}

interface Armed {
  hit(): boolean;
  /** Resolves when the fault has run its course. */
  healed: Promise<void>;
  release(): void;
}

/** The store method behind each function. */
const STORE_METHOD: Record<string, string> = { messageFd: 'messageRead' };

/** Arms `fault` to start with the first request of `fn` and to last FAULT_MS (a kill or a restart lasts as long as it takes). */
function armFault(fault: Fault, fn: string, row: Awaited<ReturnType<typeof serviceFor>>): Armed {
  const { front, service } = row;
  if (fault !== 'storage-hang' && fault !== 'emulator-restart' && fault !== 'bridge-kill') {
    front.arm(fn, fault, FAULT_MS);
    return { hit: () => front.hit(), healed: front.healed(), release: () => undefined };
  }
  let fired = false;
  let heal!: () => void;
  const healed = new Promise<void>((resolve) => (heal = resolve));
  if (fault === 'storage-hang') {
    // storage calls of fn hang, and complete late, when the fault ends
    const store = service.store as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
    const method = STORE_METHOD[fn] ?? fn;
    const original = store[method];
    const held: (() => void)[] = [];
    const release = () => {
      store[method] = original;
      for (const go of held.splice(0)) go();
      heal();
    };
    store[method] = async function (this: unknown, ...args: unknown[]) {
      if (!fired) {
        fired = true;
        setTimeout(release, FAULT_MS);
      }
      await new Promise<void>((resolve) => held.push(resolve));
      return original.apply(this, args);
    };
    return { hit: () => fired, healed, release };
  }
  front.onRequest = (seen) => {
    if (seen !== fn || fired) return;
    fired = true;
    if (fault === 'bridge-kill') {
      const pid = bridgePid();
      if (pid) process.kill(pid, 'SIGKILL');
      heal();
    } else {
      void row.restartEmulator().then(heal, heal);
    }
  };
  return { hit: () => fired, healed, release: heal };
}

interface Answer {
  subject: string;
  recipients: string[];
  answer: 'accepted' | 'refused' | 'unanswered';
}

async function sendAll(smtpd: Smtpd, subjects: string[], recipients: (i: number) => string[], bodySize: number): Promise<Answer[]> {
  const answers: Answer[] = [];
  for (const [i, subject] of subjects.entries()) {
    const body = `${subject}\n${'x'.repeat(76)}\n`.repeat(Math.ceil(bodySize / 80));
    const to = recipients(i);
    try {
      await sendMail({ port: smtpd.port, from: 'sender@example.test', to, subject, body });
      answers.push({ subject, recipients: to, answer: 'accepted' });
    } catch (err) {
      const code = err instanceof SmtpError ? err.responseCode : undefined;
      answers.push({ subject, recipients: to, answer: code !== undefined && code >= 400 && code < 500 ? 'refused' : 'unanswered' });
    }
  }
  return answers;
}

async function waitForTrace(smtpd: Smtpd, re: RegExp, count: number, ms: number): Promise<void> {
  const global = new RegExp(re.source, 'g');
  await waitFor(`${count} × ${re}`, () => ((smtpd.output().match(global)?.length ?? 0) >= count ? true : undefined), ms, () => smtpd.output().slice(-3000));
}

/** Arrivals at the sink by subject and recipient. */
function sinkArrivals(sink: Sink, subjects: string[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const m of sink.messages) {
    const subject = /^Subject: (.*)$/m.exec(m.data.toString())?.[1].trim();
    if (!subject || !subjects.includes(subject)) continue;
    for (const rcpt of m.to) counts.set(`${subject}|${rcpt}`, (counts.get(`${subject}|${rcpt}`) ?? 0) + 1);
  }
  return counts;
}

/**
 * Deliveries made again of envelopes the smtpd that died never deleted, by
 * subject and recipient: those it was delivering when its bridge was
 * killed. The msgid is in the Received header smtpd adds ("with ESMTP id
 * 1a2b3c4d"), and the trace of the smtpd that died (`before`) shows each
 * delete it was answered for.
 */
function againAfterCrash(sink: Sink, subjects: string[], before: string): Map<string, number> {
  const deleted = new Set([...before.matchAll(/queue_envelope_delete\(([0-9a-f]{8})[0-9a-f]{8}\) -> 1/g)].map((m) => m[1]));
  const seen = new Map<string, number>();
  const again = new Map<string, number>();
  for (const m of sink.messages) {
    const text = m.data.toString();
    const subject = /^Subject: (.*)$/m.exec(text)?.[1].trim();
    const msgid = /with ESMTP id ([0-9a-f]{8})/.exec(text)?.[1];
    if (!subject || !subjects.includes(subject) || !msgid) continue;
    for (const rcpt of m.to) {
      const key = `${subject}|${rcpt}`;
      const n = (seen.get(key) ?? 0) + 1;
      seen.set(key, n);
      if (n > 1 && !deleted.has(msgid)) again.set(key, (again.get(key) ?? 0) + 1);
    }
  }
  return again;
}

/**
 * Bounces made again for messages whose bounced envelope the smtpd that died
 * never deleted: smtpd creates the bounce, then deletes the envelope that
 * bounced (queue.c), and its bridge was killed in between. The next smtpd
 * tries that envelope again and bounces it again, as it would over its own
 * fs queue after a crash. The dead smtpd's trace (`before`) has its commits,
 * in the order the subjects were sent, and each delete it was answered for.
 */
function bouncedAgainAfterCrash(counts: Map<string, number>, subjects: string[], before: string): Map<string, number> {
  const committed = [...before.matchAll(/queue_message_commit\(([0-9a-f]{8})\) -> 1/g)].map((m) => m[1]);
  const deleted = new Set([...before.matchAll(/queue_envelope_delete\(([0-9a-f]{8})[0-9a-f]{8}\) -> 1/g)].map((m) => m[1]));
  const again = new Map<string, number>();
  subjects.forEach((subject, i) => {
    const n = counts.get(subject) ?? 0;
    if (n > 1 && committed[i] !== undefined && !deleted.has(committed[i])) again.set(subject, n - 1);
  });
  return again;
}

/** Bounces land in the sender's maildir, quoting the subject of the message they report. */
function bounceArrivals(smtpd: Smtpd, subjects: string[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const m of readMaildir(smtpd.maildir('sender'))) {
    const text = m.toString();
    const subject = subjects.find((s) => text.includes(`Subject: ${s}\n`) || text.includes(`Subject: ${s}\r\n`));
    if (subject) counts.set(subject, (counts.get(subject) ?? 0) + 1);
  }
  return counts;
}

/** smtpd's own view of its queue. */
async function queueEmpty(smtpd: Smtpd): Promise<boolean> {
  return (await smtpd.smtpctl('show', 'queue')).trim() === '';
}

async function storeEmpty(store: { envelopeWalk: Queue['envelopeWalk'] }, owner: string): Promise<boolean> {
  try {
    const page = await store.envelopeWalk({ owner, limit: 1 });
    return page.items.length === 0;
  } catch {
    return false; // not known yet: the storage is restarting
  }
}

function matrixTable(rows: Outcome[]): string {
  const faults = [...new Set(rows.map((r) => r.fault))];
  const calls = [...new Set(rows.map((r) => r.call))];
  const cell = (call: Call, fault: Fault) => {
    const o = rows.find((r) => r.call === call && r.fault === fault);
    if (!o) return '';
    const bad = o.duplicates + o.stranded + o.resurrected > 0 || !o.smtpdStayedUp || !o.recovered || !o.queuesAgree;
    const notes = [o.refused ? `${o.refused}×4xx` : '', o.unanswered ? `${o.unanswered} cut` : '', o.redelivered ? `${o.redelivered} in flight, again` : ''].filter(Boolean);
    return `${o.sent}/${o.delivered}/${o.duplicates}/${o.stranded}${notes.map((n) => ` (${n})`).join('')}${bad ? ' FAIL' : ''} ${(o.recoveryMs / 1000).toFixed(1)}s`;
  };
  return [
    `| call \\ fault | ${faults.join(' | ')} |`,
    `|---|${faults.map(() => '---').join('|')}|`,
    ...calls.map((call) => `| ${call} | ${faults.map((f) => cell(call, f)).join(' | ')} |`),
  ].join('\n');
}

describe.each(FAULTS)('fault: %s', (fault) => {
  test.each(CALLS)(`%s: smtpd stays up, accepted mail arrives exactly once, refused mail never, and the queues agree`, async (call) => {
    const o = await runCell(call, fault);
    expect(o).toMatchObject({ duplicates: 0, stranded: 0, resurrected: 0, smtpdStayedUp: true, recovered: true, queuesAgree: true });
  });
});
