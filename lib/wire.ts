import { z } from 'zod';

/** What travels between the bridge and the functions, shared by both sides: bytes travel in JSON as base64. */
export const Base64 = z
  .string()
  .regex(/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/, 'must be base64')
  .transform((s) => Buffer.from(s, 'base64'));

export const b64 = (data: Buffer) => data.toString('base64');
