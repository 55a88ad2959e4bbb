import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { HttpQueueStore } from '../../bridge/client';
import { listen } from '../../lib/server';
import { randomEvpid, randomMsgid } from '../../lib/ids';
import { sha256hex } from '../../lib/rules';
import { DEFAULT_LIMITS } from '../../lib/store';
import { FRAME_TYPE, frame } from '../../lib/wire';
import { ask, type Service } from '../support/ask';
import { startService } from '../support/service';
import { memoryQueue } from '../support/stores';

/**
 * messageCommit's binary form: the JSON less its body on one line, then the
 * body's raw bytes. It stores what the JSON form stores, and a frame that is
 * not right is refused as the JSON form's mistakes are, writing nothing.
 */
const limits = { ...DEFAULT_LIMITS, maxMessageBytes: 3_000_000 };
const envelopeText = Buffer.from('version: 3\ntype: mda\nrcpt: a@example.test\n');

let service: Service;

beforeAll(async () => {
  service = await startService({ store: memoryQueue(limits), limits });
});
afterAll(() => service.stop());

function commitOf(body: Buffer) {
  const msgid = randomMsgid();
  const evpid = randomEvpid(msgid);
  const head = { msgid, owner: 'mx1', size: body.length, sha256: sha256hex(body), envelopes: [{ evpid, data: envelopeText.toString('base64') }] };
  return { msgid, evpid, head };
}

const framed = (raw: Buffer) => ask(service, 'messageCommit', { raw, type: FRAME_TYPE });

const exists = (msgid: string) =>
  service.store.messageWalk(msgid).then(
    () => true,
    () => false,
  );

test('a framed commit is 201, again 200, and stores the body and envelopes byte-identical', async () => {
  // newlines in the body, and one right after the JSON, are the body's own
  const body = Buffer.concat([Buffer.from('\nSubject: t\r\n\r\n'), randomBytes(200_000)]);
  const { msgid, evpid, head } = commitOf(body);
  expect(await framed(frame(head, body))).toMatchObject({ status: 201, json: { msgid, created: true } });
  expect(await framed(frame(head, body))).toMatchObject({ status: 200, json: { msgid, created: false } });
  const read = await service.store.messageRead(msgid);
  expect(read.data.equals(body)).toBe(true);
  expect(read.info).toMatchObject({ state: 'queued', owner: 'mx1', size: body.length, sha256: sha256hex(body) });
  expect((await service.store.envelopeLoad(evpid)).equals(envelopeText)).toBe(true);
});

test('a framed commit and the JSON form of the same commit are one commit: the second is a retry', async () => {
  const body = randomBytes(5000);
  const { head } = commitOf(body);
  expect((await framed(frame(head, body))).status).toBe(201);
  expect(await ask(service, 'messageCommit', { json: { ...head, body: body.toString('base64') } })).toMatchObject({ status: 200, json: { created: false } });
  const other = commitOf(body);
  expect((await ask(service, 'messageCommit', { json: { ...other.head, body: body.toString('base64') } })).status).toBe(201);
  expect((await framed(frame(other.head, body))).status).toBe(200);
});

test('an empty body may be framed', async () => {
  const { msgid, head } = commitOf(Buffer.alloc(0));
  expect((await framed(frame(head, Buffer.alloc(0)))).status).toBe(201);
  expect((await service.store.messageRead(msgid)).data.length).toBe(0);
});

test('a framed body is a commit of another body for a message committed before: 409', async () => {
  const body = randomBytes(100);
  const { head } = commitOf(body);
  expect((await framed(frame(head, body))).status).toBe(201);
  const other = randomBytes(100);
  expect((await framed(frame({ ...head, sha256: sha256hex(other) }, other))).status).toBe(409);
});

describe('a frame that is not right is 400 and writes nothing', () => {
  const body = Buffer.from('Subject: t\r\n\r\nbody\r\n');
  const cases: [string, (head: ReturnType<typeof commitOf>['head']) => Buffer][] = [
    ['no newline', (head) => Buffer.from(JSON.stringify(head))],
    ['nothing at all', () => Buffer.alloc(0)],
    ['a first line that is not JSON', (head) => Buffer.concat([Buffer.from(`${JSON.stringify(head).slice(1)}\n`), body])],
    ['a malformed msgid', (head) => frame({ ...head, msgid: 'xyz' }, body)],
    ['an unknown field', (head) => frame({ ...head, color: 'red' }, body)],
    ['a body in the JSON too', (head) => frame({ ...head, body: body.toString('base64') }, body)],
    ['a body shorter than size', (head) => frame(head, body.subarray(1))],
    ['a body longer than size', (head) => frame(head, Buffer.concat([body, Buffer.from('\n')]))],
    ['a body whose sha256 is wrong', (head) => frame(head, Buffer.from(body).fill(0x78, 0, 1))],
    ['the JSON on two lines', (head) => Buffer.concat([Buffer.from(`${JSON.stringify(head, null, 1)}\n`), body])],
  ];
  test.each(cases)('%s', async (_name, make) => {
    const { msgid, head } = commitOf(body);
    const res = await framed(make(head));
    expect(res.status).toBe(400);
    expect(res.json.error).toMatchObject({ code: 'bad_request', message: expect.any(String) });
    expect(await exists(msgid)).toBe(false);
  });
});

test('a body over the message limit is 413, and a frame sent to another function 415', async () => {
  const body = Buffer.alloc(limits.maxMessageBytes + 1);
  const { msgid, head } = commitOf(body);
  expect(await framed(frame(head, body))).toMatchObject({ status: 413, json: { error: { code: 'too_large' } } });
  expect(await exists(msgid)).toBe(false);
  const create = await ask(service, 'messageCreate', { raw: frame({ msgids: [msgid] }, Buffer.alloc(0)), type: FRAME_TYPE });
  expect(create.status).toBe(415);
  expect(await exists(msgid)).toBe(false);
});

test('a frame without credentials is 401 and writes nothing', async () => {
  const body = randomBytes(100);
  const { msgid, head } = commitOf(body);
  expect((await ask(service, 'messageCommit', { raw: frame(head, body), type: FRAME_TYPE, token: null })).status).toBe(401);
  expect(await exists(msgid)).toBe(false);
});

test("the bridge's client sends inline bodies in frames, and JSON for good once functions older than frames answer one 415", async () => {
  const types: string[] = [];
  const old = http.createServer((req, res) => {
    types.push(String(req.headers['content-type']));
    const refused = req.headers['content-type'] === FRAME_TYPE;
    res.writeHead(refused ? 415 : 201, { 'content-type': 'application/json' });
    const msgid = '0a1b2c3d';
    res.end(JSON.stringify(refused ? { error: { code: 'unsupported_media_type', message: 'send the request body as application/json' } } : { msgid, created: true }));
  });
  const port = await listen(old, 0, '127.0.0.1');
  const client = new HttpQueueStore({ baseUrl: `http://127.0.0.1:${port}`, token: 't' });
  try {
    const body = randomBytes(100);
    const commit = { msgid: '0a1b2c3d', owner: 'mx1', size: body.length, sha256: sha256hex(body), body };
    expect(await client.messageCommit(commit)).toEqual({ created: true });
    expect(await client.messageCommit(commit)).toEqual({ created: true });
    expect(types).toEqual([FRAME_TYPE, 'application/json', 'application/json']);
  } finally {
    await client.close();
    old.closeAllConnections();
    await new Promise((resolve) => old.close(resolve));
  }
});
