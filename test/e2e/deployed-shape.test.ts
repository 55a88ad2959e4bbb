import { existsSync } from 'node:fs';
import path from 'node:path';
import { buildUploadSet, nativeAddonFiles, startDeployedShape, type DeployedShape } from '../../dev/deployed-shape';
import { FUNCTION_NAMES } from '../../lib/api';
import type { QueueStore } from '../../lib/store';
import { installedBridgeSuite } from '../support/e2e';
import { restDeliveryTests, type RestQueue } from '../support/rest-delivery';
import { TEST_TOKEN } from '../support/service';
import { firestoreStore, uniqueNamespace } from '../support/stores';

/**
 * The queue as `gcloud functions deploy` leaves it, proven here: what the
 * upload set alone builds into, the buildpack's way, each function in a
 * process of its own behind a front like REGION-PROJECT.cloudfunctions.net,
 * with the environment a public deploy with the shared token gives it
 * (bin/deploy.ts), on the Firestore emulator; real smtpd and the installed
 * bridge deliver through it. No state is shared between the functions but
 * the Datastore.
 */
jest.setTimeout(300_000);

let build: ReturnType<typeof buildUploadSet>;
let shape: DeployedShape;
let store: QueueStore;

const suite = installedBridgeSuite('restshape', 'queue-shape');
const queue: RestQueue = { backend: 'restshape', url: () => shape.url, store: () => store, logDir: suite.logDir };

beforeAll(async () => {
  build = buildUploadSet();
  if (build.buildMs > 0) process.stdout.write(`deployed shape: the upload set installed and built in ${build.buildMs} ms, in ${build.dir}\n`);
  const namespace = uniqueNamespace('shape');
  store = firestoreStore(undefined, namespace);
  shape = await startDeployedShape({
    dir: build.dir,
    env: {
      QUEUE_AUTH: 'token',
      QUEUE_NAMESPACE: namespace,
      QUEUE_TOKEN: TEST_TOKEN,
      DATASTORE_EMULATOR_HOST: process.env.QUEUE_TEST_FIRESTORE_HOST!,
      DATASTORE_PROJECT_ID: 'queue-test',
    },
  });
});

afterAll(async () => {
  await shape?.stop();
  await store?.close();
});

describe('the build of the upload set', () => {
  test('keeps the production packages only, and no native addon, built or shipped', () => {
    const installed = (name: string) => existsSync(path.join(build.dir, 'node_modules', name, 'package.json'));
    expect(['@google-cloud/functions-framework', '@google-cloud/datastore', 'typescript', 'jest', 'esbuild'].filter(installed)).toEqual([
      '@google-cloud/functions-framework',
      '@google-cloud/datastore',
    ]);
    expect(nativeAddonFiles(path.join(build.dir, 'node_modules'))).toEqual([]);
  });

  test('each function runs in a process of its own, and the front answers 404 for any other path', async () => {
    expect([...shape.processes.keys()]).toEqual([...FUNCTION_NAMES]);
    expect(new Set([...shape.processes.values()].map((child) => child.pid)).size).toBe(FUNCTION_NAMES.length);
    for (const url of [`${shape.url}/`, `${shape.url}/noSuchFunction`, `${shape.url}/envelope-walk`]) {
      expect((await fetch(url, { headers: { authorization: `Bearer ${TEST_TOKEN}` } })).status).toBe(404);
    }
    const walk = await fetch(`${shape.url}/envelopeWalk?owner=mx-none`, { headers: { authorization: `Bearer ${TEST_TOKEN}` } });
    expect([walk.status, await walk.json()]).toEqual([200, { envelopes: [], cursor: null }]);
  });
});

describe('real smtpd through the deployed shape', () => {
  restDeliveryTests(queue);
});
