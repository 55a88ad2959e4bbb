import { copyFileSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import type { BuildOptions } from 'esbuild';

/**
 * Builds queue-rest as one self-contained folder, dist/queue-rest/: the
 * bridge and every package it uses in one file, plus usocket's native addon
 * beside it. This folder is what bridge:install copies, root-owned, out of
 * the checkout: smtpd runs the bridge as root, and it must neither read nor
 * run anything that the checkout's owner can change. usocket comes from the
 * bridge's own package (bridge/package.json, `npm ci --prefix bridge`), so
 * that the functions' package, which every deploy installs, builds no native
 * code.
 */
// this file runs compiled (dist/dev/) and, in tests, from its source (dev/)
const root = existsSync(path.join(__dirname, '../package.json')) ? path.join(__dirname, '..') : path.join(__dirname, '../..');

export const BUNDLE_DIR = path.join(root, 'dist/queue-rest');
export const BUNDLE_MAIN = 'queue-rest.js';
export const ADDON = 'uwrap.node';
/** Where the bridge's sources find usocket; compiled bridge files outside the bundle need it as NODE_PATH. */
export const BRIDGE_MODULES = path.join(root, 'bridge/node_modules');

export async function bundleBridge(): Promise<void> {
  rmSync(BUNDLE_DIR, { recursive: true, force: true });
  mkdirSync(BUNDLE_DIR, { recursive: true });
  await esbuild().build(bundleOptions());
  copyFileSync(path.join(BRIDGE_MODULES, 'usocket/build/Release', ADDON), path.join(BUNDLE_DIR, ADDON));
}

/** The files the bundle is made of, relative to the checkout (node_modules/… for packages); nothing is written. */
export async function bundleInputs(): Promise<string[]> {
  const { metafile } = await esbuild().build({ ...bundleOptions(), write: false, metafile: true });
  return Object.keys(metafile.inputs);
}

// loaded when it bundles, not at the top: bridge:install imports this file for its paths only;
// require, because jest runs import() only with its experimental VM modules
const esbuild = (): typeof import('esbuild') => require('esbuild');

function bundleOptions(): BuildOptions {
  return {
    entryPoints: [path.join(root, 'bridge/main.ts')],
    outfile: path.join(BUNDLE_DIR, BUNDLE_MAIN),
    absWorkingDir: root,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    legalComments: 'linked',
    logLevel: 'warning',
    plugins: [
      {
        // usocket finds its addon with the `bindings` package, which searches the package's folders at run time
        name: 'usocket-addon',
        setup(b) {
          b.onResolve({ filter: /^bindings$/ }, () => ({ path: 'bindings', namespace: 'usocket-addon' }));
          b.onLoad({ filter: /.*/, namespace: 'usocket-addon' }, () => ({
            contents: `module.exports = () => require(__dirname + '/${ADDON}');`,
            loader: 'js',
          }));
        },
      },
    ],
  };
}

if (require.main === module) {
  bundleBridge().catch((err: unknown) => {
    process.stderr.write(`bundle-bridge: ${(err as Error).message}\n`);
    process.exit(1);
  });
}
