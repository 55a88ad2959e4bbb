import http from 'node:http';
import { getTestServer } from '@google-cloud/functions-framework/testing';
import { FUNCTION_NAMES } from './api';
import type { GatedRequest } from './body-gate';

/**
 * A client that holds a connection open by sending slowly (slow loris) is cut
 * off: its headers must arrive within 10 s, and its whole request within
 * 120 s (a 36 MiB commit at 300 KB/s). Node checks every second rather than
 * every 30 s, and answers headers over 16 KB with 431. Deployed functions are
 * behind Google's front end, which does the same for them.
 */
const SERVER_LIMITS: http.ServerOptions = {
  headersTimeout: 10_000,
  requestTimeout: 120_000,
  connectionsCheckingInterval: 1_000,
  maxHeaderSize: 16 * 1024,
};

/**
 * All queue functions in one HTTP server, each at /<functionName>, the same
 * paths as the deployed https://REGION-PROJECT.cloudfunctions.net/<name>.
 * functions-framework serves one function per process, so this routes each
 * request to the framework's own request handler for that function: the same
 * body parsing and handler code as a deployed function. The functions must
 * be registered first (import functions/index).
 */
export function createQueueServer(): http.Server {
  const handlers = new Map<string, http.RequestListener>();
  for (const name of FUNCTION_NAMES) {
    handlers.set(name, getTestServer(name).listeners('request')[0] as http.RequestListener);
  }
  return http.createServer(SERVER_LIMITS, (req, res) => {
    const route = functionRoute(req.url);
    const handler = route && handlers.get(route.name);
    if (!route || !handler) return noSuchFunction(res);
    req.url = route.url;
    (req as GatedRequest).queueFunction = route.name;
    handler(req, res);
  });
}

/**
 * The function a URL names and the URL the function sees, as
 * REGION-PROJECT.cloudfunctions.net passes it: /NAME/rest?query is
 * /rest?query to the function NAME.
 */
export function functionRoute(url = '/'): { name: string; url: string } | undefined {
  const match = /^\/([A-Za-z]+)(\/[^?]*)?(\?.*)?$/.exec(url);
  return match ? { name: match[1], url: (match[2] ?? '/') + (match[3] ?? '') } : undefined;
}

export function noSuchFunction(res: http.ServerResponse): void {
  res.writeHead(404, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ error: { code: 'not_found', message: 'no such function', functions: FUNCTION_NAMES } }));
}

export async function listen(server: http.Server, port: number, host: string): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return (server.address() as { port: number }).port;
}
