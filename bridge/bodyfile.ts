import { closeSync, fstatSync, mkdtempSync, openSync, readSync, unlinkSync, writeSync } from 'node:fs';
import path from 'node:path';

/** Reads a whole file from an fd smtpd passed (from offset 0, whatever the fd's offset) and closes it. */
export function readAllAndClose(fd: number): Buffer {
  try {
    const size = fstatSync(fd).size;
    const body = Buffer.allocUnsafe(size);
    let at = 0;
    while (at < size) {
      const n = readSync(fd, body, at, size - at, at);
      if (n === 0) break;
      at += n;
    }
    return at === size ? body : body.subarray(0, at);
  } finally {
    closeSync(fd);
  }
}

/**
 * Unlinked temporary files for MESSAGE_FD_R: smtpd reads the body with
 * fdopen() and fstat()s it for its size, so it needs a regular file at
 * offset 0, which a second open after writing gives.
 */
export class BodyFiles {
  private readonly dir: string;
  private seq = 0;

  constructor(parent: string) {
    this.dir = mkdtempSync(path.join(parent, 'queue-rest-'));
  }

  open(body: Buffer): number {
    const file = path.join(this.dir, `${process.pid}-${this.seq++}`);
    const writer = openSync(file, 'wx', 0o600);
    try {
      for (let at = 0; at < body.length; ) at += writeSync(writer, body, at, body.length - at);
    } finally {
      closeSync(writer);
    }
    try {
      return openSync(file, 'r');
    } finally {
      unlinkSync(file);
    }
  }
}
