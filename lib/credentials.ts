import { createHash, randomBytes } from 'node:crypto';
import type { Caller, TokenRegistry } from './auth';
import { conflict, notFound } from './errors';
import { key, type Records, type Storage } from './storage';

/**
 * The credentials of QUEUE_AUTH=tokens: one per MX, and any number of
 * administrators'. A token is 256 random bits, answered once when issued;
 * storage keeps only its sha256 (a Credential record keyed by the hex
 * digest), so a copy of the database opens nothing. A revoked credential is
 * kept, with the time it was revoked.
 *
 * Each process remembers what a token stood for, for `cacheMs`
 * (CREDENTIAL_CACHE_MS by default), so that a request costs no lookup: a
 * revoked token keeps working that long in the processes that saw it.
 */
export const CREDENTIAL_CACHE_MS = 5_000;
/** Most tokens remembered at once, so that random tokens cannot fill the memory. */
const CACHE_MAX = 10_000;

export type Grant = { role: 'mx'; instance: string } | { role: 'admin' };

export interface CredentialInfo {
  /** The hex sha256 of the token. */
  digest: string;
  role: 'mx' | 'admin';
  instance: string | null;
  issuedAt: Date;
  revokedAt: Date | null;
}

export class Credentials implements TokenRegistry {
  private readonly cacheMs: number;
  private readonly known = new Map<string, { caller: Promise<Caller | undefined>; until: number }>();

  constructor(
    private readonly storage: Storage,
    options: { cacheMs?: number } = {},
  ) {
    this.cacheMs = options.cacheMs ?? CREDENTIAL_CACHE_MS;
  }

  /** Makes a new credential; its token is in the answer and nowhere else. */
  async issue(grant: Grant): Promise<{ token: string; credential: CredentialInfo }> {
    const token = randomBytes(32).toString('base64url');
    const data: Records['Credential'] = { role: grant.role, instance: grant.role === 'mx' ? grant.instance : null, issuedAt: new Date(), revokedAt: null };
    const digest = digestOf(token);
    await this.storage.write({ insert: [{ key: key.credential(digest), data }] });
    return { token, credential: { digest, ...data } };
  }

  /**
   * Revokes the credential whose digest starts with `digest` (one
   * credential only), or every live
   * credential of `instance`. Answers those it revoked; revoking again
   * changes nothing.
   */
  async revoke(target: { digest: string } | { instance: string }): Promise<CredentialInfo[]> {
    const all = await this.list();
    let chosen: CredentialInfo[];
    if ('digest' in target) {
      chosen = all.filter((c) => c.digest.startsWith(target.digest));
      if (chosen.length === 0) throw notFound('credential', target.digest);
      if (chosen.length > 1) throw conflict(`${chosen.length} credentials start with ${target.digest}: give more of the digest`, { credential: target.digest });
    } else {
      chosen = all.filter((c) => c.instance === target.instance);
      if (chosen.length === 0) throw notFound('instance', target.instance);
    }
    const revokedAt = new Date();
    const revoked = chosen.filter((c) => c.revokedAt === null).map((c) => ({ ...c, revokedAt }));
    if (revoked.length > 0) {
      await this.storage.write({ put: revoked.map(({ digest, ...data }) => ({ key: key.credential(digest), data })) });
    }
    for (const c of revoked) this.known.delete(c.digest);
    return revoked;
  }

  async list(): Promise<CredentialInfo[]> {
    const rows = await this.storage.query({ kind: 'Credential' });
    return rows.map((row) => ({ digest: row.key.id, ...row.data })).sort((a, b) => a.issuedAt.getTime() - b.issuedAt.getTime());
  }

  identify(token: string): Promise<Caller | undefined> {
    const digest = digestOf(token);
    const now = Date.now();
    const cached = this.known.get(digest);
    if (cached && cached.until > now) return cached.caller;
    if (this.known.size >= CACHE_MAX) this.known.clear();
    const caller = this.lookup(digest);
    this.known.set(digest, { caller, until: now + this.cacheMs });
    // a storage failure is not an answer: the next request asks again
    caller.catch(() => this.known.delete(digest));
    return caller;
  }

  private async lookup(digest: string): Promise<Caller | undefined> {
    const found = (await this.storage.get([key.credential(digest)])).get(key.credential(digest));
    if (!found || found.revokedAt) return undefined;
    if (found.role === 'admin') return { role: 'admin' };
    return found.instance ? { role: 'mx', instance: found.instance } : undefined;
  }
}

export function digestOf(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}
