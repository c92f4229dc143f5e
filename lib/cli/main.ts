#!/usr/bin/env -S node --initial-old-space-size=256
// The `blockwal` command: parses arguments and calls the library. The
// shebang's Node options are SERVER_NODE_OPTIONS (node_options.ts says why).
import { runCli } from './cli';

runCli(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`blockwal: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
