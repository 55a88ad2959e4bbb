import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { waitFor } from '../../dev/mail';
import { DISCOVER_SCRIPT } from '../../bridge/discover';
import { PROC } from '../../bridge/protocol';
import { TEST_TOKEN, startService } from '../support/service';
import { SmtpdPeer, r, u32 } from '../support/smtpd-peer';
import { startSyslog, type SyslogSocket } from '../support/syslog';

/**
 * What the bridge does with root, which smtpd starts it with: it opens its
 * files without following links planted at their paths, hands them to its
 * user, drops root for good (or serves nothing), keeps its secrets private,
 * and gets the reason for a failed start to syslog.
 */
type Service = Awaited<ReturnType<typeof startService>>;
let service: Service;
let syslog: SyslogSocket;
let dir: string;
const peers: SmtpdPeer[] = [];

function nobody(): { uid: number; gid: number } {
  const [, , uid, gid] = spawnSync('getent', ['passwd', 'nobody'], { encoding: 'utf8' }).stdout.split(':');
  return { uid: Number(uid), gid: Number(gid) };
}

beforeAll(async () => {
  if (process.geteuid?.() !== 0) throw new Error('the bridge drops root only when it has it: run these tests as root');
  service = await startService();
  syslog = await startSyslog();
  dir = mkdtempSync(path.join(tmpdir(), 'queue-priv-'));
  chmodSync(dir, 0o755);
});

afterAll(async () => {
  for (const peer of peers) await peer.close();
  await syslog.stop();
  await service.stop();
});

async function bridge(env: Record<string, string | undefined>, arg: string | null = service.baseUrl): Promise<SmtpdPeer> {
  const peer = await SmtpdPeer.start(arg ?? undefined, {
    QUEUE_TOKEN: TEST_TOKEN,
    QUEUE_REST_USER: 'nobody',
    QUEUE_REST_SYSLOG_SOCKET: syslog.path,
    QUEUE_REST_STATE: path.join(dir, 'state'),
    QUEUE_REST_RETRY_BUDGET: '2000',
    QUEUE_REST_TIMEOUT: '1000',
    ...env,
  });
  peers.push(peer);
  const init = await peer.request(PROC.INIT, u32(2));
  expect([init.type, init.len]).toEqual([PROC.OK, 16]);
  return peer;
}

function idsOfProcess(pid: number): string[] {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return [/^Uid:\s+(.*)$/m.exec(status)![1], /^Gid:\s+(.*)$/m.exec(status)![1]];
}

const syslogSays = (re: RegExp) => waitFor(`syslog to say ${re}`, () => (syslog.lines().some((l) => re.test(l)) ? true : undefined), 10_000, () => syslog.lines().join('\n'));

test('drops root for its user for good, and hands it its log and counters files through the open fds', async () => {
  const log = path.join(dir, 'drop.log');
  const stats = path.join(dir, 'drop.json');
  const peer = await bridge({ QUEUE_REST_INSTANCE: 'mx-drop', QUEUE_REST_LOG: log, QUEUE_REST_STATS_FILE: stats });
  expect(r(await peer.request(PROC.MESSAGE_CREATE))).toBe(1);
  const { uid, gid } = nobody();
  expect(idsOfProcess(peer.child.pid!)).toEqual([`${uid}\t${uid}\t${uid}\t${uid}`, `${gid}\t${gid}\t${gid}\t${gid}`]);
  for (const file of [log, stats]) expect([statSync(file).uid, statSync(file).gid]).toEqual([uid, gid]);
  expect(readFileSync(log, 'utf8')).toMatch(/"message":"running as nobody"/);
  // the journal of pending writes holds recipients: its folder is root's and private, the file the user's and private
  const state = path.join(dir, 'state');
  expect([statSync(state).uid, statSync(state).mode & 0o777]).toEqual([0, 0o700]);
  const journal = statSync(path.join(state, 'mx-drop.journal'));
  expect([journal.uid, journal.gid, journal.mode & 0o777]).toEqual([uid, gid, 0o600]);
});

test('does not follow a symbolic link planted at its log or counters path, says so in syslog, and still serves smtpd', async () => {
  const precious = path.join(dir, 'precious');
  writeFileSync(precious, 'precious\n', { mode: 0o600 });
  symlinkSync(precious, path.join(dir, 'planted.log'));
  symlinkSync(precious, path.join(dir, 'planted.json'));
  const peer = await bridge({ QUEUE_REST_INSTANCE: 'mx-links', QUEUE_REST_LOG: path.join(dir, 'planted.log'), QUEUE_REST_STATS_FILE: path.join(dir, 'planted.json') });
  expect(r(await peer.request(PROC.MESSAGE_CREATE))).toBe(1);
  await syslogSays(/planted\.log is a symbolic link: not opened/);
  await syslogSays(/planted\.json is a symbolic link: not opened/);
  expect(readFileSync(precious, 'utf8')).toBe('precious\n');
  expect([statSync(precious).uid, statSync(precious).mode & 0o777]).toEqual([0, 0o600]);
});

test('refuses to serve smtpd as root when it cannot drop root, and says why', async () => {
  for (const [user, why] of [
    ['no-such-user', /no user no-such-user to run as/],
    ['root', /user root is root: the bridge does not run as root/],
  ] as const) {
    const log = path.join(dir, `${user}.log`);
    const peer = await bridge({ QUEUE_REST_INSTANCE: 'mx-root', QUEUE_REST_USER: user, QUEUE_REST_LOG: log });
    expect(r(await peer.request(PROC.MESSAGE_CREATE))).toBe(0);
    expect(r(await peer.request(PROC.ENVELOPE_WALK))).toBe(-1);
    expect(readFileSync(log, 'utf8')).toMatch(why);
    expect(idsOfProcess(peer.child.pid!)[0]).not.toMatch(/^0\t/);
  }
});

test('refuses a token file that its group or others can read, and works once only its owner can', async () => {
  const token = path.join(dir, 'token');
  writeFileSync(token, `${TEST_TOKEN}\n`, { mode: 0o640 });
  chmodSync(token, 0o640);
  const shared = await bridge({ QUEUE_TOKEN: undefined, QUEUE_TOKEN_FILE: token, QUEUE_REST_INSTANCE: 'mx-token' });
  expect(r(await shared.request(PROC.MESSAGE_CREATE))).toBe(0);
  // the config is refused, so its log target is unknown: the reason goes to syslog
  const reason = `${token} is a token file but its group or others can read it (mode 640): chmod 600 ${token}`;
  await syslogSays(new RegExp(reason.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')));
  chmodSync(token, 0o600);
  const private_ = await bridge({ QUEUE_TOKEN: undefined, QUEUE_TOKEN_FILE: token, QUEUE_REST_INSTANCE: 'mx-token' });
  expect(r(await private_.request(PROC.MESSAGE_CREATE))).toBe(1);
});

test('without a usable configuration it tells syslog why, since a daemonized smtpd gives it /dev/null as stderr', async () => {
  const peer = await bridge({}, null);
  expect(r(await peer.request(PROC.MESSAGE_CREATE))).toBe(0);
  await syslogSays(/"severity":"CRITICAL".*queue-rest cannot work: no service given: run smtpd with -B queue=rest:URL/);
  expect(syslog.lines().find((l) => l.includes('no service given'))).toMatch(/^<18>/); // mail.crit
  expect(peer.output()).toContain('no service given');
});

test('the helper left with root runs `smtpctl discover` for one well-formed evpid a line, and refuses anything else', () => {
  const lines = ['0123456789abcdef', '0123456789ABCDEF', '0123456789abcde', '0123456789abcdef0', '01234567', '; touch /tmp/pwned;', '$(id)456789abcdef', '-h', '0123456789abcde\t', ''];
  const { stdout } = spawnSync('/bin/sh', ['-c', DISCOVER_SCRIPT], { input: lines.join('\n') + '\n', encoding: 'utf8', env: {} });
  // no smtpd knows that envelope: smtpctl fails, and says so
  expect(stdout.split('\n').filter(Boolean)).toEqual(['fail 0123456789abcdef', ...Array(lines.length - 1).fill('refused')]);
});
