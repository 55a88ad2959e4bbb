import { Found, KeyExists, keyPath, type Key, type Kind, type Mutations, type Query, type Row, type Storage, type Transaction } from './storage';

type Value = string | number | Date | Buffer | null | undefined;

/**
 * Storage in process memory: for tests and single-process experiments;
 * nothing survives the process. Transactions and writes take turns behind
 * one lock, which makes them serializable without retries; reads need none,
 * as each runs to completion at once.
 */
export class MemoryStorage implements Storage {
  readonly maxWriteBytes = Infinity;
  private readonly rows = new Map<string, Row>();
  private turn: Promise<unknown> = Promise.resolve();

  async get(keys: Key[]): Promise<Found> {
    const found = new Found();
    for (const k of keys) {
      const row = this.rows.get(keyPath(k));
      if (row) found.add(copy(row));
    }
    return found;
  }

  async query<K extends Kind>(query: Query<K>): Promise<Row<K>[]> {
    const matches = [...this.rows.values()].filter((row): row is Row<K> => isMatch(row, query));
    const earliest = query.earliestFirst;
    const timeOf = (row: Row<K>) => ((row.data as Record<string, unknown>)[earliest!] as Date).getTime();
    matches.sort((a, b) => (earliest ? timeOf(a) - timeOf(b) : 0) || compare(keyPath(a.key), keyPath(b.key)));
    return matches.slice(0, query.limit ?? Infinity).map(copy);
  }

  async queryKeys<K extends Kind>(query: Query<K>): Promise<Key<K>[]> {
    return (await this.query(query)).map((row) => row.key);
  }

  async count<K extends Kind>(query: Query<K>): Promise<number> {
    return [...this.rows.values()].filter((row) => isMatch(row, query)).length;
  }

  async fieldValues(kind: Kind, field: string): Promise<string[]> {
    const values = new Set<string>();
    for (const row of this.rows.values()) {
      const value = (row.data as unknown as Record<string, Value>)[field];
      if (row.key.kind === kind && typeof value === 'string') values.add(value);
    }
    return [...values].sort(compare);
  }

  write(mutations: Mutations): Promise<void> {
    return this.inTurn(async () => {
      for (const row of mutations.insert ?? []) if (this.rows.has(keyPath(row.key))) throw new KeyExists(row.key);
      this.apply([...(mutations.insert ?? []), ...(mutations.put ?? [])], mutations.delete ?? []);
    });
  }

  transaction<T>(work: (tx: Transaction) => Promise<T>): Promise<T> {
    return this.inTurn(async () => {
      const puts = new Map<string, Row>();
      const deletes = new Map<string, Key>();
      const tx: Transaction = {
        get: (keys) => this.get(keys),
        put: (row) => {
          deletes.delete(keyPath(row.key));
          puts.set(keyPath(row.key), row);
        },
        delete: (keys) => {
          for (const k of keys) {
            puts.delete(keyPath(k));
            deletes.set(keyPath(k), k);
          }
        },
      };
      const result = await work(tx);
      this.apply([...puts.values()], [...deletes.values()]);
      return result;
    });
  }

  async close(): Promise<void> {}

  private apply(puts: Row[], deletes: Key[]): void {
    for (const k of deletes) this.rows.delete(keyPath(k));
    for (const row of puts) this.rows.set(keyPath(row.key), copy(row));
  }

  private inTurn<T>(run: () => Promise<T>): Promise<T> {
    const next = this.turn.then(run);
    this.turn = next.catch(() => undefined);
    return next;
  }
}

function isMatch(row: Row, query: Query): boolean {
  const { key: k } = row;
  const data = row.data as unknown as Record<string, Value>;
  if (k.kind !== query.kind || (query.msgid !== undefined && k.msgid !== query.msgid)) return false;
  for (const [field, value] of Object.entries(query.equal ?? {})) if (data[field] !== value) return false;
  if (query.before) {
    const time = data[query.before.field];
    if (!(time instanceof Date) || time.getTime() >= query.before.time.getTime()) return false;
  }
  if (query.from !== undefined && k.id < query.from) return false;
  if (query.after !== undefined && k.id <= query.after) return false;
  return true;
}

/** Stored records never share a Buffer or a Date with their callers. */
function copy<R extends Row>(row: R): R {
  const data: Record<string, Value> = {};
  for (const [field, value] of Object.entries(row.data)) {
    data[field] = Buffer.isBuffer(value) ? Buffer.from(value) : value instanceof Date ? new Date(value) : (value as Value);
  }
  return { key: { ...row.key }, data } as unknown as R;
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
