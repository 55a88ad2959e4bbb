import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * An HTTP front on loopback between the bridges and the service, that a
 * test arms to misbehave for one function at a time, the way a real service
 * or network does:
 * - pause: requests are held, then handed to the service late, after the
 *   bridge gave up on them (a service frozen past the timeout);
 * - reset: the connection is cut in the middle of the request body;
 * - status500, status503: the service answers with that error;
 * - kill: the front stops listening and drops every connection, its
 *   requests in flight to the service included, then listens again.
 * Everything else passes through unchanged.
 */
export type FrontFault = 'pause' | 'reset' | 'status500' | 'status503' | 'kill';

interface Armed {
  fn: string;
  fault: FrontFault;
  ms: number;
  /** When the fault ends; set by the first request it hits. */
  until?: number;
  healed: Promise<void>;
  heal: () => void;
}

export interface FaultFront {
  port: number;
  url: string;
  /** Misbehave for requests to `fn` during `ms` from the first one that comes. */
  arm(fn: string, fault: FrontFault, ms: number): void;
  /** Resolves when the armed fault has hit and run its course (at once if none is armed). */
  healed(): Promise<void>;
  /** Whether the armed fault has hit a request yet. */
  hit(): boolean;
  /** Requests seen per function. */
  counts: Map<string, number>;
  /** Called with each request's function before anything else happens to it. */
  onRequest?: (fn: string) => void;
  stop(): Promise<void>;
}

export async function startFaultFront(servicePort: number): Promise<FaultFront> {
  const agent = new http.Agent({ keepAlive: true });
  const sockets = new Set<Socket>();
  const upstreams = new Set<http.ClientRequest>();
  let armed: Armed | undefined;
  let server: http.Server;
  let port = 0;

  const forward = (req: http.IncomingMessage, res: http.ServerResponse, body?: Buffer) => {
    const upstream = http.request({ host: '127.0.0.1', port: servicePort, method: req.method, path: req.url, headers: req.headers, agent }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    upstreams.add(upstream);
    upstream.on('close', () => upstreams.delete(upstream));
    upstream.on('error', () => res.destroy());
    if (body) upstream.end(body);
    else req.pipe(upstream);
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const fn = /^\/([A-Za-z]+)/.exec(req.url ?? '/')?.[1] ?? '';
    front.counts.set(fn, (front.counts.get(fn) ?? 0) + 1);
    front.onRequest?.(fn);
    const fault = armed && armed.fn === fn && (armed.until === undefined || Date.now() < armed.until) ? armed : undefined;
    if (!fault) return forward(req, res);
    if (fault.until === undefined) {
      fault.until = Date.now() + fault.ms;
      void sleep(fault.ms).then(fault.heal);
      if (fault.fault === 'kill') void kill(fault.ms);
    }
    switch (fault.fault) {
      case 'status500':
      case 'status503':
        req.resume();
        res.writeHead(fault.fault === 'status500' ? 500 : 503, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { code: fault.fault === 'status500' ? 'internal' : 'unavailable', message: 'injected fault' } }));
        return;
      case 'reset':
        req.once('data', () => req.socket.destroy());
        req.once('end', () => req.socket.destroy());
        return;
      case 'pause': {
        const chunks: Buffer[] = [];
        for await (const chunk of req) chunks.push(chunk as Buffer);
        await fault.healed;
        return forward(req, res, Buffer.concat(chunks));
      }
      case 'kill':
        req.socket.destroy();
        return;
    }
  };

  const listen = async () => {
    server = http.createServer((req, res) => void handle(req, res).catch(() => res.destroy()));
    server.keepAliveTimeout = 60_000;
    server.on('connection', (socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    port = (server.address() as AddressInfo).port;
  };

  const close = async () => {
    for (const s of sockets) s.destroy();
    for (const u of upstreams) u.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };

  const kill = async (ms: number) => {
    await close();
    await sleep(ms);
    await listen();
  };

  await listen();
  const front: FaultFront = {
    port,
    url: `http://127.0.0.1:${port}`,
    counts: new Map(),
    arm(fn, fault, ms) {
      let heal!: () => void;
      const healed = new Promise<void>((resolve) => (heal = resolve));
      armed = { fn, fault, ms, healed, heal };
    },
    healed: () => armed?.healed ?? Promise.resolve(),
    hit: () => armed?.until !== undefined,
    async stop() {
      armed?.heal();
      await close();
      agent.destroy();
    },
  };
  return front;
}
