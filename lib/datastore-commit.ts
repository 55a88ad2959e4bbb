import type { DatastoreClient, Key } from '@google-cloud/datastore';
import type { google } from '@google-cloud/datastore/build/protos/protos';

export type Props = Record<string, string | number | Date | Buffer | null>;

export interface Entity {
  key: Key;
  data: Props;
}

export interface Partition {
  projectId: string;
  databaseId: string;
  namespaceId: string;
}

/**
 * Commits mutations in a single-use transaction: atomic, and one RPC, with
 * no beginTransaction and no read. The client library has no call for it, so
 * this goes through the raw gapic client and builds the protobuf itself.
 */
export async function singleUseCommit(
  client: DatastoreClient,
  partition: Partition,
  mutations: { insert: Entity[]; upsert: Entity[]; delete: Key[] },
  indexed: (kind: string) => readonly string[],
  timeout: number,
): Promise<void> {
  const toKey = (key: Key) => protoKey(key, partition);
  const toEntity = (e: Entity) => protoEntity(toKey(e.key), e.data, indexed(e.key.kind));
  await client.commit(
    {
      projectId: partition.projectId,
      databaseId: partition.databaseId,
      mode: 'TRANSACTIONAL',
      singleUseTransaction: { readWrite: {} },
      mutations: [
        ...mutations.insert.map((e) => ({ insert: toEntity(e) })),
        ...mutations.upsert.map((e) => ({ upsert: toEntity(e) })),
        ...mutations.delete.map((k) => ({ delete: toKey(k) })),
      ],
    },
    { timeout },
  );
}

function protoKey(key: Key, { projectId, databaseId, namespaceId }: Partition): google.datastore.v1.IKey {
  const path: google.datastore.v1.Key.IPathElement[] = [];
  for (let i = 0; i < key.path.length; i += 2) path.push({ kind: String(key.path[i]), name: String(key.path[i + 1]) });
  return { partitionId: { projectId, databaseId, namespaceId }, path };
}

function protoEntity(key: google.datastore.v1.IKey, data: Props, indexed: readonly string[]): google.datastore.v1.IEntity {
  const properties: Record<string, google.datastore.v1.IValue> = {};
  for (const [name, value] of Object.entries(data)) {
    properties[name] = { ...protoValue(value), excludeFromIndexes: !indexed.includes(name) };
  }
  return { key, properties };
}

function protoValue(value: Props[string]): google.datastore.v1.IValue {
  if (value === null) return { nullValue: 'NULL_VALUE' };
  if (Buffer.isBuffer(value)) return { blobValue: value };
  if (value instanceof Date) {
    const ms = value.getTime();
    return { timestampValue: { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 } };
  }
  if (typeof value === 'number') return { integerValue: value };
  return { stringValue: value };
}
