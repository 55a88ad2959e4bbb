import { randomMsgid } from '../../lib/ids';
import type { Queue } from '../../lib/queue';
import { commitOf, envelope } from '../contract/queue-store.contract';

/**
 * Instances of the service over one store that start walks at the same time
 * (functions scale out) all make the cursor key at once: each must take
 * every other's cursors.
 */
export async function expectOneCursorKey(instances: Queue[]): Promise<void> {
  const msgid = randomMsgid();
  await instances[0].messageCommit(commitOf(msgid, Buffer.from('x'), [envelope(msgid, 'a@example.test'), envelope(msgid, 'b@example.test')]));
  const firstPages = await Promise.all(instances.map((q) => q.envelopeWalk({ limit: 1 })));
  for (const [i, page] of firstPages.entries()) {
    const next = await instances[(i + 1) % instances.length].envelopeWalk({ limit: 1, cursor: page.cursor! });
    expect(next.items).toHaveLength(1);
  }
}
