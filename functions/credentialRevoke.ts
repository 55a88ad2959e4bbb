import { Requests, toCredentialJson } from '../lib/api';
import { endpoint } from '../lib/http';
import { credentials } from '../lib/service';

/** Revokes one credential, by its digest (or the start of it), or all of an instance's. */
export const credentialRevoke = endpoint('credentialRevoke', { method: 'POST', from: 'json', input: Requests.credentialRevoke, access: 'admin' }, async (target) => {
  const revoked = await credentials().revoke(target);
  return { status: 200, json: { revoked: revoked.map(toCredentialJson) } };
});
