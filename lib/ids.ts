import { randomBytes } from 'node:crypto';
import { z } from 'zod';

/**
 * OpenSMTPD ids as this project writes them everywhere: fixed-width lowercase
 * hex. A msgid is a non-zero u32 (8 chars); an evpid is a u64 (16 chars) whose
 * high half is its msgid and whose low half is non-zero. A u64 never passes
 * through a JS number.
 */
export type Msgid = string;
export type Evpid = string;

const MSGID_RE = /^[0-9a-f]{8}$/;
const EVPID_RE = /^[0-9a-f]{16}$/;
const ZERO32 = '00000000';

export function isMsgid(s: string): s is Msgid {
  return MSGID_RE.test(s) && s !== ZERO32;
}

export function isEvpid(s: string): s is Evpid {
  return EVPID_RE.test(s) && s.slice(0, 8) !== ZERO32 && s.slice(8) !== ZERO32;
}

export const Msgid = z.string().refine(isMsgid, {
  message: 'msgid must be 8 lowercase hex digits, not zero',
});

export const Evpid = z.string().refine(isEvpid, {
  message: 'evpid must be 16 lowercase hex digits: a non-zero msgid then a non-zero u32',
});

/** The instance that owns a message (see docs/pool.md); also names a bridge. */
export const Owner = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, 'owner must be 1-63 of [A-Za-z0-9._-], starting alphanumeric');

export const DEFAULT_OWNER = 'default';

export function msgidOf(evpid: Evpid): Msgid {
  return evpid.slice(0, 8);
}

export function msgidToHex(n: number): Msgid {
  return (n >>> 0).toString(16).padStart(8, '0');
}

export function msgidFromHex(msgid: Msgid): number {
  return Number.parseInt(msgid, 16) >>> 0;
}

export function evpidToHex(n: bigint): Evpid {
  return BigInt.asUintN(64, n).toString(16).padStart(16, '0');
}

export function evpidFromHex(evpid: Evpid): bigint {
  return BigInt('0x' + evpid);
}

function randomNonZeroU32(): number {
  for (;;) {
    const n = randomBytes(4).readUInt32LE(0);
    if (n !== 0) return n;
  }
}

export function randomMsgid(): Msgid {
  return msgidToHex(randomNonZeroU32());
}

export function randomEvpid(msgid: Msgid): Evpid {
  return msgid + msgidToHex(randomNonZeroU32());
}
