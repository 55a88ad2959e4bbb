import { GoogleAuth, type IdTokenClient } from 'google-auth-library';
import type { BridgeConfig } from './config';

/** A Google-signed ID token whose audience is `audience`: a function's URL. */
export type IdTokenSource = (audience: string) => Promise<string>;

/**
 * What goes in `Authorization` beside the token (bridge/client.ts) for a
 * service behind Google's front end (`auth iam`): ID tokens of the service
 * account in GOOGLE_APPLICATION_CREDENTIALS, or else of the metadata
 * server's. The bridge and the admin commands both get theirs here.
 */
export async function idTokensFor(config: Pick<BridgeConfig, 'auth'>): Promise<IdTokenSource | undefined> {
  if (config.auth !== 'iam') return undefined;
  const auth = new GoogleAuth();
  await auth.getClient(); // reads the key file now: the bridge is still root
  const clients = new Map<string, Promise<IdTokenClient>>();
  return async (audience) => {
    if (!clients.has(audience)) clients.set(audience, auth.getIdTokenClient(audience));
    const client = await clients.get(audience)!;
    return client.idTokenProvider.fetchIdToken(audience);
  };
}
