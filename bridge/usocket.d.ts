/** The part of the `usocket` package (unix sockets with fd passing) the bridge and its tests use. */
declare module 'usocket' {
  import { EventEmitter } from 'node:events';
  import { Duplex } from 'node:stream';

  export class UServer extends EventEmitter {
    listen(path: string, callback?: () => void): void;
    on(event: 'connection', listener: (socket: USocket) => void): this;
    close(): void;
  }

  export class USocket extends Duplex {
    constructor(options?: { fd?: number; path?: string });
    connect(options: { fd: number } | { path: string }, callback?: () => void): void;
    write(chunk: Buffer | { data?: Buffer; fds?: number[]; callback?: () => void }, callback?: (err?: Error | null) => void): boolean;
    on(event: 'data', listener: (chunk: Buffer) => void): this;
    on(event: 'fds', listener: (fds: number[]) => void): this;
    on(event: 'end' | 'close', listener: () => void): this;
    on(event: 'error', listener: (err: Error) => void): this;
    destroy(): this;
  }
}
