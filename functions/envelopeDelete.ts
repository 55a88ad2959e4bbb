import { Requests } from '../lib/api';
import { endpoint } from '../lib/http';
import { service } from '../lib/service';

/** ENVELOPE_DELETE: removes an envelope, or several of one message at once; the message goes with its last one. */
export const envelopeDelete = endpoint(
  'envelopeDelete',
  { method: 'POST', from: 'json', input: Requests.envelopeDelete, access: { self: 'owner' } },
  async (input) => {
    const check = { owner: input.owner };
    if ('evpids' in input) return { status: 200, json: await service().store.envelopesDelete(input.evpids, check) };
    return { status: 200, json: { evpid: input.evpid, ...(await service().store.envelopeDelete(input.evpid, check)) } };
  },
);
