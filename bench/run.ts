// Runs benches one after another: `node dist/bench/run.js [name...]`
// (default: every bench in DEFAULT_BENCHES). Each gets a fresh scratch
// directory, removed afterwards; its result is printed as a table on stdout
// and written as JSON and SVG to bench/results/.
//
// Exit codes: 0 when every bench ran (or was skipped with a reason), 1 when one
// failed to run, 2 on bad usage. A missed target is printed as FAIL and exits 0,
// except with BENCH_STRICT=1, where it exits 3.
import * as os from 'node:os';
import * as path from 'node:path';

import type { Bench, BenchContext } from './lib/bench';
import { BenchSkipped } from './lib/bench';
import type { BenchResult } from './lib/report';
import { failures, renderTable, writeResultFiles } from './lib/report';
import type { BenchSettings } from './lib/scratch';
import { waitForQuietHost } from './lib/cpu';
import { NOISY_OTHER_LOAD_PCT } from './lib/rounds';
import {
  QUIET_BUSY_PCT,
  acquireRunLock,
  filesystemName,
  makeScratchDir,
  removeScratchDir,
  settingsFromEnv,
} from './lib/scratch';

// Loaded on demand, so one bench whose engine API is in flux cannot stop the others.
const BENCHES: Readonly<Record<string, () => Promise<Bench>>> = {
  wal_append: async () => (await import('./wal_append')).bench,
  anchors: async () => (await import('./anchors_only')).bench,
  wal_replay: async () => (await import('./wal_replay')).bench,
  flusher: async () => (await import('./flusher')).bench,
  nbd: async () => (await import('./nbd')).bench,
  replication: async () => (await import('./replication')).bench,
  recovery: async () => (await import('./recovery')).bench,
};
// `anchors` is a subset of wal_append, so running everything skips it.
const DEFAULT_BENCHES: readonly string[] = ['wal_append', 'wal_replay', 'flusher', 'nbd', 'replication', 'recovery'];
const RESULTS_DIR = path.join(__dirname, '..', '..', 'bench', 'results');

type Outcome = 'ran' | 'missed' | 'skipped' | 'failed';

async function main(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(await usage());
    return 0;
  }
  const names = argv.length === 0 ? DEFAULT_BENCHES : argv;
  const unknown = names.filter((name) => BENCHES[name] === undefined);
  if (unknown.length > 0) {
    process.stderr.write(`bench: unknown bench '${unknown.join("', '")}'\n${await usage()}`);
    return 2;
  }
  const settings = settingsFromEnv(process.env);
  const releaseLock = acquireRunLock();
  const outcomes: Outcome[] = [];
  try {
    for (const name of names) outcomes.push(await loadAndRun(name, settings));
  } finally {
    releaseLock();
  }
  if (outcomes.includes('failed')) return 1;
  if (outcomes.includes('missed') && process.env.BENCH_STRICT === '1') return 3;
  return 0;
}

async function loadAndRun(name: string, settings: BenchSettings): Promise<Outcome> {
  let b: Bench;
  try {
    b = await BENCHES[name]!();
  } catch (err) {
    process.stderr.write(`${name}: failed to load: ${err instanceof Error ? err.message : String(err)}\n`);
    return 'failed';
  }
  return runOne(b, settings);
}

async function runOne(b: Bench, settings: BenchSettings): Promise<Outcome> {
  const dir = makeScratchDir(settings.parentDir, b.name);
  const onSignal = (): void => {
    removeScratchDir(dir);
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const ctx: BenchContext = {
    dir,
    measureMs: settings.measureMs,
    warmupMs: settings.warmupMs,
    fileBytes: settings.fileBytes,
    log: (line) => process.stderr.write(`[${b.name}] ${line}\n`),
    settle: async () => {
      if (settings.quietWaitMs === 0) return;
      const wait = await waitForQuietHost(QUIET_BUSY_PCT, settings.quietWaitMs);
      if (!wait.quiet) {
        ctx.log(`host still ${wait.lastBusyPct?.toFixed(0)} % busy after ${(wait.waitedMs / 1000).toFixed(0)} s; measuring anyway`);
      } else if (wait.waitedMs > 1000) {
        ctx.log(`waited ${(wait.waitedMs / 1000).toFixed(1)} s for the host to quiet down`);
      }
    },
  };
  try {
    ctx.log(`scratch ${dir} (${filesystemName(dir)})`);
    const result = withNoiseNote(withRunEnv(await b.run(ctx), settings, dir));
    process.stdout.write(renderTable(result));
    const files = writeResultFiles(result, RESULTS_DIR);
    process.stdout.write(`  wrote ${path.relative(process.cwd(), files.json)} and ${path.relative(process.cwd(), files.svg)}\n\n`);
    return failures(result).length > 0 ? 'missed' : 'ran';
  } catch (err) {
    if (err instanceof BenchSkipped) {
      process.stdout.write(`${b.name}: skipped: ${err.reason}\n`);
      return 'skipped';
    }
    process.stderr.write(`${b.name}: failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    return 'failed';
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    removeScratchDir(dir);
  }
}

/** Adds what every result should say about where and how it was measured. */
function withRunEnv(result: BenchResult, settings: BenchSettings, dir: string): BenchResult {
  return {
    ...result,
    env: {
      host: os.hostname(),
      kernel: os.release(),
      cpus: os.cpus().length,
      node: process.version,
      fs: filesystemName(dir),
      dir: settings.parentDir,
      measureSeconds: settings.measureMs / 1000,
      warmupSeconds: settings.warmupMs / 1000,
      fileMiB: settings.fileBytes >> 20,
      loadavg1: Number(os.loadavg()[0]!.toFixed(2)),
      ...result.env,
    },
  };
}

/** Says so in the result when others loaded the host during a window. */
function withNoiseNote(result: BenchResult): BenchResult {
  const noisy = [...result.anchors, ...result.subjects].filter(
    (f) => f.otherLoadPct !== undefined && f.otherLoadPct !== null && f.otherLoadPct > NOISY_OTHER_LOAD_PCT,
  );
  if (noisy.length === 0) return result;
  const names = noisy.map((f) => `${f.name} (${f.otherLoadPct!.toFixed(0)} %)`).join(', ');
  const note = `other load above ${NOISY_OTHER_LOAD_PCT} % of the host during: ${names}; treat those figures and their ratios as suspect and rerun`;
  return { ...result, notes: [...result.notes, note] };
}

async function usage(): Promise<string> {
  const lines: string[] = [];
  for (const [name, load] of Object.entries(BENCHES)) {
    const description = await load().then(
      (b) => b.description,
      (err: unknown) => `(cannot load: ${err instanceof Error ? err.message.split('\n')[0] : String(err)})`,
    );
    lines.push(`  ${name.padEnd(12)} ${description}`);
  }
  const list = lines.join('\n');
  return (
    `usage: node dist/bench/run.js [bench...]   (default: ${DEFAULT_BENCHES.join(' ')})\n\nbenches:\n${list}\n\n` +
    'env: BENCH_DIR (scratch parent, default os.tmpdir()), BENCH_SECONDS (per measurement, default 5),\n' +
    '     BENCH_FILE_MB (fio file, default 1024), BENCH_STRICT=1 (exit 3 on a missed target),\n' +
    `     BENCH_QUIET_WAIT_S (wait up to this long for the host to fall below ${QUIET_BUSY_PCT} % busy\n` +
    '     before each measurement, default 20; 0 = no wait)\n'
  );
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
