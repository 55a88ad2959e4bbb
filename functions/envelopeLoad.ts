import { Requests } from '../lib/api';
import { b64, endpoint } from '../lib/http';
import { service } from '../lib/service';

/** ENVELOPE_LOAD: the envelope's bytes exactly as stored. */
export const envelopeLoad = endpoint('envelopeLoad', { method: 'GET', from: 'query', input: Requests.envelopeLoad, access: { self: 'owner' } }, async ({ evpid, owner }) => {
  const data = await service().store.envelopeLoad(evpid, { owner });
  return { status: 200, json: { evpid, data: b64(data) } };
});
