import { randomBytes } from 'node:crypto';
import { unavailable } from './errors';
import { KeyExists, key, type Storage } from './storage';

const SECRET_BYTES = 32;

/**
 * A secret every instance of the service shares, kept in storage so that it
 * needs no configuration: the first instance to need it inserts a random one,
 * an insert only one writer can win, and every instance reads the winner's
 * back. It never changes, so each process keeps it once read.
 */
export class ServiceKey {
  private secret?: Buffer;

  constructor(
    private readonly storage: Storage,
    private readonly name: string,
  ) {}

  /** The secret if one was made; never writes. */
  async find(): Promise<Buffer | undefined> {
    if (!this.secret) {
      const found = await this.storage.get([key.serviceKey(this.name)]);
      this.secret = found.get(key.serviceKey(this.name))?.secret;
    }
    return this.secret;
  }

  /** The secret, made on first use. */
  async get(): Promise<Buffer> {
    const existing = await this.find();
    if (existing) return existing;
    try {
      await this.storage.write({ insert: [{ key: key.serviceKey(this.name), data: { secret: randomBytes(SECRET_BYTES), createdAt: new Date() } }] });
    } catch (err) {
      if (!(err instanceof KeyExists)) throw err;
      // another instance made it first: theirs is the one
    }
    const made = await this.find();
    if (!made) throw unavailable(`the service key ${this.name} was made but cannot be read back yet; try again`);
    return made;
  }
}
