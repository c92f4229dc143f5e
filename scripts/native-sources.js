// Lists the addon's C++ sources for binding.gyp: every .cc file under native/,
// sorted so builds are reproducible. Paths are relative to the package root.
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const out = [];
function walk(dir) {
  for (const entry of fs.readdirSync(path.join(root, dir), { withFileTypes: true })) {
    const rel = path.posix.join(dir, entry.name);
    if (entry.isDirectory()) walk(rel);
    else if (entry.name.endsWith('.cc')) out.push(rel);
  }
}
walk('native');
out.sort();
process.stdout.write(out.join(' ') + '\n');
