import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { waitFor } from '../../dev/mail';

/**
 * A syslog socket for a test: a unix datagram socket, which Node cannot
 * bind, served by python3, which can. Each datagram the bridge's logger(1)
 * sends becomes one line of `lines()`.
 */
const SERVER = `
import os, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)
print("ready", flush=True)
while True:
    sys.stdout.write(s.recv(65536).decode("utf-8", "replace").rstrip("\\n") + "\\n")
    sys.stdout.flush()
`;

export interface SyslogSocket {
  path: string;
  lines(): string[];
  stop(): Promise<void>;
}

export async function startSyslog(): Promise<SyslogSocket> {
  const dir = mkdtempSync(path.join(tmpdir(), 'queue-syslog-'));
  chmodSync(dir, 0o755); // logger runs as the bridge's user
  const socket = path.join(dir, 'log');
  const child: ChildProcess = spawn('python3', ['-c', SERVER, socket], { stdio: ['ignore', 'pipe', 'inherit'] });
  let output = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => (output += s));
  await waitFor('the syslog socket', () => (output.startsWith('ready\n') ? true : undefined), 10_000);
  return {
    path: socket,
    lines: () => output.split('\n').slice(1).filter(Boolean),
    async stop() {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
