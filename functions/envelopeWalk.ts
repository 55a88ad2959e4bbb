import { Requests, toEnvelopeJson } from '../lib/api';
import { endpoint } from '../lib/http';
import { service } from '../lib/service';

/** ENVELOPE_WALK: committed envelopes page by page, as of when the walk began. */
export const envelopeWalk = endpoint('envelopeWalk', { method: 'GET', from: 'query', input: Requests.envelopeWalk, access: { self: 'owner' } }, async (page) => {
  const { items, cursor } = await service().store.envelopeWalk(page);
  return { status: 200, json: { envelopes: items.map(toEnvelopeJson), cursor } };
});
