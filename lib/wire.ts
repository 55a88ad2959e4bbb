import { z } from 'zod';

/** What travels between the bridge and the functions, shared by both sides: bytes travel in JSON as base64. */

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
