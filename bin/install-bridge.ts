import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

/**
 * `npm run bridge:install -- [options]`: installs queue-rest where smtpd looks
 * for queue backends, /usr/libexec/opensmtpd/queue-NAME, as a small script
 * that runs this checkout's dist/bridge/main.js with this Node.js. With
 * --systemd=ARG it also writes a drop-in that makes Debian's opensmtpd.service
 * (which passes smtpd no options) run `smtpd -B queue=NAME:ARG`.
 */
export const LIBEXEC = '/usr/libexec/opensmtpd';
const DROPIN_DIR = '/etc/systemd/system/opensmtpd.service.d';
const USAGE = 'usage: npm run bridge:install -- [--name=rest] [--systemd=URL|CONFIG] [--token-file=PATH] [--uninstall] [--dry-run]';

export function bridgeScript(root: string, node = process.execPath): string {
  return [
    '#!/bin/sh',
    `# OpenSMTPD queue backend queue-rest, installed by npm run bridge:install from ${root}`,
    `exec ${node} ${path.join(root, 'dist/bridge/main.js')} "$@"`,
    '',
  ].join('\n');
}

export function systemdDropIn(name: string, arg: string, tokenFile: string): string {
  return [
    '# Runs smtpd with its queue in the REST service (npm run bridge:install --systemd).',
    '[Service]',
    'ExecStart=',
    `ExecStart=/usr/sbin/smtpd -B queue=${name}:${arg}`,
    `Environment=QUEUE_TOKEN_FILE=${tokenFile}`,
    '',
  ].join('\n');
}

export function installBridge(name: string, root: string, dryRun = false): string {
  const target = path.join(LIBEXEC, `queue-${name}`);
  const script = bridgeScript(root);
  if (!dryRun) {
    if (!existsSync(path.join(root, 'dist/bridge/main.js'))) throw new Error('dist/bridge/main.js is missing: npm run build first');
    mkdirSync(LIBEXEC, { recursive: true });
    writeFileSync(target, script, { mode: 0o755 });
  }
  return target;
}

function main(): void {
  const { values } = parseArgs({
    options: {
      name: { type: 'string', default: 'rest' },
      systemd: { type: 'string' },
      'token-file': { type: 'string', default: '/etc/opensmtpd/queue-rest.token' },
      uninstall: { type: 'boolean', default: false },
      'dry-run': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) return void process.stdout.write(`${USAGE}\n`);
  if (!/^[a-z][a-z0-9-]*$/.test(values.name)) throw new Error(`--name must be lowercase letters, digits and dashes: ${values.name}`);
  const root = path.join(__dirname, '../..');
  const dropIn = path.join(DROPIN_DIR, `queue-${values.name}.conf`);
  if (values.uninstall) {
    for (const file of [path.join(LIBEXEC, `queue-${values.name}`), dropIn]) {
      if (!values['dry-run']) rmSync(file, { force: true });
      process.stdout.write(`removed ${file}\n`);
    }
    return;
  }
  const target = installBridge(values.name, root, values['dry-run']);
  process.stdout.write(`${values['dry-run'] ? 'would install' : 'installed'} ${target}:\n${bridgeScript(root)}`);
  if (values.systemd) {
    const text = systemdDropIn(values.name, values.systemd, values['token-file']);
    if (!values['dry-run']) {
      mkdirSync(DROPIN_DIR, { recursive: true });
      writeFileSync(dropIn, text, { mode: 0o644 });
    }
    process.stdout.write(`\n${values['dry-run'] ? 'would write' : 'wrote'} ${dropIn}:\n${text}\nthen: systemctl daemon-reload && systemctl restart opensmtpd\n`);
  } else {
    process.stdout.write(`\nrun smtpd with: smtpd -B queue=${values.name}:http://127.0.0.1:8080   (token in QUEUE_TOKEN_FILE)\n`);
  }
}

if (require.main === module) {
  try {
    main();
  } catch (err) {
    process.stderr.write(`bridge:install: ${(err as Error).message}\n${USAGE}\n`);
    process.exit(1);
  }
}
