import { Requests, toCredentialJson } from '../lib/api';
import { endpoint } from '../lib/http';
import { credentials } from '../lib/service';

/** Every credential issued, revoked ones included: the start of its digest, never its token. */
export const credentialList = endpoint('credentialList', { method: 'GET', from: 'query', input: Requests.credentialList, access: 'admin' }, async () => {
  const all = await credentials().list();
  return { status: 200, json: { credentials: all.map(toCredentialJson) } };
});
