import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type { ServiceConfig } from './config';
import { QueueError } from './errors';

/**
 * The header a shared token travels in when `Authorization` carries a
 * Google ID token (functions deployed without public access).
 */
export const TOKEN_HEADER = 'x-queue-token';

/**
 * Checks a request's credentials:
 * - token: the shared token, in X-Queue-Token or as `Authorization: Bearer`.
 * - iam:   Google's front end has checked the caller's ID token before the
 *          function runs; a shared token, if configured, is required too, in
 *          X-Queue-Token.
 * - none:  nothing is checked (local development only).
 */
export function authenticate(headers: IncomingHttpHeaders, auth: ServiceConfig['auth']): void {
  if (auth.mode === 'none') return;
  if (!auth.token) return; // iam without a shared token
  const given = presentedToken(headers, auth.mode === 'token');
  if (given === undefined || !sameSecret(given, auth.token)) {
    throw new QueueError('unauthorized', 'a valid queue token is required', {});
  }
}

function presentedToken(headers: IncomingHttpHeaders, bearerAllowed: boolean): string | undefined {
  const own = headers[TOKEN_HEADER];
  if (typeof own === 'string') return own;
  const authorization = headers.authorization;
  if (bearerAllowed && authorization?.startsWith('Bearer ')) return authorization.slice('Bearer '.length);
  return undefined;
}

/** Compares in time that depends on neither secret's content nor length. */
function sameSecret(given: string, expected: string): boolean {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(digest(given), digest(expected));
}
