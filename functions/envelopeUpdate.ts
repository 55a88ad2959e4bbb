import { Requests } from '../lib/api';
import { endpoint } from '../lib/http';
import { service } from '../lib/service';

/** ENVELOPE_UPDATE: replaces an envelope's bytes, unless a newer update (by version) was applied. */
export const envelopeUpdate = endpoint(
  'envelopeUpdate',
  { method: 'POST', from: 'json', input: Requests.envelopeUpdate, access: { self: 'owner' } },
  async ({ evpid, data, version, owner }) => {
    await service().store.envelopeUpdate({ evpid, data, version }, { owner });
    return { status: 200, json: { evpid } };
  },
);
