import { createHash } from 'node:crypto';
import { badRequest, conflict, notOwner, staleUpdate, tooLarge } from './errors';
import { msgidOf, type Msgid } from './ids';
import { CHUNK_BYTES, CREATE_BATCH_MAX, type Commit, type Envelope, type EnvelopeUpdate, type Limits, type MessageInfo, type OwnerCheck } from './store';

/** Checks the queue (lib/queue.ts) applies before it touches storage, so bad input writes nothing. */

export function sha256hex(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export function chunkCount(size: number): number {
  return Math.ceil(size / CHUNK_BYTES);
}

/** Splits a body into CHUNK_BYTES pieces, numbered from `first`. */
export function toChunks(data: Buffer, first = 0): { index: number; data: Buffer }[] {
  const chunks = [];
  for (let at = 0; at < data.length; at += CHUNK_BYTES) {
    chunks.push({ index: first + at / CHUNK_BYTES, data: data.subarray(at, at + CHUNK_BYTES) });
  }
  return chunks;
}

export function checkCreate(msgids: Msgid[]): void {
  if (msgids.length === 0 || msgids.length > CREATE_BATCH_MAX) {
    throw badRequest(`reserve 1 to ${CREATE_BATCH_MAX} msgids at once`, { count: msgids.length });
  }
}

export function checkEnvelope(envelope: Envelope, limits: Limits): void {
  if (envelope.data.length === 0) throw badRequest('envelope is empty', { evpid: envelope.evpid });
  if (envelope.data.length > limits.maxEnvelopeBytes) {
    throw tooLarge(`envelope is ${envelope.data.length} bytes, more than ${limits.maxEnvelopeBytes}`, {
      evpid: envelope.evpid,
      limit: limits.maxEnvelopeBytes,
    });
  }
}

export function checkUpdate(update: EnvelopeUpdate, limits: Limits): void {
  checkEnvelope(update, limits);
  const { version } = update;
  if (version !== undefined && !(Number.isSafeInteger(version) && version >= 1)) {
    throw badRequest('version must be a whole number from 1', { evpid: update.evpid, version });
  }
}

/**
 * Whether a versioned update must be written over the envelope stored: an
 * older version, or the same version with other bytes, is stale; the same
 * version with the same bytes is a retry with nothing left to write.
 */
export function isNewerUpdate(update: EnvelopeUpdate, stored: { data: Buffer; version: number }): boolean {
  if (update.version === undefined || update.version > stored.version) return true;
  if (update.version === stored.version && update.data.equals(stored.data)) return false;
  throw staleUpdate(update.evpid, update.version, stored.version);
}

export function checkSize(size: number, limits: Limits): void {
  if (size > limits.maxMessageBytes) {
    throw tooLarge(`message body is ${size} bytes, more than ${limits.maxMessageBytes}`, {
      limit: limits.maxMessageBytes,
    });
  }
}

export function checkWrite(msgid: Msgid, offset: number, data: Buffer, limits: Limits): void {
  if (offset % CHUNK_BYTES !== 0) {
    throw badRequest(`offset must be a multiple of ${CHUNK_BYTES}`, { msgid, offset });
  }
  if (data.length === 0) throw badRequest('part is empty', { msgid, offset });
  checkSize(offset + data.length, limits);
}

export function checkCommit(commit: Commit, limits: Limits): void {
  const { msgid } = commit;
  checkSize(commit.size, limits);
  if (commit.body && commit.body.length !== commit.size) {
    throw badRequest(`body is ${commit.body.length} bytes but size says ${commit.size}`, { msgid });
  }
  const seen = new Set<string>();
  for (const envelope of commit.envelopes ?? []) {
    if (msgidOf(envelope.evpid) !== msgid) {
      throw badRequest(`envelope ${envelope.evpid} does not belong to message ${msgid}`, { msgid });
    }
    if (seen.has(envelope.evpid)) throw badRequest(`envelope ${envelope.evpid} is given twice`, { msgid });
    seen.add(envelope.evpid);
    checkEnvelope(envelope, limits);
  }
  if (commit.body && sha256hex(commit.body) !== commit.sha256) {
    throw badRequest('body does not match its sha256', { msgid });
  }
}

/** Checks a body read back from its parts against the size and sha256 it is committed with. */
export function checkBody(msgid: Msgid, size: number, sha256: string, body: Buffer): void {
  if (body.length !== size || sha256hex(body) !== sha256) {
    throw conflict(`the body written for message ${msgid} does not match its size and sha256`, {
      msgid,
      size: body.length,
    });
  }
}

/** A repeated commit is a retry when the same owner sends the same body. */
export function isSameCommit(info: MessageInfo, commit: Commit): boolean {
  return (
    info.state !== 'incoming' &&
    info.owner === commit.owner &&
    info.size === commit.size &&
    info.sha256 === commit.sha256
  );
}

export function checkOwner(info: { msgid: Msgid; owner: string }, check: OwnerCheck | undefined): void {
  if (check?.owner !== undefined && check.owner !== info.owner) throw notOwner(info.msgid);
}

export function byteRange(size: number, offset = 0, length?: number): { start: number; end: number } {
  if (offset < 0 || (length !== undefined && length < 0)) throw badRequest('range must not be negative');
  const start = Math.min(offset, size);
  const end = length === undefined ? size : Math.min(size, start + length);
  return { start, end };
}
