import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { Owner } from './ids';
import { DEFAULT_LIMITS, type Limits } from './store';

/**
 * The service's settings, all from the environment (README: Configuration).
 * Secrets are read from QUEUE_TOKEN (QUEUE_ADMIN_TOKEN) or the file
 * QUEUE_TOKEN_FILE (QUEUE_ADMIN_TOKEN_FILE) names and never logged.
 */
export type AuthMode = 'token' | 'tokens' | 'iam' | 'none';

/** How callers are identified (lib/auth.ts). */
export interface AuthConfig {
  mode: AuthMode;
  /** token: the shared token. iam: if set, also required, in X-Queue-Token. */
  token?: string;
  /** tokens: the administrators' bootstrap token. */
  adminToken?: string;
  /** iam: the identity of each service account: an MX's instance, or an administrator. Without it, iam callers may do anything. */
  iam?: { mx: Record<string, string>; admins: string[] };
}

export interface ServiceConfig {
  auth: AuthConfig;
  store: 'datastore' | 'memory';
  datastore: { projectId?: string; namespace: string; databaseId?: string; timeoutMs: number };
  limits: Limits;
}

export const MIN_TOKEN_LENGTH = 16;

const positiveInt = z
  .string()
  .regex(/^[1-9][0-9]*$/, 'must be a positive whole number')
  .transform(Number);

const Env = z.object({
  QUEUE_AUTH: z.enum(['token', 'tokens', 'iam', 'none']).default('token'),
  QUEUE_TOKEN: z.string().optional(),
  QUEUE_TOKEN_FILE: z.string().optional(),
  QUEUE_ADMIN_TOKEN: z.string().optional(),
  QUEUE_ADMIN_TOKEN_FILE: z.string().optional(),
  QUEUE_IAM_MX: z.string().optional(),
  QUEUE_IAM_ADMINS: z.string().optional(),
  QUEUE_STORE: z.enum(['datastore', 'memory']).default('datastore'),
  QUEUE_NAMESPACE: z.string().regex(/^[0-9A-Za-z._-]{0,100}$/, 'must be a Datastore namespace name').default('opensmtpd'),
  QUEUE_DATABASE: z.string().optional(),
  DATASTORE_PROJECT_ID: z.string().optional(),
  GOOGLE_CLOUD_PROJECT: z.string().optional(),
  GCLOUD_PROJECT: z.string().optional(),
  QUEUE_STORAGE_TIMEOUT_MS: positiveInt.default(10_000),
  QUEUE_MAX_MESSAGE_BYTES: positiveInt.default(DEFAULT_LIMITS.maxMessageBytes),
  QUEUE_MAX_ENVELOPE_BYTES: positiveInt.default(DEFAULT_LIMITS.maxEnvelopeBytes),
});

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/**
 * A secret as stored, wherever from (the environment, a file, Secret
 * Manager): its first line, without the whitespace around it (the newline
 * of `echo` or `openssl rand`, a CRLF, stray spaces). `what` says where it
 * is from, for the error if nothing is left.
 */
export function secretText(raw: string, what: string): string {
  const secret = raw.trim().split(/\r\n|\r|\n/)[0].trim();
  if (!secret) throw new ConfigError(`${what} holds no secret: it is empty once the whitespace around it is trimmed`);
  return secret;
}

/** Reads the secret `name` given inline, or the first line of the file `name`_FILE names. An empty inline value counts as unset. */
export function readSecret(name: string, value: string | undefined, file: string | undefined): string | undefined {
  if (value) return secretText(value, name);
  if (!file) return undefined;
  let raw: string;
  try {
    raw = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read ${name}_FILE ${file}: ${(err as Error).message}`);
  }
  return secretText(raw, `${name}_FILE ${file}`);
}

/** A secret of the service's must be too long to guess. */
function longEnough(name: string, secret: string | undefined): string | undefined {
  if (secret !== undefined && secret.length < MIN_TOKEN_LENGTH) throw new ConfigError(`${name} must be at least ${MIN_TOKEN_LENGTH} characters`);
  return secret;
}

/** QUEUE_IAM_MX: `instance=email,...`, as email → instance. */
function parseIamMx(text: string | undefined): Record<string, string> {
  const mx: Record<string, string> = {};
  for (const pair of listOf(text)) {
    const [instance, email, ...extra] = pair.split('=');
    if (extra.length > 0 || !Owner.safeParse(instance).success || !email?.includes('@')) {
      throw new ConfigError(`QUEUE_IAM_MX: "${pair}" is not INSTANCE=SERVICE_ACCOUNT_EMAIL`);
    }
    if (mx[email] !== undefined) throw new ConfigError(`QUEUE_IAM_MX: ${email} is named twice`);
    mx[email] = instance;
  }
  return mx;
}

const listOf = (text: string | undefined) => (text ?? '').split(',').map((s) => s.trim()).filter(Boolean);

function authConfig(e: z.output<typeof Env>): AuthConfig {
  const token = longEnough('QUEUE_TOKEN', readSecret('QUEUE_TOKEN', e.QUEUE_TOKEN, e.QUEUE_TOKEN_FILE));
  const adminToken = longEnough('QUEUE_ADMIN_TOKEN', readSecret('QUEUE_ADMIN_TOKEN', e.QUEUE_ADMIN_TOKEN, e.QUEUE_ADMIN_TOKEN_FILE));
  if (e.QUEUE_AUTH === 'token' && !token) {
    throw new ConfigError(
      'no queue token: set QUEUE_TOKEN or QUEUE_TOKEN_FILE, or QUEUE_AUTH=tokens for one credential per MX, or QUEUE_AUTH=iam behind Google IAM, or QUEUE_AUTH=none for local use only',
    );
  }
  if (e.QUEUE_AUTH === 'tokens') {
    // a shared token left configured would look as if it still opened something
    if (token) throw new ConfigError('QUEUE_AUTH=tokens has no shared token: unset QUEUE_TOKEN and QUEUE_TOKEN_FILE (the bootstrap token is QUEUE_ADMIN_TOKEN)');
    return { mode: 'tokens', adminToken };
  }
  if (e.QUEUE_AUTH === 'iam' && (e.QUEUE_IAM_MX || e.QUEUE_IAM_ADMINS)) {
    const mx = parseIamMx(e.QUEUE_IAM_MX);
    const admins = listOf(e.QUEUE_IAM_ADMINS);
    const both = admins.filter((email) => mx[email] !== undefined);
    if (both.length > 0) throw new ConfigError(`${both.join(', ')}: an MX and an administrator at once`);
    return { mode: 'iam', token, iam: { mx, admins } };
  }
  return { mode: e.QUEUE_AUTH, token };
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): ServiceConfig {
  const parsed = Env.safeParse(env);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
    throw new ConfigError(`bad configuration: ${problems}`);
  }
  const e = parsed.data;
  return {
    auth: authConfig(e),
    store: e.QUEUE_STORE,
    datastore: {
      projectId: e.DATASTORE_PROJECT_ID ?? e.GOOGLE_CLOUD_PROJECT ?? e.GCLOUD_PROJECT,
      namespace: e.QUEUE_NAMESPACE,
      databaseId: e.QUEUE_DATABASE,
      timeoutMs: e.QUEUE_STORAGE_TIMEOUT_MS,
    },
    limits: { maxMessageBytes: e.QUEUE_MAX_MESSAGE_BYTES, maxEnvelopeBytes: e.QUEUE_MAX_ENVELOPE_BYTES, tombstoneMs: DEFAULT_LIMITS.tombstoneMs },
  };
}
