import { randomBytes } from 'node:crypto';
import { getTestServer } from '@google-cloud/functions-framework/testing';
import fc from 'fast-check';
import request from 'supertest';
import { z } from 'zod';
import { endpoint, isBase64 } from '../../lib/http';
import { randomEvpid, randomMsgid } from '../../lib/ids';
import { sha256hex } from '../../lib/rules';
import { useService } from '../../lib/service';
import { memoryQueue } from '../support/stores';
import { TEST_TOKEN, startService, testConfig } from '../support/service';

/**
 * Reading a request's input can only end in the input or a 4xx: a failure
 * while parsing is never a 500 (which the bridge would retry until its budget
 * runs out), and long base64 strings are checked in linear time.
 */

describe('the base64 check', () => {
  // what the check was until it overflowed V8's regex stack on long strings
  const PADDED_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

  test('agrees with the padded-base64 grammar on short strings', () => {
    const unit = fc.constantFrom('A', 'z', '0', '9', '+', '/', '=', '-', '_', ' ', '\n', 'é');
    fc.assert(
      fc.property(fc.string({ unit, maxLength: 14 }), (s) => {
        expect(isBase64(s)).toBe(PADDED_BASE64.test(s));
      }),
      { numRuns: 5000 },
    );
  });

  test('accepts the base64 of any bytes, however long, and refuses one bad character in it', () => {
    for (const size of [0, 1, 2, 3, 3_360_000, 9_000_001]) {
      const text = randomBytes(size).toString('base64');
      expect(isBase64(text)).toBe(true);
      if (size > 0) expect(isBase64(text.slice(0, -4) + '!' + text.slice(-3))).toBe(false);
    }
  });
});

describe('a failure while parsing a request', () => {
  const name = 'testInputThatThrows';
  endpoint(
    name,
    {
      method: 'POST',
      from: 'json',
      input: z.strictObject({
        data: z.string().refine(() => {
          throw new RangeError('Maximum call stack size exceeded');
        }),
      }),
    },
    async () => ({ status: 200, json: { ran: true } }),
  );

  beforeAll(() => useService({ config: testConfig(), store: memoryQueue() }));
  afterAll(() => useService(undefined));

  test('is answered 400 with a JSON error, and the function does not run', async () => {
    const res = await request(getTestServer(name)).post('/').set('authorization', `Bearer ${TEST_TOKEN}`).send({ data: 'eA==' });
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({ error: { code: 'bad_request', message: expect.stringContaining('could not be parsed') } });
  });
});

describe('long base64 strings', () => {
  let service: Awaited<ReturnType<typeof startService>>;
  beforeAll(async () => {
    service = await startService();
  });
  afterAll(() => service.stop());

  async function post(fn: string, json: unknown) {
    const started = Date.now();
    const res = await fetch(`${service.baseUrl}/${fn}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TEST_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify(json),
    });
    return { status: res.status, json: (await res.json()) as { error: { code: string } }, ms: Date.now() - started };
  }

  const msgid = randomMsgid();
  const evpid = randomEvpid(msgid);
  const long = 'QUJD'.repeat(1_500_000); // 6 M characters, 4.5 MB
  const cases: [string, number, string, unknown][] = [
    ['an envelope of 6 M base64 characters', 413, 'envelopeCreate', { evpid, data: long }],
    ['an envelope of 6 M characters, one not base64', 400, 'envelopeCreate', { evpid, data: long.slice(0, -1) + '!' }],
    ['a body of 6 M base64 characters that is not `size` bytes', 400, 'messageCommit', { msgid, size: 1, sha256: sha256hex(Buffer.alloc(1)), body: long }],
    ['a body of 6 M characters, one not base64', 400, 'messageCommit', { msgid, size: 4_500_000, sha256: sha256hex(Buffer.alloc(1)), body: '!' + long.slice(1) }],
    ['a body of 14 M base64 characters, over the request limit', 413, 'messageCommit', { msgid, size: 10_500_000, sha256: sha256hex(Buffer.alloc(1)), body: long.repeat(2) + long.slice(0, 2_000_000) }],
  ];

  test.each(cases)('%s is answered %i at once and writes nothing', async (_name, status, fn, json) => {
    const res = await post(fn, json);
    expect(res.status).toBe(status);
    expect(res.json.error.code).toBe(status === 413 ? 'too_large' : 'bad_request');
    expect(res.ms).toBeLessThan(5000);
    await expect(service.store.messageWalk(msgid)).rejects.toMatchObject({ code: 'not_found' });
  });
});
