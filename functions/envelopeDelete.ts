import { Requests } from '../lib/api';
import { endpoint } from '../lib/http';
import { service } from '../lib/service';

/** ENVELOPE_DELETE: removes an envelope; the message goes with its last one. */
export const envelopeDelete = endpoint(
  'envelopeDelete',
  { method: 'POST', from: 'json', input: Requests.envelopeDelete, access: { self: 'owner' } },
  async ({ evpid, owner }) => {
    const result = await service().store.envelopeDelete(evpid, { owner });
    return { status: 200, json: { evpid, ...result } };
  },
);
