import { spawnSync } from 'node:child_process';
import { existsSync, unlinkSync, writeFileSync } from 'node:fs';
import { findEmulatorJar } from './emulator';

/**
 * What `npm test` needs besides npm packages, checked or installed before
 * jest starts: both Datastore emulator jars and java (which cannot be
 * installed from here: Google's hosts are out of reach), and Debian's
 * opensmtpd (installed with apt if missing, without starting its service).
 */
const SMTPD = '/usr/sbin/smtpd';
const POLICY = '/usr/sbin/policy-rc.d';

function fail(message: string): never {
  process.stderr.write(`setup-tests: ${message}\n`);
  process.exit(1);
}

function run(command: string, args: string[], env: NodeJS.ProcessEnv = {}): { ok: boolean; output: string } {
  const result = spawnSync(command, args, { encoding: 'utf8', env: { ...process.env, ...env } });
  return { ok: result.status === 0, output: `${result.stdout ?? ''}${result.stderr ?? ''}${result.error?.message ?? ''}` };
}

function checkEmulators(): void {
  try {
    findEmulatorJar('firestore');
    findEmulatorJar('datastore');
  } catch (err) {
    fail((err as Error).message);
  }
  if (!run('java', ['-version']).ok) fail('java is missing: the Datastore emulators need a Java runtime (apt-get install default-jre-headless).');
}

/** Installs opensmtpd with its service kept stopped: a policy-rc.d that denies starts, for the install only. */
function installOpensmtpd(): void {
  const users = ['opensmtpd', 'opensmtpq'];
  if (existsSync(SMTPD) && users.every((user) => run('getent', ['passwd', user]).ok)) return;
  if (process.getuid?.() !== 0) fail(`${SMTPD} is missing and installing it needs root: run npm test as root, or apt-get install opensmtpd first.`);
  process.stdout.write('setup-tests: installing Debian opensmtpd (its service is not started)\n');
  const ownPolicy = !existsSync(POLICY);
  if (ownPolicy) writeFileSync(POLICY, '#!/bin/sh\nexit 101\n', { mode: 0o755 });
  try {
    const env = { DEBIAN_FRONTEND: 'noninteractive' };
    // its users are made by the package's postinst: a package whose users were removed is installed again
    const install = ['install', '-y', '--no-install-recommends', ...(existsSync(SMTPD) ? ['--reinstall'] : []), 'opensmtpd'];
    let result = run('apt-get', install, env);
    if (!result.ok) {
      const update = run('apt-get', ['update'], env);
      if (!update.ok) fail(`apt-get update failed:\n${update.output}`);
      result = run('apt-get', install, env);
    }
    if (!result.ok) fail(`apt-get install opensmtpd failed:\n${result.output}`);
  } finally {
    if (ownPolicy) unlinkSync(POLICY);
  }
  if (!existsSync(SMTPD)) fail(`apt-get installed opensmtpd but ${SMTPD} is still missing`);
}

checkEmulators();
installOpensmtpd();
