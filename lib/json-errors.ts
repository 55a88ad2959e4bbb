import path from 'node:path';
import type { Request, Response } from '@google-cloud/functions-framework';

/**
 * functions-framework parses JSON bodies before a function runs and answers
 * a malformed one itself, with an HTML page. Its JSON parser is wrapped here
 * so that the parse error reaches the function instead, which answers it as
 * a JSON 400 like every other bad request. Must load before the framework
 * builds its server, which it does after loading the function's module.
 */
export interface BodyErrorRequest extends Request {
  bodyError?: Error & { type?: string };
}

type Middleware = (req: Request, res: Response, next: (err?: unknown) => void) => void;
type JsonFactory = ((options?: object) => Middleware) & { forwardsErrors?: true };

const frameworkDir = path.dirname(require.resolve('@google-cloud/functions-framework'));
// eslint-disable-next-line @typescript-eslint/no-require-imports
const bodyParser = require(require.resolve('body-parser', { paths: [frameworkDir] })) as { json: JsonFactory };

if (!bodyParser.json.forwardsErrors) {
  const json = bodyParser.json;
  const forwarding: JsonFactory = (options) => {
    const parse = json(options);
    return (req, res, next) =>
      parse(req, res, (err?: unknown) => {
        if (err) (req as BodyErrorRequest).bodyError = err as Error;
        next();
      });
  };
  forwarding.forwardsErrors = true;
  bodyParser.json = forwarding;
}
