import { type AuthMode, type DeployOptions, type MxIdentity, serviceUrl } from './plan';
import { shellQuote } from './shell';

/**
 * What the deploy prints last: for each MX, the bridge's configuration file
 * for what was deployed (URL, auth mode, instance) and the commands that put
 * its credential on it, in the order an operator runs them.
 */
export const TOKEN_FILE = '/etc/opensmtpd/queue-rest.token';
export const CONFIG_FILE = '/etc/opensmtpd/queue-rest.conf';
export const KEY_FILE = '/etc/opensmtpd/queue-rest-key.json';
const DROPIN_DIR = '/etc/systemd/system/opensmtpd.service.d';
const EXAMPLE_MX: MxIdentity = { instance: 'mx1' };

/** The lines of /etc/opensmtpd/queue-rest.conf for one MX (bridge/config.ts reads them). */
export function bridgeConfig(url: string, auth: AuthMode, mx: MxIdentity): string {
  const lines = [`url ${url}`, `auth ${auth === 'iam' ? 'iam' : 'token'}`];
  if (auth !== 'iam') lines.push(`token-file ${TOKEN_FILE}`);
  lines.push(`instance ${mx.instance}`);
  return `${lines.join('\n')}\n`;
}

const heredoc = (file: string, text: string) => `cat > ${file} <<'EOF'\n${text}EOF`;
const toMx = (host: string, remote: string, local: string) => `ssh root@${host} ${shellQuote(remote)} < ${local}`;
const privateCopy = (file: string) => `install -m 600 /dev/null ${file} && cat > ${file}`;

/** `url`: the service's base URL, when known better than serviceUrl() (App Engine's host name, once the app exists). */
export function bridgeInstructions(o: DeployOptions, url = serviceUrl(o)): string {
  const project = `--project=${o.project}`;
  const mxs = o.mx.length > 0 ? o.mx : [EXAMPLE_MX];
  const out: string[] = [
    '# --- connect each MX (README: Deploy, step 4) ---',
    `# The service: ${url}/<functionName>, QUEUE_AUTH=${o.auth}.`,
  ];
  if (url.includes('REGION_ID')) out.push("# REGION_ID: the hostname that `gcloud app describe --format='value(defaultHostname)' " + `${project}\` prints.`);
  out.push(
    '# On each MX first: install the bridge (git clone …; npm ci; sudo npm run bridge:install).',
    '# queue-rest below is /usr/libexec/opensmtpd/queue-rest, or node dist/queue-rest/queue-rest.js in a checkout.',
  );
  if (o.auth === 'tokens') {
    out.push(
      '',
      "# On your machine (never on an MX): the administrators' token, in a file only you can read",
      `(umask 077 && gcloud secrets versions access latest --secret=${o.secret} ${project} > admin.token)`,
    );
  }
  if (o.auth === 'token') {
    out.push(
      '',
      '# The shared token (QUEUE_AUTH=token: one MX, or development; every holder may do everything)',
      `(umask 077 && gcloud secrets versions access latest --secret=${o.secret} ${project} > shared.token)`,
    );
  }
  for (const mx of mxs) {
    const conf = `queue-rest.${mx.instance}.conf`;
    out.push('', `# ${mx.instance}: its bridge configuration, ${CONFIG_FILE} (it holds no secret)`, heredoc(conf, bridgeConfig(url, o.auth, mx)));
    if (o.auth === 'tokens') {
      out.push(
        `# ${mx.instance}'s own credential: the token is printed once, and only its sha256 is kept`,
        `(umask 077 && QUEUE_ADMIN_TOKEN_FILE=admin.token queue-rest credential issue ${mx.instance} ${url} > ${mx.instance}.token)`,
        `# on ${mx.instance}, as root: the token file (mode 600, the bridge refuses any other)`,
        `${toMx(mx.instance, privateCopy(TOKEN_FILE), `${mx.instance}.token`)} && rm ${mx.instance}.token`,
      );
    } else if (o.auth === 'token') {
      out.push(`# on ${mx.instance}, as root: the token file (mode 600, the bridge refuses any other)`, toMx(mx.instance, privateCopy(TOKEN_FILE), 'shared.token'));
    } else {
      out.push(
        `# ${mx.instance} calls as ${mx.email}. On a Google Compute Engine VM that runs as it, the metadata server gives the bridge its ID tokens: skip the key.`,
        '# Elsewhere, a key (if your organization allows keys; else workload identity federation, in the same file):',
        `gcloud iam service-accounts keys create ${mx.instance}-key.json --iam-account=${mx.email} ${project}`,
        `${toMx(mx.instance, privateCopy(KEY_FILE), `${mx.instance}-key.json`)} && rm ${mx.instance}-key.json`,
        `# on ${mx.instance}, as root: smtpd's environment names the key, and no token file (the bridge sends ID tokens alone)`,
        heredoc('queue-rest-iam.conf', `[Service]\nEnvironment=GOOGLE_APPLICATION_CREDENTIALS=${KEY_FILE}\nUnsetEnvironment=QUEUE_TOKEN_FILE\n`),
        toMx(mx.instance, `mkdir -p ${DROPIN_DIR} && cat > ${DROPIN_DIR}/queue-rest-iam.conf`, 'queue-rest-iam.conf'),
      );
    }
    out.push(
      `# on ${mx.instance}, as root: the configuration, and smtpd run with it (systemd drop-in), from the bridge's checkout`,
      toMx(mx.instance, `cat > ${CONFIG_FILE}`, conf),
      `ssh root@${mx.instance} 'cd /path/to/opensmtpd-queue-rest && npm run bridge:install -- --systemd=${CONFIG_FILE} && systemctl daemon-reload && systemctl restart opensmtpd'`,
    );
  }
  out.push('', '# Check: each MX alive with a lease, its messages counted');
  if (o.auth === 'tokens') out.push(`QUEUE_ADMIN_TOKEN_FILE=admin.token queue-rest status ${url}`);
  if (o.auth === 'token') out.push(`QUEUE_TOKEN_FILE=shared.token queue-rest status ${url}`);
  if (o.auth === 'iam') {
    out.push(
      `# as an administrator (${o.admins.join(', ') || 'none given: add --admin=EMAIL'}), with your Google credentials and a config of url and auth iam:`,
      heredoc('queue-rest.admin.conf', `url ${url}\nauth iam\n`),
      'queue-rest status queue-rest.admin.conf',
      `# A new MX later: deploy again with the whole --mx list (QUEUE_IAM_MX), which grants it roles/run.invoker on every function.`,
    );
  }
  return `${out.join('\n')}\n`;
}
