import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { deliveredTo, deliverToOneAndToMany, expectSameBytes, QUEUE_TRANSFORMS, queued, relayedBody, testBody } from '../support/e2e';
import { bodyOf, freePort, sendMail, SmtpError, startSink, stopAllSinks, waitFor } from '../../dev/mail';
import { startSmtpd, stopAllSmtpd } from '../../dev/smtpd/process';
import { testUser } from '../../dev/smtpd/user';

/**
 * Proves the e2e harness against smtpd's own fs queue: the same scenarios
 * later run against the REST queue backend.
 */

jest.setTimeout(90_000);

beforeAll(() => {
  testUser();
});

afterEach(async () => {
  await stopAllSinks();
  await stopAllSmtpd();
});

/** The message files of the fs queue: /var/spool/smtpd/queue/<bucket>/<msgid>/message. */
function spooledMessages(): Buffer[] {
  const root = '/var/spool/smtpd/queue';
  const files: Buffer[] = [];
  for (const bucket of readdirSync(root)) {
    for (const msgid of readdirSync(path.join(root, bucket))) {
      files.push(readFileSync(path.join(root, bucket, msgid, 'message')));
    }
  }
  return files;
}

test('a message to 1 and to 25 local recipients lands in each maildir with the body byte-identical', async () => {
  await deliverToOneAndToMany(await startSmtpd({ relayPort: await freePort() }));
});

test('a recipient outside example.test and relay.test is refused with 550', async () => {
  const smtpd = await startSmtpd({ relayPort: await freePort() });
  const result = await sendMail({ port: smtpd.port, from: 'sender@example.test', to: ['someone@elsewhere.test'], body: 'no\n' });
  expect(result.accepted).toEqual([]);
  expect(result.rejected).toEqual(['someone@elsewhere.test']);
  expect(result.response).toMatch(/^550 /);
});

test('sendMail rejects with the reply code when a recipient gets a 4xx, and reports 5xx recipients as rejected', async () => {
  const sink = await startSink({ rejectRecipient: (rcpt) => (rcpt.startsWith('busy@') ? 451 : rcpt.startsWith('nobody@')) });
  const send = (to: string[]) => sendMail({ port: sink.port, from: 'sender@example.test', to, body: 'hello\n' });

  await expect(send(['ok@relay.test', 'nobody@relay.test'])).resolves.toMatchObject({ accepted: ['ok@relay.test'], rejected: ['nobody@relay.test'] });
  await expect(send(['busy@relay.test'])).rejects.toMatchObject({ name: 'SmtpError', responseCode: 451 });
  const partly = await send(['ok@relay.test', 'busy@relay.test']).catch((error: unknown) => error);
  expect(partly).toBeInstanceOf(SmtpError);
  expect(partly).toMatchObject({ responseCode: 451, accepted: ['ok@relay.test'], rejected: ['busy@relay.test'] });
});

test('a 30 MiB message is delivered intact', async () => {
  const smtpd = await startSmtpd({ relayPort: await freePort() });
  const body = testBody(30 * 1024 * 1024, 'big');
  await sendMail({ port: smtpd.port, from: 'sender@example.test', to: ['big@example.test'], body });
  const [message] = await deliveredTo(smtpd, 'big');
  expectSameBytes(bodyOf(message), body, 'big');
});

test('mail for a relay that is down stays queued across an smtpd restart and reaches the relay exactly once when it comes up', async () => {
  const relayPort = await freePort();
  const body = testBody(5_000, 'relay');
  const first = await startSmtpd({ relayPort });
  await sendMail({ port: first.port, from: 'sender@example.test', to: ['later@relay.test'], body });
  // smtpd gives up on the relay for this round ~11 s after the refused connection and reschedules it 400 s later
  await first.waitForOutput(/to=<later@relay\.test>.*result="TempFail"/, 30_000);
  const [line] = await queued(first, 'later@relay.test');
  expect(line).toMatch(/Network error on destination MXs/);
  expect(await first.stop()).toBe(0);

  const second = await startSmtpd({ relayPort, keepSpool: true });
  expect(await queued(second, 'later@relay.test')).toHaveLength(1);
  const sink = await startSink({ port: relayPort });
  // the next try is due 400 s after the first; schedule makes it now
  await second.smtpctl('schedule', 'all');
  await waitFor('the message at the sink', () => (sink.messages.length ? true : undefined), 30_000, () => second.output());
  await waitFor('the queue to be empty', async () => ((await queued(second, 'later@relay.test')).length ? undefined : true), 10_000, () => second.output());
  await second.smtpctl('schedule', 'all');
  await sleep(1_000);
  expect(sink.messages).toHaveLength(1);
  expect(sink.messages[0].to).toEqual(['later@relay.test']);
  expect(sink.messages[0].from).toBe('sender@example.test');
  expectSameBytes(relayedBody(sink.messages[0].data), body, 'relayed');
});

test('a recipient the relay refuses with 550 bounces to the local sender', async () => {
  const sink = await startSink({ rejectRecipient: (rcpt) => rcpt.startsWith('nobody@') });
  const smtpd = await startSmtpd({ relayPort: sink.port });
  await sendMail({ port: smtpd.port, from: 'sender@example.test', to: ['nobody@relay.test', 'somebody@relay.test'], subject: 'will bounce', body: 'hello\n' });

  const [bounce] = await deliveredTo(smtpd, 'sender');
  const text = bounce.toString('utf8');
  expect(text).toMatch(/^From: Mailer Daemon <MAILER-DAEMON@/m);
  expect(text).toMatch(/^Subject: Delivery status notification: failed$/m);
  expect(text).toMatch(/^nobody@relay\.test: 550 no such user here/m);
  expect(text).toMatch(/^Final-Recipient: rfc822; nobody@relay\.test$/m);
  expect(text).not.toContain('somebody@relay.test:');
  expect(sink.messages.map((m) => m.to)).toEqual([['somebody@relay.test']]);
});

describe.each(QUEUE_TRANSFORMS)('with %s', (_name, queueOptions, looksTransformed) => {
  test('mail is spooled transformed and still delivered locally and relayed intact', async () => {
    const sink = await startSink();
    const smtpd = await startSmtpd({ relayPort: sink.port, ...queueOptions });
    // holds relay mail in the queue, where the test can look at it, without a failed attempt
    await smtpd.smtpctl('pause', 'mta');
    const body = testBody(100_000, 'transformed');
    await sendMail({ port: smtpd.port, from: 'sender@example.test', to: ['local@example.test', 'held@relay.test'], body });

    const [local] = await deliveredTo(smtpd, 'local');
    expectSameBytes(bodyOf(local), body, 'local');

    const spooled = spooledMessages();
    expect(spooled).toHaveLength(1);
    expect(looksTransformed(spooled[0])).toBe(true);
    expect(spooled[0].includes(Buffer.from('transformed line'))).toBe(false);
    expect(sink.messages).toHaveLength(0);

    await smtpd.smtpctl('resume', 'mta');
    const [relayed] = await waitFor('the message at the sink', () => (sink.messages.length ? sink.messages : undefined), 30_000, () => smtpd.output());
    expectSameBytes(relayedBody(relayed.data), body, 'relayed');
  });
});
