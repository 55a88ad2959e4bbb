/**
 * smtpd's imsg framing on the queue backend's socket (OpenBSD imsg, as
 * bundled with OpenSMTPD). A 16-byte header in host byte order (little-endian
 * here), then the payload:
 *
 *   6.8 (Debian bookworm … 7.6):  u32 type, u16 len, u16 flags, u32 peerid, u32 pid
 *                                 flags & 1: an fd came with the message
 *   7.7 and later:                u32 type, u32 len, u32 peerid, u32 pid
 *                                 len bit 31: an fd came with the message
 *
 * len counts the header; a message is at most 16384 bytes. File descriptors
 * travel beside the bytes (SCM_RIGHTS), one per message that has one, in the
 * order the messages come.
 */
export type ImsgLayout = '6.8' | '7.7';

export const IMSG_HEADER_SIZE = 16;
export const MAX_IMSGSIZE = 16384;
const FD_MARK = 0x80000000;

export interface Imsg {
  type: number;
  peerid: number;
  pid: number;
  data: Buffer;
  /** The fd that came with the message, or undefined. */
  fd?: number;
}

export interface Header {
  type: number;
  len: number;
  hasFd: boolean;
  peerid: number;
  pid: number;
}

export function parseHeader(layout: ImsgLayout, buf: Buffer, at = 0): Header {
  const type = buf.readUInt32LE(at);
  if (layout === '6.8') {
    return { type, len: buf.readUInt16LE(at + 4), hasFd: (buf.readUInt16LE(at + 6) & 1) === 1, peerid: buf.readUInt32LE(at + 8), pid: buf.readUInt32LE(at + 12) };
  }
  const raw = buf.readUInt32LE(at + 4);
  return { type, len: raw & ~FD_MARK, hasFd: (raw & FD_MARK) !== 0, peerid: buf.readUInt32LE(at + 8), pid: buf.readUInt32LE(at + 12) };
}

export function encodeImsg(layout: ImsgLayout, m: { type: number; data?: Buffer; hasFd?: boolean; peerid?: number; pid?: number }): Buffer {
  const data = m.data ?? Buffer.alloc(0);
  const len = IMSG_HEADER_SIZE + data.length;
  if (len > MAX_IMSGSIZE) throw new RangeError(`imsg of ${len} bytes is over ${MAX_IMSGSIZE}`);
  const out = Buffer.alloc(len);
  out.writeUInt32LE(m.type, 0);
  if (layout === '6.8') {
    out.writeUInt16LE(len, 4);
    out.writeUInt16LE(m.hasFd ? 1 : 0, 6);
  } else {
    out.writeUInt32LE((m.hasFd ? FD_MARK : 0) + len, 4);
  }
  out.writeUInt32LE(m.peerid ?? 0, 8);
  out.writeUInt32LE(m.pid ?? 0, 12);
  data.copy(out, IMSG_HEADER_SIZE);
  return out;
}

/**
 * Turns bytes and fds, as they arrive, into messages. It never throws: a
 * header that cannot be valid puts it in a broken state, since the stream
 * cannot be resynchronised after that, and the caller is told.
 */
export class ImsgReader {
  private buffer: Buffer = Buffer.alloc(0);
  private readonly fds: number[] = [];
  private failure?: string;

  constructor(private readonly layout: ImsgLayout) {}

  push(data: Buffer | undefined, fds: number[] = []): void {
    this.fds.push(...fds);
    if (data && data.length > 0 && !this.failure) this.buffer = this.buffer.length === 0 ? data : Buffer.concat([this.buffer, data]);
  }

  /** Why the stream is unusable, once it is. */
  get broken(): string | undefined {
    return this.failure;
  }

  /** The next whole message, or undefined until more bytes arrive. */
  next(): Imsg | undefined {
    if (this.failure || this.buffer.length < IMSG_HEADER_SIZE) return undefined;
    const header = parseHeader(this.layout, this.buffer);
    if (header.len < IMSG_HEADER_SIZE || header.len > MAX_IMSGSIZE) {
      this.failure = `bad imsg length ${header.len} (type ${header.type})`;
      this.buffer = Buffer.alloc(0);
      return undefined;
    }
    if (this.buffer.length < header.len) return undefined;
    const data = Buffer.from(this.buffer.subarray(IMSG_HEADER_SIZE, header.len));
    this.buffer = this.buffer.subarray(header.len);
    const message: Imsg = { type: header.type, peerid: header.peerid, pid: header.pid, data };
    if (header.hasFd) message.fd = this.fds.shift();
    return message;
  }

  /** Fds that came without a message to claim them (closed by the caller). */
  takeStrayFds(): number[] {
    return this.fds.splice(0);
  }
}
