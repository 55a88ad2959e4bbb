import { Requests, toEnvelopeJson, toMessageJson } from '../lib/api';
import { endpoint } from '../lib/http';
import { service } from '../lib/service';

/** One message and its envelopes, paged (the 2012 API; what smtpctl shows of a message). */
export const messageWalk = endpoint('messageWalk', { method: 'GET', from: 'query', input: Requests.messageWalk, access: { self: 'owner' } }, async ({ msgid, ...page }) => {
  const walk = await service().store.messageWalk(msgid, page);
  return {
    status: 200,
    json: { message: toMessageJson(walk.message), envelopes: walk.items.map(toEnvelopeJson), cursor: walk.cursor },
  };
});
