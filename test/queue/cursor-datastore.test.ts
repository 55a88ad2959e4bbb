import { randomMsgid } from '../../lib/ids';
import type { Queue } from '../../lib/queue';
import { DEFAULT_LIMITS } from '../../lib/store';
import { commitOf, envelope } from '../contract/queue-store.contract';
import { firestoreStore, uniqueNamespace } from '../support/stores';

/**
 * On Datastore, instances of the service that start together (functions
 * scale out) agree on one cursor key: the first insert wins, the others read
 * it back.
 */
test('instances of the service on one Datastore namespace sign cursors with one key, made once', async () => {
  const namespace = uniqueNamespace('cursor');
  const instances: Queue[] = Array.from({ length: 6 }, () => firestoreStore(DEFAULT_LIMITS, namespace));
  try {
    const msgid = randomMsgid();
    await instances[0].messageCommit(commitOf(msgid, Buffer.from('x'), [envelope(msgid, 'a@example.test'), envelope(msgid, 'b@example.test')]));
    const firstPages = await Promise.all(instances.map((q) => q.envelopeWalk({ limit: 1 })));
    for (const [i, page] of firstPages.entries()) {
      const next = await instances[(i + 1) % instances.length].envelopeWalk({ limit: 1, cursor: page.cursor! });
      expect(next.items).toHaveLength(1);
    }
    await expect(instances[0].envelopeWalk({ owner: 'mx1', cursor: firstPages[0].cursor! })).rejects.toMatchObject({ code: 'bad_request' });
  } finally {
    await Promise.all(instances.map((q) => q.close()));
  }
});
