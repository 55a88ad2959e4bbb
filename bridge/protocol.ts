import { closeSync } from 'node:fs';
import { evpidFromHex, evpidToHex, msgidFromHex, msgidToHex, type Evpid, type Msgid } from '../lib/ids';
import type { Imsg } from './imsg';

/**
 * smtpd's "proc" queue protocol (usr.sbin/smtpd/queue_proc.c, API version 2):
 * what each request carries and exactly what smtpd reads back. Every reply
 * has type OK; a failure is r=0, an empty LOAD, or no fd. A FAIL reply, a
 * byte too many or too few, or a payload over smtpd's buffer would make smtpd
 * exit, so replies are only ever built here.
 */
export const PROC = {
  OK: 0,
  FAIL: 1,
  INIT: 2,
  CLOSE: 3,
  MESSAGE_CREATE: 4,
  MESSAGE_DELETE: 5,
  MESSAGE_COMMIT: 6,
  MESSAGE_FD_R: 7,
  ENVELOPE_CREATE: 8,
  ENVELOPE_DELETE: 9,
  ENVELOPE_LOAD: 10,
  ENVELOPE_UPDATE: 11,
  ENVELOPE_WALK: 12,
} as const;

export const PROC_QUEUE_API_VERSION = 2;

export const PROC_NAMES: Record<number, string> = Object.fromEntries(Object.entries(PROC).map(([name, n]) => [n, name]));

/**
 * The buffer smtpd loads an envelope into: sizeof(struct envelope), 7568 bytes
 * in Debian's 6.8.0p2 on x86_64 (queue_envelope_load passes 0x1d90). A longer
 * LOAD or WALK answer would make smtpd exit, so such an envelope is withheld.
 */
export const ENVELOPE_BUFFER = 7568;

/** What the bridge does for smtpd; ids are hex, as everywhere in this project. */
export interface QueueBackend {
  init(version: number): Promise<void>;
  close(): Promise<void>;
  messageCreate(): Promise<Msgid>;
  messageDelete(msgid: Msgid): Promise<boolean>;
  /** Takes ownership of `fd`. */
  messageCommit(msgid: Msgid, fd: number): Promise<boolean>;
  /** An fd of a regular file holding the body, at offset 0; the caller closes it once sent. */
  messageFd(msgid: Msgid): Promise<number>;
  envelopeCreate(msgid: Msgid, data: Buffer): Promise<Evpid>;
  envelopeDelete(evpid: Evpid): Promise<boolean>;
  envelopeLoad(evpid: Evpid): Promise<Buffer>;
  envelopeUpdate(evpid: Evpid, data: Buffer): Promise<boolean>;
  /** The next envelope of the start-up walk, 'again' (nothing yet), or 'done'. */
  envelopeWalk(): Promise<{ evpid: Evpid; data: Buffer } | 'again' | 'done'>;
}

export interface Reply {
  data: Buffer;
  fd?: number;
}

const EMPTY: Reply = { data: Buffer.alloc(0) };

function int(r: number, extra?: Buffer): Reply {
  const head = Buffer.alloc(4);
  head.writeInt32LE(r, 0);
  return { data: extra ? Buffer.concat([head, extra]) : head };
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n, 0);
  return b;
}

function u64(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n, 0);
  return b;
}

class Malformed extends Error {}

function msgidAt(data: Buffer, exact: boolean): Msgid {
  if (data.length < 4 || (exact && data.length !== 4)) throw new Malformed(`payload of ${data.length} bytes`);
  return msgidToHex(data.readUInt32LE(0));
}

function evpidAt(data: Buffer, exact: boolean): Evpid {
  if (data.length < 8 || (exact && data.length !== 8)) throw new Malformed(`payload of ${data.length} bytes`);
  return evpidToHex(data.readBigUInt64LE(0));
}

/** The answer smtpd can take when a request fails: never FAIL, never a wrong length. */
export function failureReply(type: number): Reply {
  switch (type) {
    case PROC.CLOSE:
      return int(1);
    case PROC.INIT:
    case PROC.MESSAGE_FD_R:
    case PROC.ENVELOPE_LOAD:
      return EMPTY;
    case PROC.MESSAGE_CREATE:
    case PROC.MESSAGE_DELETE:
    case PROC.MESSAGE_COMMIT:
    case PROC.ENVELOPE_CREATE:
    case PROC.ENVELOPE_DELETE:
    case PROC.ENVELOPE_UPDATE:
    case PROC.ENVELOPE_WALK:
      return int(0);
    default:
      return EMPTY;
  }
}

/**
 * Runs one request against the backend and builds smtpd's reply. Throws only
 * for requests it does not know or cannot parse; the caller answers those
 * with failureReply.
 */
export async function dispatch(backend: QueueBackend, m: Imsg): Promise<Reply> {
  const { data } = m;
  switch (m.type) {
    case PROC.INIT: {
      if (data.length !== 4) throw new Malformed(`payload of ${data.length} bytes`);
      await backend.init(data.readUInt32LE(0));
      return EMPTY;
    }
    case PROC.CLOSE:
      await backend.close();
      return int(1);
    case PROC.MESSAGE_CREATE:
      return int(1, u32(msgidFromHex(await backend.messageCreate())));
    case PROC.MESSAGE_DELETE:
      return int((await backend.messageDelete(msgidAt(data, true))) ? 1 : 0);
    case PROC.MESSAGE_COMMIT: {
      if (m.fd === undefined) throw new Malformed('MESSAGE_COMMIT without an fd');
      if (data.length !== 4) {
        closeSync(m.fd);
        throw new Malformed(`payload of ${data.length} bytes`);
      }
      return int((await backend.messageCommit(msgidAt(data, true), m.fd)) ? 1 : 0);
    }
    case PROC.MESSAGE_FD_R:
      return { data: Buffer.alloc(0), fd: await backend.messageFd(msgidAt(data, true)) };
    case PROC.ENVELOPE_CREATE: {
      const evpid = await backend.envelopeCreate(msgidAt(data, false), data.subarray(4));
      return int(1, u64(evpidFromHex(evpid)));
    }
    case PROC.ENVELOPE_DELETE:
      return int((await backend.envelopeDelete(evpidAt(data, true))) ? 1 : 0);
    case PROC.ENVELOPE_LOAD: {
      const loaded = await backend.envelopeLoad(evpidAt(data, true));
      if (loaded.length > ENVELOPE_BUFFER) throw new Error(`envelope of ${loaded.length} bytes is over smtpd's ${ENVELOPE_BUFFER}`);
      return { data: loaded };
    }
    case PROC.ENVELOPE_UPDATE:
      return int((await backend.envelopeUpdate(evpidAt(data, false), data.subarray(8))) ? 1 : 0);
    case PROC.ENVELOPE_WALK: {
      const next = await backend.envelopeWalk();
      if (next === 'again') return int(0);
      if (next === 'done') return int(-1);
      if (next.data.length === 0 || next.data.length > ENVELOPE_BUFFER) throw new Error(`walked envelope ${next.evpid} has ${next.data.length} bytes`);
      return int(next.data.length, Buffer.concat([u64(evpidFromHex(next.evpid)), next.data]));
    }
    default:
      throw new Malformed(`unknown request type ${m.type}`);
  }
}
