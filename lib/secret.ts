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
