import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { BUNDLE_DIR, BUNDLE_MAIN } from '../../dev/bundle-bridge';

/** The bridge's bundle (npm run build:bridge), as installed; its first argument may be an admin command (bridge/admin.ts). */
const MAIN = path.join(BUNDLE_DIR, BUNDLE_MAIN);

export interface AdminRun {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `queue-rest COMMAND …` as an administrator does, in a process of its
 * own whose environment is `env` alone, with a home of its own (no gcloud
 * credentials of this machine's user).
 */
export function runAdmin(args: string[], env: Record<string, string> = {}): Promise<AdminRun> {
  if (!existsSync(MAIN)) throw new Error(`${MAIN} is missing: run npm run build:bridge first (npm test does)`);
  const home = mkdtempSync(path.join(tmpdir(), 'queue-admin-home-'));
  const base = { PATH: process.env.PATH ?? '', HOME: home, CLOUDSDK_CONFIG: home, METADATA_SERVER_DETECTION: 'none' };
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], { env: { ...base, ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

/** A config file of `key value` lines, and the token files it names, private to their owner. */
export function adminConfig(settings: Record<string, string>, files: Record<string, string> = {}): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'queue-admin-'));
  const lines = Object.entries(settings);
  for (const [key, content] of Object.entries(files)) {
    const file = path.join(dir, key);
    writeFileSync(file, content, { mode: 0o600 });
    chmodSync(file, 0o600);
    lines.push([key, file]);
  }
  const config = path.join(dir, 'queue-rest.conf');
  writeFileSync(config, lines.map(([key, value]) => `${key} ${value}`).join('\n') + '\n', { mode: 0o600 });
  return config;
}
