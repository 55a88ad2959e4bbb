import { randomEvpid, randomMsgid } from '../../lib/ids';
import { Credentials } from '../../lib/credentials';
import { sha256hex } from '../../lib/rules';
import { MemoryStorage } from '../../lib/storage-memory';
import { adminConfig, runAdmin } from '../support/admin-command';
import { startGoogleIam, type GoogleIam } from '../support/google-iam';
import { startService } from '../support/service';
import { memoryQueue } from '../support/stores';

/**
 * The admin commands behind Google's front end (`auth iam`): each request
 * carries an ID token for its function's URL, got as the bridge gets it
 * (google-auth-library, here from a stand-in metadata server), and the
 * shared token in X-Queue-Token. The service is the real one.
 */
const SHARED = 'iam-shared-token-0123456789abcdef';
const OPS = 'ops@queue-prod.iam.gserviceaccount.com';

describe('queue-rest admin commands under auth iam', () => {
  let service: Awaited<ReturnType<typeof startService>>;
  let google: GoogleIam;
  let env: Record<string, string>;
  const msgid = randomMsgid();
  const evpid = randomEvpid(msgid);

  beforeAll(async () => {
    service = await startService({
      store: memoryQueue(),
      credentials: new Credentials(new MemoryStorage()),
      auth: { mode: 'iam', token: SHARED, iam: { mx: { 'mx1@queue-prod.iam.gserviceaccount.com': 'mx1' }, admins: [OPS] } },
    });
    google = await startGoogleIam({ servicePort: service.port, account: OPS });
    env = { METADATA_SERVER_DETECTION: 'assume-present', GCE_METADATA_HOST: google.metadataHost };
    const body = Buffer.from('Subject: iam\r\n\r\nbody\r\n');
    await service.store.messageCommit({ msgid, owner: 'mx1', size: body.length, sha256: sha256hex(body), body, envelopes: [{ evpid, data: Buffer.from('rcpt: a@example.test\n') }] });
    await service.store.instanceHeartbeat('mx1', 60_000);
  });
  afterAll(async () => {
    await google?.stop();
    await service?.stop();
  });

  const config = (auth: 'iam' | 'token') => adminConfig({ url: google.url, auth, instance: 'mx1' }, { 'token-file': `${SHARED}\n` });

  test('status, list, show, takeover and credential list reach the service, each with an ID token for its own URL', async () => {
    const file = config('iam');
    const status = await runAdmin(['status', file, '--json'], env);
    expect(status).toMatchObject({ code: 0 });
    expect(JSON.parse(status.stdout).instances).toEqual([expect.objectContaining({ instance: 'mx1', alive: true })]);

    const list = await runAdmin(['list', file, '--json'], env);
    expect(JSON.parse(list.stdout)).toEqual([{ msgid, evpids: [evpid] }]);

    const show = await runAdmin(['show', file, msgid, '--json'], env);
    expect(JSON.parse(show.stdout)).toMatchObject({ message: { msgid, owner: 'mx1' }, envelopes: [{ evpid }] });

    const takeover = await runAdmin(['takeover', file, '--instance', 'mx1', '--json'], env);
    expect(JSON.parse(takeover.stdout)).toEqual({ instance: 'mx1', claimed: [], purged: 0 });

    const credentials = await runAdmin(['credential', 'list', file, '--json'], env);
    expect(credentials).toMatchObject({ code: 0, stdout: '[]\n' });

    expect(google.refused).toBe(0);
    for (const fn of ['queueStatus', 'envelopeWalk', 'messageWalk', 'queueTakeover', 'credentialList']) expect(google.audiences).toContain(`${google.url}/${fn}`);
  });

  test('the same commands without auth iam are stopped by the front end, and say so', async () => {
    const refused = google.refused;
    const status = await runAdmin(['status', config('token'), '--json'], env);
    expect(status.code).toBe(1);
    expect(status.stderr).toMatch(/queueStatus answered 401: .*Your client does not have permission/);
    expect(google.refused).toBeGreaterThan(refused);
  });

  test('the ID token alone is not enough where the service also wants the shared token', async () => {
    const file = adminConfig({ url: google.url, auth: 'iam', instance: 'mx1' });
    const status = await runAdmin(['status', file, '--json'], env);
    expect(status.code).toBe(1);
    expect(status.stderr).toMatch(/a valid queue token is required/);
  });
});
