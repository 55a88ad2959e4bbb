import { existsSync, readFileSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import { hostname, tmpdir } from 'node:os';
import { z } from 'zod';
import { readSecret } from '../lib/config';
import { Owner } from '../lib/ids';
import { DEFAULT_LIMITS, type Limits } from '../lib/store';
import { defaultLogTarget } from './logging';

/**
 * queue-rest's settings. smtpd runs it as `queue-proc ARG` for
 * `-B queue=rest:ARG`; ARG is the service's base URL or the path of a config
 * file of `key value` lines. Environment variables QUEUE_REST_<KEY> (KEY in
 * upper case, - as _) override the file. The token never comes from ARG: it
 * comes from QUEUE_TOKEN or QUEUE_TOKEN_FILE in smtpd's environment, or the
 * config file's token-file (or token, if the file is private). The admin
 * commands (bridge/admin.ts) use the administrator's token instead when one
 * is set: QUEUE_ADMIN_TOKEN, QUEUE_ADMIN_TOKEN_FILE, admin-token-file or
 * admin-token, read the same way.
 */
export interface BridgeConfig {
  url: string;
  /** This MX's token: the shared token, or its own credential (QUEUE_AUTH=tokens). */
  token?: string;
  /** An administrator's token, for the admin commands only. */
  adminToken?: string;
  /** token: the shared token only. iam: also a Google ID token for each function's URL. */
  auth: 'token' | 'iam';
  instance: string;
  timeoutMs: number;
  retryBudgetMs: number;
  inlineMax: number;
  cacheBytes: number;
  imsg: '6.8' | '7.7';
  /** 'syslog', 'stderr', or a file path (default: syslog if the host has it, else logging.ts DEFAULT_LOG_FILE). */
  log: string;
  logLevel: string;
  /** The user to run as after start-up (smtpd starts the bridge as root). */
  user?: string;
  statsFile?: string;
  tmpDir: string;
  /** The folder of the journal of pending writes (bridge/journal.ts), one file per instance. */
  stateDir: string;
  /** Answer ENVELOPE_DELETE before the service has it (bridge/write-behind.ts). */
  asyncDelete: boolean;
  /** This instance's lease on its messages, in ms (docs/pool.md). */
  leaseMs: number;
  /** The service's limits; the largest body (its QUEUE_MAX_MESSAGE_BYTES) caps what the bridge reads of a body. */
  limits: Limits;
  /** auto: take a share of dead instances' mail into the running smtpd at every renewal; start: only at start-up. */
  takeover: 'auto' | 'start';
  /** Hand this instance's mail to the survivors when smtpd stops (docs/pool.md: Planned drain). */
  drainOnClose: boolean;
  /** Where the counters go in Prometheus's text format, for node_exporter's textfile collector. */
  metricsFile?: string;
}

const KEYS = [
  'url',
  'allow-insecure-http',
  'token-file',
  'token',
  'admin-token-file',
  'admin-token',
  'auth',
  'instance',
  'timeout',
  'retry-budget',
  'inline-max',
  'cache',
  'imsg',
  'log',
  'log-level',
  'user',
  'stats-file',
  'tmp',
  'state',
  'async-delete',
  'lease',
  'max-message-size',
  'takeover',
  'drain-on-close',
  'metrics-file',
] as const;

export const DEFAULT_STATE_DIR = '/var/lib/opensmtpd-queue-rest';

const ms = z.coerce.number().int().min(1);

const Settings = z.object({
  url: z.url({ protocol: /^https?$/ }),
  'allow-insecure-http': z.enum(['yes', 'no']).default('no'),
  'token-file': z.string().optional(),
  token: z.string().optional(),
  'admin-token-file': z.string().optional(),
  'admin-token': z.string().optional(),
  auth: z.enum(['token', 'iam']).default('token'),
  instance: Owner.optional(),
  timeout: ms.default(5_000),
  'retry-budget': ms.default(15_000),
  'inline-max': z.coerce.number().int().min(0).default(4 * 1024 * 1024),
  cache: z.coerce.number().int().min(0).default(64 * 1024 * 1024),
  imsg: z.enum(['6.8', '7.7']).default('6.8'),
  log: z.string().optional(),
  'log-level': z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).default('info'),
  user: z.string().optional(),
  'stats-file': z.string().optional(),
  tmp: z.string().default(tmpdir()),
  state: z.string().default(DEFAULT_STATE_DIR),
  'async-delete': z.enum(['yes', 'no']).default('yes'),
  lease: z.coerce.number().int().min(1000).default(60_000),
  'max-message-size': z.coerce.number().int().min(1).default(DEFAULT_LIMITS.maxMessageBytes),
  takeover: z.enum(['auto', 'start']).default('auto'),
  'drain-on-close': z.enum(['yes', 'no']).default('no'),
  'metrics-file': z.string().optional(),
});

export class BridgeConfigError extends Error {
  override name = 'BridgeConfigError';
}

export function parseConfigFile(text: string): Record<string, string> {
  const settings: Record<string, string> = {};
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.replace(/#.*$/, '').trim();
    if (!line) continue;
    const match = /^([a-z-]+)\s+(.+)$/.exec(line);
    if (!match || !(KEYS as readonly string[]).includes(match[1])) {
      throw new BridgeConfigError(`line ${i + 1}: expected "key value" with key one of ${KEYS.join(', ')}`);
    }
    settings[match[1]] = match[2];
  }
  return settings;
}

export function loadBridgeConfig(arg: string | undefined, env: NodeJS.ProcessEnv = process.env): BridgeConfig {
  if (!arg) throw new BridgeConfigError('no service given: run smtpd with -B queue=rest:URL or -B queue=rest:/path/to/queue-rest.conf');
  let settings: Record<string, string> = {};
  if (/^https?:\/\//.test(arg)) {
    const url = new URL(arg);
    if (url.username || url.password || url.search) {
      throw new BridgeConfigError('the URL must not carry credentials or a query: secrets do not belong on a command line');
    }
    settings.url = arg;
  } else {
    if (!existsSync(arg)) throw new BridgeConfigError(`no config file ${arg}`);
    settings = parseConfigFile(readFileSync(arg, 'utf8'));
    if (settings.token || settings['admin-token']) refuseShared(arg, 'holds a token');
  }
  for (const key of KEYS) {
    const value = env[`QUEUE_REST_${key.toUpperCase().replace(/-/g, '_')}`];
    if (value !== undefined && key !== 'token' && key !== 'admin-token') settings[key] = value;
  }
  const parsed = Settings.safeParse(settings);
  if (!parsed.success) {
    throw new BridgeConfigError(parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
  }
  const s = parsed.data;
  if (s['allow-insecure-http'] === 'no') refuseInsecure(s.url);
  return {
    url: s.url.replace(/\/+$/, ''),
    token: privateSecret('QUEUE_TOKEN', env.QUEUE_TOKEN ?? s.token, env.QUEUE_TOKEN_FILE ?? s['token-file']),
    adminToken: privateSecret('QUEUE_ADMIN_TOKEN', env.QUEUE_ADMIN_TOKEN ?? s['admin-token'], env.QUEUE_ADMIN_TOKEN_FILE ?? s['admin-token-file']),
    auth: s.auth,
    instance: s.instance ?? defaultInstance(),
    timeoutMs: s.timeout,
    retryBudgetMs: s['retry-budget'],
    inlineMax: s['inline-max'],
    cacheBytes: s.cache,
    imsg: s.imsg,
    log: s.log ?? defaultLogTarget(),
    logLevel: s['log-level'],
    user: s.user,
    statsFile: s['stats-file'],
    tmpDir: s.tmp,
    stateDir: s.state,
    asyncDelete: s['async-delete'] === 'yes',
    leaseMs: s.lease,
    limits: { ...DEFAULT_LIMITS, maxMessageBytes: s['max-message-size'] },
    takeover: s.takeover,
    drainOnClose: s['drain-on-close'] === 'yes',
    metricsFile: s['metrics-file'],
  };
}

/** A secret given inline, or read from a file only its owner can read. */
function privateSecret(name: string, inline: string | undefined, file: string | undefined): string | undefined {
  if (!inline && file && existsSync(file)) refuseShared(file, 'is a token file');
  return readSecret(name, inline, file);
}

/**
 * The token travels with every request: over plain http it crosses the
 * network in clear, unless the service is on this machine.
 */
function refuseInsecure(url: string): void {
  const { protocol, hostname } = new URL(url);
  if (protocol === 'http:' && !isLoopback(hostname)) {
    throw new BridgeConfigError(
      `${url} is plain http to another machine: the token would cross the network in clear. Use https, or set allow-insecure-http yes (QUEUE_REST_ALLOW_INSECURE_HTTP=yes) on a network you trust`,
    );
  }
}

/** 127.0.0.0/8, ::1 or localhost, as the URL parser spells them. */
function isLoopback(hostname: string): boolean {
  const host = hostname.replace(/^\[(.*)\]$/, '$1');
  if (host === 'localhost' || host === '::1') return true;
  return isIP(host) === 4 && host.startsWith('127.');
}

/** A secret must be readable by its owner alone: a group or others could pass it on. */
function refuseShared(file: string, what: string): void {
  const mode = statSync(file).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw new BridgeConfigError(`${file} ${what} but its group or others can read it (mode ${mode.toString(8)}): chmod 600 ${file}`);
  }
}

/** The host name, as an instance id: stable across restarts, distinct per MX. */
export function defaultInstance(): string {
  const name = hostname().split('.')[0].replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[^A-Za-z0-9]+/, '');
  return (name || 'mx').slice(0, 63);
}
