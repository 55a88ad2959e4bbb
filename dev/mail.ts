import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import nodemailer from 'nodemailer';
import { SMTPServer } from 'smtp-server';

export { freePort } from './emulator';

/** An SMTP reply that failed the message, or a recipient that got a 4xx. */
export class SmtpError extends Error {
  constructor(
    message: string,
    readonly responseCode: number | undefined,
    readonly accepted: string[] = [],
    readonly rejected: string[] = [],
  ) {
    super(message);
    this.name = 'SmtpError';
  }
}

interface NodemailerError extends Error {
  code?: string;
  command?: string;
  response?: string;
  responseCode?: number;
  recipient?: string;
  rejected?: unknown[];
  rejectedErrors?: NodemailerError[];
}

export interface OutgoingMail {
  from: string;
  to: string[];
  subject?: string;
  body: string | Buffer;
}

export interface SmtpClient {
  send(mail: OutgoingMail): Promise<{ accepted: string[]; rejected: string[]; response: string }>;
  close(): void;
}

/**
 * An SMTP client on one connection that it keeps for every message, as a
 * bulk sender does. Messages go as raw bytes, so the body reaches smtpd
 * exactly as given (nodemailer only turns LF into CRLF and dot-stuffs on the
 * wire). Recipients refused with 5xx come back in `rejected`; any 4xx, at
 * any step, rejects the promise with an SmtpError carrying the code.
 */
export function openSmtpClient(port: number): SmtpClient {
  const transport = nodemailer.createTransport({
    pool: true,
    maxConnections: 1,
    maxMessages: Infinity,
    host: '127.0.0.1',
    port,
    secure: false,
    ignoreTLS: true,
    name: 'harness.test',
    connectionTimeout: 10_000,
    greetingTimeout: 10_000,
    // inactivity, not total time; a queue backend may take a while to commit a big message
    socketTimeout: 60_000,
    logger: false,
    disableFileAccess: true,
    disableUrlAccess: true,
  });
  return {
    async send(o) {
      const headers = [
        `From: <${o.from}>`,
        `To: ${o.to.map((a) => `<${a}>`).join(',\n ')}`,
        `Subject: ${o.subject ?? 'harness test'}`,
        `Date: ${new Date().toUTCString()}`,
        `Message-ID: <${randomBytes(12).toString('hex')}@harness.test>`,
        'MIME-Version: 1.0',
        'Content-Type: text/plain; charset=utf-8',
        'Content-Transfer-Encoding: 8bit',
      ];
      const raw = Buffer.concat([Buffer.from(headers.join('\n') + '\n\n'), Buffer.isBuffer(o.body) ? o.body : Buffer.from(o.body)]);
      try {
        const info = await transport.sendMail({ envelope: { from: o.from, to: o.to }, raw });
        const accepted = addresses(info.accepted);
        const rejected = addresses(info.rejected);
        const deferred = ((info as { rejectedErrors?: NodemailerError[] }).rejectedErrors ?? []).find(isTemporary);
        if (deferred) {
          throw new SmtpError(`RCPT TO <${deferred.recipient}> got ${deferred.response}`, deferred.responseCode, accepted, rejected);
        }
        return { accepted, rejected, response: String(info.response) };
      } catch (error) {
        if (error instanceof SmtpError) throw error;
        const e = error as NodemailerError;
        const rejectedErrors = e.rejectedErrors ?? [];
        if (e.code === 'EENVELOPE' && e.command === 'RCPT TO' && rejectedErrors.length && !rejectedErrors.some(isTemporary)) {
          return { accepted: [], rejected: addresses(e.rejected ?? []), response: String(e.response) };
        }
        const code = rejectedErrors.find(isTemporary)?.responseCode ?? e.responseCode;
        throw new SmtpError(`sending to ${o.to.join(', ')} on port ${port} failed: ${e.message}`, code);
      }
    },
    close: () => transport.close(),
  };
}

/** Sends one message on a connection of its own (see openSmtpClient). */
export async function sendMail(o: OutgoingMail & { port: number }): Promise<{ accepted: string[]; rejected: string[]; response: string }> {
  const client = openSmtpClient(o.port);
  try {
    return await client.send(o);
  } finally {
    client.close();
  }
}

function isTemporary(e: NodemailerError): boolean {
  return e.responseCode !== undefined && e.responseCode >= 400 && e.responseCode < 500;
}

function addresses(list: unknown[]): string[] {
  return list.map((a) => (typeof a === 'string' ? a : (a as { address: string }).address));
}

export interface SinkMessage {
  from: string;
  to: string[];
  data: Buffer;
}

export interface Sink {
  port: number;
  messages: SinkMessage[];
  stop(): Promise<void>;
}

const sinks = new Set<Sink>();

/**
 * A plain SMTP server on 127.0.0.1 (no TLS, no auth) that keeps what it
 * receives. rejectRecipient refuses a recipient at RCPT: true with 550, a
 * number with that reply code (e.g. 451 to make smtpd retry later).
 * A new sink can listen on the port of a stopped one.
 */
export async function startSink(o: { port?: number; rejectRecipient?: (rcpt: string) => boolean | number } = {}): Promise<Sink> {
  const messages: SinkMessage[] = [];
  const server = new SMTPServer({
    secure: false,
    authOptional: true,
    disabledCommands: ['AUTH', 'STARTTLS'],
    hideSTARTTLS: true,
    logger: false,
    // smtpd keeps relay connections open for reuse; stop() should not wait the default 30 s for them
    closeTimeout: 500,
    onRcptTo(address, _session, callback) {
      const refusal = o.rejectRecipient?.(address.address) ?? false;
      if (refusal !== false) {
        const responseCode = refusal === true ? 550 : refusal;
        const text = responseCode < 500 ? `try again later: ${address.address}` : `no such user here: ${address.address}`;
        return callback(Object.assign(new Error(text), { responseCode }));
      }
      callback();
    },
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      stream.on('error', callback);
      stream.on('end', () => {
        const mailFrom = session.envelope.mailFrom;
        messages.push({
          from: mailFrom ? mailFrom.address : '',
          to: session.envelope.rcptTo.map((r) => r.address),
          data: Buffer.concat(chunks),
        });
        callback();
      });
    },
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port ?? 0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  // smtp-server emits client errors (e.g. a peer resetting) here; without a listener they would be thrown
  server.on('error', () => undefined);
  const port = (server.server.address() as { port: number }).port;
  const sink: Sink = {
    port,
    messages,
    stop: () => {
      sinks.delete(sink);
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  sinks.add(sink);
  return sink;
}

/** Stops every sink still listening: for afterEach/afterAll. */
export async function stopAllSinks(): Promise<void> {
  await Promise.all([...sinks].map((sink) => sink.stop()));
}

/** Every message file in the maildir's new/ and cur/, oldest name first; none when it does not exist yet. */
export function readMaildir(dir: string): Buffer[] {
  const messages: Buffer[] = [];
  for (const sub of ['new', 'cur']) {
    let names: string[];
    try {
      names = readdirSync(path.join(dir, sub));
    } catch {
      continue;
    }
    for (const name of names.sort()) messages.push(readFileSync(path.join(dir, sub, name)));
  }
  return messages;
}

/** The body of a delivered message: everything after the first empty line, as bytes. */
export function bodyOf(message: Buffer): Buffer {
  const crlf = message.indexOf('\r\n\r\n');
  const lf = message.indexOf('\n\n');
  if (lf === -1 && crlf === -1) throw new Error('the message has no empty line between header and body');
  return lf !== -1 && (crlf === -1 || lf < crlf) ? message.subarray(lf + 2) : message.subarray(crlf + 4);
}

/**
 * Polls probe until it returns something other than undefined. On timeout
 * the error names what was awaited, the probe's last error, and explain()
 * (e.g. smtpd's output).
 */
export async function waitFor<T>(
  what: string,
  probe: () => T | undefined | Promise<T | undefined>,
  ms = 20_000,
  explain?: () => string,
): Promise<T> {
  const deadline = Date.now() + ms;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      const cause = lastError === undefined ? '' : ` (last probe error: ${(lastError as Error).message ?? lastError})`;
      throw new Error(`timed out after ${ms} ms waiting for ${what}${cause}${explain ? `\n${explain()}` : ''}`);
    }
    await sleep(100);
  }
}
