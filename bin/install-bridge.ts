import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, existsSync, lstatSync, mkdirSync, realpathSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ADDON, BUNDLE_DIR, BUNDLE_MAIN } from '../dev/bundle-bridge';

/**
 * `npm run bridge:install -- [options]`: installs queue-rest where smtpd looks
 * for queue backends, /usr/libexec/opensmtpd/queue-NAME, as a root-owned copy
 * that does not depend on the checkout: the bundle built by `npm run build:bridge`
 * (one file plus usocket's addon) goes to /usr/local/lib/opensmtpd/queue-NAME/,
 * and queue-NAME is a small script that runs it with this Node.js. smtpd runs
 * it as root, so the installer refuses unless every file root runs, and every
 * folder above them, belongs to root and is writable by root alone. With
 * --systemd=ARG it also writes a drop-in that makes Debian's opensmtpd.service
 * (which passes smtpd no options) run `smtpd -B queue=NAME:ARG`.
 */
export const LIBEXEC = '/usr/libexec/opensmtpd';
export const LIBDIR = '/usr/local/lib/opensmtpd';
const DROPIN_DIR = '/etc/systemd/system/opensmtpd.service.d';
const USAGE =
  'usage: npm run bridge:install -- [--name=rest] [--systemd=URL|CONFIG] [--token-file=PATH] [--node=PATH] [--uninstall] [--dry-run]';

export interface Installed {
  /** What smtpd executes: /usr/libexec/opensmtpd/queue-NAME. */
  wrapper: string;
  /** The folder of the bundle: /usr/local/lib/opensmtpd/queue-NAME. */
  dir: string;
  main: string;
  addon: string;
  /** The Node.js binary the wrapper runs (its real path). */
  node: string;
  dropIn: string;
}

export class InstallError extends Error {
  override name = 'InstallError';
}

export function installedPaths(name: string, node = process.execPath): Installed {
  if (!/^[a-z][a-z0-9-]*$/.test(name)) throw new InstallError(`the name must be lowercase letters, digits and dashes: ${name}`);
  const dir = path.join(LIBDIR, `queue-${name}`);
  return {
    wrapper: path.join(LIBEXEC, `queue-${name}`),
    dir,
    main: path.join(dir, BUNDLE_MAIN),
    addon: path.join(dir, ADDON),
    node: existsSync(node) ? realpathSync(node) : node,
    dropIn: path.join(DROPIN_DIR, `queue-${name}.conf`),
  };
}

function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

/** The script smtpd executes. NODE_OPTIONS could make root load code from anywhere, so it is dropped. */
export function wrapperScript(paths: Pick<Installed, 'node' | 'main'>): string {
  return [
    '#!/bin/sh',
    '# OpenSMTPD queue backend queue-rest (npm run bridge:install); smtpd runs it as root.',
    'unset NODE_OPTIONS NODE_PATH',
    `exec ${shellQuote(paths.node)} ${shellQuote(paths.main)} "$@"`,
    '',
  ].join('\n');
}

export function systemdDropIn(name: string, arg: string, tokenFile: string): string {
  for (const [what, value] of [['--systemd', arg], ['--token-file', tokenFile]]) {
    if (/[\s"'\\%$;]/.test(value)) throw new InstallError(`${what} must not contain spaces, quotes, or any of \\ % $ ;: ${value}`);
  }
  return [
    '# Runs smtpd with its queue in the REST service (npm run bridge:install --systemd).',
    '[Service]',
    'ExecStart=',
    `ExecStart=/usr/sbin/smtpd -B queue=${name}:${arg}`,
    `Environment=QUEUE_TOKEN_FILE=${tokenFile}`,
    '',
  ].join('\n');
}

/**
 * Why root should not run or read `file`: it, or a folder above it, belongs
 * to another user or can be written by group or others. Undefined when safe.
 */
export function notRootOnly(file: string): string | undefined {
  for (let at = path.resolve(file); ; at = path.dirname(at)) {
    let stat;
    try {
      stat = lstatSync(at);
    } catch (err) {
      return `${at}: ${(err as Error).message}`;
    }
    if (stat.isSymbolicLink()) return `${at} is a symbolic link`;
    if (stat.uid !== 0) return `${at} belongs to uid ${stat.uid}, not root`;
    if ((stat.mode & 0o022) !== 0) return `${at} can be written by ${stat.mode & 0o020 ? 'its group' : 'others'} (mode ${(stat.mode & 0o7777).toString(8)})`;
    if (at === path.dirname(at)) return undefined;
  }
}

/** Copies through a temporary name and a rename: a running bridge keeps the file it mapped. */
function placeFile(target: string, write: (temp: string) => void, mode: number): void {
  const temp = `${target}.new-${process.pid}`;
  rmSync(temp, { force: true });
  write(temp);
  chownSync(temp, 0, 0);
  chmodSync(temp, mode);
  renameSync(temp, target);
}

export function installBridge(options: { name: string; node?: string; from?: string; dryRun?: boolean }): Installed {
  const paths = installedPaths(options.name, options.node);
  if (options.dryRun) return paths;
  if (process.geteuid?.() !== 0) throw new InstallError('installing the bridge needs root: it goes where smtpd runs it, as root');
  const nodeProblem = notRootOnly(paths.node);
  if (nodeProblem) throw new InstallError(`refusing to make root run ${paths.node}: ${nodeProblem}. Use a Node.js that root owns (--node=PATH).`);
  const from = options.from ?? BUNDLE_DIR;
  for (const file of [BUNDLE_MAIN, ADDON]) {
    if (!existsSync(path.join(from, file))) throw new InstallError(`${path.join(from, file)} is missing: run npm run build:bridge first`);
  }
  for (const dir of [LIBEXEC, LIBDIR, paths.dir]) {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    const problem = notRootOnly(dir);
    if (problem) throw new InstallError(`refusing to install into ${dir}: ${problem}`);
  }
  placeFile(paths.main, (temp) => copyFileSync(path.join(from, BUNDLE_MAIN), temp), 0o644);
  placeFile(paths.addon, (temp) => copyFileSync(path.join(from, ADDON), temp), 0o644);
  const legal = `${BUNDLE_MAIN}.LEGAL.txt`;
  if (existsSync(path.join(from, legal))) placeFile(path.join(paths.dir, legal), (temp) => copyFileSync(path.join(from, legal), temp), 0o644);
  placeFile(paths.wrapper, (temp) => writeFileSync(temp, wrapperScript(paths)), 0o755);
  for (const file of [paths.wrapper, paths.main, paths.addon, paths.node]) {
    const problem = notRootOnly(file);
    if (problem) throw new InstallError(`installed, but ${problem}: root must not run it; fix that or run --uninstall`);
  }
  return paths;
}

/** Removes what installBridge and --systemd wrote; answers the paths removed. */
export function uninstallBridge(name: string, dryRun = false): string[] {
  const paths = installedPaths(name);
  const removed = [paths.wrapper, paths.dir, paths.dropIn].filter((file) => existsSync(file));
  if (!dryRun) for (const file of removed) rmSync(file, { recursive: true, force: true });
  return removed;
}

/** systemd reads drop-ins only on daemon-reload; on a host without systemd there is nothing to do. */
function reloadSystemd(dryRun: boolean): string {
  if (!existsSync('/run/systemd/system')) return 'systemd is not running here: nothing to reload';
  if (dryRun) return 'would run: systemctl daemon-reload';
  const result = spawnSync('systemctl', ['daemon-reload'], { encoding: 'utf8' });
  return result.status === 0 ? 'ran systemctl daemon-reload' : `systemctl daemon-reload failed: ${result.stderr || result.error?.message}`;
}

function main(): void {
  const { values } = parseArgs({
    options: {
      name: { type: 'string', default: 'rest' },
      systemd: { type: 'string' },
      'token-file': { type: 'string', default: '/etc/opensmtpd/queue-rest.token' },
      node: { type: 'string', default: process.execPath },
      uninstall: { type: 'boolean', default: false },
      'dry-run': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) return void process.stdout.write(`${USAGE}\n`);
  const dryRun = values['dry-run'];
  const out = (line: string) => process.stdout.write(`${line}\n`);
  if (values.uninstall) {
    const paths = installedPaths(values.name);
    const hadDropIn = existsSync(paths.dropIn);
    for (const file of uninstallBridge(values.name, dryRun)) out(`${dryRun ? 'would remove' : 'removed'} ${file}`);
    if (hadDropIn) out(reloadSystemd(dryRun));
    return;
  }
  const dropIn = values.systemd ? systemdDropIn(values.name, values.systemd, values['token-file']) : undefined;
  const paths = installBridge({ name: values.name, node: values.node, dryRun });
  out(`${dryRun ? 'would install' : 'installed'} ${paths.dir}/{${BUNDLE_MAIN},${ADDON}} (root:root, 0644)`);
  out(`${dryRun ? 'would install' : 'installed'} ${paths.wrapper} (root:root, 0755):\n${wrapperScript(paths)}`);
  if (dropIn) {
    if (!dryRun) {
      mkdirSync(DROPIN_DIR, { recursive: true, mode: 0o755 });
      placeFile(paths.dropIn, (temp) => writeFileSync(temp, dropIn), 0o644);
    }
    out(`${dryRun ? 'would write' : 'wrote'} ${paths.dropIn}:\n${dropIn}`);
    out(reloadSystemd(dryRun));
    out('then: systemctl restart opensmtpd');
  } else {
    out(`run smtpd with: smtpd -B queue=${values.name}:http://127.0.0.1:8080   (token in QUEUE_TOKEN_FILE)`);
  }
  out('The checkout is no longer needed by smtpd. Upgrade: npm run build:bridge, then run this again.');
}

if (require.main === module) {
  try {
    main();
  } catch (err) {
    process.stderr.write(`bridge:install: ${(err as Error).message}\n${USAGE}\n`);
    process.exit(1);
  }
}
