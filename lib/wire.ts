import { z } from 'zod';

/** What travels between the bridge and the functions, shared by both sides: bytes travel in JSON as base64, or after it in a frame. */

const BASE64_ALPHABET = new Uint8Array(128);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/') BASE64_ALPHABET[c.charCodeAt(0)] = 1;

/**
 * Whether `s` is standard base64 with its padding. A loop, not a regex: V8
 * matches a regex with a repeated group by backtracking, and overflows its
 * stack on strings of more than about 4.47 M characters (a 3.4 MB body).
 */
export function isBase64(s: string): boolean {
  if (s.length % 4 !== 0) return false;
  const end = s.endsWith('==') ? s.length - 2 : s.endsWith('=') ? s.length - 1 : s.length;
  for (let i = 0; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c >= 128 || BASE64_ALPHABET[c] === 0) return false;
  }
  return true;
}

export const Base64 = z
  .string()
  .refine(isBase64, 'must be base64')
  .transform((s) => Buffer.from(s, 'base64'));

export const b64 = (data: Buffer) => data.toString('base64');

/**
 * messageCommit's binary form: the request's JSON less its body, on one
 * line, then the body's raw bytes. JSON.stringify never writes a raw
 * newline, so the first one ends the JSON; the service takes the body as
 * it came, neither decoded nor copied.
 */
export const FRAME_TYPE = 'application/vnd.opensmtpd-queue.commit';

export const frame = (head: object, body: Buffer): Buffer => Buffer.concat([Buffer.from(`${JSON.stringify(head)}\n`), body]);

/** The JSON line and the bytes after it, or undefined if there is no newline. */
export function unframe(raw: Buffer): { head: string; body: Buffer } | undefined {
  const end = raw.indexOf(0x0a);
  if (end < 0) return undefined;
  return { head: raw.toString('utf8', 0, end), body: raw.subarray(end + 1) };
}
