// Stops the addon build with one line naming what to install when the system
// libraries it links against are missing (Debian: liburing-dev, libxxhash-dev).
'use strict';
const fs = require('fs');

const needs = [
  { header: '/usr/include/liburing.h', pkg: 'liburing-dev' },
  { header: '/usr/include/xxhash.h', pkg: 'libxxhash-dev' },
];
const missing = needs.filter((n) => !fs.existsSync(n.header)).map((n) => n.pkg);
if (missing.length > 0) {
  process.stderr.write(
    `blockwal: cannot build the native addon: missing ${missing.join(', ')}; ` +
      `install with: apt-get install -y ${missing.join(' ')} (or run scripts/setup.sh)\n`,
  );
  process.exit(1);
}
