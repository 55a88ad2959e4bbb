import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** `npm start` as a user runs it: the built dist/bin/serve.js in a process of its own, its log lines parsed. */
const SERVE = path.join(__dirname, '../../dist/bin/serve.js');

export interface Served {
  child: ChildProcess;
  lines: Record<string, unknown>[];
  exited: Promise<number | null>;
}

export function serve(env: Record<string, string | undefined>): Served {
  if (!existsSync(SERVE)) throw new Error(`${SERVE} is missing: run npm run build first (npm test does)`);
  const base = { ...process.env, LOG_LEVEL: 'info', QUEUE_TOKEN: undefined, QUEUE_TOKEN_FILE: undefined, QUEUE_AUTH: undefined };
  const child = spawn(process.execPath, [SERVE], { env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: Record<string, unknown>[] = [];
  let rest = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    const text = rest + chunk.toString();
    const parts = text.split('\n');
    rest = parts.pop()!;
    for (const line of parts) if (line.trim()) lines.push(JSON.parse(line));
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, lines, exited };
}

export async function waitFor<T>(what: string, probe: () => T | undefined, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

export const message = (s: Served, re: RegExp) => s.lines.find((l) => re.test(String(l.message)));

/** Until it says where it listens. */
export const listening = (s: Served) => waitFor('listening', () => message(s, /queue functions at/));

export async function stopServed(s: Served): Promise<void> {
  s.child.kill('SIGTERM');
  await s.exited;
}
