import net from 'node:net';

/**
 * Preloaded (node --require) into each functions-framework process of the
 * deployed shape (dev/deployed-shape.ts). functions-framework listens on its
 * port on every interface and has no option for the host; this makes a
 * listen on a port alone listen on 127.0.0.1, and changes nothing else.
 */
const listen = net.Server.prototype.listen;

net.Server.prototype.listen = function (this: net.Server, ...args: unknown[]) {
  const portOnly = /^\d+$/.test(String(args[0])) && typeof args[1] !== 'string';
  if (portOnly) args.splice(1, 0, '127.0.0.1');
  return (listen as (...a: unknown[]) => net.Server).apply(this, args);
} as typeof listen;
