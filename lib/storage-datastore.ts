import { setTimeout as sleep } from 'node:timers/promises';
import { Datastore, DatastoreClient, PropertyFilter, and, type Key as DatastoreKey, type Query as DatastoreQuery, type Transaction as DatastoreTransaction } from '@google-cloud/datastore';
import { singleUseCommit, type Entity, type Props } from './datastore-commit';
import { ABORTED, ALREADY_EXISTS, UNIMPLEMENTED, grpcCode, storageError } from './datastore-errors';
import { QueueError } from './errors';
import { Found, INDEXED_FIELDS, KeyExists, type Key, type Kind, type Mutations, type Query, type Row, type Storage, type Transaction } from './storage';

export interface DatastoreOptions {
  projectId?: string;
  /** One namespace per queue; '' is Datastore's default namespace. */
  namespace?: string;
  /** A Datastore-mode database of the project; the default one if unset or '(default)'. */
  databaseId?: string;
  /** host:port of an emulator; otherwise DATASTORE_EMULATOR_HOST or Google's endpoint. */
  apiEndpoint?: string;
  /** Deadline of each storage call. */
  timeoutMs?: number;
}

/** Datastore's 4 MiB request cap on the emulators, with room for keys and framing. */
const WRITE_BATCH_BYTES = 3_500_000;
/** Datastore looks up at most 1,000 keys per call; more are looked up in calls of that many, side by side. */
const LOOKUP_KEYS_MAX = 1000;
const DEFAULT_DATABASE = '(default)';
/** A transaction aborted by contention is run again this many times, with backoff, before it answers unavailable. */
const TX_ATTEMPTS = 10;

type Stored = Props & { [Datastore.KEY]: DatastoreKey };

/**
 * Storage in Google Cloud Datastore (Firestore in Datastore mode, or legacy
 * Datastore), one namespace per queue. A record is an entity whose key path
 * is its Key (children under Message/<msgid>) and whose properties are its
 * fields, indexed only if INDEXED_FIELDS lists them (docs/storage.md).
 */
export class DatastoreStorage implements Storage {
  readonly maxWriteBytes = WRITE_BATCH_BYTES;
  private readonly ds: Datastore;
  private readonly gax: { timeout: number; maxRetries: number };
  /** The database's name in messages: its id, or '(default)'. */
  private readonly database: string;
  private raw?: DatastoreClient;
  /** Whether the server answers aggregation queries; the legacy Datastore emulator does not. */
  private aggregates = true;

  constructor(options: DatastoreOptions = {}) {
    // the API names the default database '' and refuses '(default)', the name gcloud and the console show
    const databaseId = options.databaseId === DEFAULT_DATABASE ? undefined : options.databaseId || undefined;
    this.database = databaseId ?? DEFAULT_DATABASE;
    this.ds = new Datastore({
      projectId: options.projectId,
      namespace: options.namespace || undefined,
      databaseId,
      apiEndpoint: options.apiEndpoint,
    });
    this.gax = { timeout: options.timeoutMs ?? 10_000, maxRetries: 2 };
  }

  get(keys: Key[]): Promise<Found> {
    return this.lookup(this.ds, keys);
  }

  async query<K extends Kind>(query: Query<K>): Promise<Row<K>[]> {
    return (await this.run(this.toQuery(query))).map((row) => this.toRow(row) as Row<K>);
  }

  async queryKeys<K extends Kind>(query: Query<K>): Promise<Key<K>[]> {
    return (await this.run(this.toQuery(query).select('__key__'))).map((row) => toKey(row[Datastore.KEY]) as Key<K>);
  }

  async count<K extends Kind>(query: Query<K>): Promise<number> {
    const all = { ...query, limit: undefined };
    if (this.aggregates) {
      try {
        const [[result]] = await this.ds.runAggregationQuery(this.ds.createAggregationQuery(this.toQuery(all)).count('count'), { gaxOptions: this.gax });
        return Number((result as { count: unknown }).count);
      } catch (err) {
        if (grpcCode(err) !== UNIMPLEMENTED) throw storageError(err, this.database);
        this.aggregates = false;
      }
    }
    // only where the server cannot count (Datastore and Firestore can; the legacy emulator cannot): the keys, read back
    return (await this.queryKeys(all)).length;
  }

  /** One query per value: the least value above the last one, read from the field's index (a projection). */
  async fieldValues(kind: Kind, field: string): Promise<string[]> {
    const values: string[] = [];
    for (;;) {
      const last = values.at(-1);
      const filter = new PropertyFilter(field, last === undefined ? '>=' : '>', last ?? '');
      const [row] = await this.run(this.ds.createQuery(kind).select(field).filter(filter).order(field).limit(1));
      const value: unknown = row?.[field];
      if (typeof value !== 'string') return values;
      values.push(value);
    }
  }

  async write(mutations: Mutations): Promise<void> {
    const projectId = await this.ds.getProjectId();
    this.raw ??= new DatastoreClient({ ...this.ds.options });
    const partition = { projectId, databaseId: this.ds.options.databaseId ?? '', namespaceId: this.ds.namespace ?? '' };
    const entities = (rows: Row[] = []) => rows.map((row) => this.toEntity(row));
    try {
      await singleUseCommit(
        this.raw,
        partition,
        { insert: entities(mutations.insert), upsert: entities(mutations.put), delete: (mutations.delete ?? []).map((k) => this.key(k)) },
        (kind) => INDEXED_FIELDS[kind as Kind] ?? [],
        this.gax.timeout,
      );
    } catch (err) {
      if (grpcCode(err) === ALREADY_EXISTS) throw new KeyExists();
      throw storageError(err, this.database);
    }
  }

  async transaction<T>(work: (tx: Transaction) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const tx = this.ds.transaction();
      try {
        await tx.run({ gaxOptions: this.gax });
        const result = await work({
          get: (keys) => this.lookup(tx, keys),
          put: (row) => tx.upsert(this.toEntity(row)),
          delete: (keys) => tx.delete(keys.map((k) => this.key(k))),
        });
        await tx.commit({ timeout: this.gax.timeout });
        return result;
      } catch (err) {
        await tx.rollback().catch(() => undefined);
        if (isAborted(err) && attempt < TX_ATTEMPTS) {
          await sleep(Math.min(1000, 25 * 2 ** attempt) * (0.5 + Math.random() / 2));
          continue;
        }
        throw storageError(err, this.database);
      }
    }
  }

  async close(): Promise<void> {
    await this.raw?.close();
    for (const client of this.ds.clients_.values()) await (client as { close?: () => unknown }).close?.();
  }

  private async lookup(reader: Datastore | DatastoreTransaction, keys: Key[]): Promise<Found> {
    const found = new Found();
    if (keys.length === 0) return found;
    try {
      const batches: Key[][] = [];
      for (let i = 0; i < keys.length; i += LOOKUP_KEYS_MAX) batches.push(keys.slice(i, i + LOOKUP_KEYS_MAX));
      const answers = await Promise.all(batches.map((batch) => reader.get(batch.map((k) => this.key(k)), { gaxOptions: this.gax })));
      for (const [rows] of answers) for (const row of rows as Stored[]) found.add(this.toRow(row));
      return found;
    } catch (err) {
      throw storageError(err, this.database);
    }
  }

  private async run(query: DatastoreQuery): Promise<Stored[]> {
    try {
      const [rows] = await this.ds.runQuery(query, { gaxOptions: this.gax });
      return rows as Stored[];
    } catch (err) {
      throw storageError(err, this.database);
    }
  }

  private toQuery(query: Query): DatastoreQuery {
    let q = this.ds.createQuery(query.kind);
    if (query.msgid !== undefined) q = q.hasAncestor(this.ds.key(['Message', query.msgid]));
    const filters: PropertyFilter<string>[] = Object.entries(query.equal ?? {}).map(([field, value]) => new PropertyFilter(field, '=', value));
    if (query.before) filters.push(new PropertyFilter(query.before.field, '<', query.before.time));
    if (query.from !== undefined) filters.push(new PropertyFilter('__key__', '>=', this.key({ kind: query.kind, id: query.from, msgid: query.msgid })));
    if (query.after !== undefined) filters.push(new PropertyFilter('__key__', '>', this.key({ kind: query.kind, id: query.after, msgid: query.msgid })));
    if (filters.length === 1) q = q.filter(filters[0]);
    if (filters.length > 1) q = q.filter(and(filters));
    // an inequality on a field would need that field sorted first
    if (query.earliestFirst) q = q.order(query.earliestFirst);
    else if (!query.before) q = q.order('__key__');
    if (query.limit !== undefined) q = q.limit(query.limit);
    return q;
  }

  private key(k: Key): DatastoreKey {
    return this.ds.key(k.msgid ? ['Message', k.msgid, k.kind, k.id] : [k.kind, k.id]);
  }

  private toEntity(row: Row): Entity & { excludeFromIndexes: string[] } {
    const data: Props = {};
    for (const [field, value] of Object.entries(row.data)) if (value !== undefined) data[field] = value as Props[string];
    const indexed = INDEXED_FIELDS[row.key.kind];
    return { key: this.key(row.key), data, excludeFromIndexes: Object.keys(data).filter((field) => !indexed.includes(field)) };
  }

  private toRow(stored: Stored): Row {
    const { [Datastore.KEY]: dsKey, ...data } = stored;
    return { key: toKey(dsKey), data } as unknown as Row;
  }
}

function toKey(dsKey: DatastoreKey): Key {
  const path = dsKey.path.map(String);
  return path.length === 4 ? { kind: path[2] as Kind, id: path[3], msgid: path[1] } : { kind: path[0] as Kind, id: path[1] };
}

/** Contention: the transaction may succeed if run again. Reads inside it report it already wrapped. */
function isAborted(err: unknown): boolean {
  return grpcCode(err) === ABORTED || (err instanceof QueueError && err.details.grpcCode === ABORTED);
}
