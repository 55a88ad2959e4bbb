import { UServer, USocket } from 'usocket';

/**
 * usocket's sockets and servers, kept safe from usocket 1.1.0's
 * use-after-free: its native wrapper embeds the libuv poll handle and closes
 * it without a close callback, so if the garbage collector frees a wrapper
 * after close() (or a never-closed one) before libuv finishes the close at
 * the end of that loop turn, Node aborts in uv__finish_close. Every wrapper
 * is therefore kept for the life of the process; a process has a few.
 */
const wrappers: unknown[] = [];

function pin(holder: UServer | USocket): void {
  const wrapper = (holder as unknown as { _wrap?: unknown })._wrap;
  if (wrapper) wrappers.push(wrapper);
}

/** Drives the unix socket already open as `fd`, with fd passing. */
export function adoptSocket(socket: USocket, fd: number): void {
  socket.connect({ fd });
  pin(socket);
}

/** Listens on a unix socket path; every accepted socket is kept safe too. */
export async function listenUnix(file: string, onConnection: (socket: USocket) => void): Promise<UServer> {
  const server = new UServer();
  server.on('connection', (socket) => {
    pin(socket);
    onConnection(socket);
  });
  await new Promise<void>((resolve) => server.listen(file, () => resolve()));
  pin(server);
  return server;
}
