import { Requests } from '../lib/api';
import { QueueError } from '../lib/errors';
import { endpoint } from '../lib/http';
import { service } from '../lib/service';

/**
 * MESSAGE_FD_R: the committed body, byte for byte. `Range: bytes=FIRST-[LAST]`
 * reads a part (206), which is how bodies larger than one HTTP response travel.
 */
export const messageFd = endpoint('messageFd', { method: 'GET', from: 'query', input: Requests.messageFd, access: { self: 'owner' } }, async ({ msgid, owner }, req) => {
  const range = parseRange(req.get('range'));
  const length = range?.last === undefined ? undefined : range.last - range.first + 1;
  const { info, data } = await service().store.messageRead(msgid, { owner, offset: range?.first, length });
  const size = info.size ?? 0;
  const headers = {
    etag: `"${info.sha256}"`,
    'accept-ranges': 'bytes',
    'x-queue-size': String(size),
    'x-queue-state': info.state,
    'x-queue-owner': info.owner,
    'x-queue-created-at': info.createdAt.toISOString(),
    'x-queue-committed-at': info.committedAt?.toISOString() ?? '',
  };
  if (!range || size === 0) return { status: 200, bytes: data, headers };
  if (range.first >= size) {
    throw new QueueError('range_not_satisfiable', `the body has ${size} bytes`, { size });
  }
  const last = range.first + data.length - 1;
  return { status: 206, bytes: data, headers: { ...headers, 'content-range': `bytes ${range.first}-${last}/${size}` } };
});

function parseRange(header: string | undefined): { first: number; last?: number } | undefined {
  if (header === undefined) return undefined;
  const m = /^bytes=(\d{1,15})-(\d{1,15})?$/.exec(header.trim());
  if (!m) throw new QueueError('bad_request', 'Range must be one byte range: bytes=FIRST-[LAST]');
  const first = Number(m[1]);
  const last = m[2] === undefined ? undefined : Number(m[2]);
  if (last !== undefined && last < first) throw new QueueError('bad_request', 'Range ends before it starts');
  return { first, last };
}
