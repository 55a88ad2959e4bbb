import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { BRIDGE_MODULES } from '../../dev/bundle-bridge';

const UNIX_SOCKET = path.join(__dirname, '../../dist/bridge/unix-socket.js');

/** Opens and drops sockets through bridge/unix-socket in a fresh Node with a collection after each. */
const churn = (dropUnclosed: boolean) => `
const net = require('node:net'), fs = require('node:fs'), os = require('node:os'), path = require('node:path');
const { listenUnix } = require(${JSON.stringify(UNIX_SOCKET)});
(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'usocket-gc-'));
  for (let i = 0; i < 200; i++) {
    const file = path.join(dir, 's' + i);
    let accepted;
    const got = new Promise((resolve) => (accepted = resolve));
    const server = await listenUnix(file, accepted);
    const client = net.connect(file);
    const socket = await got;
    server.close();
    if (!${dropUnclosed}) socket.destroy();
    client.destroy();
    global.gc();
    await new Promise((resolve) => setImmediate(resolve));
  }
  fs.rmSync(dir, { recursive: true });
  console.log('survived');
})();
`;

describe('unix sockets with fd passing (usocket)', () => {
  it.each([
    ['closed', false],
    ['dropped unclosed', true],
  ])('survives the garbage collector freeing %s sockets and servers', (_label, dropUnclosed) => {
    const run = spawnSync(process.execPath, ['--expose-gc', '-e', churn(dropUnclosed)], {
      encoding: 'utf8',
      timeout: 60_000,
      env: { ...process.env, NODE_PATH: BRIDGE_MODULES },
    });
    expect({ status: run.status, signal: run.signal, stderr: run.stderr }).toEqual({ status: 0, signal: null, stderr: '' });
    expect(run.stdout).toContain('survived');
  });
});
