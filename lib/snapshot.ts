import { setTimeout as sleep } from 'node:timers/promises';

/**
 * The snapshot time of a new walk. It returns only once the clock has moved
 * past it, so whatever is written after the first page was answered carries
 * a later time and stays out of the walk.
 */
export async function newSnapshotTime(): Promise<number> {
  const t0 = Date.now();
  while (Date.now() <= t0) await sleep(1);
  return t0;
}
