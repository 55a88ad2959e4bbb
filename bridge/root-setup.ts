import path from 'node:path';
import type { Logger } from '../lib/log';
import type { BridgeConfig } from './config';
import { Discoverer } from './discover';
import { idTokensFor, type IdTokenSource } from './id-tokens';
import { WriteJournal } from './journal';
import { DEFAULT_USER, dropRoot, isRoot, lookUpUser, openOwnedFile, type UserIds } from './privileges';

/**
 * Everything the bridge does as root, before it serves smtpd: it looks up
 * its user, reads its credentials, starts its one root helper, opens its
 * counters file and its journal for that user, then drops root for good.
 * How each of these is done safely is in bridge/privileges.ts.
 */

/** The user the bridge runs as once root is dropped. */
export function bridgeUser(config: BridgeConfig): UserIds {
  return lookUpUser(config.user ?? DEFAULT_USER);
}

export class RootSetup {
  idToken?: IdTokenSource;
  discoverer?: Discoverer;
  statsFd?: number;
  journal?: WriteJournal;

  /** A throw leaves here what was opened before it: a bridge that cannot serve still writes its counters. */
  async run(config: BridgeConfig, user: UserIds, log: Logger): Promise<void> {
    this.idToken = await idTokensFor(config);
    // the one thing the bridge does as root later, in a helper started now (bridge/discover.ts)
    this.discoverer = new Discoverer(log);
    if (config.statsFile) {
      try {
        this.statsFd = openOwnedFile(config.statsFile, user, { mode: 0o644, append: false });
      } catch (err) {
        log.error({ err }, `no counters file: ${(err as Error).message}`);
      }
    }
    this.journal = openJournal(config, user, log);
    dropRoot(user);
    log.info({ uid: process.getuid?.(), gid: process.getgid?.() }, `running as ${user.name}`);
  }

  /** After a failed set-up: a bridge that serves nothing hands nothing to smtpd, and should not hold root while it answers failures. */
  abandon(user: UserIds | undefined, log: Logger): void {
    this.discoverer?.close();
    this.discoverer = undefined;
    if (!isRoot()) return;
    try {
      dropRoot(user && user.uid !== 0 ? user : lookUpUser('nobody'));
    } catch (err) {
      log.error({ err }, 'could not drop root either');
    }
  }
}

/** The journal of pending writes, opened as root and handed to the bridge's user; none if it cannot be. */
function openJournal(config: BridgeConfig, user: UserIds, log: Logger): WriteJournal | undefined {
  const file = path.join(config.stateDir, `${config.instance}.journal`);
  try {
    return WriteJournal.read(openOwnedFile(file, user, { mode: 0o600, append: true, read: true, dirMode: 0o700 }), log);
  } catch (err) {
    log.error({ err }, `no journal of pending writes (${(err as Error).message}): a bridge killed before its background writes land loses them, and smtpd delivers that mail again`);
    return undefined;
  }
}
