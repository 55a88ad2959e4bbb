import { execFile, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lstatSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { installBridge, notRootOnly, uninstallBridge, wrapperScript } from '../bin/install-bridge';

/**
 * `npm run bridge:install`, for real (as root): smtpd runs what it installs
 * as root, so root must never run a file that another user can write, and
 * the installed bridge must not need the checkout it came from.
 */
const ROOT = path.join(__dirname, '..');
const NAME = 'installtest';

function ids(user: string): { uid: number; gid: number } {
  const [, , uid, gid] = spawnSync('getent', ['passwd', user], { encoding: 'utf8' }).stdout.split(':');
  return { uid: Number(uid), gid: Number(gid) };
}

/** Each problem with `file` and the folders above it: not root's, or writable by group or others. */
function writableByOthers(file: string): string[] {
  const problems: string[] = [];
  for (let at = file; ; at = path.dirname(at)) {
    const stat = lstatSync(at);
    if (stat.uid !== 0) problems.push(`${at}: uid ${stat.uid}`);
    if (stat.mode & 0o022) problems.push(`${at}: mode ${(stat.mode & 0o7777).toString(8)}`);
    if (at === '/') return problems;
  }
}

beforeAll(() => {
  if (process.geteuid?.() !== 0) throw new Error('these tests install into /usr/libexec/opensmtpd: run them as root');
});

afterAll(() => {
  uninstallBridge(NAME);
});

test('installs a root-owned copy: every file root runs, and every folder above it, belongs to root and only root can write it', () => {
  const installed = installBridge({ name: NAME });
  expect(installed.wrapper).toBe(`/usr/libexec/opensmtpd/queue-${NAME}`);
  expect(installed.main).toBe(`/usr/local/lib/opensmtpd/queue-${NAME}/queue-rest.js`);
  const script = readFileSync(installed.wrapper, 'utf8');
  expect(script).toBe(wrapperScript(installed));
  expect(script).toContain(`exec '${installed.node}' '${installed.main}' "$@"`);
  for (const file of [installed.wrapper, installed.node, installed.main, installed.addon]) {
    expect({ file, problems: writableByOthers(file) }).toEqual({ file, problems: [] });
    expect(notRootOnly(file)).toBeUndefined();
  }
  expect(statSync(installed.wrapper).mode & 0o7777).toBe(0o755);
  expect(statSync(installed.main).mode & 0o7777).toBe(0o644);
  expect(statSync(installed.addon).mode & 0o7777).toBe(0o644);
});

test('the installed bridge refers to nothing in the checkout and runs, as an unprivileged user, with the checkout closed to everyone but root', async () => {
  const installed = installBridge({ name: NAME });
  expect(readFileSync(installed.main, 'utf8')).not.toContain(ROOT);
  const mode = statSync(ROOT).mode & 0o7777;
  chmodSync(ROOT, 0o700);
  try {
    const nobody = ids('nobody');
    // NODE_OPTIONS would make root load code from anywhere: the wrapper drops it
    const env = { PATH: '/usr/bin:/bin', NODE_OPTIONS: `--require ${path.join(ROOT, 'no-such-file.js')}` };
    const ran = await promisify(execFile)(installed.wrapper, ['status'], { cwd: '/', env, ...nobody }).catch((e: { code: number; stderr: string }) => e);
    expect(ran).toMatchObject({ code: 1, stderr: expect.stringContaining('queue-rest status: no service given') });
  } finally {
    chmodSync(ROOT, mode);
  }
});

test('refuses to make root run a Node.js that another user can write, or one in a folder that its group can write', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'queue-install-'));
  try {
    const node = path.join(dir, 'node');
    writeFileSync(node, '#!/bin/sh\n', { mode: 0o755 });
    chownSync(dir, ids('nobody').uid, 0);
    expect(() => installBridge({ name: NAME, node })).toThrow(/refusing to make root run .*belongs to uid/);
    chownSync(dir, 0, 0);
    chmodSync(dir, 0o775);
    expect(() => installBridge({ name: NAME, node })).toThrow(/refusing to make root run .*can be written by its group/);
    chmodSync(dir, 0o755);
    chmodSync(node, 0o757);
    expect(() => installBridge({ name: NAME, node })).toThrow(/can be written by others/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('quotes every path in the script smtpd executes', () => {
  expect(wrapperScript({ node: "/opt/node js/bin/node", main: "/x/it's/queue-rest.js" })).toContain(
    `exec '/opt/node js/bin/node' '/x/it'\\''s/queue-rest.js' "$@"`,
  );
});

test('--uninstall removes everything the install wrote, the systemd drop-in included', () => {
  const cli = (...args: string[]) => spawnSync(process.execPath, [path.join(ROOT, 'dist/bin/install-bridge.js'), `--name=${NAME}`, ...args], { encoding: 'utf8' });
  const install = cli('--systemd=https://r-p.cloudfunctions.net', '--token-file=/etc/opensmtpd/queue-test.token');
  expect(install.status).toBe(0);
  const written = [`/usr/libexec/opensmtpd/queue-${NAME}`, `/usr/local/lib/opensmtpd/queue-${NAME}`, `/etc/systemd/system/opensmtpd.service.d/queue-${NAME}.conf`];
  for (const file of written) expect(existsSync(file)).toBe(true);
  expect(readFileSync(written[2], 'utf8')).toContain(`ExecStart=/usr/sbin/smtpd -B queue=${NAME}:https://r-p.cloudfunctions.net`);
  const removal = cli('--uninstall');
  expect(removal.status).toBe(0);
  for (const file of written) {
    expect(existsSync(file)).toBe(false);
    expect(removal.stdout).toContain(`removed ${file}`);
  }
  expect(removal.stdout).toMatch(/systemctl daemon-reload|systemd is not running here/);
});
