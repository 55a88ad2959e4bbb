import { z } from 'zod';
import { FUNCTION_NAMES, type FunctionName } from '../../lib/api';
import { Owner } from '../../lib/ids';

/**
 * What `npm run deploy` does, as data: the ordered gcloud steps that set a
 * project up from zero (--setup) and deploy the queue on it. Pure, so that the
 * dry-run, the real run and the tests read the same list.
 *
 * Auth modes (README: Deploy):
 *   tokens (default)  public URL; the service checks each request's credential
 *                     from its headers before reading a body; the
 *                     administrators' bootstrap token in Secret Manager; one
 *                     credential per MX, issued with `queue-rest credential issue`.
 *   iam (--iam)       not public: Google's front end admits only ID tokens of
 *                     callers with roles/run.invoker; each MX a service account
 *                     (--mx=INSTANCE=EMAIL), administrators by --admin=EMAIL.
 *   token (--token-secret)
 *                     one shared token for everything: a single MX, or development.
 */

/** Google supports nodejs24 (GA) for Cloud Run functions to 2028-10-31, and for App Engine standard; app.yaml names the same. */
export const RUNTIME = 'nodejs24';
export const DEFAULT_ADMIN_TOKEN_SECRET = 'queue-admin-token';
export const RUN_ACCOUNT = 'queue-rest-run';
export const BUILD_ACCOUNT = 'queue-rest-build';

export type AuthMode = 'tokens' | 'iam' | 'token';

export interface MxIdentity {
  instance: string;
  /** iam: the service account its bridge calls with. */
  email?: string;
}

export interface DeployOptions {
  project: string;
  region: string;
  target: 'functions' | 'appengine';
  auth: AuthMode;
  /** tokens: the administrators' bootstrap token; token: the shared token. */
  secret?: string;
  mx: MxIdentity[];
  /** iam: administrators' emails (service accounts or users). */
  admins: string[];
  namespace: string;
  /** A named Datastore database; undefined is "(default)". */
  database?: string;
  databaseLocation: string;
  functions: readonly FunctionName[];
  setup: boolean;
}

export interface Command {
  argv: string[];
  /** Fed a fresh random token on stdin (never in argv, never printed). */
  stdin?: 'random-token';
}

export interface Step {
  /** Why it is there, printed above it. */
  why: string;
  /** Run first: when it succeeds the thing exists and `create` is skipped. */
  describe?: Command;
  /** When present, the describe must print this, else the deploy stops with `otherwise`. */
  expect?: { output: string; otherwise: string };
  create: Command;
  phase: 'setup' | 'deploy';
}

export class DeployOptionsError extends Error {
  override name = 'DeployOptionsError';
}

const Email = z.email();
const SecretId = z.string().regex(/^[A-Za-z0-9_-]{1,255}$/, 'must be a Secret Manager secret id');
const ProjectId = z.string().regex(/^[a-z][a-z0-9-]{4,28}[a-z0-9]$/, 'must be a project id (6-30 lowercase letters, digits, dashes)');

const RawOptions = z.object({
  project: ProjectId,
  region: z.string().regex(/^[a-z]+-[a-z]+[0-9]$/, 'must be a region such as us-central1').default('us-central1'),
  target: z.enum(['functions', 'appengine']).default('functions'),
  iam: z.boolean().default(false),
  'token-secret': SecretId.optional(),
  'admin-token-secret': SecretId.optional(),
  mx: z.array(z.string()).default([]),
  admin: z.array(Email).default([]),
  namespace: z.string().regex(/^[0-9A-Za-z._-]{0,100}$/, 'must be a Datastore namespace name').default('opensmtpd'),
  database: z.string().regex(/^[a-z][a-z0-9-]{2,62}$/, 'must be a database id (4-63 lowercase letters, digits, dashes)').optional(),
  'database-location': z.string().regex(/^[a-z0-9-]+$/, 'must be a Firestore location such as us-central1 or nam5').optional(),
  only: z.string().optional(),
  setup: z.boolean().default(false),
});

/** The command line's values (node:util parseArgs) as checked options. */
export function deployOptions(values: Record<string, unknown>): DeployOptions {
  const parsed = RawOptions.safeParse(values);
  if (!parsed.success) throw new DeployOptionsError(parsed.error.issues.map((i) => `--${i.path.join('.')}: ${i.message}`).join('; '));
  const v = parsed.data;
  if (v.iam && v['token-secret']) throw new DeployOptionsError('--iam and --token-secret exclude each other: the MX are service accounts, or share one token');
  if (v['token-secret'] && v['admin-token-secret']) throw new DeployOptionsError('--token-secret and --admin-token-secret exclude each other: one shared token, or one credential per MX');
  if (v.iam && v['admin-token-secret']) throw new DeployOptionsError('--iam has no admin token: administrators are --admin=EMAIL');
  const auth: AuthMode = v.iam ? 'iam' : v['token-secret'] ? 'token' : 'tokens';
  if (auth !== 'iam' && v.admin.length > 0) throw new DeployOptionsError('--admin names administrators of --iam; with tokens, issue them credentials (queue-rest credential issue --admin)');
  if (auth === 'iam' && v.target === 'appengine') throw new DeployOptionsError('--iam needs Cloud Functions: App Engine has no invoker check in front of the app');
  const mx = v.mx.map((text) => mxIdentity(text, auth));
  if (auth === 'iam' && mx.length === 0) throw new DeployOptionsError('--iam needs each MX as --mx=INSTANCE=SERVICE_ACCOUNT_EMAIL (the whole list, at every deploy)');
  // the service refuses to start on these (lib/config.ts): refuse them before deploying
  for (const names of [mx.map((m) => m.instance), [...mx.flatMap((m) => m.email ?? []), ...v.admin]]) {
    const twice = names.find((name, i) => names.indexOf(name) !== i);
    if (twice) throw new DeployOptionsError(`${twice} is named twice (each MX and administrator is one instance and one account)`);
  }
  const functions = v.only?.split(',').filter(Boolean) ?? [...FUNCTION_NAMES];
  for (const name of functions) if (!(FUNCTION_NAMES as readonly string[]).includes(name)) throw new DeployOptionsError(`no function named ${name}`);
  return {
    project: v.project,
    region: v.region,
    target: v.target,
    auth,
    secret: auth === 'iam' ? undefined : (v['token-secret'] ?? v['admin-token-secret'] ?? DEFAULT_ADMIN_TOKEN_SECRET),
    mx,
    admins: v.admin,
    namespace: v.namespace,
    database: v.database,
    databaseLocation: v['database-location'] ?? v.region,
    functions: functions as FunctionName[],
    setup: v.setup,
  };
}

function mxIdentity(text: string, auth: AuthMode): MxIdentity {
  const [instance, email, ...extra] = text.split('=');
  const valid = Owner.safeParse(instance).success && extra.length === 0 && (email === undefined || Email.safeParse(email).success);
  if (!valid || (auth === 'iam' && email === undefined)) {
    throw new DeployOptionsError(`--mx=${text}: expected ${auth === 'iam' ? 'INSTANCE=SERVICE_ACCOUNT_EMAIL' : 'INSTANCE'}`);
  }
  if (auth !== 'iam' && email !== undefined) throw new DeployOptionsError(`--mx=${text}: a service account is for --iam; with tokens, name the instance alone`);
  return { instance, email };
}

export const accountEmail = (o: Pick<DeployOptions, 'project'>, name: string) => `${name}@${o.project}.iam.gserviceaccount.com`;

/** An IAM principal for an email: a service account, or a user. */
export const principal = (email: string) => `${email.endsWith('.gserviceaccount.com') ? 'serviceAccount' : 'user'}:${email}`;

/** Where the bridge sends its requests (it appends /<functionName>). */
export function serviceUrl(o: DeployOptions): string {
  return o.target === 'appengine' ? `https://${o.project}.REGION_ID.r.appspot.com` : `https://${o.region}-${o.project}.cloudfunctions.net`;
}

/** App Engine's own names for the regions that Cloud Run calls us-central1 and europe-west1. */
function appEngineRegion(region: string): string {
  return { 'us-central1': 'us-central', 'europe-west1': 'europe-west' }[region] ?? region;
}

/** The service's environment for the chosen auth mode (lib/config.ts). */
export function serviceEnv(o: DeployOptions): Record<string, string> {
  const env: Record<string, string> = { QUEUE_AUTH: o.auth, QUEUE_NAMESPACE: o.namespace };
  if (o.database) env.QUEUE_DATABASE = o.database;
  if (o.auth === 'iam') {
    env.QUEUE_IAM_MX = o.mx.map((m) => `${m.instance}=${m.email}`).join(',');
    if (o.admins.length > 0) env.QUEUE_IAM_ADMINS = o.admins.join(',');
  }
  return env;
}

/** The variable the secret is mounted as: the bootstrap admin token, or the shared token. */
export const secretVariable = (o: DeployOptions) => (o.auth === 'token' ? 'QUEUE_TOKEN' : 'QUEUE_ADMIN_TOKEN');

/** gcloud's KEY=VALUE,… list, switched to `;` between pairs when a value holds a comma (gcloud topic escaping). */
function envList(env: Record<string, string>): string {
  const pairs = Object.entries(env).map(([k, v]) => `${k}=${v}`);
  return pairs.some((p) => p.includes(',')) ? `^;^${pairs.join(';')}` : pairs.join(',');
}

export function deployPlan(o: DeployOptions): Step[] {
  const project = `--project=${o.project}`;
  const gcloud = (...args: string[]): Command => ({ argv: ['gcloud', ...args, project] });
  const setup = (step: Omit<Step, 'phase'>): Step => ({ ...step, phase: 'setup' });
  const runAccount = accountEmail(o, RUN_ACCOUNT);
  const buildAccount = accountEmail(o, BUILD_ACCOUNT);
  const database = o.database ?? '(default)';
  const steps: Step[] = [];

  if (o.setup) {
    const apis =
      o.target === 'functions'
        ? ['cloudfunctions', 'run', 'cloudbuild', 'artifactregistry', 'secretmanager', 'datastore', 'firestore', 'iam', 'cloudresourcemanager']
        : ['appengine', 'cloudbuild', 'artifactregistry', 'secretmanager', 'datastore', 'firestore', 'iam', 'cloudresourcemanager'];
    steps.push(
      setup({
        why: `the APIs it uses (enabling one that is on does nothing): ${apis.join(', ')}`,
        create: gcloud('services', 'enable', ...apis.map((api) => `${api}.googleapis.com`)),
      }),
      setup({
        why: `the Datastore-mode database ${database} in ${o.databaseLocation}. An existing one must say DATASTORE_MODE: the queue cannot work in a Firestore Native database, and the deploy stops there`,
        describe: gcloud('firestore', 'databases', 'describe', `--database=${database}`, '--format=value(type)'),
        expect: {
          output: 'DATASTORE_MODE',
          otherwise: `database ${database} of project ${o.project} is not in Datastore mode (a Firestore Native database cannot hold the queue, and a database's mode cannot be changed): deploy with --database=NAME to have --setup create a Datastore-mode database of that name`,
        },
        create: gcloud('firestore', 'databases', 'create', `--database=${database}`, `--location=${o.databaseLocation}`, '--type=datastore-mode'),
      }),
    );
    if (o.secret) {
      steps.push(
        setup({
          why: `the secret ${o.secret}: ${o.auth === 'token' ? 'the shared token' : "the administrators' bootstrap token"}, 32 random bytes in hex without a newline, read from stdin (never printed, never in argv)`,
          describe: gcloud('secrets', 'describe', o.secret),
          create: { ...gcloud('secrets', 'create', o.secret, '--data-file=-', '--replication-policy=automatic'), stdin: 'random-token' },
        }),
      );
    }
    const accounts: [string, string][] = [[RUN_ACCOUNT, 'what the queue service runs as: Datastore and its secret, nothing else']];
    if (o.target === 'functions') accounts.push([BUILD_ACCOUNT, "what Cloud Build builds the functions as (new projects' default build account may lack the roles)"]);
    for (const m of o.mx) {
      if (m.email?.endsWith(`@${o.project}.iam.gserviceaccount.com`)) accounts.push([m.email.split('@')[0], `the identity of MX ${m.instance}'s bridge`]);
    }
    for (const [name, why] of accounts) {
      steps.push(
        setup({
          why: `the service account ${name}: ${why}`,
          describe: gcloud('iam', 'service-accounts', 'describe', accountEmail(o, name)),
          create: gcloud('iam', 'service-accounts', 'create', name, `--display-name=opensmtpd-queue-rest ${name.replace(/^queue-rest-/, '')}`),
        }),
      );
    }
    const projectRole = (email: string, role: string, why: string) =>
      setup({ why, create: gcloud('projects', 'add-iam-policy-binding', o.project, `--member=${principal(email)}`, `--role=${role}`, '--condition=None') });
    steps.push(projectRole(runAccount, 'roles/datastore.user', `${RUN_ACCOUNT} reads and writes the queue's entities`));
    if (o.secret) {
      steps.push(
        setup({
          why: `${RUN_ACCOUNT} reads the secret ${o.secret}, and no other`,
          create: gcloud('secrets', 'add-iam-policy-binding', o.secret, `--member=${principal(runAccount)}`, '--role=roles/secretmanager.secretAccessor'),
        }),
      );
    }
    if (o.target === 'functions') {
      steps.push(
        projectRole(buildAccount, 'roles/logging.logWriter', `${BUILD_ACCOUNT} writes the build's logs`),
        projectRole(buildAccount, 'roles/artifactregistry.writer', `${BUILD_ACCOUNT} stores the built images`),
        projectRole(buildAccount, 'roles/storage.objectAdmin', `${BUILD_ACCOUNT} reads the uploaded source (and its build cache) from Cloud Storage`),
      );
    } else {
      steps.push(
        setup({
          why: `the App Engine application, in ${appEngineRegion(o.region)} (App Engine's name for the region; it cannot be moved later)`,
          describe: gcloud('app', 'describe'),
          create: gcloud('app', 'create', `--region=${appEngineRegion(o.region)}`),
        }),
      );
    }
  }

  const deploy = (why: string, create: Command): Step => ({ why, create, phase: 'deploy' });
  steps.push(
    deploy(
      `the composite index of index.yaml (queueStatus's oldest message by owner) in database ${database}; one that exists is left as it is, a new one builds in the background`,
      gcloud('datastore', 'indexes', 'create', 'index.yaml', `--database=${database}`, '--quiet'),
    ),
  );
  if (o.target === 'appengine') {
    steps.push(deploy(`every function as one App Engine service (app.yaml: ${RUNTIME}, QUEUE_AUTH=${o.auth}), running as ${RUN_ACCOUNT}`, gcloud('app', 'deploy', 'app.yaml', `--service-account=${runAccount}`, '--quiet')));
    return steps;
  }
  const access =
    o.auth === 'iam'
      ? 'not public: Google checks an ID token of an invoker first'
      : 'public: the service checks the token in the headers before it reads a body';
  const secrets = o.secret ? [`--set-secrets=${secretVariable(o)}=${o.secret}:latest`] : ['--clear-secrets'];
  for (const name of o.functions) {
    steps.push(
      deploy(
        `${name}: gen2, ${RUNTIME}, HTTP, ${access}; QUEUE_AUTH=${o.auth}`,
        gcloud(
          'functions',
          'deploy',
          name,
          '--gen2',
          `--runtime=${RUNTIME}`,
          `--region=${o.region}`,
          '--source=.',
          `--entry-point=${name}`,
          '--trigger-http',
          o.auth === 'iam' ? '--no-allow-unauthenticated' : '--allow-unauthenticated',
          `--service-account=${runAccount}`,
          `--build-service-account=projects/${o.project}/serviceAccounts/${buildAccount}`,
          '--memory=512Mi',
          '--timeout=120s',
          `--set-env-vars=${envList(serviceEnv(o))}`,
          ...secrets,
          '--quiet',
        ),
      ),
    );
  }
  if (o.auth === 'iam') {
    const invokers: [string, string][] = [...o.mx.map((m): [string, string] => [m.email!, `MX ${m.instance}`]), ...o.admins.map((a): [string, string] => [a, 'administrator'])];
    for (const [email, who] of invokers) {
      for (const name of o.functions) {
        steps.push(
          deploy(
            `${who} ${email} may invoke ${name} (roles/run.invoker on its Cloud Run service)`,
            gcloud('functions', 'add-invoker-policy-binding', name, `--region=${o.region}`, `--member=${principal(email)}`),
          ),
        );
      }
    }
  }
  return steps;
}

/**
 * App Engine reads its environment from app.yaml alone: its QUEUE_ variables
 * must be what these options deploy. Answers what to change, or undefined.
 */
export function appYamlMismatch(appYaml: string, o: DeployOptions): string | undefined {
  const expected = serviceEnv(o);
  if (o.secret) expected[`${secretVariable(o)}_SECRET`] = o.secret;
  const block = /^env_variables:\n((?:[ \t]+.*\n|[ \t]*#.*\n)*)/m.exec(appYaml)?.[1] ?? '';
  const actual: Record<string, string> = {};
  for (const [, key, value] of block.matchAll(/^[ \t]+(QUEUE_[A-Z_]+):[ \t]*(\S+)/gm)) actual[key] = value.replace(/^(['"])(.*)\1$/, '$2');
  const same = Object.keys({ ...expected, ...actual }).every((key) => expected[key] === actual[key]);
  if (same) return undefined;
  const wanted = Object.entries(expected).map(([k, v]) => `${k}: ${v}`).join(', ');
  return `app.yaml's env_variables set ${JSON.stringify(actual)}, but this deploy needs exactly these QUEUE_ variables: ${wanted}. Edit app.yaml, or the options`;
}
