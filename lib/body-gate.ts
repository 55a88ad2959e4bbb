import path from 'node:path';
import type { Request, Response } from '@google-cloud/functions-framework';
import type { Caller } from './auth';

/**
 * functions-framework reads and parses every request body (JSON, text,
 * form, and anything else as raw bytes, up to 1 GB, inflating gzip) before
 * a function runs, whoever sent it. Its body parsers are replaced here by a
 * gate that looks at the headers alone: a request it refuses is answered
 * at once, with no byte of its body read. The functions read their bodies
 * themselves, after the gate, up to their own caps (lib/http.ts).
 * Must load before the framework builds its server, which it does after
 * loading the function's module.
 */
export interface GatedRequest extends Request {
  /** The function a request is for, when one server serves them all (lib/server.ts). */
  queueFunction?: string;
  /** Who sent it, once the gate has checked its credentials. */
  caller?: Caller;
}

/**
 * Answers the request and returns false, or returns true to let it through.
 * It may take its time (a credential looked up in storage): the body waits,
 * unread, until it has decided.
 */
export type Gate = (req: GatedRequest, res: Response) => boolean | Promise<boolean>;

type Middleware = (req: GatedRequest, res: Response, next: (err?: unknown) => void) => void;
type ParserFactory = ((options?: unknown) => Middleware) & { gated?: true };

let gate: Gate = () => true;
const passed = new WeakSet<GatedRequest>();

/** Sets the gate every request passes before any of its body is read. */
export function setBodyGate(next: Gate): void {
  gate = next;
}

const frameworkDir = path.dirname(require.resolve('@google-cloud/functions-framework'));
// eslint-disable-next-line @typescript-eslint/no-require-imports
const bodyParser = require(require.resolve('body-parser', { paths: [frameworkDir] })) as Record<string, ParserFactory>;

for (const kind of ['json', 'text', 'urlencoded', 'raw']) {
  if (bodyParser[kind].gated) continue;
  // the framework puts one of these before the function for each kind of body; the first one is the gate
  const gated: ParserFactory = () => (req, res, next) => {
    if (passed.has(req)) return next();
    Promise.resolve(gate(req, res)).then((open) => {
      if (!open) return;
      passed.add(req);
      next();
    }, next);
  };
  gated.gated = true;
  bodyParser[kind] = gated;
}
