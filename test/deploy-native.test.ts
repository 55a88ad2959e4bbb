import { readFileSync } from 'node:fs';
import path from 'node:path';
import { nativeAddonFiles } from '../dev/deployed-shape';

/**
 * Every deploy uploads the root package's package files, and Google's
 * buildpack installs them in each function's build: a package there that
 * builds native code would be compiled in every one of those builds. Only the
 * bridge needs a native addon (usocket), and it has a package of its own,
 * bridge/package.json.
 */
const ROOT = path.join(__dirname, '..');

/** Packages that compile or fetch native code when installed, or that only such packages need. */
const NATIVE_TOOLING = ['usocket', 'node-gyp', 'node-gyp-build', 'prebuild-install', 'node-pre-gyp', '@mapbox/node-pre-gyp', 'cmake-js', 'bindings', 'nan', 'node-addon-api'];
/** Production packages whose install script builds nothing: protobufjs's postinstall checks the version of its command-line tool. */
const SCRIPTS_THAT_BUILD_NOTHING = ['protobufjs'];

interface LockEntry {
  version: string;
  dev?: boolean;
  hasInstallScript?: boolean;
}

function lockfile(file: string): Record<string, LockEntry> {
  return (JSON.parse(readFileSync(path.join(ROOT, file), 'utf8')) as { packages: Record<string, LockEntry> }).packages;
}

const nameOf = (key: string) => key.slice(key.lastIndexOf('node_modules/') + 'node_modules/'.length);

describe("the functions' package (what every deploy installs)", () => {
  const production = Object.entries(lockfile('package-lock.json')).filter(([key, entry]) => key !== '' && !entry.dev);

  test('has no package in its production tree that builds native code', () => {
    expect(production.filter(([key]) => NATIVE_TOOLING.includes(nameOf(key))).map(([key]) => key)).toEqual([]);
    expect(production.filter(([key, entry]) => entry.hasInstallScript && !SCRIPTS_THAT_BUILD_NOTHING.includes(nameOf(key))).map(([key]) => key)).toEqual([]);
  });

  test('has no binding.gyp or native addon in any production package as installed here', () => {
    expect(production.flatMap(([key]) => nativeAddonFiles(path.join(ROOT, key)).map((file) => `${key}/${file}`))).toEqual([]);
  });
});

test("the bridge's package puts only usocket beside the bridge's sources, so that every other package they import is the root's", () => {
  const packages = Object.keys(lockfile('bridge/package-lock.json')).filter((key) => key !== '');
  expect(packages).toContain('node_modules/usocket');
  expect(packages.filter((key) => !key.startsWith('node_modules/usocket/'))).toEqual(['node_modules/usocket']);
});
