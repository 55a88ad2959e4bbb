import type { FunctionName } from '../../lib/api';
import { TEST_TOKEN, type startService } from './service';

/** Requests to the functions of a running service (test/support/service.ts), as a client that may send anything. */
export type Service = Awaited<ReturnType<typeof startService>>;

export const METHOD: Record<FunctionName, 'GET' | 'POST' | 'PUT'> = {
  messageCreate: 'POST',
  messageWrite: 'PUT',
  messageCommit: 'POST',
  messageDelete: 'POST',
  messageFd: 'GET',
  messageWalk: 'GET',
  messageCorrupt: 'POST',
  messageUncorrupt: 'POST',
  messagePurge: 'POST',
  envelopeCreate: 'POST',
  envelopeDelete: 'POST',
  envelopeLoad: 'GET',
  envelopeUpdate: 'POST',
  envelopeWalk: 'GET',
  instanceHeartbeat: 'POST',
  queueStatus: 'GET',
  queueTakeover: 'POST',
  credentialIssue: 'POST',
  credentialRevoke: 'POST',
  credentialList: 'GET',
};

export interface Ask {
  method?: string;
  query?: Record<string, string>;
  json?: unknown;
  raw?: string | Buffer;
  type?: string;
  headers?: Record<string, string>;
  token?: string | null;
}

export async function ask(service: Service, fn: string, a: Ask = {}) {
  const url = new URL(`${service.baseUrl}/${fn}`);
  for (const [k, v] of Object.entries(a.query ?? {})) url.searchParams.set(k, v);
  const headers: Record<string, string> = { ...a.headers };
  const token = a.token === undefined ? TEST_TOKEN : a.token;
  if (token !== null) headers.authorization = `Bearer ${token}`;
  let body: string | Buffer | undefined;
  if (a.json !== undefined) {
    body = JSON.stringify(a.json);
    headers['content-type'] = a.type ?? 'application/json';
  } else if (a.raw !== undefined) {
    body = a.raw;
    if (a.type) headers['content-type'] = a.type;
  }
  const res = await fetch(url, { method: a.method ?? METHOD[fn as FunctionName] ?? 'GET', headers, body });
  const bytes = Buffer.from(await res.arrayBuffer());
  const isJson = (res.headers.get('content-type') ?? '').startsWith('application/json');
  return { status: res.status, headers: res.headers, bytes, json: isJson ? JSON.parse(bytes.toString()) : undefined };
}
