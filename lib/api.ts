import { z } from 'zod';
import { Base64, b64 } from './wire';
import { Evpid, Msgid, Owner } from './ids';
import type { CredentialInfo } from './credentials';
import { CREATE_BATCH_MAX, DELETE_BATCH_MAX, PAGE_BYTES_MAX, PAGE_MAX, TAKEOVER_MAX, type Envelope, type InstanceInfo, type MessageInfo } from './store';

/**
 * The HTTP shapes of the queue API, shared by the functions (which parse
 * requests with them) and the client (which builds requests and reads
 * answers). docs/api.md describes them for people.
 */

export const FUNCTION_NAMES = [
  'messageCreate',
  'messageWrite',
  'messageCommit',
  'messageDelete',
  'messageFd',
  'messageWalk',
  'messageCorrupt',
  'messageUncorrupt',
  'messagePurge',
  'envelopeCreate',
  'envelopeDelete',
  'envelopeLoad',
  'envelopeUpdate',
  'envelopeWalk',
  'instanceHeartbeat',
  'queueStatus',
  'queueTakeover',
  'credentialIssue',
  'credentialRevoke',
  'credentialList',
] as const;

export type FunctionName = (typeof FUNCTION_NAMES)[number];

export const EnvelopeJson = z.strictObject({ evpid: Evpid, data: Base64 });

export const toEnvelopeJson = (e: Envelope) => ({ evpid: e.evpid, data: b64(e.data) });

export const toMessageJson = (m: MessageInfo) => ({
  msgid: m.msgid,
  state: m.state,
  owner: m.owner,
  size: m.size,
  sha256: m.sha256,
  createdAt: m.createdAt.toISOString(),
  committedAt: m.committedAt?.toISOString() ?? null,
  claimedAt: m.claimedAt?.toISOString() ?? null,
});

export const MessageJson = z.object({
  msgid: Msgid,
  state: z.enum(['incoming', 'queued', 'corrupt']),
  owner: z.string(),
  size: z.number().nullable(),
  sha256: z.string().nullable(),
  createdAt: z.string().transform((s) => new Date(s)),
  committedAt: z
    .string()
    .nullable()
    .transform((s) => (s === null ? null : new Date(s))),
  claimedAt: z
    .string()
    .nullable()
    .optional()
    .transform((s) => (s ? new Date(s) : null)),
});

export const toInstanceJson = (i: InstanceInfo) => ({
  instance: i.instance,
  leaseUntil: i.leaseUntil.toISOString(),
  heartbeatAt: i.heartbeatAt.toISOString(),
  startedAt: i.startedAt.toISOString(),
  walkDone: i.walkDone,
  alive: i.alive,
  claims: i.claims,
  draining: i.draining,
});

const IsoDate = z.iso.datetime().transform((s) => new Date(s));

export const InstanceJson = z.object({
  instance: z.string(),
  leaseUntil: IsoDate,
  heartbeatAt: IsoDate,
  startedAt: IsoDate,
  walkDone: z.boolean(),
  alive: z.boolean(),
  claims: z.number().int().min(0).default(0),
  draining: z.boolean().default(false),
});

/** How much of a credential's digest is shown, and the least of it credentialRevoke takes. */
export const DIGEST_SHOWN = 12;

/** A credential as listed: its digest cut to DIGEST_SHOWN hex digits, never its token. */
export const toCredentialJson = (c: CredentialInfo) => ({
  digest: c.digest.slice(0, DIGEST_SHOWN),
  role: c.role,
  instance: c.instance,
  issuedAt: c.issuedAt.toISOString(),
  revokedAt: c.revokedAt?.toISOString() ?? null,
});

export const CredentialJson = z.object({
  digest: z.string(),
  role: z.enum(['mx', 'admin']),
  instance: z.string().nullable(),
  issuedAt: IsoDate,
  revokedAt: IsoDate.nullable(),
});

export const Sha256 = z.string().regex(/^[0-9a-f]{64}$/, 'sha256 must be 64 lowercase hex digits');

/** Every function that names a message or envelope may say who asks. */
const owned = { owner: Owner.optional() };

const Limit = z.coerce.number().int().min(1).max(PAGE_MAX);

export const Requests = {
  messageCreate: z.strictObject({ msgids: z.array(Msgid).min(1).max(CREATE_BATCH_MAX), ...owned }),
  messageWrite: z.strictObject({ msgid: Msgid, offset: z.string().regex(/^(0|[1-9][0-9]{0,10})$/).transform(Number), ...owned }),
  messageCommit: z.strictObject({
    msgid: Msgid,
    size: z.number().int().nonnegative(),
    sha256: Sha256,
    body: Base64.optional(),
    envelopes: z.array(EnvelopeJson).optional(),
    ...owned,
  }),
  messageDelete: z.strictObject({ msgid: Msgid, ...owned }),
  messageFd: z.strictObject({ msgid: Msgid, ...owned }),
  messageWalk: z.strictObject({ msgid: Msgid, cursor: z.string().max(500).optional(), limit: Limit.optional(), ...owned }),
  messageCorrupt: z.strictObject({ msgid: Msgid, ...owned }),
  messageUncorrupt: z.strictObject({ msgid: Msgid, ...owned }),
  messagePurge: z.strictObject({ owner: Owner, keep: z.array(Msgid).max(10_000).optional() }),
  envelopeCreate: z.strictObject({ evpid: Evpid, data: Base64, ...owned }),
  envelopeDelete: z.union([
    z.strictObject({ evpid: Evpid, ...owned }),
    z.strictObject({ evpids: z.array(Evpid).min(1).max(DELETE_BATCH_MAX), ...owned }),
  ]),
  envelopeLoad: z.strictObject({ evpid: Evpid, ...owned }),
  envelopeUpdate: z.strictObject({
    evpid: Evpid,
    data: Base64,
    /** Optional for older clients; see QueueStore.envelopeUpdate. */
    version: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER).optional(),
    ...owned,
  }),
  envelopeWalk: z.strictObject({
    cursor: z.string().max(500).optional(),
    limit: Limit.optional(),
    maxBytes: z.coerce.number().int().min(1).max(PAGE_BYTES_MAX).optional(),
    ...owned,
  }),
  instanceHeartbeat: z.strictObject({
    instance: Owner,
    leaseMs: z.number().int().min(1000).max(24 * 3600 * 1000),
    walkDone: z.boolean().optional(),
    startedAt: IsoDate.optional(),
    drain: z.enum(['ask', 'done']).optional(),
    /** The bridge's background writes not landed yet: logged, for a log-based metric (docs/metrics.md). */
    pendingWrites: z.number().int().min(0).optional(),
  }),
  queueStatus: z.strictObject({}),
  queueTakeover: z.strictObject({
    owner: Owner,
    from: z.array(Owner).min(1).max(100).optional(),
    limit: z.number().int().min(1).max(TAKEOVER_MAX).optional(),
    share: z.boolean().optional(),
  }),
  credentialIssue: z.discriminatedUnion('role', [z.strictObject({ role: z.literal('mx'), instance: Owner }), z.strictObject({ role: z.literal('admin') })]),
  credentialRevoke: z.union([
    z.strictObject({ digest: z.string().regex(new RegExp(`^[0-9a-f]{${DIGEST_SHOWN},64}$`), `digest must be ${DIGEST_SHOWN} to 64 lowercase hex digits`) }),
    z.strictObject({ instance: Owner }),
  ]),
  credentialList: z.strictObject({}),
} satisfies Record<FunctionName, z.ZodType>;

export const Responses = {
  messageCreate: z.object({ msgids: z.array(Msgid), owner: z.string(), state: z.literal('incoming') }),
  messageCommit: z.object({ msgid: Msgid, created: z.boolean() }),
  messageDelete: z.object({ msgid: Msgid, deleted: z.boolean() }),
  messageWalk: z.object({ message: MessageJson, envelopes: z.array(EnvelopeJson), cursor: z.string().nullable() }),
  messageState: z.object({ message: MessageJson }),
  messagePurge: z.object({ purged: z.number() }),
  envelopeCreate: z.object({ evpid: Evpid, created: z.boolean() }),
  envelopeDelete: z.object({ evpid: Evpid, deleted: z.boolean(), messageDeleted: z.boolean() }),
  envelopesDelete: z.object({ deleted: z.array(Evpid), messageDeleted: z.boolean() }),
  envelopeLoad: z.object({ evpid: Evpid, data: Base64 }),
  envelopeWalk: z.object({ envelopes: z.array(EnvelopeJson), cursor: z.string().nullable() }),
  instanceHeartbeat: z.object({ instance: InstanceJson }),
  queueStatus: z.object({
    instances: z.array(InstanceJson),
    counts: z.array(z.object({ owner: z.string(), state: z.enum(['incoming', 'queued', 'corrupt']), messages: z.number(), oldestAt: IsoDate.optional() })),
  }),
  queueTakeover: z.object({
    claimed: z.array(z.object({ msgid: Msgid, from: z.string(), evpids: z.array(Evpid) })),
    purged: z.number(),
    more: z.boolean(),
  }),
  credentialIssue: z.object({ token: z.string(), credential: CredentialJson }),
  credentialRevoke: z.object({ revoked: z.array(CredentialJson) }),
  credentialList: z.object({ credentials: z.array(CredentialJson) }),
};
