import type { Queue } from '../../lib/queue';
import { DEFAULT_LIMITS } from '../../lib/store';
import { expectOneCursorKey } from '../support/cursor-key';
import { firestoreStore, uniqueNamespace } from '../support/stores';

test('instances of the service on one Datastore namespace sign cursors with one key: the first insert wins, the others read it back', async () => {
  const namespace = uniqueNamespace('cursor');
  const instances: Queue[] = Array.from({ length: 6 }, () => firestoreStore(DEFAULT_LIMITS, namespace));
  try {
    await expectOneCursorKey(instances);
    const { cursor } = await instances[0].envelopeWalk({ limit: 1 });
    await expect(instances[1].envelopeWalk({ owner: 'mx1', cursor: cursor! })).rejects.toMatchObject({ code: 'bad_request' });
  } finally {
    await Promise.all(instances.map((q) => q.close()));
  }
});
