import { z } from 'zod';
import { badRequest } from './errors';
import { Evpid, Msgid } from './ids';
import { PAGE_BYTES_DEFAULT, PAGE_DEFAULT, PAGE_MAX, type Envelope, type PageRequest } from './store';

/**
 * A walk position: everything up to envelope `e` of message `m` has been
 * handed out (all of `m` when `e` is absent), and `t0` is the snapshot time
 * fixed by the first page. Opaque to clients: base64url JSON.
 */
export interface WalkPosition {
  t0: number;
  m?: string;
  e?: string;
}

const Position = z.strictObject({
  t0: z.number().int().nonnegative(),
  m: Msgid.optional(),
  e: Evpid.optional(),
});

export function encodeCursor(pos: WalkPosition): string {
  return Buffer.from(JSON.stringify(pos)).toString('base64url');
}

export function decodeCursor(cursor: string): WalkPosition {
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    throw badRequest('cursor is not one this service handed out');
  }
  const parsed = Position.safeParse(raw);
  if (!parsed.success) throw badRequest('cursor is not one this service handed out');
  return parsed.data;
}

/** A page being filled: envelopes are taken until its count or byte budget is spent, and at least one. */
export class PageFill {
  readonly items: Envelope[] = [];
  readonly limit: number;
  private readonly maxBytes: number;
  private bytes = 0;

  constructor(page: PageRequest = {}) {
    this.limit = Math.min(Math.max(page.limit ?? PAGE_DEFAULT, 1), PAGE_MAX);
    this.maxBytes = Math.max(page.maxBytes ?? PAGE_BYTES_DEFAULT, 1);
  }

  isFull(next: Envelope): boolean {
    return this.items.length === this.limit || (this.items.length > 0 && this.bytes + next.data.length > this.maxBytes);
  }

  /** Takes `next` if it fits; false if the page is full. */
  add(next: Envelope): boolean {
    if (this.isFull(next)) return false;
    this.items.push({ evpid: next.evpid, data: next.data });
    this.bytes += next.data.length;
    return true;
  }
}
