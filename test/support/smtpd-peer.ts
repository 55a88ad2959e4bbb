import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { USocket } from 'usocket';
import { encodeImsg, ImsgReader, type Imsg, type ImsgLayout } from '../../bridge/imsg';
import { listenUnix } from '../../bridge/unix-socket';

/**
 * smtpd's side of the queue socket, played by a test: it starts the built
 * bridge, as bundled for installation (dist/queue-rest/), with a unix stream
 * socket as fd 0, as smtpd does, and sends it requests one at a time with
 * the same framing.
 */
export const BRIDGE = path.join(__dirname, '../../dist/queue-rest/queue-rest.js');

export interface PeerReply extends Imsg {
  /** The reply's whole length on the wire, header included. */
  len: number;
}

export class SmtpdPeer {
  private readonly reader: ImsgReader;
  private readonly waiting: ((m: PeerReply) => void)[] = [];
  /** Replies to requests nobody sent through request(): random bytes written raw can happen to frame one. */
  unasked = 0;
  private noise = false;
  private stderr = '';

  private constructor(
    private readonly socket: USocket,
    readonly child: ChildProcess,
    readonly exited: Promise<number | null>,
    private readonly layout: ImsgLayout,
    private readonly cleanup: () => void,
  ) {
    this.reader = new ImsgReader(layout);
    socket.on('fds', (fds) => this.reader.push(undefined, fds));
    socket.on('data', (chunk) => {
      this.reader.push(chunk);
      for (let m = this.reader.next(); m; m = this.reader.next()) {
        const resolve = this.waiting.shift();
        const len = m.data.length + 16;
        if (resolve) resolve({ ...m, len });
        else if (this.noise) this.unasked++;
        else throw new Error(`the bridge sent a reply nobody asked for (type ${m.type}, ${len} bytes)`);
      }
    });
    child.stderr?.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()));
  }

  static async start(arg: string | undefined, env: Record<string, string | undefined>, layout: ImsgLayout = '6.8'): Promise<SmtpdPeer> {
    const dir = mkdtempSync(path.join(tmpdir(), 'queue-peer-'));
    const file = path.join(dir, 'queue.sock');
    let accept!: (socket: USocket) => void;
    const accepted = new Promise<USocket>((resolve) => (accept = resolve));
    const server = await listenUnix(file, (socket) => accept(socket));
    const ours = net.connect(file);
    await new Promise<void>((resolve, reject) => ours.once('connect', resolve).once('error', reject));
    const child = spawn(process.execPath, arg === undefined ? [BRIDGE] : [BRIDGE, arg], {
      env: { PATH: process.env.PATH, METADATA_SERVER_DETECTION: 'none', ...env },
      stdio: [ours, 'ignore', 'pipe'],
    });
    ours.destroy();
    const socket = await accepted;
    server.close();
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    return new SmtpdPeer(socket, child, exited, layout, () => rmSync(dir, { recursive: true, force: true }));
  }

  /** Sends one request and waits for its reply. */
  request(type: number, data: Buffer = Buffer.alloc(0), fd?: number): Promise<PeerReply> {
    const reply = new Promise<PeerReply>((resolve) => this.waiting.push(resolve));
    const bytes = encodeImsg(this.layout, { type, data, hasFd: fd !== undefined, pid: process.pid });
    this.socket.write(fd === undefined ? { data: bytes } : { data: bytes, fds: [fd] });
    return reply;
  }

  /** Sends raw bytes, for malformed input; from then on, replies nobody asked for are counted, not an error. */
  writeRaw(bytes: Buffer): void {
    this.noise = true;
    this.socket.write({ data: bytes });
  }

  /** Closes smtpd's end, as smtpd does when it exits, and waits for the bridge to exit. */
  async close(): Promise<number | null> {
    this.socket.end();
    const code = await this.exited;
    this.cleanup();
    return code;
  }

  output(): string {
    return this.stderr;
  }
}

export const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0, 0);
  return b;
};

export const u64 = (n: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n, 0);
  return b;
};

export const r = (reply: Imsg) => reply.data.readInt32LE(0);
