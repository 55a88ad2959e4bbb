import { loadBridgeConfig } from '../../bridge/config';
import { freePort } from '../../dev/emulator';
import { loadConfig, secretText } from '../../lib/config';
import { adminConfig, runAdmin } from '../support/admin-command';
import { listening, message, serve, stopServed, waitFor, type Served } from '../support/served';

/**
 * A token is read the same way wherever it is kept: the service's
 * QUEUE_TOKEN or QUEUE_TOKEN_FILE, a Secret Manager version, the bridge's
 * and the admin commands' token file. `openssl rand -hex 32 | gcloud
 * secrets create --data-file=-` keeps the newline; an editor may add a CRLF.
 */
const TOKEN = 'f'.repeat(8) + '0123456789abcdef0123456789abcdef';

describe('secretText', () => {
  test.each([
    ['a trailing newline', `${TOKEN}\n`],
    ['a CRLF', `${TOKEN}\r\n`],
    ['spaces and tabs around it', `  \t${TOKEN} \t\r\n`],
    ['blank lines before it', `\r\n\n${TOKEN}\n`],
    ['a second line', `${TOKEN}\nsomething else\n`],
    ['a lone CR', `${TOKEN}\rsomething else`],
  ])('drops %s', (_what, raw) => {
    expect(secretText(raw, 'QUEUE_TOKEN')).toBe(TOKEN);
  });

  test('refuses what is empty once trimmed, saying where it was read from', () => {
    expect(() => secretText(' \r\n\t\n', 'QUEUE_TOKEN_FILE /etc/queue/token')).toThrow(
      'QUEUE_TOKEN_FILE /etc/queue/token holds no secret: it is empty once the whitespace around it is trimmed',
    );
  });

  test("the bridge's token files are read so", () => {
    const config = loadBridgeConfig(adminConfig({ url: 'http://127.0.0.1:8080' }, { 'token-file': `${TOKEN}\r\n`, 'admin-token-file': ` ${TOKEN}\n` }), {});
    expect(config).toMatchObject({ token: TOKEN, adminToken: TOKEN });
  });

  test('the service refuses a QUEUE_TOKEN of whitespace, and takes an empty one as unset', () => {
    expect(() => loadConfig({ QUEUE_TOKEN: ' \n' })).toThrow(/QUEUE_TOKEN holds no secret/);
    expect(() => loadConfig({ QUEUE_TOKEN: '' })).toThrow(/no queue token/);
  });
});

describe('a token with stray whitespace, end to end (npm start and queue-rest status)', () => {
  let served: Served;
  let url: string;

  beforeAll(async () => {
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    served = serve({ QUEUE_STORE: 'memory', QUEUE_TOKEN: `${TOKEN}\n`, PORT: String(port) });
    await listening(served);
  });
  afterAll(() => stopServed(served));

  test('the service with QUEUE_TOKEN="<token>\\n" and an admin whose token file holds "<token>\\r\\n" agree', async () => {
    const status = await runAdmin(['status', adminConfig({ url }, { 'token-file': `${TOKEN}\r\n` }), '--json']);
    expect(status).toMatchObject({ code: 0 });
    expect(JSON.parse(status.stdout)).toEqual({ instances: [], counts: [] });
  });

  test('so do a token in the environment with spaces around it, and an admin-token-file with a blank line first', async () => {
    expect(await runAdmin(['status', url, '--json'], { QUEUE_TOKEN: `  ${TOKEN}  \r\n` })).toMatchObject({ code: 0 });
    expect(await runAdmin(['status', adminConfig({ url }, { 'admin-token-file': `\n${TOKEN} \n` }), '--json'])).toMatchObject({ code: 0 });
  });

  test('a token file of whitespace only is refused before any request, with where it was read', async () => {
    const config = adminConfig({ url }, { 'token-file': '\r\n' });
    const status = await runAdmin(['status', config]);
    expect(status.code).toBe(1);
    expect(status.stderr).toMatch(/QUEUE_TOKEN_FILE \S+token-file holds no secret: it is empty once the whitespace around it is trimmed/);
  });

  test('the service does not start on a QUEUE_TOKEN of whitespace only, and says why', async () => {
    const refused = serve({ QUEUE_STORE: 'memory', QUEUE_TOKEN: ' \r\n', PORT: String(await freePort()) });
    expect(await refused.exited).toBe(1);
    const line = await waitFor('the reason', () => message(refused, /QUEUE_TOKEN holds no secret/));
    expect(line).toMatchObject({ severity: 'ERROR' });
  });
});
