import { setTimeout as sleep } from 'node:timers/promises';
import { bodyOf, sendMail, SmtpError, startSink, waitFor } from '../../dev/mail';
import { deliveredTo, expectSameBytes, installedBridgeSuite, relayedBody, testBody } from '../support/e2e';
import { bridgeLog, queueContents, queueEmpty, restDeliveryTests, restSmtpd, type RestQueue } from '../support/rest-delivery';
import { startService } from '../support/service';
import { uniqueNamespace } from '../support/stores';

/**
 * The whole chain with Debian's real smtpd: SMTP in → smtpd → queue-rest
 * (installed as /usr/libexec/opensmtpd/queue-resttest) → the functions →
 * Datastore on the Firestore emulator → delivery to maildirs and a sink.
 */
jest.setTimeout(180_000);

type Service = Awaited<ReturnType<typeof startService>>;
let service: Service;
let namespace: string;

const suite = installedBridgeSuite('resttest', 'queue-e2e');
const queue: RestQueue = { backend: 'resttest', url: () => service.baseUrl, store: () => service.store, logDir: suite.logDir };

beforeAll(async () => {
  namespace = uniqueNamespace('e2e');
  service = await startService({ namespace });
});

afterAll(async () => {
  await service?.stop();
});

restDeliveryTests(queue);

test('while the service is down a client gets a temporary failure, smtpd stays up, and nothing accepted is lost', async () => {
  const sink = await startSink();
  const smtpd = await restSmtpd(queue, { relayPort: sink.port });
  await smtpd.smtpctl('pause', 'mta');
  const before = testBody(3_000, 'before');
  await sendMail({ port: smtpd.port, from: 'sender@example.test', to: ['kept@relay.test'], body: before });
  await waitFor('the accepted message in the service', async () => ((await queueContents(queue)).length === 1 ? true : undefined));

  const port = service.port;
  await service.stop();
  const refused = await sendMail({ port: smtpd.port, from: 'sender@example.test', to: ['during@example.test'], body: 'during\n' }).catch((e: unknown) => e);
  expect(refused).toBeInstanceOf(SmtpError);
  expect((refused as SmtpError).responseCode).toBeGreaterThanOrEqual(400);
  expect((refused as SmtpError).responseCode).toBeLessThan(500);
  await sleep(500);
  expect(smtpd.output()).not.toMatch(/queue-proc: (bad response|pipe closed|exiting)/);

  service = await startService({ namespace, port });
  const after = testBody(3_000, 'after');
  await sendMail({ port: smtpd.port, from: 'sender@example.test', to: ['after@example.test'], body: after });
  const [delivered] = await deliveredTo(smtpd, 'after');
  expectSameBytes(bodyOf(delivered), after, 'after the outage');
  await smtpd.smtpctl('resume', 'mta');
  await waitFor('the message accepted before the outage at the sink', () => (sink.messages.length ? true : undefined), 30_000, () => smtpd.output());
  expectSameBytes(relayedBody(sink.messages[0].data), before, 'accepted before the outage');
  await queueEmpty(queue, smtpd);
  expect(bridgeLog(queue)).toMatch(/MESSAGE_COMMIT failed/);
});
