import { QueueError } from '../../lib/errors';
import type { Evpid, Msgid } from '../../lib/ids';
import type { Commit, Envelope, HeartbeatState, OwnerCheck, PageRequest, QueueStore, ReadRange, TakeoverOptions } from '../../lib/store';

export type StoreOp = Exclude<keyof QueueStore, 'limits' | 'close'>;

export const STORE_OPS: readonly StoreOp[] = [
  'messageCreate',
  'messageWrite',
  'messageCommit',
  'messageDelete',
  'messageRead',
  'messageWalk',
  'messageCorrupt',
  'messageUncorrupt',
  'envelopeCreate',
  'envelopeDelete',
  'envelopeLoad',
  'envelopeUpdate',
  'envelopeWalk',
  'messagePurge',
  'instanceHeartbeat',
  'instanceList',
  'queueTakeover',
  'queueCounts',
];

/**
 * A QueueStore in front of another that fails on demand, the way the service
 * does in an outage: chosen operations fail (with QueueError 'unavailable',
 * as the HTTP client reports a service it cannot reach, or with `error`),
 * fail their next N calls, or hang until released, and then run, as a
 * request that lands late does.
 */
export class FaultyStore implements QueueStore {
  /** What a failing call throws. */
  error: () => Error = () => new QueueError('unavailable', 'the queue service is unreachable (injected)', {});
  private readonly down = new Set<StoreOp>();
  private readonly failures = new Map<StoreOp, number>();
  private readonly hanging = new Set<StoreOp>();
  private readonly held: (() => void)[] = [];
  private readonly counts = new Map<StoreOp, number>();

  constructor(readonly inner: QueueStore) {}

  get limits() {
    return this.inner.limits;
  }

  /** Every call of `ops` (of every operation, if none is named) fails until heal(). */
  fail(...ops: StoreOp[]): void {
    for (const op of ops.length > 0 ? ops : STORE_OPS) this.down.add(op);
  }

  /** The next `times` calls of `op` fail. */
  failNext(op: StoreOp, times: number): void {
    this.failures.set(op, times);
  }

  /** Calls of `ops` (of every operation, if none is named) wait until release() or heal(), then run. */
  hang(...ops: StoreOp[]): void {
    for (const op of ops.length > 0 ? ops : STORE_OPS) this.hanging.add(op);
  }

  /** Stops hanging calls, and lets those waiting run. */
  release(): void {
    this.hanging.clear();
    for (const resume of this.held.splice(0)) resume();
  }

  /** Ends every fault. */
  heal(): void {
    this.down.clear();
    this.failures.clear();
    this.release();
  }

  /** Calls waiting in a hang. */
  get waiting(): number {
    return this.held.length;
  }

  calls(op: StoreOp): number {
    return this.counts.get(op) ?? 0;
  }

  private async run<T>(op: StoreOp, call: () => Promise<T>): Promise<T> {
    this.counts.set(op, this.calls(op) + 1);
    if (this.hanging.has(op)) await new Promise<void>((resume) => this.held.push(resume));
    const left = this.failures.get(op) ?? 0;
    if (left > 0) this.failures.set(op, left - 1);
    if (left > 0 || this.down.has(op)) throw this.error();
    return call();
  }

  messageCreate(msgids: Msgid[], owner: string) {
    return this.run('messageCreate', () => this.inner.messageCreate(msgids, owner));
  }
  messageWrite(msgid: Msgid, offset: number, data: Buffer, owner: string) {
    return this.run('messageWrite', () => this.inner.messageWrite(msgid, offset, data, owner));
  }
  messageCommit(commit: Commit) {
    return this.run('messageCommit', () => this.inner.messageCommit(commit));
  }
  messageDelete(msgid: Msgid, check?: OwnerCheck) {
    return this.run('messageDelete', () => this.inner.messageDelete(msgid, check));
  }
  messageRead(msgid: Msgid, read?: ReadRange & OwnerCheck) {
    return this.run('messageRead', () => this.inner.messageRead(msgid, read));
  }
  messageWalk(msgid: Msgid, page?: PageRequest & OwnerCheck) {
    return this.run('messageWalk', () => this.inner.messageWalk(msgid, page));
  }
  messageCorrupt(msgid: Msgid, check?: OwnerCheck) {
    return this.run('messageCorrupt', () => this.inner.messageCorrupt(msgid, check));
  }
  messageUncorrupt(msgid: Msgid, check?: OwnerCheck) {
    return this.run('messageUncorrupt', () => this.inner.messageUncorrupt(msgid, check));
  }
  envelopeCreate(envelope: Envelope, check?: OwnerCheck) {
    return this.run('envelopeCreate', () => this.inner.envelopeCreate(envelope, check));
  }
  envelopeDelete(evpid: Evpid, check?: OwnerCheck) {
    return this.run('envelopeDelete', () => this.inner.envelopeDelete(evpid, check));
  }
  envelopesDelete(evpids: Evpid[], check?: OwnerCheck) {
    return this.run('envelopeDelete', () => this.inner.envelopesDelete(evpids, check));
  }
  envelopeLoad(evpid: Evpid, check?: OwnerCheck) {
    return this.run('envelopeLoad', () => this.inner.envelopeLoad(evpid, check));
  }
  envelopeUpdate(envelope: Envelope, check?: OwnerCheck) {
    return this.run('envelopeUpdate', () => this.inner.envelopeUpdate(envelope, check));
  }
  envelopeWalk(page?: PageRequest & { owner?: string }) {
    return this.run('envelopeWalk', () => this.inner.envelopeWalk(page));
  }
  messagePurge(owner: string, keep?: Msgid[]) {
    return this.run('messagePurge', () => this.inner.messagePurge(owner, keep));
  }
  instanceHeartbeat(instance: string, leaseMs: number, state?: HeartbeatState) {
    return this.run('instanceHeartbeat', () => this.inner.instanceHeartbeat(instance, leaseMs, state));
  }
  instanceList() {
    return this.run('instanceList', () => this.inner.instanceList());
  }
  queueTakeover(claimant: string, options?: TakeoverOptions) {
    return this.run('queueTakeover', () => this.inner.queueTakeover(claimant, options));
  }
  queueCounts() {
    return this.run('queueCounts', () => this.inner.queueCounts());
  }
  close() {
    return this.inner.close();
  }
}
