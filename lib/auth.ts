import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type { AuthConfig } from './config';
import { forbidden, QueueError } from './errors';

/**
 * The header a token travels in when `Authorization` carries a Google ID
 * token (functions deployed without public access).
 */
export const TOKEN_HEADER = 'x-queue-token';

/**
 * Who a request comes from, as its credential says (never as its body says):
 * - any:   the shared token, or no check at all: one identity that may do
 *          everything (a single MX, local development);
 * - mx:    one MX of a pool, which acts only as its own instance;
 * - admin: an administrator (status, listings, quarantine, credentials).
 */
export type Caller = { role: 'any' } | { role: 'mx'; instance: string } | { role: 'admin' };

/** Finds the identity an issued token stands for (lib/credentials.ts); undefined if unknown or revoked. */
export interface TokenRegistry {
  identify(token: string): Promise<Caller | undefined>;
}

const ANY: Caller = { role: 'any' };

/**
 * Checks a request's credentials, from its headers alone, and says who sent it:
 * - none:   nothing is checked (local development only); any.
 * - token:  the shared token, in X-Queue-Token or as `Authorization: Bearer`; any.
 * - tokens: a token of one MX or administrator issued by credentialIssue (or
 *           the bootstrap admin token), in X-Queue-Token or as Bearer.
 * - iam:    Google's front end has checked the caller's ID token before the
 *           function runs; a shared token, if configured, is required too, in
 *           X-Queue-Token. With `auth.iam`, the token's service account says
 *           which MX or administrator calls; without it, any.
 */
export async function authenticate(headers: IncomingHttpHeaders, auth: AuthConfig, registry?: TokenRegistry): Promise<Caller> {
  if (auth.mode === 'none') return ANY;
  if (auth.mode === 'tokens') return tokenHolder(presentedToken(headers, true), auth, registry);
  if (auth.token) {
    const given = presentedToken(headers, auth.mode === 'token');
    if (given === undefined || !sameSecret(given, auth.token)) throw unauthorized('a valid queue token is required');
  }
  if (auth.mode === 'iam' && auth.iam) return serviceAccount(headers, auth.iam);
  return ANY;
}

async function tokenHolder(given: string | undefined, auth: AuthConfig, registry: TokenRegistry | undefined): Promise<Caller> {
  if (given === undefined) throw unauthorized('a queue credential is required');
  if (auth.adminToken !== undefined && sameSecret(given, auth.adminToken)) return { role: 'admin' };
  const caller = await registry?.identify(given);
  if (!caller) throw unauthorized('this queue credential is unknown or revoked');
  return caller;
}

/**
 * The ID token's service account. Cloud Run (under Cloud Functions gen2) has
 * verified its signature before the function runs, and replaces the
 * signature when it passes the token on, so only its claims are read here.
 * That holds only for a function deployed without public access.
 */
function serviceAccount(headers: IncomingHttpHeaders, iam: NonNullable<AuthConfig['iam']>): Caller {
  const claims = idTokenClaims(headers.authorization);
  if (typeof claims?.email !== 'string' || claims.email_verified !== true) {
    throw unauthorized('a Google ID token with a verified email is required');
  }
  if (iam.admins.includes(claims.email)) return { role: 'admin' };
  const instance = iam.mx[claims.email];
  if (instance !== undefined) return { role: 'mx', instance };
  throw forbidden(`${claims.email} is neither an MX nor an administrator of this queue`, { email: claims.email });
}

function idTokenClaims(authorization: string | undefined): Record<string, unknown> | undefined {
  const payload = authorization?.startsWith('Bearer ') ? authorization.slice('Bearer '.length).split('.')[1] : undefined;
  if (!payload) return undefined;
  try {
    const claims: unknown = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
    return typeof claims === 'object' && claims !== null ? (claims as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function presentedToken(headers: IncomingHttpHeaders, bearerAllowed: boolean): string | undefined {
  const own = headers[TOKEN_HEADER];
  if (typeof own === 'string') return own;
  const authorization = headers.authorization;
  if (bearerAllowed && authorization?.startsWith('Bearer ')) return authorization.slice('Bearer '.length);
  return undefined;
}

const unauthorized = (message: string) => new QueueError('unauthorized', message, {});

/** Compares in time that depends on neither secret's content nor length. */
function sameSecret(given: string, expected: string): boolean {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(digest(given), digest(expected));
}
