#!/usr/bin/env node
// The `blockwal` command: parses arguments and calls the library.
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
