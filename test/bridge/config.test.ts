import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { waitFor } from '../../dev/mail';
import { admin } from '../../bridge/admin';
import { loadBridgeConfig } from '../../bridge/config';
import { PROC } from '../../bridge/protocol';
import { DEFAULT_LIMITS } from '../../lib/store';
import { SmtpdPeer, r, u32, u64 } from '../support/smtpd-peer';
import { startSyslog } from '../support/syslog';

/** The bridge's tokens: its own for smtpd's calls, an administrator's for the admin commands only, each from a private file. */
describe("the bridge's tokens", () => {
  let dir: string;
  const file = (name: string, text: string, mode = 0o600) => {
    const at = path.join(dir, name);
    writeFileSync(at, text);
    chmodSync(at, mode);
    return at;
  };

  beforeEach(() => (dir = mkdtempSync(path.join(tmpdir(), 'queue-rest-config-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  test('admin-token-file gives the admin commands their token, apart from the MX token', () => {
    const config = file('queue-rest.conf', `url http://127.0.0.1:1\ntoken-file ${file('mx.token', 'mx-token\n')}\nadmin-token-file ${file('admin.token', 'admin-token\n')}\n`);
    expect(loadBridgeConfig(config, {})).toMatchObject({ token: 'mx-token', adminToken: 'admin-token' });
    expect(loadBridgeConfig('http://127.0.0.1:1', { QUEUE_ADMIN_TOKEN_FILE: path.join(dir, 'admin.token') })).toMatchObject({ token: undefined, adminToken: 'admin-token' });
  });

  test('an admin token file others can read is refused, and the token never comes from QUEUE_REST_ADMIN_TOKEN', () => {
    const shared = file('admin.token', 'admin-token\n', 0o644);
    expect(() => loadBridgeConfig('http://127.0.0.1:1', { QUEUE_REST_ADMIN_TOKEN_FILE: shared })).toThrow(/group or others can read it/);
    expect(loadBridgeConfig('http://127.0.0.1:1', { QUEUE_REST_ADMIN_TOKEN: 'from-the-environment' }).adminToken).toBeUndefined();
  });
});

/**
 * The token travels with every request, so the bridge sends it over plain
 * http only to this machine, unless its configuration says the network is
 * trusted; a refused URL is a configuration error like any other.
 */
const env = { QUEUE_TOKEN: 'test-token-0123456789abcdef' };
const INSECURE = /plain http to another machine: the token would cross the network in clear/;

test.each(['http://10.0.0.1:8080', 'http://192.0.2.1', 'http://queue.example.test', 'http://[2001:db8::1]:8080', 'http://0.0.0.0:8080', 'http://localhost.example.test'])(
  'refuses plain http to %s',
  (url) => {
    expect(() => loadBridgeConfig(url, env)).toThrow(INSECURE);
  },
);

test.each(['http://127.0.0.1:8080', 'http://127.8.9.10', 'http://localhost:8080', 'http://[::1]:8080', 'https://queue.example.test', 'https://192.0.2.1'])(
  'accepts %s',
  (url) => {
    expect(loadBridgeConfig(url, env).url).toBe(url);
  },
);

test('accepts plain http to another machine when the config file or the environment allows it', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'queue-config-'));
  const file = path.join(dir, 'queue-rest.conf');
  writeFileSync(file, 'url http://192.0.2.1:8080\nallow-insecure-http yes\n');
  expect(loadBridgeConfig(file, env).url).toBe('http://192.0.2.1:8080');
  expect(loadBridgeConfig('http://192.0.2.1:8080', { ...env, QUEUE_REST_ALLOW_INSECURE_HTTP: 'yes' }).url).toBe('http://192.0.2.1:8080');
  expect(() => loadBridgeConfig(file, { ...env, QUEUE_REST_ALLOW_INSECURE_HTTP: 'no' })).toThrow(INSECURE);
  expect(() => loadBridgeConfig('http://192.0.2.1:8080', { ...env, QUEUE_REST_ALLOW_INSECURE_HTTP: 'maybe' })).toThrow(/allow-insecure-http/);
});

test('the admin commands refuse it too', async () => {
  await expect(admin(['status', 'http://192.0.2.1:8080'])).rejects.toThrow(INSECURE);
});

test('a bridge given plain http to another machine answers smtpd with failures and says why', async () => {
  const syslog = await startSyslog();
  const peer = await SmtpdPeer.start('http://192.0.2.1:8080', { ...env, QUEUE_REST_SYSLOG_SOCKET: syslog.path, QUEUE_REST_USER: 'nobody' });
  try {
    expect((await peer.request(PROC.INIT, u32(2))).type).toBe(PROC.OK);
    expect(r(await peer.request(PROC.MESSAGE_CREATE))).toBe(0);
    expect((await peer.request(PROC.ENVELOPE_LOAD, u64(0x1234567800000001n))).len).toBe(16);
    expect(r(await peer.request(PROC.ENVELOPE_WALK))).toBe(-1);
    expect(peer.output()).toMatch(INSECURE);
    const reason = /queue-rest cannot work: http:\/\/192\.0\.2\.1:8080 is plain http/;
    await waitFor('syslog to say why', () => (syslog.lines().some((l) => reason.test(l)) ? true : undefined), 10_000, () => syslog.lines().join('\n'));
    expect(r(await peer.request(PROC.CLOSE))).toBe(1);
    expect(await peer.close()).toBe(0);
  } finally {
    await syslog.stop();
  }
});

test("max-message-size follows a service whose QUEUE_MAX_MESSAGE_BYTES was raised: the bridge then reads bodies that large", () => {
  expect(loadBridgeConfig('http://127.0.0.1:1', {}).limits).toEqual(DEFAULT_LIMITS);
  expect(loadBridgeConfig('http://127.0.0.1:1', { QUEUE_REST_MAX_MESSAGE_SIZE: String(100 * 1024 * 1024) }).limits).toEqual({ ...DEFAULT_LIMITS, maxMessageBytes: 100 * 1024 * 1024 });
  expect(() => loadBridgeConfig('http://127.0.0.1:1', { QUEUE_REST_MAX_MESSAGE_SIZE: '0' })).toThrow(/max-message-size/);
});
