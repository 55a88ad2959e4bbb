import { Requests } from '../lib/api';
import { endpoint } from '../lib/http';
import { service } from '../lib/service';

/** ENVELOPE_CREATE: adds an envelope to an incoming message, or to a committed one (bounces). */
export const envelopeCreate = endpoint(
  'envelopeCreate',
  { method: 'POST', from: 'json', input: Requests.envelopeCreate, access: { self: 'owner' } },
  async ({ evpid, data, owner }) => {
    const { created } = await service().store.envelopeCreate({ evpid, data }, { owner });
    return { status: created ? 201 : 200, json: { evpid, created } };
  },
);
