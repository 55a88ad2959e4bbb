import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { DEFAULT_LIMITS, type Limits } from './store';

/**
 * The service's settings, all from the environment (README: Configuration).
 * Secrets are read from QUEUE_TOKEN or the file QUEUE_TOKEN_FILE names and
 * never logged.
 */
export type AuthMode = 'token' | 'iam' | 'none';

export interface ServiceConfig {
  auth: { mode: AuthMode; token?: string };
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
  QUEUE_AUTH: z.enum(['token', 'iam', 'none']).default('token'),
  QUEUE_TOKEN: z.string().optional(),
  QUEUE_TOKEN_FILE: z.string().optional(),
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

/** A secret as stored: its first line, without the whitespace around it (a trailing newline from `echo` or `openssl rand`). */
export function secretText(raw: string): string {
  return raw.trim().split(/\r?\n/)[0].trim();
}

/** Reads QUEUE_TOKEN, or the first line of the file QUEUE_TOKEN_FILE names. */
export function readToken(env: { QUEUE_TOKEN?: string; QUEUE_TOKEN_FILE?: string }): string | undefined {
  if (env.QUEUE_TOKEN) return secretText(env.QUEUE_TOKEN);
  if (!env.QUEUE_TOKEN_FILE) return undefined;
  try {
    return secretText(readFileSync(env.QUEUE_TOKEN_FILE, 'utf8'));
  } catch (err) {
    throw new ConfigError(`cannot read QUEUE_TOKEN_FILE ${env.QUEUE_TOKEN_FILE}: ${(err as Error).message}`);
  }
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): ServiceConfig {
  const parsed = Env.safeParse(env);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
    throw new ConfigError(`bad configuration: ${problems}`);
  }
  const e = parsed.data;
  const token = readToken(e);
  if (token !== undefined && token.length < MIN_TOKEN_LENGTH) {
    throw new ConfigError(`the queue token must be at least ${MIN_TOKEN_LENGTH} characters`);
  }
  if (e.QUEUE_AUTH === 'token' && !token) {
    throw new ConfigError(
      'no queue token: set QUEUE_TOKEN or QUEUE_TOKEN_FILE, or QUEUE_AUTH=iam behind Google IAM, or QUEUE_AUTH=none for local use only',
    );
  }
  return {
    auth: { mode: e.QUEUE_AUTH, token },
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
