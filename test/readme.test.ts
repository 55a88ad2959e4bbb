import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../dev/emulator';

/** The README's curl session, run as written against `npm start`'s server. */
const ROOT = path.join(__dirname, '..');

function readmeSession(): string {
  const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const block = /<!-- readme-session:start -->\s*```sh\n([\s\S]*?)```\s*<!-- readme-session:end -->/.exec(readme);
  if (!block) throw new Error('README.md has no readme-session block');
  return block[1];
}

test("the README's curl session works as written", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'queue-readme-'));
  writeFileSync(path.join(dir, '.queue-token'), 'readme-session-token-0123456789\n', { mode: 0o600 });
  const port = await freePort();
  const server = spawn(process.execPath, [path.join(ROOT, 'dist/bin/serve.js')], {
    cwd: dir,
    env: {
      ...process.env,
      QUEUE_TOKEN_FILE: '.queue-token',
      PORT: String(port),
      DATASTORE_EMULATOR_HOST: process.env.QUEUE_TEST_FIRESTORE_HOST,
      QUEUE_NAMESPACE: `readme-${port}`,
      LOG_LEVEL: 'warn',
    },
    stdio: 'ignore',
  });
  try {
    for (let i = 0; i < 100; i++) {
      if (await fetch(`http://127.0.0.1:${port}/envelopeWalk`).then(() => true, () => false)) break;
      await sleep(100);
    }
    const script = readmeSession().replace('Q=http://127.0.0.1:8080', `Q=http://127.0.0.1:${port}`);
    const result = spawnSync('bash', ['-euo', 'pipefail', '-c', script], { cwd: dir, encoding: 'utf8' });
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    const expected = [
      '{"msgids":["0a1b2c3d"],"owner":"mx1","state":"incoming"}',
      '{"msgid":"0a1b2c3d","created":true}',
      '{"envelopes":[{"evpid":"0a1b2c3d00000001","data":"',
      '{"evpid":"0a1b2c3d00000001","data":"',
      'Subject: hello\r\n\r\nHello, world.\r\n',
      '{"evpid":"0a1b2c3d00000001","deleted":true,"messageDeleted":true}',
      '{"error":{"code":"not_found"',
    ];
    let at = 0;
    for (const piece of expected) {
      const found = result.stdout.indexOf(piece, at);
      expect([piece, found >= at]).toEqual([piece, true]);
      at = found + piece.length;
    }
  } finally {
    server.kill('SIGTERM');
  }
});
