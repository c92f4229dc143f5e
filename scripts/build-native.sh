#!/usr/bin/env bash
# Incremental build of the addon (build/Release/blockwal.node), serialised with
# a lock so several shells working in one checkout do not build at once.
# Re-runs configure each time: the source list (scripts/native-sources.js) is
# fixed at configure time and new files must be picked up.
set -euo pipefail
cd "$(dirname "$0")/.."
exec flock /tmp/blockwal-native-build.lock bash -c '
  set -uo pipefail
  node scripts/check-native-deps.js || exit 1
  log=$(mktemp)
  if npx node-gyp configure >"$log" 2>&1 && npx node-gyp build -j 2 >>"$log" 2>&1; then
    rm -f "$log"; echo "build-native: ok"; exit 0
  fi
  grep -v "^gyp info\|^npm warn" "$log" | tail -60; rm -f "$log"; echo "build-native: FAILED"; exit 1
'
