// The blockwal CLI as the server benches run it: `node main.js ARGS` from the
// same build as the bench (BLOCKWAL_MAIN, found next to this file's compiled
// copy), one-shot commands run to completion, servers started with optional
// `node --cpu-prof` flags.
//
// Rules: every volume a bench creates goes through createVolume with its
// sizes passed explicitly; a one-shot command that fails rejects with its
// stderr, so a broken step names itself.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';

import { assert, BenchSkipped } from './bench';
import { fioVersion } from './fio';
import { fioHasNbdEngine } from './fio_nbd';
import { MIB } from './seq_anchor';
import { SERVER_NODE_OPTIONS } from '../../lib/cli/node_options';

const execFileAsync = promisify(execFile);

/** dist/bench/lib → dist/lib/cli/main.js (or the same under another --outDir). */
export const BLOCKWAL_MAIN = path.resolve(__dirname, '..', '..', 'lib', 'cli', 'main.js');
const CLI_MAX_BUFFER_BYTES = 16 * MIB;
const CHECKSUM_PATTERN = /^[0-9a-f]{16}$/;

export interface CreateOptions {
  /** --wal-segment-size; absent = the engine's default (64 MiB). */
  readonly walSegmentBytes?: number;
}

/** Where a server's CPU profile goes (node --cpu-prof), or null for none. */
export interface CpuProfileSpec {
  readonly dir: string | null;
  /** The run's start, part of every profile's file name. */
  readonly startedAt: string;
}

export function assertBlockwalBuilt(): void {
  if (!fs.existsSync(BLOCKWAL_MAIN)) throw new Error(`${BLOCKWAL_MAIN} is missing; run npx tsc -p . first`);
}

/** `node SERVER_NODE_OPTIONS [--cpu-prof ...] main.js ARGS` (as the `blockwal` command runs): the profile, when asked for, is written when the server exits. */
export function blockwalArgs(role: string, profileDir: string | null, startedAt: string, args: readonly string[]): string[] {
  const prof =
    profileDir === null
      ? []
      : ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, `--cpu-prof-name=${role}-${startedAt.replace(/[:.]/g, '-')}.cpuprofile`];
  return [...SERVER_NODE_OPTIONS, ...prof, BLOCKWAL_MAIN, ...args];
}

/** Runs one blockwal command to completion; rejects with its stderr when it fails. */
export async function runBlockwal(args: readonly string[]): Promise<string> {
  try {
    const { stdout } = await execFileAsync(process.execPath, [BLOCKWAL_MAIN, ...args], { maxBuffer: CLI_MAX_BUFFER_BYTES });
    return stdout;
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? '';
    throw new Error(`blockwal ${args.join(' ')} failed: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}\n${stderr.trim()}`);
  }
}

export async function createVolume(dir: string, volumeBytes: number, options: CreateOptions = {}): Promise<void> {
  const args = ['create', dir, '--size', String(volumeBytes)];
  if (options.walSegmentBytes !== undefined) args.push('--wal-segment-size', String(options.walSegmentBytes));
  await runBlockwal(args);
}

/** `blockwal checksum DIR` of a volume no server holds. */
export async function volumeChecksum(dir: string): Promise<string> {
  const sum = (await runBlockwal(['checksum', dir])).trim();
  assert(CHECKSUM_PATTERN.test(sum), `blockwal checksum ${dir} printed '${sum}'`);
  return sum;
}

// fio with its nbd engine and a built blockwal, or the bench is skipped;
// resolves with fio's version.
export async function probeNbdBenchTools(): Promise<string> {
  const fio = fioVersion();
  if (fio === null) throw new BenchSkipped('missing fio');
  if (!(await fioHasNbdEngine())) throw new BenchSkipped('missing fio nbd engine (fio built without libnbd)');
  assertBlockwalBuilt();
  return fio;
}
