import { QueueError, storageMisconfigured, unavailable } from './errors';

/**
 * What a failed Datastore call means for the queue. The client library
 * (google-gax over @grpc/grpc-js) rejects with an Error whose `code` is the
 * gRPC status, `details` the server's text and `message` both
 * ("7 PERMISSION_DENIED: Missing or insufficient permissions."); google-gax
 * adds `reason`, `domain` and `errorInfoMetadata` when the server sent a
 * google.rpc.ErrorInfo. Texts vary over the years, so the code decides and
 * the text only tells apart what shares a code.
 */

const NOT_FOUND = 5;
export const ALREADY_EXISTS = 6;
const PERMISSION_DENIED = 7;
const FAILED_PRECONDITION = 9;
export const ABORTED = 10;
/** The server has no such method: the legacy Datastore emulator has no aggregation queries. */
export const UNIMPLEMENTED = 12;
/** gRPC codes that mean storage is unreachable, overloaded or contended: worth retrying later. */
const UNAVAILABLE_CODES = new Set([1, 4, 8, ABORTED, 14]);

export function grpcCode(err: unknown): number | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'number' ? code : undefined;
}

/**
 * A storage failure as the queue's error: `unavailable` for what may pass,
 * one of the storage_* errors for a set-up an operator must fix (each
 * message says how), anything else as it came (a bug: 500 internal).
 * `database` is the Datastore database id, '(default)' for the default one.
 */
export function storageError(err: unknown, database: string): unknown {
  if (err instanceof QueueError) return err;
  const code = grpcCode(err);
  if (code !== undefined && UNAVAILABLE_CODES.has(code)) {
    return unavailable(`storage unavailable (gRPC status ${code}); try again`, { grpcCode: code }, err);
  }
  return misconfiguration(err, code, database) ?? err;
}

/** "Cloud Datastore API has not been used in project 123 before or it is disabled." (PERMISSION_DENIED), or the older "The Cloud Datastore API is not enabled for the project P" (FAILED_PRECONDITION). */
const API_DISABLED_TEXT = /API has not been used in project .* before or it is disabled|API is not enabled for the project/i;
/** "The Cloud Datastore API is not available for Firestore in Native mode database projects/P/databases/D.", or before named databases "... for Cloud Firestore projects." */
const NATIVE_MODE_TEXT = /not available for (Firestore in Native mode|Cloud Firestore projects)/i;

function misconfiguration(err: unknown, code: number | undefined, database: string): QueueError | undefined {
  const { details, message, reason } = err as { details?: unknown; message?: unknown; reason?: unknown };
  const text = `${typeof details === 'string' ? details : ''} ${typeof message === 'string' ? message : ''}`;
  const named = database === '(default)' ? '' : ` --database=${database}`;
  if ((code === PERMISSION_DENIED && reason === 'SERVICE_DISABLED') || ((code === PERMISSION_DENIED || code === FAILED_PRECONDITION) && API_DISABLED_TEXT.test(text))) {
    return storageMisconfigured(
      'storage_api_disabled',
      'the Cloud Datastore API is disabled in the project: enable datastore.googleapis.com (gcloud services enable datastore.googleapis.com), then allow a few minutes',
      err,
    );
  }
  if (code === PERMISSION_DENIED) {
    return storageMisconfigured(
      'storage_permission_denied',
      "Datastore refuses the service's account: grant roles/datastore.user on the project to the service account the service runs as (gcloud projects add-iam-policy-binding PROJECT --member=serviceAccount:ACCOUNT --role=roles/datastore.user)",
      err,
    );
  }
  // a lookup of a missing entity is no error, and the queue never updates what may be missing: NOT_FOUND is the database's
  if (code === NOT_FOUND) {
    return storageMisconfigured(
      'storage_database_missing',
      `the Datastore database ${database} does not exist: create it in Datastore mode (npm run deploy -- --setup, or gcloud firestore databases create${named} --type=datastore-mode --location=LOCATION), or set QUEUE_DATABASE to the database that holds the queue`,
      err,
    );
  }
  if (code === FAILED_PRECONDITION && NATIVE_MODE_TEXT.test(text)) {
    return storageMisconfigured(
      'storage_wrong_mode',
      `the database ${database} is in Firestore Native mode, which the Datastore API cannot use: set QUEUE_DATABASE to a database in Datastore mode (gcloud firestore databases create --database=ID --type=datastore-mode --location=LOCATION)`,
      err,
    );
  }
  return undefined;
}
