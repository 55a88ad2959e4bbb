import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, type Dispatcher } from 'undici';
import { z } from 'zod';
import { Responses, toEnvelopeJson, type FunctionName } from '../lib/api';
import { TOKEN_HEADER } from '../lib/auth';
import type { Grant } from '../lib/credentials';
import type { IdTokenSource } from './id-tokens';
import { isErrorCode, isServiceFault, QueueError } from '../lib/errors';
import { b64, FRAME_TYPE, frame } from '../lib/wire';
import type { Evpid, Msgid } from '../lib/ids';
import { sha256hex } from '../lib/rules';
import {
  CHUNK_BYTES,
  DEFAULT_LIMITS,
  PAGE_BYTES_DEFAULT,
  PAGE_BYTES_MAX,
  PAGE_DEFAULT,
  PAGE_MAX,
  type Commit,
  type Envelope,
  type EnvelopeUpdate,
  type HeartbeatState,
  type InstanceInfo,
  type Limits,
  type MessageInfo,
  type MessageWalk,
  type OwnerCheck,
  type Page,
  type PageRequest,
  type QueueCount,
  type QueueStore,
  type ReadRange,
  type Takeover,
  type TakeoverOptions,
} from '../lib/store';

/**
 * The queue API over HTTP, as a QueueStore: what the bridge uses, and what
 * the contract suite runs through to test the functions. Every call has a
 * deadline and is retried with backoff on network errors and 5xx/429
 * answers, within a time budget; that is safe because every operation of the
 * API may be repeated.
 */
export interface ClientOptions {
  /** Where the functions are: http://127.0.0.1:8080 or https://REGION-PROJECT.cloudfunctions.net */
  baseUrl: string;
  /** The shared token, if the service requires one. */
  token?: string;
  /** A Google ID token for each function's URL, in Authorization; the token then goes in X-Queue-Token. */
  idToken?: IdTokenSource;
  /** Deadline of one HTTP attempt. */
  timeoutMs?: number;
  /** How long a call may keep retrying before it fails. */
  budgetMs?: number;
  /** Bodies up to this size travel inside messageCommit; larger ones in messageWrite parts. */
  inlineMax?: number;
  limits?: Limits;
  /** Told about every HTTP attempt (for counters). */
  observe?: (fn: FunctionName, ms: number, status: number | 'error') => void;
  /**
   * Once a call has spent its budget on a service that does not answer,
   * later calls fail at once, but for one attempt a second that probes the
   * service, until it answers again; calls that accept mail get one attempt
   * each. The bridge sets this: during an outage
   * smtpd's calls must not each hold its queue for a whole budget.
   */
  failFast?: boolean;
}

const PROBE_MS = 1000;
const ACCEPT_PATH = new Set<FunctionName>(['messageCreate', 'messageWrite', 'messageCommit']);

/** The size of a messageWrite part, and of a ranged messageFd read. */
export const PART_BYTES = 8 * CHUNK_BYTES;
export const INLINE_MAX_DEFAULT = 4 * 1024 * 1024;
const TAKEOVER_TIMEOUT_MS = 60_000;
const RETRY_STATUS = new Set([408, 429, 500, 502, 503, 504]);

/**
 * The most a JSON answer may carry, well above the largest each call can
 * legitimately get: one object (an envelope at most) for most functions; a
 * page of envelopes for a walk, from what the walk asked for
 * (pageAnswerMax); and for a takeover page or the status, the largest answer
 * of the API, a walk page at the largest maxBytes and limit (about 33 MiB: a
 * takeover page of TAKEOVER_MAX messages of 1,000 envelopes each is 19 MB).
 */
export const SMALL_ANSWER_MAX = 1024 * 1024;
/** {"evpid":"(16)","data":""}, and a comma. */
const ENVELOPE_FRAMING = 64;
export const pageAnswerMax = (maxBytes: number, limit: number) =>
  Math.ceil(1.5 * (Math.ceil((maxBytes * 4) / 3) + limit * ENVELOPE_FRAMING)) + SMALL_ANSWER_MAX;
export const LARGEST_ANSWER_MAX = pageAnswerMax(PAGE_BYTES_MAX, PAGE_MAX);
/** What is kept of an error answer, for its message; the rest is not read. */
const ERROR_ANSWER_MAX = 64 * 1024;
/** Room above the largest message in a body read. */
const BODY_SLACK = 64 * 1024;

interface Call {
  method: 'GET' | 'POST' | 'PUT';
  /** Deadline of one attempt, when the call's work can take longer than usual. */
  timeoutMs?: number;
  query?: Record<string, string | number | undefined>;
  json?: unknown;
  bytes?: Buffer;
  /** The bytes' content type, if not application/octet-stream. */
  type?: string;
  headers?: Record<string, string>;
  /** What a successful answer carries: JSON (the default), or a body's bytes. */
  answer?: 'json' | 'bytes';
  /** The most it may carry, if more than SMALL_ANSWER_MAX. */
  answerMax?: number;
}

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

export class HttpQueueStore implements QueueStore {
  readonly limits: Limits;
  private readonly agent: Agent;
  private readonly base: string;
  private readonly timeoutMs: number;
  private readonly budgetMs: number;
  private readonly inlineMax: number;
  private readonly bodyMax: number;
  /** Set while the service is out of reach (failFast only). */
  private outage?: { since: Date; nextProbe: number };
  private lastVersion = 0;
  /** Inline bodies travel in frames until the service refuses one (415): functions older than frames take JSON only. */
  private framing = true;

  constructor(private readonly options: ClientOptions) {
    this.limits = options.limits ?? DEFAULT_LIMITS;
    this.base = options.baseUrl.replace(/\/+$/, '');
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.budgetMs = options.budgetMs ?? 30_000;
    this.inlineMax = options.inlineMax ?? INLINE_MAX_DEFAULT;
    this.bodyMax = this.limits.maxMessageBytes + BODY_SLACK;
    this.agent = new Agent({ keepAliveTimeout: 30_000, connections: 8 });
  }

  async messageCreate(msgids: Msgid[], owner: string): Promise<void> {
    await this.json('messageCreate', Responses.messageCreate, { method: 'POST', json: { msgids, owner } });
  }

  async messageWrite(msgid: Msgid, offset: number, data: Buffer, owner: string): Promise<void> {
    await this.call('messageWrite', { method: 'PUT', query: { msgid, offset, owner }, bytes: data });
  }

  async messageCommit(commit: Commit): Promise<{ created: boolean }> {
    const { body, envelopes = [], ...rest } = commit;
    const json = { ...rest, envelopes: envelopes.map(toEnvelopeJson) };
    const inline = body !== undefined && body.length <= this.inlineMax;
    if (body && !inline) await this.writeParts(commit.msgid, body, commit.owner);
    if (inline && this.framing) {
      try {
        return await this.commit({ method: 'POST', bytes: frame(json, body), type: FRAME_TYPE });
      } catch (err) {
        if (!(err instanceof QueueError && err.code === 'unsupported_media_type')) throw err;
        this.framing = false;
      }
    }
    return this.commit({ method: 'POST', json: inline ? { ...json, body: b64(body) } : json });
  }

  private async commit(call: Call): Promise<{ created: boolean }> {
    const { created } = await this.json('messageCommit', Responses.messageCommit, call);
    return { created };
  }

  async messageDelete(msgid: Msgid, check: OwnerCheck = {}): Promise<{ deleted: boolean }> {
    const { deleted } = await this.json('messageDelete', Responses.messageDelete, { method: 'POST', json: { msgid, ...check } });
    return { deleted };
  }

  async messageRead(msgid: Msgid, read: ReadRange & OwnerCheck = {}): Promise<{ info: MessageInfo; data: Buffer }> {
    const query = { msgid, owner: read.owner };
    const whole = read.offset === undefined && read.length === undefined;
    const first = read.offset ?? 0;
    const end = read.length === undefined ? Infinity : first + read.length;
    if (end <= first) return { info: (await this.messageWalk(msgid, { limit: 1, owner: read.owner })).message, data: Buffer.alloc(0) };
    const parts: Buffer[] = [];
    let at = first;
    let info: MessageInfo | undefined;
    for (;;) {
      const last = Math.min(at + PART_BYTES, end) - 1;
      const answer = await this.call('messageFd', { method: 'GET', query, headers: { range: `bytes=${at}-${last}` }, answer: 'bytes', answerMax: this.bodyMax }, [416]);
      if (answer.status === 416) break;
      info = messageInfoOf(msgid, answer);
      if (answer.status === 206) checkPart(answer, at, last);
      parts.push(answer.body);
      at += answer.body.length;
      if (at - first > this.bodyMax) throw new BadAnswer('messageFd', `a body of more than ${this.bodyMax} bytes`);
      if (answer.status === 200 || answer.body.length === 0 || at >= end || at >= (info.size ?? 0)) break;
    }
    info ??= (await this.messageWalk(msgid, { limit: 1, owner: read.owner })).message;
    const data = Buffer.concat(parts);
    if (whole && sha256hex(data) !== info.sha256) {
      throw new QueueError('conflict', `message ${msgid} body does not match its sha256`, { msgid, reason: 'corrupt' });
    }
    return { info, data };
  }

  async messageWalk(msgid: Msgid, page: PageRequest & OwnerCheck = {}): Promise<MessageWalk> {
    const answer = await this.json('messageWalk', Responses.messageWalk, {
      method: 'GET',
      query: { msgid, cursor: page.cursor, limit: page.limit, owner: page.owner },
      answerMax: this.pageAnswerMax({ ...page, maxBytes: PAGE_BYTES_DEFAULT }),
    });
    return { message: answer.message, items: answer.envelopes, cursor: answer.cursor };
  }

  async messageCorrupt(msgid: Msgid, check: OwnerCheck = {}): Promise<MessageInfo> {
    return (await this.json('messageCorrupt', Responses.messageState, { method: 'POST', json: { msgid, ...check } })).message;
  }

  async messageUncorrupt(msgid: Msgid, check: OwnerCheck = {}): Promise<MessageInfo> {
    return (await this.json('messageUncorrupt', Responses.messageState, { method: 'POST', json: { msgid, ...check } })).message;
  }

  async envelopeCreate(envelope: Envelope, check: OwnerCheck = {}): Promise<{ created: boolean }> {
    const { created } = await this.json('envelopeCreate', Responses.envelopeCreate, {
      method: 'POST',
      json: { ...toEnvelopeJson(envelope), ...check },
    });
    return { created };
  }

  async envelopeDelete(evpid: Evpid, check: OwnerCheck = {}): Promise<{ deleted: boolean; messageDeleted: boolean }> {
    const { deleted, messageDeleted } = await this.json('envelopeDelete', Responses.envelopeDelete, {
      method: 'POST',
      json: { evpid, ...check },
    });
    return { deleted, messageDeleted };
  }

  async envelopesDelete(evpids: Evpid[], check: OwnerCheck = {}): Promise<{ deleted: Evpid[]; messageDeleted: boolean }> {
    return this.json('envelopeDelete', Responses.envelopesDelete, { method: 'POST', json: { evpids, ...check } });
  }

  async envelopeLoad(evpid: Evpid, check: OwnerCheck = {}): Promise<Buffer> {
    return (await this.json('envelopeLoad', Responses.envelopeLoad, { method: 'GET', query: { evpid, owner: check.owner } })).data;
  }

  /** Every update carries a version (this client's clock unless given), so that a late attempt cannot overwrite a newer update. */
  async envelopeUpdate(update: EnvelopeUpdate, check: OwnerCheck = {}): Promise<void> {
    const version = update.version ?? this.nextVersion();
    await this.call('envelopeUpdate', { method: 'POST', json: { ...toEnvelopeJson(update), version, ...check } });
  }

  async envelopeWalk(page: PageRequest & { owner?: string } = {}): Promise<Page<Envelope>> {
    const answer = await this.json('envelopeWalk', Responses.envelopeWalk, {
      method: 'GET',
      query: { cursor: page.cursor, limit: page.limit, maxBytes: page.maxBytes, owner: page.owner },
      answerMax: this.pageAnswerMax(page),
    });
    return { items: answer.envelopes, cursor: answer.cursor };
  }

  async messagePurge(owner: string, keep: Msgid[] = []): Promise<number> {
    return (await this.json('messagePurge', Responses.messagePurge, { method: 'POST', json: { owner, keep } })).purged;
  }

  async instanceHeartbeat(instance: string, leaseMs: number, state: HeartbeatState = {}): Promise<InstanceInfo> {
    const json = { instance, leaseMs, walkDone: state.walkDone, startedAt: state.startedAt?.toISOString(), drain: state.drain, pendingWrites: state.pendingWrites };
    return (await this.json('instanceHeartbeat', Responses.instanceHeartbeat, { method: 'POST', json })).instance;
  }

  async instanceList(): Promise<InstanceInfo[]> {
    return (await this.queueStatus()).instances;
  }

  async queueTakeover(claimant: string, options: TakeoverOptions = {}): Promise<Takeover> {
    // a takeover claims many messages in several transactions
    const timeoutMs = Math.max(this.timeoutMs, TAKEOVER_TIMEOUT_MS);
    return this.json('queueTakeover', Responses.queueTakeover, { method: 'POST', json: { owner: claimant, ...options }, timeoutMs, answerMax: LARGEST_ANSWER_MAX });
  }

  async queueCounts(): Promise<QueueCount[]> {
    return (await this.queueStatus()).counts;
  }

  /** The instances and the counts in one request, as `queue-rest status` shows them. */
  async queueStatus(): Promise<{ instances: InstanceInfo[]; counts: QueueCount[] }> {
    return this.json('queueStatus', Responses.queueStatus, { method: 'GET', answerMax: LARGEST_ANSWER_MAX });
  }

  /** Administrators only (QUEUE_AUTH=tokens): a new credential, whose token is answered this once. */
  async credentialIssue(grant: Grant): Promise<z.output<typeof Responses.credentialIssue>> {
    return this.json('credentialIssue', Responses.credentialIssue, { method: 'POST', json: grant });
  }

  async credentialRevoke(target: { digest: string } | { instance: string }): Promise<z.output<typeof Responses.credentialRevoke>['revoked']> {
    return (await this.json('credentialRevoke', Responses.credentialRevoke, { method: 'POST', json: target })).revoked;
  }

  async credentialList(): Promise<z.output<typeof Responses.credentialList>['credentials']> {
    return (await this.json('credentialList', Responses.credentialList, { method: 'GET' })).credentials;
  }

  async close(): Promise<void> {
    await this.agent.close();
  }

  /**
   * A hybrid clock: the time in microseconds, or one more than the last
   * version if the clock has not moved past it (or stepped back). Retries of
   * one update repeat its version; versions of this client's updates only
   * increase; another client's (after a takeover or a restart) are ordered
   * by the wall clock.
   */
  private nextVersion(): number {
    this.lastVersion = Math.max(Date.now() * 1000, this.lastVersion + 1);
    return this.lastVersion;
  }

  /** A page holds `maxBytes` of envelopes at most, or one envelope if that is larger. */
  private pageAnswerMax(page: PageRequest): number {
    return pageAnswerMax(Math.max(page.maxBytes ?? PAGE_BYTES_DEFAULT, this.limits.maxEnvelopeBytes), page.limit ?? PAGE_DEFAULT);
  }

  private async writeParts(msgid: Msgid, body: Buffer, owner: string): Promise<void> {
    for (let at = 0; at < body.length; at += PART_BYTES) {
      const part = body.subarray(at, at + PART_BYTES);
      try {
        await this.messageWrite(msgid, at, part, owner);
      } catch (err) {
        if (!(err instanceof QueueError)) throw err;
        if (err.code === 'conflict' && err.details.reason !== 'not_owner') return; // committed already: let the commit say
        if (err.code !== 'not_found' || at > 0) throw err;
        await this.messageCreate([msgid], owner);
        await this.messageWrite(msgid, at, part, owner);
      }
    }
  }

  private async json<S extends z.ZodType>(fn: FunctionName, shape: S, call: Call): Promise<z.output<S>> {
    const answer = await this.call(fn, call);
    try {
      return shape.parse(JSON.parse(answer.body.toString('utf8')));
    } catch (err) {
      throw new BadAnswer(fn, (err as Error).message.slice(0, 200));
    }
  }

  /** One API call: attempts until an answer that is not worth retrying, or the budget is spent. */
  private async call(fn: FunctionName, call: Call, accept: number[] = []): Promise<Answer> {
    let deadline = Date.now() + this.budgetMs;
    if (this.outage) {
      // mail being accepted gets its one attempt, so that the first message after an outage is not refused
      if (Date.now() < this.outage.nextProbe && !ACCEPT_PATH.has(fn)) {
        throw new QueueError('unavailable', `${fn} not sent: the service has not answered since ${this.outage.since.toISOString()}`, { outage: true });
      }
      // this call probes the service: one attempt, no retry
      this.outage.nextProbe = Date.now() + PROBE_MS;
      deadline = 0;
    }
    for (let attempt = 1; ; attempt++) {
      let answer: Answer | undefined;
      let failure: unknown;
      const started = performance.now();
      try {
        answer = await this.attempt(fn, call);
      } catch (err) {
        failure = err;
      }
      this.options.observe?.(fn, performance.now() - started, answer?.status ?? 'error');
      const retryable = answer ? RETRY_STATUS.has(answer.status) : !(failure instanceof BadAnswer);
      if (!retryable) this.outage = undefined;
      if (answer && (answer.status < 300 || accept.includes(answer.status))) return answer;
      const pause = Math.min(50 * 2 ** (attempt - 1), 2000) * (0.5 + Math.random() / 2);
      if (!retryable || Date.now() + pause >= deadline) {
        if (retryable && this.options.failFast) this.outage ??= { since: new Date(), nextProbe: Date.now() + PROBE_MS };
        throw answer ? errorOf(fn, answer) : failure instanceof BadAnswer ? failure : unreachable(fn, failure);
      }
      await sleep(pause);
    }
  }

  private async attempt(fn: FunctionName, call: Call): Promise<Answer> {
    const url = new URL(`${this.base}/${fn}`);
    for (const [name, value] of Object.entries(call.query ?? {})) {
      if (value !== undefined) url.searchParams.set(name, String(value));
    }
    const headers: Record<string, string> = { ...call.headers, ...(await this.credentials(`${this.base}/${fn}`)) };
    let body: string | Buffer | undefined;
    if (call.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(call.json);
    } else if (call.bytes) {
      headers['content-type'] = call.type ?? 'application/octet-stream';
      body = call.bytes;
    }
    const res = await this.agent.request({
      origin: url.origin,
      path: url.pathname + url.search,
      method: call.method as Dispatcher.HttpMethod,
      headers,
      body,
      signal: AbortSignal.timeout(call.timeoutMs ?? this.timeoutMs),
    });
    const ok = res.statusCode >= 200 && res.statusCode < 300;
    const expected = call.answer === 'bytes' ? 'application/octet-stream' : 'application/json';
    const type = String(res.headers['content-type'] ?? '');
    if (ok && res.statusCode !== 204 && type.split(';')[0].trim().toLowerCase() !== expected) {
      discard(res);
      throw new BadAnswer(fn, `Content-Type ${type || '(none)'} instead of ${expected}`);
    }
    const max = ok ? (call.answerMax ?? SMALL_ANSWER_MAX) : ERROR_ANSWER_MAX;
    return { status: res.statusCode, headers: res.headers, body: await readAtMost(fn, res, max, ok) };
  }

  private async credentials(audience: string): Promise<Record<string, string>> {
    const headers: Record<string, string> = {};
    if (this.options.idToken) {
      headers.authorization = `Bearer ${await this.options.idToken(audience)}`;
      if (this.options.token) headers[TOKEN_HEADER] = this.options.token;
    } else if (this.options.token) {
      headers.authorization = `Bearer ${this.options.token}`;
    }
    return headers;
  }
}

/**
 * An answer the client cannot use: over its size, of the wrong type, not
 * the JSON expected, or a body part that is not the one asked for. It fails
 * the call at once: retrying a service that answers so does not help.
 */
class BadAnswer extends QueueError {
  constructor(fn: FunctionName, why: string) {
    super('unavailable', `${fn} gave an answer that cannot be used: ${why}`, { reason: 'bad_answer' });
  }
}

/**
 * Reads an answer's body, `max` bytes at most, and no further: a successful
 * answer over it is refused, an error answer is cut short (it is only read
 * for its message).
 */
async function readAtMost(fn: FunctionName, res: Dispatcher.ResponseData, max: number, refuseOver: boolean): Promise<Buffer> {
  const advertised = Number(res.headers['content-length'] ?? 0);
  const chunks: Buffer[] = [];
  let bytes = 0;
  if (advertised <= max) {
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      chunks.push(chunk);
      bytes += chunk.length;
      if (bytes > max) break;
    }
  }
  if (advertised <= max && bytes <= max) return Buffer.concat(chunks, bytes);
  discard(res);
  if (refuseOver) throw new BadAnswer(fn, `more than ${max} bytes`);
  return Buffer.concat(chunks).subarray(0, max);
}

/** Stops reading an answer: its connection is closed, and the abort is no error of anyone's. */
function discard(res: Dispatcher.ResponseData): void {
  res.body.on('error', () => undefined);
  res.body.destroy();
}

/** A 206 must be the part asked for, whole, or the body's end. */
function checkPart(answer: Answer, first: number, last: number): void {
  const range = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(String(answer.headers['content-range'] ?? ''));
  const [from, to, size] = range ? range.slice(1).map(Number) : [];
  if (!range || from !== first || to - from + 1 !== answer.body.length || to !== Math.min(last, size - 1)) {
    throw new BadAnswer('messageFd', `bytes ${first}-${last} asked for, Content-Range ${answer.headers['content-range'] ?? '(none)'} with ${answer.body.length} bytes answered`);
  }
}

const ErrorBody = z.object({ error: z.looseObject({ code: z.string(), message: z.string() }) });

function errorOf(fn: FunctionName, answer: Answer): Error {
  let parsed: z.infer<typeof ErrorBody> | undefined;
  try {
    parsed = ErrorBody.parse(JSON.parse(answer.body.toString('utf8')));
  } catch {
    // not one of the service's answers (a proxy, a front end)
  }
  const code = parsed?.error.code;
  if (parsed && code !== undefined && isErrorCode(code) && !isServiceFault(code)) {
    const { code: _code, message, ...details } = parsed.error;
    return new QueueError(code, message, details);
  }
  // a front end's answer, a redirect (never followed: the token must not go elsewhere), a bug, storage the
  // service cannot use: none is final, whatever its code, so smtpd gets a temporary failure and its mail stays
  const text = parsed ? `${code}: ${parsed.error.message}` : answer.body.toString('utf8').slice(0, 200);
  return new QueueError('unavailable', `${fn} answered ${answer.status}: ${text}`, { status: answer.status, ...(parsed && { code }) });
}

function unreachable(fn: FunctionName, err: unknown): QueueError {
  return new QueueError('unavailable', `${fn} did not answer: ${(err as Error)?.message ?? err}`, {});
}

function messageInfoOf(msgid: Msgid, answer: Answer): MessageInfo {
  const header = (name: string) => {
    const value = answer.headers[name];
    return Array.isArray(value) ? value[0] : value;
  };
  const committed = header('x-queue-committed-at');
  return {
    msgid,
    state: header('x-queue-state') === 'corrupt' ? 'corrupt' : 'queued',
    owner: header('x-queue-owner') ?? '',
    size: Number(header('x-queue-size')),
    sha256: (header('etag') ?? '').replace(/"/g, ''),
    createdAt: new Date(header('x-queue-created-at') ?? 0),
    committedAt: committed ? new Date(committed) : null,
  };
}
