import { grpc } from 'google-gax';
import { HttpQueueStore } from '../../bridge/client';
import { freePort } from '../../dev/emulator';
import { storageError } from '../../lib/datastore-errors';
import { QueueError } from '../../lib/errors';
import type { Row } from '../../lib/storage';
import { DatastoreStorage } from '../../lib/storage-datastore';
import { randomEvpid, randomMsgid } from '../../lib/ids';
import { startRefusingDatastore, type Refusal } from '../support/refusing-datastore';
import { listening, serve, stopServed, waitFor, type Served } from '../support/served';
import { firestoreStorage } from '../support/stores';

/**
 * A project whose storage is not set up answers 500 with a code of its own
 * and a message saying what to fix, in the answer and in the log line; the
 * bridge takes it as it takes any 500, as a temporary failure.
 */

/** The texts production sends (docs/api.md cites where each was seen). */
const REFUSALS: Record<string, Refusal> = {
  'no roles/datastore.user': { code: 7, details: 'Missing or insufficient permissions.' },
  'the Datastore API disabled': {
    code: 7,
    details:
      'Cloud Datastore API has not been used in project 123456789012 before or it is disabled. Enable it by visiting https://console.developers.google.com/apis/api/datastore.googleapis.com/overview?project=123456789012 then retry. If you enabled this API recently, wait a few minutes for the action to propagate to our systems and retry.',
    errorInfo: { reason: 'SERVICE_DISABLED', domain: 'googleapis.com', metadata: { consumer: 'projects/123456789012', service: 'datastore.googleapis.com' } },
  },
  'no database': {
    code: 5,
    details:
      'The database (default) does not exist for project queue-prod Please visit https://console.cloud.google.com/datastore/setup?project=queue-prod to add a Cloud Datastore or Cloud Firestore database.',
  },
  'a database in Native mode': { code: 9, details: 'The Cloud Datastore API is not available for Firestore in Native mode database projects/queue-prod/databases/(default).' },
};

const EXPECTED: Record<string, { code: string; fix: RegExp }> = {
  'no roles/datastore.user': { code: 'storage_permission_denied', fix: /grant roles\/datastore\.user/ },
  'the Datastore API disabled': { code: 'storage_api_disabled', fix: /enable datastore\.googleapis\.com/ },
  'no database': { code: 'storage_database_missing', fix: /gcloud firestore databases create --type=datastore-mode/ },
  'a database in Native mode': { code: 'storage_wrong_mode', fix: /set QUEUE_DATABASE to a database in Datastore mode/ },
};

/** An error as @grpc/grpc-js makes it, with what google-gax adds from an ErrorInfo. */
function grpcError({ code, details, errorInfo }: Refusal): Error {
  const extra = errorInfo ? { reason: errorInfo.reason, domain: errorInfo.domain, errorInfoMetadata: errorInfo.metadata } : {};
  return Object.assign(new Error(`${code} ${grpc.status[code]}: ${details}`), { code, details, metadata: new grpc.Metadata(), ...extra });
}

describe('storageError tells a set-up to fix from a failure that passes and from a bug', () => {
  test.each(Object.keys(REFUSALS))('%s', (name) => {
    const err = storageError(grpcError(REFUSALS[name]), '(default)');
    expect(err).toBeInstanceOf(QueueError);
    expect(err).toMatchObject({ code: EXPECTED[name].code, message: expect.stringMatching(EXPECTED[name].fix) });
    // the server's text stays in the log, by way of the cause, not in the answer
    expect((err as QueueError).details).toEqual({});
  });

  test('older texts: "API is not enabled" (FAILED_PRECONDITION), "The project P does not exist …", "… for Cloud Firestore projects."', () => {
    const older = (code: number, details: string) => (storageError(grpcError({ code, details }), '(default)') as QueueError).code;
    expect(older(9, 'The Cloud Datastore API is not enabled for the project queue-prod')).toBe('storage_api_disabled');
    expect(
      older(5, 'The project queue-prod does not exist or it does not contain an active Cloud Datastore or Cloud Firestore database. Please visit http://console.cloud.google.com to create a project or https://console.cloud.google.com/datastore/setup?project=queue-prod to add a Cloud Datastore or Cloud Firestore database.'),
    ).toBe('storage_database_missing');
    expect(older(9, 'The Cloud Datastore API is not available for Cloud Firestore projects.')).toBe('storage_wrong_mode');
  });

  test('a named database is named in the fix', () => {
    const err = storageError(grpcError(REFUSALS['no database']), 'queue') as QueueError;
    expect(err.message).toMatch(/database queue does not exist.*--database=queue --type=datastore-mode/);
  });

  test('UNAVAILABLE and DEADLINE_EXCEEDED stay unavailable (503, retried)', () => {
    for (const code of [4, 14]) expect(storageError(grpcError({ code, details: 'x' }), '(default)')).toMatchObject({ code: 'unavailable' });
  });

  test('another FAILED_PRECONDITION (a missing index) and INVALID_ARGUMENT stay bugs (500 internal)', () => {
    const index = grpcError({ code: 9, details: 'no matching index found. recommended index is: ...' });
    expect(storageError(index, '(default)')).toBe(index);
    const invalid = grpcError({ code: 3, details: '"(default)" is an invalid database id.' });
    expect(storageError(invalid, '(default)')).toBe(invalid);
  });

  test('a disabled API is known by its ErrorInfo alone, as google-gax promotes it on a write (stand-in endpoint)', async () => {
    const errorInfo = { reason: 'SERVICE_DISABLED', domain: 'googleapis.com', metadata: { service: 'datastore.googleapis.com' } };
    const endpoint = await startRefusingDatastore({ code: 7, details: 'a text of another year', errorInfo });
    const storage = new DatastoreStorage({ apiEndpoint: endpoint.host, projectId: 'queue-prod' });
    try {
      const write = storage.write({ insert: [{ key: { kind: 'Instance', id: 'mx1' }, data: { instance: 'mx1' } } as Row] });
      await expect(write).rejects.toMatchObject({ code: 'storage_api_disabled', cause: { reason: 'SERVICE_DISABLED' } });
    } finally {
      await storage.close();
      await endpoint.stop();
    }
  });

  test("the database named '(default)', as gcloud and the console name it, is the default one (the API refuses that name; emulator)", async () => {
    const storage = new DatastoreStorage({ apiEndpoint: process.env.QUEUE_TEST_FIRESTORE_HOST, projectId: 'queue-test', databaseId: '(default)', namespace: 'default-db' });
    try {
      await expect(storage.get([{ kind: 'Message', id: randomMsgid() }])).resolves.toBeDefined();
    } finally {
      await storage.close();
    }
  });

  test('a missing entity is no NOT_FOUND: its lookup finds nothing (emulator)', async () => {
    const storage = firestoreStorage();
    try {
      const key = { kind: 'Message' as const, id: randomMsgid() };
      expect((await storage.get([key])).has(key)).toBe(false);
    } finally {
      await storage.close();
    }
  });
});

const TOKEN = 'storage-errors-token-0123456789';

describe("the service on a Datastore that refuses it (npm start, a stand-in for Google's endpoint)", () => {
  let datastore: Awaited<ReturnType<typeof startRefusingDatastore>>;
  let served: Served;
  let baseUrl: string;

  beforeAll(async () => {
    datastore = await startRefusingDatastore(REFUSALS['no roles/datastore.user']);
    const port = await freePort();
    baseUrl = `http://127.0.0.1:${port}`;
    served = serve({ DATASTORE_EMULATOR_HOST: datastore.host, DATASTORE_PROJECT_ID: 'queue-prod', QUEUE_TOKEN: TOKEN, PORT: String(port) });
    await listening(served);
  });
  afterAll(async () => {
    if (served) await stopServed(served);
    await datastore?.stop();
  });

  test.each(Object.keys(REFUSALS))('%s: 500 with its code and fix, no Retry-After, an ERROR line with the fix; the bridge sees a temporary failure', async (name) => {
    datastore.refuseWith(REFUSALS[name]);
    const { code, fix } = EXPECTED[name];
    const evpid = randomEvpid(randomMsgid());
    const res = await fetch(`${baseUrl}/envelopeLoad?evpid=${evpid}`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(res.status).toBe(500);
    expect(res.headers.get('retry-after')).toBeNull();
    const answer = (await res.json()) as { error: { code: string; message: string } };
    expect(answer.error).toEqual({ code, message: expect.stringMatching(fix) });
    expect(JSON.stringify(answer)).not.toContain(REFUSALS[name].details);

    const line = await waitFor('its log line', () => served.lines.find((l) => l.evpid === evpid), 5_000);
    expect(line).toMatchObject({ severity: 'ERROR', message: expect.stringMatching(new RegExp(`^GET envelopeLoad 500 ${code}: .*${fix.source}`)) });

    const client = new HttpQueueStore({ baseUrl, token: TOKEN, budgetMs: 300 });
    try {
      const failure = await client.envelopeLoad(evpid).catch((err: unknown) => err);
      // never final: the bridge answers smtpd a temporary failure and keeps the mail
      expect(failure).toMatchObject({ code: 'unavailable', message: expect.stringMatching(new RegExp(`^envelopeLoad answered 500: ${code}: .*${fix.source}`)) });
    } finally {
      await client.close();
    }
  });
});
