import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { BRIDGE_MODULES, bundleInputs } from '../../dev/bundle-bridge';

/**
 * The bridge runs on every mail host, as root at first, and is installed as
 * one bundle: it is built from its own code, the wire types it shares with
 * the functions, and the packages it needs, never from the server side.
 * An import that pulls the server in fails here, not on a mail host.
 */
const SERVER_PACKAGES = ['@google-cloud/functions-framework', '@google-cloud/datastore', 'google-gax', 'body-parser'];
const SERVER_FILES = ['lib/http.ts', 'lib/body-gate.ts', 'lib/server.ts', 'lib/service.ts', 'lib/queue.ts', 'lib/storage-datastore.ts', 'lib/datastore-commit.ts'];
const SERVER_FOLDERS = ['functions/', 'bin/'];

/** What of the server side `input` is: a package's name, a file, a folder, or undefined. */
function serverSide(input: string): string | undefined {
  return (
    SERVER_PACKAGES.find((name) => input.includes(`node_modules/${name}/`)) ??
    SERVER_FILES.find((file) => input === file) ??
    SERVER_FOLDERS.find((folder) => input.startsWith(folder))
  );
}

test('the bridge bundle is built from no file of the server side', async () => {
  const inputs = await bundleInputs();
  // the metafile names the checkout's files relative to it, or the names above would match nothing
  expect(inputs).toContain('bridge/main.ts');
  expect([...new Set(inputs.map(serverSide).filter((found) => found !== undefined))].sort()).toEqual([]);
}, 60_000);

test('the entry point does nothing when imported: it serves only when run as the program', () => {
  const main = path.join(__dirname, '../../dist/bridge/main.js');
  // were it to serve, it would read this empty fd 0, log to stderr that it has no config, and exit
  const imported = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(main)})`], {
    input: '',
    encoding: 'utf8',
    timeout: 10_000,
    env: { ...process.env, NODE_PATH: BRIDGE_MODULES },
  });
  expect([imported.status, imported.stdout, imported.stderr]).toEqual([0, '', '']);
});
