import { spawn } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { HttpQueueStore, LARGEST_ANSWER_MAX, pageAnswerMax, SMALL_ANSWER_MAX } from '../../bridge/client';
import { QueueError } from '../../lib/errors';
import { DEFAULT_LIMITS, PAGE_BYTES_DEFAULT, PAGE_BYTES_MAX, PAGE_MAX, TAKEOVER_MAX } from '../../lib/store';

/**
 * The bridge's client against a service that answers wrongly: too much, cut
 * short, not JSON, the wrong shape or type, a redirect, or nothing after the
 * headers. Each is a failure of that one call, as a QueueError the bridge
 * answers smtpd with (`unavailable`), never a crash, an unbounded buffer or
 * a wait past the call's deadline.
 */
type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void;

const MB = 1_000_000;
const TIMEOUT_MS = 500;
const MAX_MESSAGE = 1024 * 1024;
let server: http.Server;
let base: string;
let handle: Handler;

beforeAll(async () => {
  server = http.createServer((req, res) => handle(req, res));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

function client(baseUrl = base): HttpQueueStore {
  // no retry budget: each case is one attempt
  return new HttpQueueStore({ baseUrl, token: 'rogue-test-token-0123', timeoutMs: TIMEOUT_MS, budgetMs: 0, limits: { ...DEFAULT_LIMITS, maxMessageBytes: MAX_MESSAGE } });
}

/** The call fails with a QueueError the bridge knows, within its deadline. */
async function expectFailure(call: (c: HttpQueueStore) => Promise<unknown>, message: RegExp, baseUrl = base): Promise<QueueError> {
  const c = client(baseUrl);
  const started = Date.now();
  try {
    const err = await call(c).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(QueueError);
    expect((err as QueueError).code).toBe('unavailable');
    expect((err as QueueError).message).toMatch(message);
    expect(Date.now() - started).toBeLessThan(TIMEOUT_MS + 1500);
    return err as QueueError;
  } finally {
    await c.close();
  }
}

const json = (body: string, type = 'application/json; charset=utf-8'): Handler => (_req, res) => {
  res.writeHead(200, { 'content-type': type });
  res.end(body);
};

/** Streams `total` bytes of a JSON-looking body (chunked, unless `headers` give a length) for as long as the client reads. */
const stream = (total: number, headers: http.OutgoingHttpHeaders = {}): Handler => (_req, res) => {
  res.writeHead(200, { 'content-type': 'application/json', ...headers });
  const chunk = Buffer.alloc(64 * 1024, 0x20);
  let sent = 0;
  const pump = () => {
    while (sent < total && !res.destroyed) {
      sent += chunk.length;
      if (!res.write(chunk)) return void res.once('drain', pump);
    }
    res.end();
  };
  res.write('{"envelopes":[');
  pump();
};

const ENVELOPE_WALK = (c: HttpQueueStore) => c.envelopeWalk({ limit: 200 });
const WALK_ANSWER_MAX = pageAnswerMax(PAGE_BYTES_DEFAULT, 200);
const LOAD = (c: HttpQueueStore) => c.envelopeLoad('0a1b2c3d00000001');
const READ = (c: HttpQueueStore) => c.messageRead('0a1b2c3d');

// first, while nothing has grown the heap yet
describe('memory stays bounded on a 200 MB answer', () => {
  // the rogue service runs in a process of its own, so that only the client's memory is measured
  const STREAMER = `
    const headers = JSON.parse(process.env.HEADERS);
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    const server = require('node:http').createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', ...headers });
      let sent = 0;
      const pump = () => {
        while (sent < 200e6 && !res.destroyed) {
          sent += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        res.end();
      };
      pump();
    });
    server.listen(0, '127.0.0.1', () => console.log(server.address().port));`;

  async function streamer(headers: http.OutgoingHttpHeaders = {}): Promise<{ url: string; stop: () => void }> {
    const child = spawn(process.execPath, ['-e', STREAMER], { env: { HEADERS: JSON.stringify(headers) }, stdio: ['ignore', 'pipe', 'inherit'] });
    const port = await new Promise<string>((resolve) => child.stdout.once('data', (d: Buffer) => resolve(d.toString().trim())));
    return { url: `http://127.0.0.1:${port}`, stop: () => child.kill() };
  }

  beforeAll(async () => {
    // the first calls load and compile what every call uses
    for (let i = 0; i < 3; i++) {
      handle = json('{"evpid": "0a1b2c3d00000001", "data": "aGk="}', 'text/plain');
      await expectFailure(LOAD, /Content-Type/);
      handle = stream(SMALL_ANSWER_MAX + 1);
      await expectFailure(LOAD, /more than/);
    }
    // and what refusing an answer on its headers uses, which the first measure would count otherwise
    const rogue = await streamer({ 'content-length': String(200 * MB) });
    await expectFailure(ENVELOPE_WALK, /more than \d+ bytes/, rogue.url).finally(rogue.stop);
  });

  async function rssGrowth(call: (c: HttpQueueStore) => Promise<unknown>, headers?: http.OutgoingHttpHeaders): Promise<number> {
    const rogue = await streamer(headers);
    const before = process.memoryUsage().rss;
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 2);
    try {
      await expectFailure(call, /more than \d+ bytes/, rogue.url);
    } finally {
      clearInterval(sampler);
      rogue.stop();
    }
    peak = Math.max(peak, process.memoryUsage().rss);
    const growth = peak - before;
    process.stdout.write(`RSS growth ${(growth / MB).toFixed(1)} MB (${expect.getState().currentTestName})\n`);
    return growth;
  }

  test('advertised: refused on its headers, unread', async () => {
    // 0–4 MB here: what this process's heap does meanwhile; reading the answer would cost 200 MB
    expect(await rssGrowth(ENVELOPE_WALK, { 'content-length': String(200 * MB) })).toBeLessThan(WALK_ANSWER_MAX);
  });

  test('streamed without a length to a call that answers one object', async () => {
    expect(await rssGrowth(LOAD)).toBeLessThan(SMALL_ANSWER_MAX * 8);
  });

  test('streamed without a length to a walk page: no more than its cap is read', async () => {
    // what was read is garbage once refused, but Node's collector frees read buffers lazily
    expect(await rssGrowth(ENVELOPE_WALK)).toBeLessThan(WALK_ANSWER_MAX * 4);
  });
});

test('the caps hold the largest answers the API gives', () => {
  const evpid = '0a1b2c3d00000001';
  const page = (count: number, bytes: number) =>
    JSON.stringify({ envelopes: Array.from({ length: count }, () => ({ evpid, data: Buffer.alloc(bytes).toString('base64') })), cursor: 'c'.repeat(500) }).length;
  expect(page(PAGE_MAX, PAGE_BYTES_MAX / PAGE_MAX)).toBeLessThan(LARGEST_ANSWER_MAX / 1.4);
  expect(page(200, DEFAULT_LIMITS.maxEnvelopeBytes)).toBeLessThan(WALK_ANSWER_MAX / 1.4);
  expect(page(1, PAGE_BYTES_DEFAULT)).toBeLessThan(WALK_ANSWER_MAX / 1.4);
  const claimed = Array.from({ length: TAKEOVER_MAX }, () => ({ msgid: '0a1b2c3d', from: 'm'.repeat(63), evpids: Array(1000).fill(evpid) }));
  expect(JSON.stringify({ claimed, purged: 0, more: true }).length).toBeLessThan(LARGEST_ANSWER_MAX / 1.4);
});

test.each([
  ['invalid JSON', json('{"envelopes": [')],
  ['JSON of the wrong shape', json('{"evpid": "0a1b2c3d00000001", "data": 42}')],
  ['JSON that is not an object', json('"yes"')],
])('%s is refused', async (_name, handler) => {
  handle = handler;
  await expectFailure(LOAD, /envelopeLoad gave an answer that cannot be used/);
});

test('a JSON answer of another Content-Type is refused, unread', async () => {
  handle = json('{"evpid": "0a1b2c3d00000001", "data": ""}', 'text/html');
  await expectFailure(LOAD, /Content-Type text\/html instead of application\/json/);
  handle = (_req, res) => res.writeHead(200).end('{"evpid": "0a1b2c3d00000001", "data": ""}');
  await expectFailure(LOAD, /Content-Type \(none\)/);
});

test('a body of another Content-Type is refused', async () => {
  handle = (_req, res) => res.writeHead(206, { 'content-type': 'text/plain', 'content-range': 'bytes 0-4/5' }).end('hello');
  await expectFailure(READ, /Content-Type text\/plain instead of application\/octet-stream/);
});

test('a redirect is not followed: the token goes nowhere else', async () => {
  const elsewhere = http.createServer((_req, res) => res.end('{}'));
  await new Promise<void>((resolve) => elsewhere.listen(0, '127.0.0.1', resolve));
  let reached = 0;
  elsewhere.on('request', () => reached++);
  try {
    for (const status of [301, 302, 307, 308]) {
      handle = (_req, res) => res.writeHead(status, { location: `http://127.0.0.1:${(elsewhere.address() as AddressInfo).port}/envelopeLoad` }).end();
      await expectFailure(LOAD, new RegExp(`envelopeLoad answered ${status}`));
    }
    expect(reached).toBe(0);
  } finally {
    await new Promise((resolve) => elsewhere.close(resolve));
  }
});

test('an answer cut short is a failure', async () => {
  handle = (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': '1000' });
    res.write('{"evpid": "0a1b2c3d00000001", ');
    setTimeout(() => res.socket?.destroy(), 20);
  };
  await expectFailure(LOAD, /envelopeLoad did not answer/);
});

test('a service that sends its headers and then nothing fails the call at its deadline', async () => {
  handle = (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': '100' });
    res.flushHeaders();
  };
  await expectFailure(LOAD, /envelopeLoad did not answer/);
  handle = (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.write('{"envelopes": [');
  };
  await expectFailure(ENVELOPE_WALK, /envelopeWalk did not answer/);
});

test('answers over their cap are refused: advertised, streamed, and a body over the largest message', async () => {
  handle = stream(200 * MB, { 'content-length': String(200 * MB + 15) });
  await expectFailure(ENVELOPE_WALK, new RegExp(`more than ${WALK_ANSWER_MAX} bytes`));
  await expectFailure((c) => c.queueTakeover('mx1'), new RegExp(`more than ${LARGEST_ANSWER_MAX} bytes`));
  handle = stream(SMALL_ANSWER_MAX + 1);
  await expectFailure(LOAD, new RegExp(`more than ${SMALL_ANSWER_MAX} bytes`));
  handle = (_req, res) => res.writeHead(206, { 'content-type': 'application/octet-stream', 'content-range': `bytes 0-${2 * MAX_MESSAGE}/${4 * MAX_MESSAGE}` }).end(Buffer.alloc(2 * MAX_MESSAGE + 1));
  await expectFailure(READ, /messageFd gave an answer that cannot be used: more than \d+ bytes/);
});

test('a body part other than the one asked for is refused', async () => {
  const part = (contentRange: string, bytes: number): Handler => (_req, res) =>
    res.writeHead(206, { 'content-type': 'application/octet-stream', 'content-range': contentRange }).end(Buffer.alloc(bytes));
  for (const handler of [part('bytes 0-9/100', 5), part('bytes 5-14/100', 10), part('bytes 0-0/900000000', 1), part('garbage', 3)]) {
    handle = handler;
    await expectFailure(READ, /messageFd gave an answer that cannot be used: bytes 0-\d+ asked for/);
  }
});

test('an error answer is read for its message only, and is a failure the bridge knows', async () => {
  handle = (_req, res) => res.writeHead(403, { 'content-type': 'text/html' }).end(`<html>${'x'.repeat(10 * MB)}</html>`);
  const err = await expectFailure(LOAD, /envelopeLoad answered 403: <html>x/);
  expect(err.message.length).toBeLessThan(300);
});

test('after a rogue answer the client still works', async () => {
  const c = client();
  try {
    handle = stream(50 * MB);
    await expect(c.envelopeWalk()).rejects.toBeInstanceOf(QueueError);
    handle = json('{"evpid": "0a1b2c3d00000001", "data": "aGk="}');
    expect((await c.envelopeLoad('0a1b2c3d00000001')).toString()).toBe('hi');
  } finally {
    await c.close();
  }
});
