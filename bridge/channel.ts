import { closeSync } from 'node:fs';
import { USocket } from 'usocket';
import type { Logger } from '../lib/log';
import { encodeImsg, ImsgReader, type Imsg, type ImsgLayout } from './imsg';
import { PROC, failureReply, type Reply } from './protocol';
import { adoptSocket } from './unix-socket';

/**
 * smtpd's end of the conversation: the unix socket on fd 0. Node cannot pass
 * file descriptors, so the socket is driven by the `usocket` addon, which
 * delivers received fds in order beside the bytes and sends one with a reply.
 * Requests are answered one at a time, in order, as smtpd expects; every
 * request gets exactly one reply, whatever happens while handling it.
 */
export class SmtpdChannel {
  private readonly socket = new USocket();
  private readonly reader: ImsgReader;
  private queue: Promise<void> = Promise.resolve();
  private reportedBroken = false;

  constructor(
    private readonly fd: number,
    private readonly layout: ImsgLayout,
    private readonly log: Logger,
    private readonly handle: (m: Imsg) => Promise<Reply>,
  ) {
    this.reader = new ImsgReader(layout);
  }

  /** Serves smtpd until it closes the socket; resolves then. */
  run(): Promise<void> {
    return new Promise((resolve) => {
      let ended = false;
      const end = (why: string) => {
        if (ended) return;
        ended = true;
        this.log.info(`smtpd socket ${why}`);
        void this.queue.then(resolve);
      };
      this.socket.on('fds', (fds) => this.reader.push(undefined, fds));
      this.socket.on('data', (chunk) => {
        this.reader.push(chunk);
        this.drain();
      });
      this.socket.on('end', () => end('closed (EOF)'));
      this.socket.on('close', () => end('closed'));
      this.socket.on('error', (err) => {
        this.log.error({ err }, 'smtpd socket error');
        end('failed');
      });
      adoptSocket(this.socket, this.fd);
    });
  }

  private drain(): void {
    for (let m = this.reader.next(); m; m = this.reader.next()) {
      const request = m;
      this.queue = this.queue.then(() => this.serve(request));
    }
    if (this.reader.broken && !this.reportedBroken) {
      this.reportedBroken = true;
      this.log.fatal(`the stream from smtpd is unreadable (${this.reader.broken}); nothing more can be answered`);
    }
    for (const fd of this.reader.takeStrayFds()) closeQuietly(fd);
  }

  private async serve(m: Imsg): Promise<void> {
    // only a commit brings an fd, and the backend owns that one
    if (m.fd !== undefined && m.type !== PROC.MESSAGE_COMMIT) closeQuietly(m.fd);
    let reply: Reply;
    try {
      reply = await this.handle(m);
    } catch (err) {
      reply = failureReply(m.type);
      this.log.error({ err, type: m.type }, 'request failed');
    }
    await this.send(reply);
  }

  private send(reply: Reply): Promise<void> {
    const data = encodeImsg(this.layout, { type: PROC.OK, data: reply.data, hasFd: reply.fd !== undefined, pid: process.pid });
    return new Promise((resolve) => {
      const chunk = reply.fd === undefined ? { data } : { data, fds: [reply.fd] };
      this.socket.write(chunk, (err) => {
        if (err) this.log.error({ err }, 'cannot write to smtpd');
        if (reply.fd !== undefined) closeQuietly(reply.fd);
        resolve();
      });
    });
  }
}

export function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}
