import pino from 'pino';
import { createLogger } from '../lib/log';
import { admin, ADMIN_COMMANDS } from './admin';
import { SmtpdChannel } from './channel';
import { lastWords } from './logging';
import { failureReply } from './protocol';
import { serve } from './serve';

/**
 * queue-rest: the program smtpd runs for `-B queue=rest:ARG`, as root, with
 * its queue socket on fd 0. It must never take smtpd down: it answers every
 * request (a failure is r=0, an empty LOAD or no fd), ignores the signals
 * that stop services, and exits only when smtpd closes the socket
 * (bridge/serve.ts). Run by an administrator with a command first (status,
 * show, takeover), it is the queue's admin tool instead (bridge/admin.ts).
 */
export function start(argv: string[]): void {
  const command = argv[0];
  if ((ADMIN_COMMANDS as readonly string[]).includes(command ?? '')) {
    admin(argv).then(
      (code) => process.exit(code),
      (err: unknown) => {
        process.stderr.write(`queue-rest ${command}: ${(err as Error).message}\n`);
        process.exit(1);
      },
    );
    return;
  }
  serve(command).then(() => process.exit(0), failedToStart);
}

function failedToStart(err: unknown): void {
  // only a bug gets here; smtpd would die with us, so answer failures until it closes the socket
  lastWords(`queue-rest failed to start: ${(err as Error)?.stack ?? err}`);
  const log = createLogger({ name: 'queue-rest', destination: pino.destination(2) });
  void new SmtpdChannel(0, '6.8', log, async (m) => failureReply(m.type)).run().then(() => process.exit(0));
}

if (require.main === module) start(process.argv.slice(2));
