import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * Google's side of `auth iam`, on loopback, for a service of the test's own:
 * - a metadata server that gives the machine's service account an ID token
 *   for any audience (what google-auth-library asks for on GCE, at
 *   GCE_METADATA_HOST), signed with a key only this stand-in knows;
 * - the front end of the functions, which lets a request through only with
 *   such a token for the function's own URL in `Authorization: Bearer`, and
 *   passes it on without its signature, as Cloud Run does.
 */
export interface GoogleIam {
  /** host:port, for GCE_METADATA_HOST. */
  metadataHost: string;
  /** The functions' base URL, behind the front end. */
  url: string;
  /** Every audience an ID token was issued for. */
  audiences: string[];
  /** Requests the front end refused. */
  refused: number;
  stop(): Promise<void>;
}

export async function startGoogleIam(options: { servicePort: number; account: string }): Promise<GoogleIam> {
  const key = randomBytes(32);
  const sign = (text: string) => createHmac('sha256', key).update(text).digest('base64url');
  const state = { audiences: [] as string[], refused: 0 };

  const metadata = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://metadata');
    const audience = url.searchParams.get('audience');
    if (req.headers['metadata-flavor'] !== 'Google' || !url.pathname.endsWith('/identity') || !audience) {
      res.writeHead(404, { 'metadata-flavor': 'Google' }).end('not found');
      return;
    }
    state.audiences.push(audience);
    const part = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const unsigned = `${part({ alg: 'RS256', typ: 'JWT' })}.${part({ iss: 'https://accounts.google.com', aud: audience, email: options.account, email_verified: true, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
    res.writeHead(200, { 'metadata-flavor': 'Google', 'content-type': 'application/text' }).end(`${unsigned}.${sign(unsigned)}`);
  });

  let frontUrl = '';
  const front = http.createServer((req, res) => {
    const audience = `${frontUrl}${new URL(req.url ?? '/', frontUrl).pathname}`;
    const [header, payload, signature] = (req.headers.authorization?.match(/^Bearer (.+)$/)?.[1] ?? '').split('.');
    const signed = signature !== undefined && timingSafeEqual(Buffer.from(sign(`${header}.${payload}`)), Buffer.from(signature.padEnd(43).slice(0, 43)));
    const claims = signed ? (JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { aud?: string }) : undefined;
    if (claims?.aud !== audience) {
      state.refused++;
      req.resume();
      res.writeHead(401, { 'content-type': 'text/html; charset=UTF-8', 'www-authenticate': 'Bearer error="invalid_token"' });
      res.end('<html><body><h1>401 Unauthorized</h1><p>Your client does not have permission to the requested URL.</p></body></html>');
      return;
    }
    const headers = { ...req.headers, authorization: `Bearer ${header}.${payload}.SIGNATURE_REMOVED_BY_GOOGLE` };
    const upstream = http.request({ host: '127.0.0.1', port: options.servicePort, method: req.method, path: req.url, headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  });

  const listen = (server: http.Server) =>
    new Promise<number>((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
  const metadataPort = await listen(metadata);
  frontUrl = `http://127.0.0.1:${await listen(front)}`;
  const close = (server: http.Server) => new Promise<void>((resolve) => (server.closeAllConnections(), server.close(() => resolve())));
  return {
    metadataHost: `127.0.0.1:${metadataPort}`,
    url: frontUrl,
    get audiences() {
      return state.audiences;
    },
    get refused() {
      return state.refused;
    },
    stop: async () => {
      await Promise.all([close(metadata), close(front)]);
    },
  };
}
