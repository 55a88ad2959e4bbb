import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { loadBridgeConfig } from '../../bridge/config';

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
