import { createHash } from 'node:crypto';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { FUNCTION_NAMES, type FunctionName } from '../../lib/api';
import { loadConfig } from '../../lib/config';
import { Credentials } from '../../lib/credentials';
import { randomEvpid, randomMsgid } from '../../lib/ids';
import { Queue } from '../../lib/queue';
import { sha256hex } from '../../lib/rules';
import type { Storage } from '../../lib/storage';
import { MemoryStorage } from '../../lib/storage-memory';
import { ask, METHOD, type Service } from '../support/ask';
import { startService, TEST_TOKEN } from '../support/service';
import { firestoreStorage } from '../support/stores';

/**
 * One identity per MX (QUEUE_AUTH=tokens, and iam with identities): the
 * service takes the caller's instance from its credential, never from the
 * request. An MX acts only as itself, administration is a separate identity,
 * and each refusal leaves the queue as it was. Over memory and the Firestore
 * emulator, which also keep the credentials.
 */
const ADMIN_TOKEN = 'bootstrap-admin-token-0123456789abcdef';
/** Short, so that a revocation's delay can be waited for. */
const CACHE_MS = 300;
const envelopeText = Buffer.from('version: 3\ntype: mda\nrcpt: a@example.test\n');

const storages: [string, () => Storage][] = [
  ['memory', () => new MemoryStorage()],
  ['the Firestore emulator', () => firestoreStorage()],
];

describe.each(storages)('one identity per MX, over %s', (_name, storageFor) => {
  let service: Service;
  let storage: Storage;
  let queue: Queue;
  let mx1: string;
  let mx2: string;

  beforeAll(async () => {
    storage = storageFor();
    queue = new Queue(storage);
    service = await startService({
      store: queue,
      credentials: new Credentials(storage, { cacheMs: CACHE_MS }),
      auth: { mode: 'tokens', adminToken: ADMIN_TOKEN },
    });
    mx1 = await issue({ role: 'mx', instance: 'mx1' });
    mx2 = await issue({ role: 'mx', instance: 'mx2' });
  });
  afterAll(() => service.stop());

  async function issue(grant: object): Promise<string> {
    const res = await ask(service, 'credentialIssue', { token: ADMIN_TOKEN, json: grant });
    expect(res.status).toBe(201);
    return res.json.token;
  }

  /** A committed message of mx1's, written straight to the queue. */
  async function mailOfMx1() {
    const msgid = randomMsgid();
    const evpid = randomEvpid(msgid);
    const body = Buffer.from('Subject: mx1\r\n\r\nfor mx1 only\r\n');
    await queue.messageCommit({ msgid, owner: 'mx1', size: body.length, sha256: sha256hex(body), body, envelopes: [{ evpid, data: envelopeText }] });
    return { msgid, evpid, body };
  }

  test("an MX's requests act as its instance: owner defaults to it", async () => {
    const msgid = randomMsgid();
    const body = Buffer.from('hello');
    expect((await ask(service, 'messageCreate', { token: mx1, json: { msgids: [msgid] } })).json).toMatchObject({ owner: 'mx1' });
    const commit = { msgid, size: body.length, sha256: sha256hex(body), body: body.toString('base64') };
    expect((await ask(service, 'messageCommit', { token: mx1, json: commit })).status).toBe(201);
    expect((await queue.messageRead(msgid)).info.owner).toBe('mx1');
    expect((await ask(service, 'messageFd', { token: mx1, query: { msgid } })).bytes).toEqual(body);
    expect((await ask(service, 'messageFd', { token: mx1, query: { msgid, owner: 'mx1' } })).status).toBe(200);
  });

  test("every call the bridge makes passes with its own credential", async () => {
    const bridge = service.client({ token: mx1 });
    try {
      await bridge.instanceHeartbeat('mx1', 60_000, { startedAt: new Date() });
      await bridge.messagePurge('mx1');
      await bridge.queueTakeover('mx1');
      const msgid = randomMsgid();
      const evpid = randomEvpid(msgid);
      const body = Buffer.from('via the bridge');
      await bridge.messageCreate([msgid], 'mx1');
      await bridge.messageCommit({ msgid, owner: 'mx1', size: body.length, sha256: sha256hex(body), body, envelopes: [{ evpid, data: envelopeText }] });
      await bridge.envelopeCreate({ evpid: randomEvpid(msgid), data: envelopeText }, { owner: 'mx1' });
      expect((await bridge.envelopeWalk({ owner: 'mx1', limit: 1000 })).items.map((e) => e.evpid)).toContain(evpid);
      expect(await bridge.envelopeLoad(evpid, { owner: 'mx1' })).toEqual(envelopeText);
      expect((await bridge.messageRead(msgid, { owner: 'mx1' })).data).toEqual(body);
      await bridge.envelopeUpdate({ evpid, data: Buffer.from('updated') }, { owner: 'mx1' });
      expect(await bridge.envelopeDelete(evpid, { owner: 'mx1' })).toMatchObject({ deleted: true });
      const rolledBack = randomMsgid();
      await bridge.messageCreate([rolledBack], 'mx1');
      expect(await bridge.messageDelete(rolledBack, { owner: 'mx1' })).toEqual({ deleted: true });
    } finally {
      await bridge.close();
    }
  });

  describe("an MX naming another MX's instance is refused with 403, and nothing changes", () => {
    test('reading its mail (messageFd, envelopeLoad, messageWalk)', async () => {
      const { msgid, evpid } = await mailOfMx1();
      for (const [fn, query] of [
        ['messageFd', { msgid, owner: 'mx1' }],
        ['envelopeLoad', { evpid, owner: 'mx1' }],
        ['messageWalk', { msgid, owner: 'mx1' }],
      ] as const) {
        const res = await ask(service, fn, { token: mx2, query });
        expect(res.status).toBe(403);
        expect(res.json.error).toMatchObject({ code: 'forbidden', instance: 'mx2', owner: 'mx1' });
      }
    });

    test('walking its mail', async () => {
      await mailOfMx1();
      expect((await ask(service, 'envelopeWalk', { token: mx2, query: { owner: 'mx1' } })).status).toBe(403);
    });

    test('updating or deleting its mail', async () => {
      const { msgid, evpid } = await mailOfMx1();
      const refused = [
        ['envelopeUpdate', { evpid, data: Buffer.from('rcpt: thief@example.test\n').toString('base64'), owner: 'mx1' }],
        ['envelopeDelete', { evpid, owner: 'mx1' }],
        ['messageDelete', { msgid, owner: 'mx1' }],
        ['envelopeCreate', { evpid: randomEvpid(msgid), data: envelopeText.toString('base64'), owner: 'mx1' }],
      ] as const;
      for (const [fn, json] of refused) expect((await ask(service, fn, { token: mx2, json })).status).toBe(403);
      expect(await queue.envelopeLoad(evpid)).toEqual(envelopeText);
      expect((await queue.messageWalk(msgid)).items.map((e) => e.evpid)).toEqual([evpid]);
    });

    test('purging its uncommitted messages', async () => {
      const msgid = randomMsgid();
      await queue.messageCreate([msgid], 'mx1');
      const res = await ask(service, 'messagePurge', { token: mx2, json: { owner: 'mx1' } });
      expect(res.status).toBe(403);
      expect((await queue.messageWalk(msgid)).message).toMatchObject({ owner: 'mx1', state: 'incoming' });
    });

    test('heartbeating for it', async () => {
      await queue.instanceHeartbeat('mx1', 600_000);
      const res = await ask(service, 'instanceHeartbeat', { token: mx2, json: { instance: 'mx1', leaseMs: 1000 } });
      expect(res.status).toBe(403);
      const mx1Instance = (await queue.instanceList()).find((i) => i.instance === 'mx1')!;
      expect(mx1Instance.leaseUntil.getTime()).toBeGreaterThan(Date.now() + 500_000);
    });

    test('taking over on its behalf', async () => {
      expect((await ask(service, 'queueTakeover', { token: mx2, json: { owner: 'mx1' } })).status).toBe(403);
    });

    test("replaying another MX's request with its own token", async () => {
      const msgid = randomMsgid();
      const body = Buffer.from('replayed');
      const commit = { msgid, owner: 'mx1', size: body.length, sha256: sha256hex(body), body: body.toString('base64') };
      expect((await ask(service, 'messageCreate', { token: mx2, json: { msgids: [msgid], owner: 'mx1' } })).status).toBe(403);
      expect((await ask(service, 'messageCommit', { token: mx2, json: commit })).status).toBe(403);
      const part = await ask(service, 'messageWrite', { token: mx2, query: { msgid, offset: '0', owner: 'mx1' }, raw: body, type: 'application/octet-stream' });
      expect(part.status).toBe(403);
      await expect(queue.messageWalk(msgid)).rejects.toMatchObject({ code: 'not_found' });
      // the same request with its own credential goes through
      expect((await ask(service, 'messageCommit', { token: mx1, json: commit })).status).toBe(201);
    });
  });

  describe("an MX that does not name the owner is still refused another MX's mail", () => {
    test('reads, updates and deletes answer 409 not_owner and change nothing', async () => {
      const { msgid, evpid } = await mailOfMx1();
      const data = Buffer.from('rcpt: thief@example.test\n').toString('base64');
      const answers = [
        await ask(service, 'messageFd', { token: mx2, query: { msgid } }),
        await ask(service, 'envelopeLoad', { token: mx2, query: { evpid } }),
        await ask(service, 'messageWalk', { token: mx2, query: { msgid } }),
        await ask(service, 'envelopeUpdate', { token: mx2, json: { evpid, data } }),
        await ask(service, 'envelopeDelete', { token: mx2, json: { evpid } }),
        await ask(service, 'messageDelete', { token: mx2, json: { msgid } }),
      ];
      for (const res of answers) expect(res.json.error).toMatchObject({ code: 'conflict', reason: 'not_owner' });
      expect(await queue.envelopeLoad(evpid)).toEqual(envelopeText);
    });

    test('a walk hands out only its own envelopes', async () => {
      const { evpid } = await mailOfMx1();
      const walk = await ask(service, 'envelopeWalk', { token: mx2, query: { limit: '1000' } });
      expect(walk.status).toBe(200);
      expect(walk.json.envelopes.map((e: { evpid: string }) => e.evpid)).not.toContain(evpid);
      const own = await ask(service, 'envelopeWalk', { token: mx1, query: { limit: '1000' } });
      expect(own.json.envelopes.map((e: { evpid: string }) => e.evpid)).toContain(evpid);
    });

    test("a takeover claims nothing of an instance whose lease holds", async () => {
      const { msgid } = await mailOfMx1();
      await queue.instanceHeartbeat('mx1', 600_000);
      const res = await ask(service, 'queueTakeover', { token: mx2, json: {} });
      expect(res.status).toBe(200);
      expect(res.json.claimed).toEqual([]);
      expect((await queue.messageRead(msgid)).info.owner).toBe('mx1');
    });
  });

  test("the administrators' functions answer an MX 403 and do nothing", async () => {
    const { msgid } = await mailOfMx1();
    const credentialCount = async () => (await ask(service, 'credentialList', { token: ADMIN_TOKEN })).json.credentials.length;
    const before = await credentialCount();
    const adminOnly: [FunctionName, object][] = [
      ['queueStatus', {}],
      ['messageCorrupt', { msgid }],
      ['messageUncorrupt', { msgid }],
      ['credentialIssue', { role: 'admin' }],
      ['credentialRevoke', { instance: 'mx1' }],
      ['credentialList', {}],
    ];
    for (const [fn, input] of adminOnly) {
      const res = await ask(service, fn, METHOD[fn] === 'GET' ? { token: mx1 } : { token: mx1, json: input });
      expect(res.status).toBe(403);
      expect(res.json.error.code).toBe('forbidden');
    }
    expect((await queue.messageRead(msgid)).info.state).toBe('queued');
    expect(await credentialCount()).toBe(before);
    expect((await ask(service, 'envelopeWalk', { token: mx1 })).status).toBe(200);
  });

  test('an administrator may act for any instance, and see and quarantine any mail', async () => {
    const { msgid } = await mailOfMx1();
    const admin = await issue({ role: 'admin' });
    expect((await ask(service, 'queueStatus', { token: admin })).status).toBe(200);
    expect((await ask(service, 'messageWalk', { token: admin, query: { msgid } })).json.message.owner).toBe('mx1');
    expect((await ask(service, 'envelopeWalk', { token: ADMIN_TOKEN, query: { owner: 'mx1' } })).status).toBe(200);
    expect((await ask(service, 'messageCorrupt', { token: admin, json: { msgid } })).json.message.state).toBe('corrupt');
  });

  test('an unknown token, or none, is refused with 401 by every function', async () => {
    for (const fn of FUNCTION_NAMES) {
      for (const token of [null, 'x'.repeat(43), TEST_TOKEN]) {
        const res = await ask(service, fn, { token, query: {}, json: METHOD[fn] === 'GET' ? undefined : {} });
        expect(res.status).toBe(401);
        expect(res.json.error.code).toBe('unauthorized');
      }
    }
  });

  test('a revoked token is refused with 401, in every process once its cache has expired', async () => {
    const token = await issue({ role: 'mx', instance: 'mx3' });
    const elsewhere = new Credentials(storage, { cacheMs: CACHE_MS });
    expect(await elsewhere.identify(token)).toEqual({ role: 'mx', instance: 'mx3' });
    expect((await ask(service, 'envelopeWalk', { token })).status).toBe(200);
    const revoked = await ask(service, 'credentialRevoke', { token: ADMIN_TOKEN, json: { instance: 'mx3' } });
    expect(revoked.json.revoked).toHaveLength(1);
    // this process forgets it at once; another one within its cache delay
    expect((await ask(service, 'envelopeWalk', { token })).status).toBe(401);
    expect(await elsewhere.identify(token)).toEqual({ role: 'mx', instance: 'mx3' });
    await sleep(CACHE_MS + 50);
    expect(await elsewhere.identify(token)).toBeUndefined();
  });

  test('a credential can be revoked by the digest credentialList shows', async () => {
    const token = await issue({ role: 'mx', instance: 'mx4' });
    const listed = (await ask(service, 'credentialList', { token: ADMIN_TOKEN })).json.credentials;
    const mine = listed.find((c: { instance: string }) => c.instance === 'mx4');
    expect(mine.digest).toBe(sha256hex(Buffer.from(token)).slice(0, 12));
    expect((await ask(service, 'credentialRevoke', { token: ADMIN_TOKEN, json: { digest: mine.digest } })).status).toBe(200);
    expect((await ask(service, 'envelopeWalk', { token })).status).toBe(401);
    const again = (await ask(service, 'credentialList', { token: ADMIN_TOKEN })).json.credentials.find((c: { instance: string }) => c.instance === 'mx4');
    expect(again.revokedAt).not.toBeNull();
  });

  test('storage keeps only the sha256 of a token, and the service never answers it again', async () => {
    const token = await issue({ role: 'mx', instance: 'mx5' });
    expect(Buffer.from(token, 'base64url')).toHaveLength(32);
    const digest = createHash('sha256').update(token).digest('hex');
    const rows = await storage.query({ kind: 'Credential' });
    const row = rows.find((r) => r.key.id === digest)!;
    expect(row.data).toMatchObject({ role: 'mx', instance: 'mx5', revokedAt: null });
    const everything = JSON.stringify(rows);
    expect(everything).not.toContain(token);
    const listed = await ask(service, 'credentialList', { token: ADMIN_TOKEN });
    expect(listed.bytes.toString()).not.toContain(token);
    expect(listed.bytes.toString()).not.toContain(digest);
  });

  test('an unknown token is answered 401 before its body is read', async () => {
    const status = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(service.port, '127.0.0.1');
      socket.on('error', reject);
      socket.once('data', (data) => {
        resolve(data.toString('latin1').split('\r\n')[0]);
        socket.destroy();
      });
      // a body announced but never sent: only the headers can be answered
      socket.write(
        ['POST /messageCreate HTTP/1.1', 'host: x', 'content-type: application/json', 'content-length: 1000000', `authorization: Bearer ${'y'.repeat(43)}`, '', '{"msg'].join('\r\n'),
      );
    });
    expect(status).toBe('HTTP/1.1 401 Unauthorized');
  });
});

describe('QUEUE_AUTH=iam with identities', () => {
  let service: Service;
  const idToken = (claims: object) => `${Buffer.from('{"alg":"RS256"}').toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.SIGNATURE_REMOVED_BY_GOOGLE`;
  const as = (email: string, verified = true) => ({ token: idToken({ email, email_verified: verified, aud: 'https://x' }) });

  beforeAll(async () => {
    const storage = new MemoryStorage();
    service = await startService({
      store: new Queue(storage),
      auth: { mode: 'iam', iam: { mx: { 'mx1@p.iam.gserviceaccount.com': 'mx1' }, admins: ['ops@p.iam.gserviceaccount.com'] } },
    });
  });
  afterAll(() => service.stop());

  test("the ID token's service account is the caller: an MX acts as its instance", async () => {
    const heartbeat = await ask(service, 'instanceHeartbeat', { ...as('mx1@p.iam.gserviceaccount.com'), json: { leaseMs: 60_000 } });
    expect(heartbeat.json.instance.instance).toBe('mx1');
    expect((await ask(service, 'instanceHeartbeat', { ...as('mx1@p.iam.gserviceaccount.com'), json: { instance: 'mx2', leaseMs: 60_000 } })).status).toBe(403);
    expect((await ask(service, 'queueStatus', as('mx1@p.iam.gserviceaccount.com'))).status).toBe(403);
    expect((await ask(service, 'queueStatus', as('ops@p.iam.gserviceaccount.com'))).status).toBe(200);
  });

  test('an unknown service account is refused with 403, an unverified or missing email with 401', async () => {
    expect((await ask(service, 'envelopeWalk', as('stranger@p.iam.gserviceaccount.com'))).status).toBe(403);
    expect((await ask(service, 'envelopeWalk', as('mx1@p.iam.gserviceaccount.com', false))).status).toBe(401);
    expect((await ask(service, 'envelopeWalk', { token: 'not-a-jwt' })).status).toBe(401);
    expect((await ask(service, 'envelopeWalk', { token: null })).status).toBe(401);
  });
});

describe('QUEUE_AUTH=token, the shared token: one identity that may do everything, as before', () => {
  let service: Service;

  beforeAll(async () => {
    service = await startService({ store: new Queue(new MemoryStorage()), credentials: new Credentials(new MemoryStorage()) });
  });
  afterAll(() => service.stop());

  test('owner is what the request says: any instance may be named', async () => {
    expect((await ask(service, 'instanceHeartbeat', { json: { instance: 'mx7', leaseMs: 60_000 } })).status).toBe(200);
    expect((await ask(service, 'envelopeWalk', { query: { owner: 'mx7' } })).status).toBe(200);
    expect((await ask(service, 'queueStatus', {})).status).toBe(200);
  });

  test('credentials issued now are not accepted: only the shared token is', async () => {
    const issued = await ask(service, 'credentialIssue', { json: { role: 'mx', instance: 'mx7' } });
    expect(issued.status).toBe(201);
    expect((await ask(service, 'envelopeWalk', { token: issued.json.token })).status).toBe(401);
  });
});

describe('the identity settings (lib/config.ts)', () => {
  const base = { QUEUE_STORE: 'memory' };

  test('QUEUE_AUTH=tokens takes the bootstrap token from QUEUE_ADMIN_TOKEN, and no shared token', () => {
    expect(loadConfig({ ...base, QUEUE_AUTH: 'tokens', QUEUE_ADMIN_TOKEN: ADMIN_TOKEN }).auth).toEqual({ mode: 'tokens', adminToken: ADMIN_TOKEN });
    expect(() => loadConfig({ ...base, QUEUE_AUTH: 'tokens', QUEUE_TOKEN: TEST_TOKEN })).toThrow(/has no shared token/);
    expect(() => loadConfig({ ...base, QUEUE_AUTH: 'tokens', QUEUE_ADMIN_TOKEN: 'short' })).toThrow(/QUEUE_ADMIN_TOKEN must be at least 16/);
  });

  test('QUEUE_IAM_MX and QUEUE_IAM_ADMINS map service accounts to identities', () => {
    const { auth } = loadConfig({ ...base, QUEUE_AUTH: 'iam', QUEUE_IAM_MX: 'mx1=a@p.iam.gserviceaccount.com, mx2=b@p.iam.gserviceaccount.com', QUEUE_IAM_ADMINS: 'ops@example.com' });
    expect(auth.iam).toEqual({ mx: { 'a@p.iam.gserviceaccount.com': 'mx1', 'b@p.iam.gserviceaccount.com': 'mx2' }, admins: ['ops@example.com'] });
    expect(() => loadConfig({ ...base, QUEUE_AUTH: 'iam', QUEUE_IAM_MX: 'a@p.iam.gserviceaccount.com' })).toThrow(/INSTANCE=SERVICE_ACCOUNT_EMAIL/);
    expect(() => loadConfig({ ...base, QUEUE_AUTH: 'iam', QUEUE_IAM_MX: 'mx1=a@p', QUEUE_IAM_ADMINS: 'a@p' })).toThrow(/an MX and an administrator/);
    expect(loadConfig({ ...base, QUEUE_AUTH: 'iam' }).auth).toEqual({ mode: 'iam', token: undefined });
  });

  test('the shared token stays the default mode', () => {
    expect(loadConfig({ ...base, QUEUE_TOKEN: TEST_TOKEN }).auth).toEqual({ mode: 'token', token: TEST_TOKEN });
    expect(() => loadConfig(base)).toThrow(/no queue token/);
  });
});
