import path from 'node:path';
import type { Request, Response } from '@google-cloud/functions-framework';

/**
 * functions-framework reads and parses every request body (JSON, text,
 * form, and anything else as raw bytes, up to 1 GB, inflating gzip) before
 * a function runs. Its body parsers are wrapped here so that:
 * - a gate runs first, on the headers alone: a request without valid
 *   credentials, too long by its Content-Length, or compressed is answered
 *   at once, and no byte of its body is read;
 * - a body is read only up to the function's cap, and one that passes it is
 *   cut off there (413), whatever Content-Length said;
 * - a body that cannot be read (malformed JSON, too large) reaches the
 *   function as `bodyError`, to be answered in JSON like every other bad
 *   request, not as the framework's HTML page.
 * Must load before the framework builds its server, which it does after
 * loading the function's module.
 */
export interface GatedRequest extends Request {
  bodyError?: Error & { type?: string };
  /** The function a request is for, when one server serves them all (lib/server.ts). */
  queueFunction?: string;
}

/** Answers the request and returns false, or returns the most body bytes the request may have. */
export type Gate = (req: GatedRequest, res: Response) => number | false;

type Middleware = (req: GatedRequest, res: Response, next: (err?: unknown) => void) => void;
type ParserFactory = ((options?: Record<string, unknown>) => Middleware) & { gated?: true };

const PARSERS = ['json', 'text', 'urlencoded', 'raw'] as const;

let gate: Gate = () => Number.MAX_SAFE_INTEGER;
const checked = new WeakMap<GatedRequest, number | false>();

/** Sets the gate every request passes before its body is read. */
export function setBodyGate(next: Gate): void {
  gate = next;
}

const frameworkDir = path.dirname(require.resolve('@google-cloud/functions-framework'));
// eslint-disable-next-line @typescript-eslint/no-require-imports
const bodyParser = require(require.resolve('body-parser', { paths: [frameworkDir] })) as Record<(typeof PARSERS)[number], ParserFactory>;

for (const kind of PARSERS) {
  const factory = bodyParser[kind];
  if (factory.gated) continue;
  const gated: ParserFactory = (options = {}) => {
    // one parser per cap, so that a body is cut off at its own function's cap while it is read
    const byCap = new Map<number, Middleware>();
    const parserFor = (cap: number) => {
      let parse = byCap.get(cap);
      if (!parse) byCap.set(cap, (parse = factory({ ...options, limit: cap, inflate: false })));
      return parse;
    };
    return (req, res, next) => {
      if (!checked.has(req)) checked.set(req, gate(req, res));
      const cap = checked.get(req)!;
      if (cap === false) return;
      parserFor(cap)(req, res, (err?: unknown) => {
        if (err) req.bodyError = err as Error;
        next();
      });
    };
  };
  gated.gated = true;
  bodyParser[kind] = gated;
}
