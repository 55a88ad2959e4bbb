import { createHmac, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { badRequest } from './errors';
import { Evpid, Msgid, Owner } from './ids';
import type { ServiceKey } from './service-key';
import { PAGE_BYTES_DEFAULT, PAGE_DEFAULT, PAGE_MAX, type Envelope, type PageRequest } from './store';

/**
 * A walk position: everything up to envelope `e` of message `m` has been
 * handed out (all of `m` when `e` is absent), and `t0` is the snapshot time
 * fixed by the first page.
 */
export interface WalkPosition {
  t0: number;
  m?: string;
  e?: string;
}

/**
 * The walk a cursor belongs to: which one (`envelopes`, or `message MSGID`)
 * and whom it walks for (null: an administrator's walk of every owner).
 */
export interface WalkScope {
  walk: string;
  owner: string | null;
}

const MAC_BYTES = 32;

const Signed = z.strictObject({
  w: z.string(),
  o: Owner.nullable(),
  t0: z.number().int().nonnegative(),
  m: Msgid.optional(),
  e: Evpid.optional(),
});

const invalid = () => badRequest('the cursor is not valid: pass back a cursor this service handed out for the same walk');

/**
 * Cursors are opaque to clients and tamper-proof: base64url of an
 * HMAC-SHA256 under the service's key, then the position with the walk it
 * belongs to. A cursor changed in any byte, or used for another walk or
 * owner, is refused, so that a client cannot move a walk's snapshot or
 * reach another owner's envelopes. Checking one never writes: with no key
 * made yet, no cursor can be valid.
 */
export class WalkCursors {
  constructor(private readonly key: ServiceKey) {}

  async encode(scope: WalkScope, pos: WalkPosition): Promise<string> {
    const payload = Buffer.from(JSON.stringify({ w: scope.walk, o: scope.owner, ...pos }));
    return Buffer.concat([mac(await this.key.get(), payload), payload]).toString('base64url');
  }

  async decode(cursor: string, scope: WalkScope): Promise<WalkPosition> {
    const bytes = Buffer.from(cursor, 'base64url');
    // Node skips characters outside the alphabet and spare bits: only the canonical spelling counts
    if (bytes.length <= MAC_BYTES || bytes.toString('base64url') !== cursor) throw invalid();
    const secret = await this.key.find();
    const payload = bytes.subarray(MAC_BYTES);
    if (!secret || !timingSafeEqual(bytes.subarray(0, MAC_BYTES), mac(secret, payload))) throw invalid();
    let signed: z.infer<typeof Signed>;
    try {
      signed = Signed.parse(JSON.parse(payload.toString('utf8')));
    } catch {
      throw invalid();
    }
    const { w, o, ...pos } = signed;
    if (w !== scope.walk || o !== scope.owner) throw invalid();
    return pos;
  }
}

function mac(secret: Buffer, payload: Buffer): Buffer {
  return createHmac('sha256', secret).update(payload).digest();
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
