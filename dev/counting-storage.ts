import type { Key, Kind, Mutations, Query, Storage, Transaction } from '../lib/storage';

/**
 * A storage driver that passes every call on to another and notes what it
 * was: on Datastore a get, a query, a count and a write are one RPC each,
 * and a transaction two more than its lookups. Tests and benchmarks read
 * the round trips of a queue operation from `calls`.
 */
export class CountingStorage implements Storage {
  calls: string[] = [];

  constructor(
    private readonly inner: Storage,
    readonly maxWriteBytes = inner.maxWriteBytes,
  ) {}

  get(keys: Key[]) {
    this.calls.push('get');
    return this.inner.get(keys);
  }
  query<K extends Kind>(query: Query<K>) {
    this.calls.push(`query ${query.kind}`);
    return this.inner.query(query);
  }
  queryKeys<K extends Kind>(query: Query<K>) {
    this.calls.push(`queryKeys ${query.kind}`);
    return this.inner.queryKeys(query);
  }
  count<K extends Kind>(query: Query<K>) {
    this.calls.push(`count ${query.kind}`);
    return this.inner.count(query);
  }
  fieldValues(kind: Kind, field: string) {
    this.calls.push(`fieldValues ${kind}.${field}`);
    return this.inner.fieldValues(kind, field);
  }
  write(mutations: Mutations) {
    this.calls.push('write');
    return this.inner.write(mutations);
  }
  transaction<T>(work: (tx: Transaction) => Promise<T>) {
    this.calls.push('transaction');
    return this.inner.transaction((tx) =>
      work({
        get: (keys) => {
          this.calls.push('tx.get');
          return tx.get(keys);
        },
        put: (row) => tx.put(row),
        delete: (keys) => tx.delete(keys),
      }),
    );
  }
  close() {
    return this.inner.close();
  }
}
