import { closeQuietly } from './channel';
import { BridgeConfigError } from './config';
import type { QueueBackend } from './protocol';

/**
 * The backend of a bridge that cannot work: every request fails, INIT and
 * CLOSE succeed, and the start-up walk is empty. smtpd keeps running on it
 * and keeps its mail; the bridge's log says why.
 */
export function unavailableBackend(why: string): QueueBackend {
  const fail = async (): Promise<never> => {
    throw new BridgeConfigError(why);
  };
  return {
    init: async () => undefined,
    close: async () => undefined,
    messageCreate: fail,
    messageDelete: fail,
    messageCommit: async (_msgid, fd) => {
      closeQuietly(fd);
      return fail();
    },
    messageFd: fail,
    envelopeCreate: fail,
    envelopeDelete: fail,
    envelopeLoad: fail,
    envelopeUpdate: fail,
    envelopeWalk: async () => 'done',
  };
}
