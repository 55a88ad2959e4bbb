import type { Evpid, Msgid } from './ids';
import { chunkCount, toChunks } from './rules';
import { key, type CommittedRecord, type Found, type Records, type Row, type TombstoneRecord } from './storage';
import type { Commit, InstanceInfo, MessageInfo } from './store';

/** The queue's values as storage records (lib/storage.ts), and back. */

export function messageRow(commit: Commit, committedAt: Date, createdAt = committedAt): Row<'Message'> {
  const { msgid, owner, size, sha256 } = commit;
  return { key: key.message(msgid), data: { state: 'queued', owner, size, sha256, chunks: chunkCount(size), createdAt, committedAt } };
}

export function envelopeRow(evpid: Evpid, data: Buffer, createdAt: Date, version = 0): Row<'Envelope'> {
  return { key: key.envelope(evpid), data: { data, createdAt, ...(version > 0 && { version }) } };
}

export function chunkRows(msgid: Msgid, body: Buffer, first = 0): Row<'Chunk'>[] {
  return toChunks(body, first).map((c) => ({ key: key.chunk(msgid, c.index), data: { data: c.data } }));
}

/**
 * A message's envelopes as its Tally records them. `evpids` is null in a
 * tally written before they were listed, which only counts them; it stays
 * so, and whoever needs the evpids queries them.
 */
export interface EnvelopeTally {
  count: number;
  evpids: Evpid[] | null;
}

export function tallyRow(msgid: Msgid, tally: EnvelopeTally): Row<'Tally'> {
  return { key: key.tally(msgid), data: { count: tally.count, ...(tally.evpids && { evpids: tally.evpids.join(' ') }) } };
}

export const NO_ENVELOPES: EnvelopeTally = { count: 0, evpids: [] };

/** The tally found for a message; a message without one has no envelopes. */
export function tallyOf(found: Found, msgid: Msgid): EnvelopeTally {
  const row = found.get(key.tally(msgid));
  if (!row) return NO_ENVELOPES;
  const listed = typeof row.evpids === 'string' ? row.evpids : null;
  return { count: Number(row.count), evpids: listed === null ? null : listed.split(' ').filter(Boolean) };
}

/** The tally with `added` envelopes, which it does not have yet. */
export function tallyWith(tally: EnvelopeTally, added: Evpid[]): EnvelopeTally {
  return { count: tally.count + added.length, evpids: tally.evpids && [...tally.evpids, ...added].sort() };
}

export function tallyWithout(tally: EnvelopeTally, evpid: Evpid): EnvelopeTally {
  return { count: Math.max(tally.count - 1, 0), evpids: tally.evpids && tally.evpids.filter((e) => e !== evpid) };
}

export function toInfo(msgid: Msgid, row: CommittedRecord): MessageInfo {
  return {
    msgid,
    state: row.state === 'corrupt' ? 'corrupt' : 'queued',
    owner: String(row.owner),
    size: Number(row.size),
    sha256: String(row.sha256),
    createdAt: row.createdAt,
    committedAt: row.committedAt,
    claimedAt: row.claimedAt ?? null,
  };
}

export function incomingInfo(msgid: Msgid, row: Records['Incoming']): MessageInfo {
  return { msgid, state: 'incoming', owner: row.owner, size: null, sha256: null, createdAt: row.createdAt, committedAt: null };
}

export function toInstance(instance: string, row: Records['Instance'], now: number, claims?: Records['Claims']): InstanceInfo {
  return {
    instance,
    leaseUntil: row.leaseUntil,
    heartbeatAt: row.heartbeatAt,
    startedAt: row.startedAt,
    walkDone: Boolean(row.walkDone),
    alive: row.leaseUntil.getTime() > now,
    claims: claimCount(claims),
    draining: Boolean(row.draining),
  };
}

export function claimCount(row: Records['Claims'] | undefined): number {
  return row ? Number(row.count) : 0;
}

export function isTombstone(row: Records['Message'] | undefined): row is TombstoneRecord {
  return row?.state === 'tombstone';
}

/** A tombstone that still fences its msgid. */
export function isFencing(row: Records['Message'] | undefined, now = Date.now()): boolean {
  return isTombstone(row) && row.expiresAt.getTime() > now;
}

/** The committed message a Message record holds, if it is not a tombstone. */
export function committedRecord(row: Records['Message'] | undefined): CommittedRecord | undefined {
  return row && !isTombstone(row) ? row : undefined;
}
