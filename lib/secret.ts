import { GoogleAuth } from 'google-auth-library';
import { secretText } from './config';

/**
 * Reads a secret's latest version from Secret Manager with the runtime's own
 * credentials (App Engine cannot mount secrets as Cloud Functions can).
 * `name` is a secret id in the current project, or a full resource name.
 */
export async function accessSecret(name: string): Promise<string> {
  const auth = new GoogleAuth({ scopes: 'https://www.googleapis.com/auth/cloud-platform' });
  const resource = name.startsWith('projects/') ? name : `projects/${await auth.getProjectId()}/secrets/${name}/versions/latest`;
  const res = await auth.request<{ payload: { data: string } }>({ url: `https://secretmanager.googleapis.com/v1/${resource}:access` });
  return secretText(Buffer.from(res.data.payload.data, 'base64').toString('utf8'), `secret ${resource}`);
}

/**
 * App Engine's start: QUEUE_TOKEN from the secret QUEUE_TOKEN_SECRET names,
 * QUEUE_ADMIN_TOKEN from QUEUE_ADMIN_TOKEN_SECRET's, unless the token or its
 * file is given some other way.
 */
export async function readSecretsFromManager(env: NodeJS.ProcessEnv, access: (name: string) => Promise<string> = accessSecret): Promise<void> {
  for (const name of ['QUEUE_TOKEN', 'QUEUE_ADMIN_TOKEN']) {
    const secret = env[`${name}_SECRET`];
    if (secret && !env[name] && !env[`${name}_FILE`]) env[name] = await access(secret);
  }
}
