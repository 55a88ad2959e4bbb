/**
 * The errors a queue operation can end with. The queue, its storage drivers
 * and the handlers throw them; lib/http.ts is the one place that turns them
 * into HTTP statuses. Anything else that escapes is a bug and becomes a 500.
 */

/** Each error code with the HTTP status it is sent as; the bridge reads the codes back from the answers. */
export const STATUS = {
  bad_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  method_not_allowed: 405,
  conflict: 409,
  too_large: 413,
  unsupported_media_type: 415,
  range_not_satisfiable: 416,
  storage_permission_denied: 500,
  storage_api_disabled: 500,
  storage_database_missing: 500,
  storage_wrong_mode: 500,
  unavailable: 503,
} as const satisfies Record<string, number>;

export type ErrorCode = keyof typeof STATUS;

export const isErrorCode = (code: string): code is ErrorCode => Object.hasOwn(STATUS, code);

/** A 500: the service cannot do its work until an operator fixes it (lib/datastore-errors.ts). No caller's request is at fault. */
export const isServiceFault = (code: ErrorCode): boolean => STATUS[code] === 500;

export class QueueError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'QueueError';
  }
}

export const badRequest = (message: string, details?: Record<string, unknown>) =>
  new QueueError('bad_request', message, details);

export const notFound = (what: string, id: string) =>
  new QueueError('not_found', `${what} ${id} not found`, { [what]: id });

export const conflict = (message: string, details?: Record<string, unknown>) =>
  new QueueError('conflict', message, details);

export const tooLarge = (message: string, details?: Record<string, unknown>) =>
  new QueueError('too_large', message, details);

export const unavailable = (message: string, details?: Record<string, unknown>, cause?: unknown) =>
  new QueueError('unavailable', message, details, { cause });

/**
 * Storage that refuses the service until an operator changes its set-up
 * (lib/datastore-errors.ts): `message` says what to change.
 */
export const storageMisconfigured = (
  code: 'storage_permission_denied' | 'storage_api_disabled' | 'storage_database_missing' | 'storage_wrong_mode',
  message: string,
  cause: unknown,
) => new QueueError(code, message, {}, { cause });

/** A caller whose identity may not do what it asks (lib/auth.ts): another instance's name, or an administrator's function. */
export const forbidden = (message: string, details?: Record<string, unknown>) => new QueueError('forbidden', message, details);

/** A refused mutation or read by an instance that does not own the message. */
export const notOwner = (msgid: string) =>
  new QueueError('conflict', `message ${msgid} is owned by another instance`, { msgid, reason: 'not_owner' });

/**
 * A write to a message that was deleted (rolled back) while its tombstone
 * lasts: a late request must not bring it back.
 */
export const rolledBack = (msgid: string) =>
  new QueueError('conflict', `message ${msgid} was deleted (rolled back); it cannot be written or committed again`, {
    msgid,
    reason: 'rolled_back',
  });

/** An envelope update older than the one stored. */
export const staleUpdate = (evpid: string, version: number, stored: number) =>
  new QueueError('conflict', `envelope ${evpid} has a newer update (version ${stored}) than this one (${version})`, {
    evpid,
    reason: 'stale',
    storedVersion: stored,
  });
