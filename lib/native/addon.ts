// The single place that loads the native addon. Everything else imports the
// typed wrappers in lib/native/, never the .node file.
//
// BLOCKWAL_NATIVE_BUILD=Debug selects the sanitizer build (npm run build:asan).
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { RawAddon } from './raw';

function packageRoot(): string {
  let dir = __dirname;
  for (let i = 0; i < 8; i++) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'binding.gyp'))) return dir;
    dir = path.dirname(dir);
  }
  throw new Error('blockwal: cannot find the package root (binding.gyp) above ' + __dirname);
}

let cached: RawAddon | undefined;

export function addon(): RawAddon {
  if (cached !== undefined) return cached;
  const build = process.env.BLOCKWAL_NATIVE_BUILD === 'Debug' ? 'Debug' : 'Release';
  const file = path.join(packageRoot(), 'build', build, 'blockwal.node');
  if (!fs.existsSync(file)) {
    throw new Error(
      `blockwal: the native addon is not built (${file} is missing); run \`npm install\` ` +
        '(it needs liburing-dev and libxxhash-dev: scripts/setup.sh installs them)',
    );
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  cached = require(file) as RawAddon;
  return cached;
}
