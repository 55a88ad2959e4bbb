import { Requests, toCredentialJson } from '../lib/api';
import { endpoint } from '../lib/http';
import { credentials } from '../lib/service';

/** Issues a credential for an MX or an administrator (QUEUE_AUTH=tokens); its token is answered this once. */
export const credentialIssue = endpoint('credentialIssue', { method: 'POST', from: 'json', input: Requests.credentialIssue, access: 'admin' }, async (grant) => {
  const { token, credential } = await credentials().issue(grant);
  return { status: 201, json: { token, credential: toCredentialJson(credential) } };
});
