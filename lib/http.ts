import * as functions from '@google-cloud/functions-framework';
import type { HttpFunction, Request, Response } from '@google-cloud/functions-framework';
import { z } from 'zod';
import { authenticate, type Caller } from './auth';
import { ConfigError } from './config';
import { forbidden, isServiceFault, QueueError, STATUS } from './errors';
import getRawBody from 'raw-body';
import { setBodyGate, type GatedRequest } from './body-gate';
import { createLogger, type Logger } from './log';
import { FRAME_TYPE, unframe } from './wire';
export { Base64, b64, isBase64 } from './wire';
import { credentials, service } from './service';

/**
 * The one wrapper every function goes through: method, credentials, the
 * caller's rights, content type and input are checked before the function
 * body runs, errors become JSON answers with their status, and each request
 * makes one log line. It registers the function with functions-framework
 * under its name.
 */
export type Method = 'GET' | 'POST' | 'PUT';

export interface Reply {
  status: number;
  json?: unknown;
  bytes?: Buffer;
  headers?: Record<string, string>;
  /** Fields for the request's log line, for log-based metrics (docs/metrics.md). */
  log?: Record<string, unknown>;
}

export type Access = 'admin' | { self: 'owner' | 'instance' };

export interface EndpointSpec<S extends z.ZodType> {
  method: Method;
  /** Where the input is: the query string (GET), a JSON body, or the query string of a binary body. */
  from: 'query' | 'json' | 'bytes';
  input: S;
  /**
   * Who may call it beside role 'any' (lib/auth.ts), which may call every
   * function: administrators alone (the default), or also an MX acting as
   * itself. `self` is the input field naming the instance a request acts for
   * (its owner, the instance that heartbeats, the claimant): an MX's
   * requests get its own instance there, and naming another one is refused
   * (403).
   */
  access?: Access;
  /**
   * A field of a JSON input that may also travel raw after the rest of the
   * input, in a frame (FRAME_TYPE, lib/wire.ts): messageCommit's body. The
   * rest is parsed with the same schema, less that field.
   */
  framed?: string;
}

/** Largest JSON request: an 8 MB inline body in base64 plus its envelopes. */
export const JSON_MAX_BYTES = 12 * 1024 * 1024;
/** Largest binary request (a part of a body). */
export const BYTES_MAX = 8_000_000;

let log: Logger | undefined;
/** Made on first use, so that LOG_LEVEL set by an embedding program counts. */
const logger = (): Logger => (log ??= createLogger({ name: 'queue' }));

const CONTENT_TYPE = { json: 'application/json', bytes: 'application/octet-stream' } as const;

/** The most body bytes each function reads (a function whose input is in its query string reads none), and who may call it. */
const gateRules = new Map<string, { cap: number; access: Access }>();
const capOf = (from: EndpointSpec<z.ZodType>['from']) => (from === 'json' ? JSON_MAX_BYTES : from === 'bytes' ? BYTES_MAX : 0);

/**
 * Before any byte of a body is read (lib/body-gate.ts): credentials and the
 * caller's right to the function, no compression, and a Content-Length
 * within the function's cap. What fails is answered here; Node then discards
 * what the client still sends, without keeping it (closing at once would
 * make most clients lose the answer).
 */
setBodyGate(async (req, res) => {
  const started = process.hrtime.bigint();
  const name = req.queueFunction ?? process.env.FUNCTION_TARGET ?? '';
  try {
    const rules = gateRules.get(name);
    req.caller = await callerOf(req);
    if (rules) authorize(req.caller, rules.access);
    const encoding = req.headers['content-encoding'];
    if (encoding !== undefined && encoding !== 'identity') {
      throw new QueueError('unsupported_media_type', 'send the request body uncompressed', { contentEncoding: encoding });
    }
    const cap = rules?.cap ?? JSON_MAX_BYTES;
    const length = Number(req.headers['content-length'] ?? 0);
    if (length > cap) throw new QueueError('too_large', `request body is more than ${cap} bytes`, { limit: cap });
    return true;
  } catch (err) {
    const reply = errorReply(err);
    // a body that has all arrived meanwhile is dropped by Node, and the connection kept
    if (!req.complete) refuseBody(req);
    send(res, reply);
    logRequest(name, req, reply, err, started, {});
    return false;
  }
});

/** How long a connection whose body was refused stays open, unread, for the client to read the answer. */
const REFUSED_LINGER_MS = 2_000;

/**
 * Node reads and discards the rest of a body its answer did not read, and
 * closing at once makes most clients lose the answer (their next write
 * fails first). So nothing more is read: the client's writes stall, it
 * reads the answer, and the connection ends soon after.
 */
function refuseBody(req: Request): void {
  const socket = req.socket;
  (req as unknown as { _dump: () => void })._dump = () => socket.pause();
  setTimeout(() => socket.destroy(), REFUSED_LINGER_MS).unref();
}

/** Who sent the request, from its headers. */
async function callerOf(req: Request): Promise<Caller> {
  const { config } = service();
  return authenticate(req.headers, config.auth, config.auth.mode === 'tokens' ? credentials() : undefined);
}

/** Who sent a request, and to a function of what access. */
interface Who {
  caller: Caller;
  access: Access;
}

function authorize(caller: Caller, access: Access): void {
  if (caller.role === 'mx' && access === 'admin') throw forbidden('this function is for administrators', { instance: caller.instance });
}

/**
 * An MX acts as its own instance: the field that names the instance a
 * request is for gets it, unless the request names another, which is refused.
 */
function actingAsCaller(raw: unknown, { caller, access }: Who): unknown {
  if (caller.role !== 'mx' || access === 'admin' || typeof raw !== 'object' || raw === null || Array.isArray(raw)) return raw;
  const named = (raw as Record<string, unknown>)[access.self];
  if (named !== undefined && named !== caller.instance) {
    throw forbidden(`${caller.instance} may act only as itself`, { instance: caller.instance, [access.self]: named });
  }
  return { ...raw, [access.self]: caller.instance };
}

export function endpoint<S extends z.ZodType>(
  name: string,
  spec: EndpointSpec<S>,
  run: (input: z.output<S>, req: Request) => Promise<Reply>,
): HttpFunction {
  const allowed = spec.method === 'GET' ? ['GET', 'HEAD'] : [spec.method];
  const access = spec.access ?? 'admin';
  gateRules.set(name, { cap: capOf(spec.from), access });
  const frame = spec.framed ? frameOf(spec.input, spec.framed) : undefined;
  const handler: HttpFunction = async (req: Request, res: Response) => {
    const started = process.hrtime.bigint();
    let reply: Reply;
    let fields: Record<string, unknown> = {};
    let failure: unknown;
    try {
      if (!allowed.includes(req.method)) {
        throw new QueueError('method_not_allowed', `${name} takes ${spec.method}`, { allow: allowed.join(', ') });
      }
      const caller = (req as GatedRequest).caller ?? (await callerOf(req));
      authorize(caller, access);
      if (spec.from !== 'query') await readBody(spec, req);
      const input = parseInput(spec, req, { caller, access }, frame);
      fields = { ...(caller.role !== 'any' && { caller: caller.role === 'mx' ? caller.instance : 'admin' }), ...idsOf(input) };
      reply = await run(input, req);
    } catch (err) {
      failure = err;
      reply = errorReply(err);
    }
    // a body refused part way is not read further
    if (!req.complete) refuseBody(req);
    send(res, reply);
    logRequest(name, req, reply, failure, started, fields);
  };
  functions.http(name, handler);
  return handler;
}

/** A log line of its own beside the request's, e.g. one per owner for a log-based metric by owner (docs/metrics.md). */
export function logEvent(event: string, fields: Record<string, unknown>, message: string): void {
  logger().info({ event, ...fields }, message);
}

/** One log line per request, in Cloud Logging's shape. */
function logRequest(name: string, req: Request, reply: Reply, failure: unknown, started: bigint, fields: Record<string, unknown>): void {
  const latency = Number(process.hrtime.bigint() - started) / 1e9;
  const line = {
    function: name,
    ...fields,
    ...reply.log,
    latencyMs: Math.round(latency * 1e4) / 10,
    httpRequest: {
      requestMethod: req.method,
      requestUrl: `/${name}${queryOf(req.originalUrl)}`,
      status: reply.status,
      latency: `${latency.toFixed(6)}s`,
      requestSize: String(req.rawBody?.length ?? 0),
      userAgent: req.get('user-agent'),
      remoteIp: req.ip,
    },
  };
  const message = `${req.method} ${name} ${reply.status}`;
  // an operator reads what to fix in the line itself (lib/datastore-errors.ts)
  if (failure instanceof QueueError && isServiceFault(failure.code)) logger().error({ ...line, err: failure }, `${message} ${failure.code}: ${failure.message}`);
  else if (reply.status >= 500) logger().error({ ...line, err: failure }, message);
  else if (reply.status >= 400) logger().warn({ ...line, error: (failure as Error).message }, message);
  else logger().info(line, message);
}

/**
 * Reads the body, once its content type is right, up to the function's cap:
 * one that passes it is cut off there, whatever its Content-Length said.
 */
async function readBody(spec: EndpointSpec<z.ZodType>, req: Request): Promise<void> {
  const types = [CONTENT_TYPE[spec.from as 'json' | 'bytes'], ...(spec.framed ? [FRAME_TYPE] : [])];
  if (!req.is(types)) {
    throw new QueueError('unsupported_media_type', `send the request body as ${types.join(' or ')}`, { contentType: req.get('content-type') ?? null });
  }
  const limit = capOf(spec.from);
  try {
    req.rawBody = await getRawBody(req, { limit, length: req.headers['content-length'] });
  } catch (err) {
    const type = (err as { type?: string }).type;
    if (type === 'entity.too.large') throw new QueueError('too_large', `request body is more than ${limit} bytes`, { limit });
    throw new QueueError('bad_request', `the request body could not be read: ${(err as Error).message}`);
  }
}

/** Any failure while reading the input is the request's fault: a 4xx, never a 500. */
function parseInput<S extends z.ZodType>(spec: EndpointSpec<S>, req: Request, who: Who, frame?: Frame): z.output<S> {
  try {
    return readInput(spec, req, who, frame);
  } catch (err) {
    if (err instanceof QueueError) throw err;
    throw new QueueError('bad_request', `the request could not be parsed: ${(err as Error)?.message ?? err}`, {}, { cause: err });
  }
}

/** A framed input: the field its bytes fill, and the schema of the JSON before them. */
interface Frame {
  field: string;
  head: z.ZodType;
}

const frameOf = (input: z.ZodType, field: string): Frame => ({
  field,
  head: (input as unknown as z.ZodObject).omit({ [field]: true } as Record<string, true> & Record<number, never>),
});

function readInput<S extends z.ZodType>(spec: EndpointSpec<S>, req: Request, who: Who, frame?: Frame): z.output<S> {
  let raw: unknown = req.query;
  let schema: z.ZodType = spec.input;
  let bytes: Record<string, Buffer> | undefined;
  if (spec.from !== 'query') {
    const body = req.rawBody ?? Buffer.alloc(0);
    if (spec.from === 'bytes') req.body = body;
    if (spec.from === 'json') {
      if (Object.keys(req.query).length > 0) throw new QueueError('bad_request', 'this function takes no query parameters');
      if (frame && req.is(FRAME_TYPE)) {
        const parts = unframe(body);
        if (!parts) throw new QueueError('bad_request', 'the frame has no newline after its JSON');
        raw = parseJson(parts.head);
        schema = frame.head;
        bytes = { [frame.field]: parts.body };
      } else {
        raw = parseJson(body.toString('utf8'));
      }
    }
  }
  const parsed = schema.safeParse(actingAsCaller(raw, who));
  if (!parsed.success) {
    throw new QueueError('bad_request', 'invalid request', {
      issues: parsed.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message })),
    });
  }
  return (bytes ? { ...(parsed.data as object), ...bytes } : parsed.data) as z.output<S>;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new QueueError('bad_request', `request body is not valid JSON: ${(err as Error).message}`);
  }
}

function errorReply(err: unknown): Reply {
  if (err instanceof QueueError) {
    const headers: Record<string, string> = {};
    if (err.code === 'unauthorized') headers['www-authenticate'] = 'Bearer realm="opensmtpd-queue"';
    if (err.code === 'method_not_allowed') headers.allow = String(err.details.allow);
    if (err.code === 'unavailable') headers['retry-after'] = '1';
    const { allow: _allow, ...details } = err.details;
    return { status: STATUS[err.code], headers, json: { error: { code: err.code, message: err.message, ...details } } };
  }
  if (err instanceof ConfigError) {
    return { status: 500, json: { error: { code: 'misconfigured', message: 'the service is misconfigured; see its log' } } };
  }
  return { status: 500, json: { error: { code: 'internal', message: 'internal error; see the service log' } } };
}

function send(res: Response, reply: Reply): void {
  res.status(reply.status);
  for (const [name, value] of Object.entries(reply.headers ?? {})) res.set(name, value);
  res.set('cache-control', 'no-store');
  if (reply.bytes) {
    res.type('application/octet-stream').send(reply.bytes);
  } else if (reply.json === undefined) {
    res.end();
  } else {
    res.json(reply.json);
  }
}

function queryOf(url: string): string {
  const at = url.indexOf('?');
  return at < 0 ? '' : url.slice(at);
}

function idsOf(input: unknown): Record<string, unknown> {
  if (typeof input !== 'object' || input === null) return {};
  const { msgid, evpid, owner } = input as Record<string, unknown>;
  const msgids = (input as { msgids?: unknown }).msgids;
  return Object.fromEntries(Object.entries({ msgid, evpid, owner, msgids }).filter(([, v]) => v !== undefined));
}

/** A whole number in a query string. */
export const QueryInt = z
  .string()
  .regex(/^(0|[1-9][0-9]{0,14})$/, 'must be a whole number')
  .transform(Number);

