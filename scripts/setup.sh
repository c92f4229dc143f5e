#!/usr/bin/env bash
# Sets up a fresh Debian machine for blockwal and runs the demo:
# system packages (liburing, libxxhash, fio and the NBD clients used by the
# tests and benchmarks), the npm packages and the native build.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

packages=(liburing-dev libxxhash-dev fio libnbd-bin nbdkit qemu-utils e2fsprogs fuse3)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
fi

if [ "${1:-}" = "--deps-only" ]; then exit 0; fi

npm ci
node dist/lib/cli/main.js demo
