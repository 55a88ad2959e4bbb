import { setTimeout as sleep } from 'node:timers/promises';
import { Datastore, PropertyFilter } from '@google-cloud/datastore';
import { randomMsgid } from '../../lib/ids';
import { DEFAULT_LIMITS } from '../../lib/store';
import type { Queue } from '../../lib/queue';
import { datastoreQueue, uniqueNamespace } from '../support/stores';

/**
 * The tombstones that fence deleted msgids do not pile up: once expired, the
 * next heartbeat or purge deletes them. The contract cannot see tombstones,
 * so this looks at the entities themselves. Each Datastore driver file runs
 * it before the contract, while its emulator is fresh; on the legacy emulator
 * it also shows that the sweep's query needs no composite index.
 */
export function tombstoneSweepTests(emulatorHost: () => string): void {
  const TOMBSTONE_MS = 1000;

  describe('tombstones of deleted messages', () => {
    let store: Queue;
    let raw: Datastore;
    const sweepErrors: unknown[] = [];

    beforeEach(() => {
      const namespace = uniqueNamespace('tomb');
      const apiEndpoint = emulatorHost();
      const limits = { ...DEFAULT_LIMITS, tombstoneMs: TOMBSTONE_MS };
      store = datastoreQueue({ apiEndpoint, projectId: 'queue-test', namespace, limits, timeoutMs: 30_000, onSweepError: (err) => sweepErrors.push(err) });
      raw = new Datastore({ apiEndpoint, projectId: 'queue-test', namespace });
    });
    afterEach(() => store.close());

    async function tombstones(): Promise<string[]> {
      const [rows] = await raw.runQuery(raw.createQuery('Message').filter(new PropertyFilter('state', '=', 'tombstone')));
      return rows.map((row) => row[Datastore.KEY].name as string).sort();
    }

    test('expired ones are deleted by the next heartbeat or purge; those still fencing stay', async () => {
      const old = [randomMsgid(), randomMsgid(), randomMsgid()].sort();
      await store.messageCreate([old[0]], 'mx1');
      for (const msgid of old) await store.messageDelete(msgid, { owner: 'mx1' });
      expect(await tombstones()).toEqual(old);

      await sleep(TOMBSTONE_MS + 200);
      const fresh = randomMsgid();
      await store.messageDelete(fresh);
      await store.instanceHeartbeat('mx1', 60_000);
      expect(await tombstones()).toEqual([fresh]);

      await sleep(TOMBSTONE_MS + 200);
      expect(await store.messagePurge('mx1')).toBe(0);
      expect(await tombstones()).toEqual([]);
      expect(sweepErrors).toEqual([]);
    });
  });
}
