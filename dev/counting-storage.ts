import { INDEXED_FIELDS, type Key, type Kind, type Mutations, type Query, type Row, type Storage, type Transaction } from '../lib/storage';

/**
 * What the calls cost in Datastore's terms: records looked up and queried,
 * records written (inserts, puts, deletes), and the index entries those
 * writes change, counted as Datastore keeps them without composite indexes
 * (index.yaml has none): one for the kind and two (ascending, descending)
 * for each indexed field the record has. A delete is counted with the
 * indexed fields its kind can have.
 */
export interface StorageOps {
  lookups: number;
  queries: number;
  recordsRead: number;
  writes: number;
  recordsWritten: number;
  indexEntries: number;
}

/**
 * A storage driver that passes every call on to another and notes what it
 * was and how long it took: on Datastore a get, a query, a count and a
 * write are one RPC each, and a transaction two more than its lookups.
 * Tests and benchmarks read the round trips of a queue operation from
 * `calls`, and benchmarks where the time went from `millis`.
 */
export class CountingStorage implements Storage {
  calls: string[] = [];
  ops: StorageOps = noOps();
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
    this.ops = noOps();
  }

  get(keys: Key[]) {
    this.ops.lookups += keys.length;
    return this.noted('get', () => this.inner.get(keys));
  }
  query<K extends Kind>(query: Query<K>) {
    return this.noted(`query ${query.kind}`, () => this.inner.query(query)).then((rows) => this.queried(rows));
  }
  queryKeys<K extends Kind>(query: Query<K>) {
    return this.noted(`queryKeys ${query.kind}`, () => this.inner.queryKeys(query)).then((keys) => this.queried(keys));
  }
  count<K extends Kind>(query: Query<K>) {
    return this.noted(`count ${query.kind}`, () => this.inner.count(query));
  }
  fieldValues(kind: Kind, field: string) {
    return this.noted(`fieldValues ${kind}.${field}`, () => this.inner.fieldValues(kind, field));
  }
  write(mutations: Mutations) {
    this.ops.writes++;
    for (const row of [...(mutations.insert ?? []), ...(mutations.put ?? [])]) this.written(row);
    for (const key of mutations.delete ?? []) this.deleted(key);
    return this.noted('write', () => this.inner.write(mutations));
  }
  transaction<T>(work: (tx: Transaction) => Promise<T>) {
    this.ops.writes++;
    return this.noted('transaction', () =>
      this.inner.transaction((tx) =>
        work({
          get: (keys) => {
            this.calls.push('tx.get');
            this.ops.lookups += keys.length;
            return tx.get(keys);
          },
          put: (row) => {
            this.written(row);
            tx.put(row);
          },
          delete: (keys) => {
            for (const key of keys) this.deleted(key);
            tx.delete(keys);
          },
        }),
      ),
    );
  }
  close() {
    return this.inner.close();
  }

  private queried<T>(found: T[]): T[] {
    this.ops.queries++;
    this.ops.recordsRead += found.length;
    return found;
  }

  private written(row: Row): void {
    const fields = row.data as Record<string, unknown>;
    this.ops.recordsWritten++;
    this.ops.indexEntries += 1 + 2 * INDEXED_FIELDS[row.key.kind].filter((field) => fields[field] !== undefined && fields[field] !== null).length;
  }

  private deleted(key: Key): void {
    this.ops.recordsWritten++;
    this.ops.indexEntries += 1 + 2 * INDEXED_FIELDS[key.kind].length;
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

function noOps(): StorageOps {
  return { lookups: 0, queries: 0, recordsRead: 0, writes: 0, recordsWritten: 0, indexEntries: 0 };
}
