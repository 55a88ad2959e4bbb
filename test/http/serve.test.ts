import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { FUNCTION_NAMES } from '../../lib/api';
import { randomMsgid } from '../../lib/ids';
import { freePort } from '../../dev/emulator';
import { message, serve, waitFor, type Served } from '../support/served';

describe('npm start (dist/bin/serve.js)', () => {
  const running: Served[] = [];
  afterEach(async () => {
    for (const s of running.splice(0)) {
      s.child.kill('SIGTERM');
      await s.exited;
    }
  });

  test('refuses to start without a token unless auth is explicitly off', async () => {
    const s = serve({ DATASTORE_EMULATOR_HOST: process.env.QUEUE_TEST_FIRESTORE_HOST, PORT: String(await freePort()) });
    expect(await s.exited).toBe(1);
    expect(message(s, /no queue token/)).toMatchObject({ severity: 'ERROR' });
  });

  test('with QUEUE_AUTH=none it starts and warns', async () => {
    const port = await freePort();
    const s = serve({ DATASTORE_EMULATOR_HOST: process.env.QUEUE_TEST_FIRESTORE_HOST, PORT: String(port), QUEUE_AUTH: 'none' });
    running.push(s);
    await waitFor('listening', () => message(s, /queue functions at/));
    expect(message(s, /QUEUE_AUTH=none/)).toMatchObject({ severity: 'WARNING' });
    const res = await fetch(`http://127.0.0.1:${port}/envelopeWalk`);
    expect(res.status).toBe(200);
  });

  test('serves every function on loopback, with a new token file, and logs one JSON line per request', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'queue-serve-'));
    const tokenFile = path.join(dir, 'token');
    const port = await freePort();
    const s = serve({
      DATASTORE_EMULATOR_HOST: process.env.QUEUE_TEST_FIRESTORE_HOST,
      PORT: String(port),
      QUEUE_TOKEN_FILE: tokenFile,
      QUEUE_NAMESPACE: `serve-${randomMsgid()}`,
    });
    running.push(s);
    const ready = await waitFor('listening', () => message(s, /queue functions at/));
    expect(ready).toMatchObject({ url: `http://127.0.0.1:${port}`, auth: 'token' });
    expect(message(s, /^data: the Datastore emulator at/)).toBeDefined();
    expect(statSync(tokenFile).mode & 0o777).toBe(0o600);
    const token = readFileSync(tokenFile, 'utf8').trim();
    expect(JSON.stringify(s.lines)).not.toContain(token);

    for (const fn of FUNCTION_NAMES) {
      const res = await fetch(`http://127.0.0.1:${port}/${fn}`, { method: 'OPTIONS', headers: { authorization: `Bearer ${token}` } });
      expect([fn, res.status]).toEqual([fn, 405]);
    }
    const msgid = randomMsgid();
    const created = await fetch(`http://127.0.0.1:${port}/messageCreate`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ msgids: [msgid] }),
    });
    expect(created.status).toBe(201);
    const line = await waitFor('request log', () => s.lines.find((l) => l.message === 'POST messageCreate 201'));
    expect(line).toMatchObject({
      severity: 'INFO',
      message: 'POST messageCreate 201',
      msgids: [msgid],
      httpRequest: { requestMethod: 'POST', requestUrl: '/messageCreate', status: 201, latency: expect.stringMatching(/^\d+\.\d+s$/) },
    });
    expect(typeof line.timestamp).toBe('string');
    expect(line.latencyMs).toEqual(expect.any(Number));
  });

  test('starts and stops a Firestore emulator of its own when none is given', async () => {
    const port = await freePort();
    const s = serve({ DATASTORE_EMULATOR_HOST: undefined, QUEUE_EMULATOR_PORT: '0', PORT: String(port), QUEUE_AUTH: 'none' });
    running.push(s);
    await waitFor('listening', () => message(s, /queue functions at/), 60_000);
    const data = message(s, /^data: the Firestore emulator in Datastore mode/) as { emulator: string; message: string };
    expect(data.message).toMatch(/lost when npm start stops/);
    const res = await fetch(`http://127.0.0.1:${port}/messageCreate`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ msgids: [randomMsgid()] }),
    });
    expect(res.status).toBe(201);
    s.child.kill('SIGTERM');
    expect(await s.exited).toBe(0);
    await expect(fetch(`http://${data.emulator}/`)).rejects.toThrow();
  });
});
