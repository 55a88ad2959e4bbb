import type { Key, Kind, Mutations, Query, Storage, Transaction } from '../lib/storage';

/**
 * A storage driver that passes every call on to another and notes what it
 * was and how long it took: on Datastore a get, a query, a count and a
 * write are one RPC each, and a transaction two more than its lookups.
 * Tests and benchmarks read the round trips of a queue operation from
 * `calls`, and benchmarks where the time went from `millis`.
 */
export class CountingStorage implements Storage {
  calls: string[] = [];
  /** Milliseconds spent in the calls noted, by call. */
  millis = new Map<string, number>();

  constructor(
    private readonly inner: Storage,
    readonly maxWriteBytes = inner.maxWriteBytes,
  ) {}

  /** Forgets the calls noted so far. */
  reset(): void {
    this.calls = [];
    this.millis = new Map();
  }

  get(keys: Key[]) {
    return this.noted('get', () => this.inner.get(keys));
  }
  query<K extends Kind>(query: Query<K>) {
    return this.noted(`query ${query.kind}`, () => this.inner.query(query));
  }
  queryKeys<K extends Kind>(query: Query<K>) {
    return this.noted(`queryKeys ${query.kind}`, () => this.inner.queryKeys(query));
  }
  count<K extends Kind>(query: Query<K>) {
    return this.noted(`count ${query.kind}`, () => this.inner.count(query));
  }
  fieldValues(kind: Kind, field: string) {
    return this.noted(`fieldValues ${kind}.${field}`, () => this.inner.fieldValues(kind, field));
  }
  write(mutations: Mutations) {
    return this.noted('write', () => this.inner.write(mutations));
  }
  transaction<T>(work: (tx: Transaction) => Promise<T>) {
    return this.noted('transaction', () =>
      this.inner.transaction((tx) =>
        work({
          get: (keys) => {
            this.calls.push('tx.get');
            return tx.get(keys);
          },
          put: (row) => tx.put(row),
          delete: (keys) => tx.delete(keys),
        }),
      ),
    );
  }
  close() {
    return this.inner.close();
  }

  private async noted<T>(call: string, run: () => Promise<T>): Promise<T> {
    this.calls.push(call);
    const started = performance.now();
    try {
      return await run();
    } finally {
      this.millis.set(call, (this.millis.get(call) ?? 0) + performance.now() - started);
    }
  }
}
