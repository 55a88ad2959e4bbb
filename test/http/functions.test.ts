import { randomBytes } from 'node:crypto';
import { FUNCTION_NAMES, type FunctionName } from '../../lib/api';
import { randomEvpid, randomMsgid } from '../../lib/ids';
import { sha256hex } from '../../lib/rules';
import { DEFAULT_LIMITS, type QueueStore } from '../../lib/store';
import { datastoreQueue, memoryQueue } from '../support/stores';
import { freePort } from '../../dev/emulator';
import { TEST_TOKEN, startService } from '../support/service';
import { ask, METHOD, type Ask, type Service } from '../support/ask';

/**
 * Every status every function can answer, through real HTTP, with what the
 * store holds afterwards: a refused request writes nothing.
 */
const envelopeText = Buffer.from('version: 3\ntype: mda\nrcpt: a@example.test\n');

describe('the queue functions over HTTP', () => {
  let service: Service;
  let store: QueueStore;

  beforeAll(async () => {
    service = await startService({ limits: { ...DEFAULT_LIMITS, maxMessageBytes: 3_000_000 } });
    store = service.store;
  });
  afterAll(() => service.stop());

  async function queued() {
    const msgid = randomMsgid();
    const evpid = randomEvpid(msgid);
    const body = Buffer.from('Subject: t\r\n\r\nbody\r\n');
    await store.messageCommit({ msgid, owner: 'mx1', size: body.length, sha256: sha256hex(body), body, envelopes: [{ evpid, data: envelopeText }] });
    return { msgid, evpid, body };
  }

  async function exists(msgid: string): Promise<boolean> {
    return store.messageWalk(msgid).then(
      () => true,
      () => false,
    );
  }

  describe('answers success with the documented status', () => {
    test('messageCreate 201, messageCommit 201 then 200, messageFd 200 with ETag, envelopeWalk 200', async () => {
      const msgid = randomMsgid();
      const evpid = randomEvpid(msgid);
      const body = randomBytes(2000);
      expect((await ask(service, 'messageCreate', { json: { msgids: [msgid], owner: 'mx1' } })).status).toBe(201);
      const commit = {
        msgid,
        owner: 'mx1',
        size: body.length,
        sha256: sha256hex(body),
        body: body.toString('base64'),
        envelopes: [{ evpid, data: envelopeText.toString('base64') }],
      };
      const first = await ask(service, 'messageCommit', { json: commit });
      expect(first).toMatchObject({ status: 201, json: { msgid, created: true } });
      expect(await ask(service, 'messageCommit', { json: commit })).toMatchObject({ status: 200, json: { created: false } });
      const fd = await ask(service, 'messageFd', { query: { msgid } });
      expect(fd.status).toBe(200);
      expect(fd.bytes.equals(body)).toBe(true);
      expect(fd.headers.get('etag')).toBe(`"${sha256hex(body)}"`);
      const part = await ask(service, 'messageFd', { query: { msgid }, headers: { range: 'bytes=100-199' } });
      expect(part.status).toBe(206);
      expect(part.headers.get('content-range')).toBe(`bytes 100-199/${body.length}`);
      expect(part.bytes.equals(body.subarray(100, 200))).toBe(true);
      const load = await ask(service, 'envelopeLoad', { query: { evpid } });
      expect(load).toMatchObject({ status: 200, json: { evpid, data: envelopeText.toString('base64') } });
      const walk = await ask(service, 'messageWalk', { query: { msgid } });
      expect(walk).toMatchObject({ status: 200, json: { message: { msgid, state: 'queued', owner: 'mx1', size: 2000 } } });
    });

    test('messageWrite 204 for a part of a body', async () => {
      const msgid = randomMsgid();
      await store.messageCreate([msgid], 'default');
      const res = await ask(service, 'messageWrite', { query: { msgid, offset: '0' }, raw: randomBytes(100), type: 'application/octet-stream' });
      expect(res.status).toBe(204);
    });
  });

  describe('refuses a request without valid credentials with 401, touching nothing', () => {
    test.each(FUNCTION_NAMES.map((fn) => [fn]))('%s', async (fn) => {
      for (const token of [null, 'wrong-token-wrong-token']) {
        const res = await ask(service, fn, { token, query: {}, json: METHOD[fn] === 'GET' ? undefined : {} });
        expect(res.status).toBe(401);
        expect(res.headers.get('www-authenticate')).toMatch(/^Bearer /);
        expect(res.json.error.code).toBe('unauthorized');
      }
    });

    test('a create with a wrong token reserves nothing', async () => {
      const msgid = randomMsgid();
      expect((await ask(service, 'messageCreate', { token: 'x'.repeat(30), json: { msgids: [msgid] } })).status).toBe(401);
      expect(await exists(msgid)).toBe(false);
    });

    test('the token may also come in X-Queue-Token', async () => {
      const res = await ask(service, 'envelopeWalk', { token: null, headers: { 'x-queue-token': TEST_TOKEN } });
      expect(res.status).toBe(200);
    });
  });

  describe('refuses a wrong method with 405 and an Allow header', () => {
    test.each(FUNCTION_NAMES.map((fn) => [fn]))('%s', async (fn) => {
      const wrong = METHOD[fn] === 'GET' ? 'POST' : 'GET';
      for (const method of [wrong, 'DELETE']) {
        const res = await ask(service, fn, { method });
        expect(res.status).toBe(405);
        expect(res.headers.get('allow')).toContain(METHOD[fn]);
        expect(res.json.error.code).toBe('method_not_allowed');
      }
    });
  });

  describe('refuses bad input with a JSON 4xx and writes nothing', () => {
    const m = randomMsgid();
    const cases: [string, number, FunctionName, Ask][] = [
      ['broken JSON', 400, 'messageCreate', { raw: `{"msgids": ["${m}"`, type: 'application/json' }],
      ['a JSON body sent as text', 415, 'messageCreate', { raw: `{"msgids":["${m}"]}`, type: 'text/plain' }],
      ['a JSON body with no content type', 415, 'messageCreate', { raw: `{"msgids":["${m}"]}` }],
      ['a part sent as JSON', 415, 'messageWrite', { query: { msgid: m, offset: '0' }, json: { a: 1 } }],
      ['an unknown field', 400, 'messageCreate', { json: { msgids: [m], extra: true } }],
      ['an unknown query parameter', 400, 'envelopeWalk', { query: { owner: 'mx1', color: 'red' } }],
      ['a query string on a JSON function', 400, 'messageCreate', { query: { owner: 'mx1' }, json: { msgids: [m] } }],
      ['an upper-case msgid', 400, 'messageCreate', { json: { msgids: [m.toUpperCase().replace(/^[0-9]/, 'A')] } }],
      ['a 0x msgid', 400, 'messageCreate', { json: { msgids: ['0x' + m.slice(2)] } }],
      ['a short msgid', 400, 'messageCreate', { json: { msgids: [m.slice(1)] } }],
      ['the zero msgid', 400, 'messageCreate', { json: { msgids: ['00000000'] } }],
      ['a msgid as a number', 400, 'messageCreate', { json: { msgids: [12345678] } }],
      ['no msgids', 400, 'messageCreate', { json: { msgids: [] } }],
      ['too many msgids', 400, 'messageCreate', { json: { msgids: Array.from({ length: 13 }, () => randomMsgid()) } }],
      ['an evpid with a zero low half', 400, 'envelopeCreate', { json: { evpid: m + '00000000', data: 'eA==' } }],
      ['an evpid with a zero msgid', 400, 'envelopeLoad', { query: { evpid: '0000000012345678' } }],
      ['an evpid that is not hex', 400, 'envelopeLoad', { query: { evpid: 'zzzzzzzzzzzzzzzz' } }],
      ['data that is not base64', 400, 'envelopeCreate', { json: { evpid: m + '00000001', data: '!!!' } }],
      ['an owner with a slash', 400, 'messageCreate', { json: { msgids: [m], owner: 'a/b' } }],
      ['a malformed sha256', 400, 'messageCommit', { json: { msgid: m, size: 1, sha256: 'abc', body: 'eA==' } }],
      ['a negative size', 400, 'messageCommit', { json: { msgid: m, size: -1, sha256: sha256hex(Buffer.alloc(0)) } }],
      ['a body whose sha256 is wrong', 400, 'messageCommit', { json: { msgid: m, size: 1, sha256: sha256hex(Buffer.from('y')), body: 'eA==' } }],
      ['a body whose size is wrong', 400, 'messageCommit', { json: { msgid: m, size: 2, sha256: sha256hex(Buffer.from('x')), body: 'eA==' } }],
      ['a body over the limit', 413, 'messageCommit', { json: { msgid: m, size: 3_000_001, sha256: sha256hex(Buffer.alloc(0)) } }],
      ['an envelope over the limit', 413, 'envelopeCreate', { json: { evpid: m + '00000001', data: Buffer.alloc(8193).toString('base64') } }],
      ['a part over the request limit', 413, 'messageWrite', { query: { msgid: m, offset: '0' }, raw: Buffer.alloc(8_000_001), type: 'application/octet-stream' }],
      ['a part at an odd offset', 400, 'messageWrite', { query: { msgid: m, offset: '17' }, raw: 'x', type: 'application/octet-stream' }],
      ['a page limit of zero', 400, 'envelopeWalk', { query: { limit: '0' } }],
      ['an update version of zero', 400, 'envelopeUpdate', { json: { evpid: m + '00000001', data: 'eA==', version: 0 } }],
      ['an update version that is not whole', 400, 'envelopeUpdate', { json: { evpid: m + '00000001', data: 'eA==', version: 1.5 } }],
      ['an update version as a string', 400, 'envelopeUpdate', { json: { evpid: m + '00000001', data: 'eA==', version: '7' } }],
      ['a cursor not handed out', 400, 'envelopeWalk', { query: { cursor: 'bm9wZQ' } }],
    ];
    test.each(cases)('%s → %i', async (_name, status, fn, a) => {
      const res = await ask(service, fn, a);
      expect(res.status).toBe(status);
      expect(res.json?.error?.code).toEqual(expect.any(String));
      expect(res.json.error.message).toEqual(expect.any(String));
      expect(await exists(m)).toBe(false);
    });
  });

  describe('answers what it cannot do with 404, 409 and 416', () => {
    test('an unknown envelope or message is 404', async () => {
      expect((await ask(service, 'envelopeLoad', { query: { evpid: randomEvpid(randomMsgid()) } })).status).toBe(404);
      expect((await ask(service, 'messageFd', { query: { msgid: randomMsgid() } })).status).toBe(404);
      expect((await ask(service, 'envelopeUpdate', { json: { evpid: randomEvpid(randomMsgid()), data: 'eA==' } })).status).toBe(404);
    });

    test('an unknown function is 404', async () => {
      const res = await ask(service, 'messageExplode', { method: 'GET' });
      expect(res.status).toBe(404);
      expect(res.json.error.code).toBe('not_found');
    });

    test("a taken msgid, another owner's envelope and another body are 409", async () => {
      const { msgid, evpid } = await queued();
      expect((await ask(service, 'messageCreate', { json: { msgids: [msgid] } })).json).toMatchObject({
        error: { code: 'conflict', taken: [msgid] },
      });
      const refused = await ask(service, 'envelopeDelete', { json: { evpid, owner: 'mx2' } });
      expect(refused).toMatchObject({ status: 409, json: { error: { reason: 'not_owner' } } });
      expect((await ask(service, 'envelopeLoad', { query: { evpid } })).status).toBe(200);
      const other = Buffer.from('other');
      const commit = { msgid, owner: 'mx1', size: other.length, sha256: sha256hex(other), body: other.toString('base64') };
      expect((await ask(service, 'messageCommit', { json: commit })).status).toBe(409);
    });

    test('a commit after messageDelete is 409 rolled_back and writes nothing', async () => {
      const msgid = randomMsgid();
      const evpid = randomEvpid(msgid);
      expect((await ask(service, 'messageCreate', { json: { msgids: [msgid], owner: 'mx1' } })).status).toBe(201);
      expect(await ask(service, 'messageDelete', { json: { msgid, owner: 'mx1' } })).toMatchObject({ status: 200, json: { deleted: true } });
      const body = Buffer.from('late');
      const late = await ask(service, 'messageCommit', {
        json: { msgid, owner: 'mx1', size: body.length, sha256: sha256hex(body), body: body.toString('base64'), envelopes: [{ evpid, data: 'ZQ==' }] },
      });
      expect(late).toMatchObject({ status: 409, json: { error: { code: 'conflict', reason: 'rolled_back', msgid } } });
      expect(await exists(msgid)).toBe(false);
      const write = await ask(service, 'messageWrite', { query: { msgid, offset: '0', owner: 'mx1' }, raw: body, type: 'application/octet-stream' });
      expect(write).toMatchObject({ status: 409, json: { error: { reason: 'rolled_back' } } });
      expect((await ask(service, 'messageCreate', { json: { msgids: [msgid], owner: 'mx1' } })).json).toMatchObject({
        error: { code: 'conflict', taken: [msgid], rolledBack: [msgid] },
      });
    });

    test('an envelope update older than the stored one is 409 stale and changes nothing', async () => {
      const { evpid } = await queued();
      const newer = Buffer.from('newer').toString('base64');
      expect((await ask(service, 'envelopeUpdate', { json: { evpid, data: newer, version: 2000, owner: 'mx1' } })).status).toBe(200);
      const late = await ask(service, 'envelopeUpdate', { json: { evpid, data: Buffer.from('older').toString('base64'), version: 1000, owner: 'mx1' } });
      expect(late).toMatchObject({ status: 409, json: { error: { code: 'conflict', reason: 'stale', storedVersion: 2000 } } });
      expect((await ask(service, 'envelopeLoad', { query: { evpid } })).json).toMatchObject({ data: newer });
    });

    test('a range past the end is 416; a malformed one 400', async () => {
      const { msgid, body } = await queued();
      const past = await ask(service, 'messageFd', { query: { msgid }, headers: { range: `bytes=${body.length}-` } });
      expect(past.status).toBe(416);
      expect((await ask(service, 'messageFd', { query: { msgid }, headers: { range: 'bytes=5-1' } })).status).toBe(400);
      expect((await ask(service, 'messageFd', { query: { msgid }, headers: { range: 'bytes=0-1,4-5' } })).status).toBe(400);
    });
  });

  describe('every mutating request may be sent again after a lost answer', () => {
    test('each one succeeds the second time and leaves the same state', async () => {
      const msgid = randomMsgid();
      const evpid = randomEvpid(msgid);
      const bounce = randomEvpid(msgid);
      const body = randomBytes(1500);
      const twice = async (fn: FunctionName, a: Ask, expected: number[]) => {
        const first = await ask(service, fn, a);
        const again = await ask(service, fn, a);
        expect([first.status, again.status]).toEqual(expected);
        return again;
      };
      await twice('messageCreate', { json: { msgids: [msgid], owner: 'mx1' } }, [201, 201]);
      await twice('messageWrite', { query: { msgid, offset: '0', owner: 'mx1' }, raw: body, type: 'application/octet-stream' }, [204, 204]);
      const commit = { msgid, owner: 'mx1', size: body.length, sha256: sha256hex(body), envelopes: [{ evpid, data: envelopeText.toString('base64') }] };
      await twice('messageCommit', { json: commit }, [201, 200]);
      await twice('envelopeCreate', { json: { evpid: bounce, data: 'Ym91bmNl', owner: 'mx1' } }, [201, 200]);
      await twice('envelopeUpdate', { json: { evpid, data: 'dXBkYXRlZA==', owner: 'mx1' } }, [200, 200]);
      await twice('messageCorrupt', { json: { msgid } }, [200, 200]);
      await twice('messageUncorrupt', { json: { msgid } }, [200, 200]);
      expect((await store.messageRead(msgid)).data.equals(body)).toBe(true);
      expect((await store.envelopeLoad(evpid)).toString()).toBe('updated');
      const deleted = await twice('envelopeDelete', { json: { evpid: bounce, owner: 'mx1' } }, [200, 200]);
      expect(deleted.json).toMatchObject({ deleted: false, messageDeleted: false });
      expect((await store.messageWalk(msgid)).items.map((e) => e.evpid)).toEqual([evpid]);
      await twice('messageDelete', { json: { msgid, owner: 'mx1' } }, [200, 200]);
      expect(await exists(msgid)).toBe(false);
      await twice('messagePurge', { json: { owner: 'mx1' } }, [200, 200]);
    });
  });
});

describe("the client's envelope update versions", () => {
  test('keep increasing while the wall clock stands still or steps back, so every update applies in order', async () => {
    const service = await startService({ store: memoryQueue() });
    const client = service.client();
    const clock = jest.spyOn(Date, 'now');
    try {
      const msgid = randomMsgid();
      const evpid = randomEvpid(msgid);
      const body = Buffer.from('body');
      await service.store.messageCommit({ msgid, owner: 'mx1', size: body.length, sha256: sha256hex(body), body, envelopes: [{ evpid, data: envelopeText }] });
      const now = Date.now();
      const update = (n: number) => client.envelopeUpdate({ evpid, data: Buffer.from(`retry: ${n}`) }, { owner: 'mx1' });
      clock.mockReturnValue(now);
      await update(1);
      await update(2);
      clock.mockReturnValue(now - 60_000);
      await update(3);
      clock.mockRestore();
      await update(4);
      expect((await service.store.envelopeLoad(evpid)).toString()).toBe('retry: 4');
    } finally {
      clock.mockRestore();
      await client.close();
      await service.stop();
    }
  });
});

describe('the queue functions with storage unreachable', () => {
  test('answer 503 with Retry-After quickly instead of hanging', async () => {
    const store = datastoreQueue({ apiEndpoint: `127.0.0.1:${await freePort()}`, projectId: 'nowhere', timeoutMs: 5000 });
    const service = await startService({ store });
    try {
      for (const [fn, a] of [
        ['messageCreate', { json: { msgids: [randomMsgid()] } }],
        ['envelopeLoad', { query: { evpid: randomEvpid(randomMsgid()) } }],
        ['envelopeWalk', {}],
      ] as [FunctionName, Ask][]) {
        const started = Date.now();
        const res = await ask(service, fn, a);
        expect(res.status).toBe(503);
        expect(res.headers.get('retry-after')).toBe('1');
        expect(res.json.error.code).toBe('unavailable');
        expect(Date.now() - started).toBeLessThan(3000);
      }
    } finally {
      await service.stop();
    }
  });
});

describe('the queue functions with auth modes', () => {
  test('iam mode with a shared token takes it only from X-Queue-Token', async () => {
    const service = await startService({ auth: { mode: 'iam', token: TEST_TOKEN } });
    try {
      expect((await ask(service, 'envelopeWalk', {})).status).toBe(401);
      expect((await ask(service, 'envelopeWalk', { token: 'google-id-token', headers: { 'x-queue-token': TEST_TOKEN } })).status).toBe(200);
    } finally {
      await service.stop();
    }
  });

  test('none mode accepts requests without credentials', async () => {
    const service = await startService({ auth: { mode: 'none' } });
    try {
      expect((await ask(service, 'envelopeWalk', { token: null })).status).toBe(200);
    } finally {
      await service.stop();
    }
  });
});
