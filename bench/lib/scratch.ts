// Settings from the environment, scratch directories, and the run lock.
//
// BENCH_DIR      parent of the scratch directories (default: os.tmpdir()). Put
//                it on the disk you want measured; anchors and subjects share it.
// BENCH_SECONDS  length of each measurement window (default 5).
// BENCH_FILE_MB  size of the pre-written fio file (default 1024).
// BENCH_QUIET_WAIT_S  before each measurement, wait at most this long for the
//                host to be below QUIET_BUSY_PCT busy (default 20 s; 0 = never wait).
//
// Each bench gets a fresh mkdtemp directory inside BENCH_DIR and only ever
// deletes that directory, never the parent. A lock file in os.tmpdir() keeps
// two bench runs on one machine from measuring each other.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface BenchSettings {
  readonly parentDir: string;
  readonly measureMs: number;
  readonly warmupMs: number;
  readonly fileBytes: number;
  readonly quietWaitMs: number;
}

/** Host busy share (all CPUs) under which the machine counts as quiet. */
export const QUIET_BUSY_PCT = 15;

const DEFAULT_SECONDS = 5;
const DEFAULT_FILE_MB = 1024;
const DEFAULT_QUIET_WAIT_S = 20;
const MAX_SECONDS = 600;
const LOCK_PATH = path.join(os.tmpdir(), 'blockwal-bench.lock');

export function settingsFromEnv(env: NodeJS.ProcessEnv): BenchSettings {
  const seconds = positiveNumber(env.BENCH_SECONDS, DEFAULT_SECONDS, 'BENCH_SECONDS');
  if (seconds > MAX_SECONDS) throw new RangeError(`BENCH_SECONDS=${seconds} exceeds ${MAX_SECONDS}`);
  const fileMb = positiveNumber(env.BENCH_FILE_MB, DEFAULT_FILE_MB, 'BENCH_FILE_MB');
  const quietWaitS = env.BENCH_QUIET_WAIT_S === '0' ? 0 : positiveNumber(env.BENCH_QUIET_WAIT_S, DEFAULT_QUIET_WAIT_S, 'BENCH_QUIET_WAIT_S');
  const parentDir = env.BENCH_DIR !== undefined && env.BENCH_DIR !== '' ? path.resolve(env.BENCH_DIR) : os.tmpdir();
  if (!fs.statSync(parentDir, { throwIfNoEntry: false })?.isDirectory()) {
    throw new Error(`BENCH_DIR ${parentDir} is not a directory`);
  }
  return {
    parentDir,
    measureMs: seconds * 1000,
    // A fifth of the window, at most one second: enough to fill queues and
    // caches, short enough to keep a run quick.
    warmupMs: Math.min(1000, (seconds * 1000) / 5),
    fileBytes: Math.floor(fileMb) * (1 << 20),
    quietWaitMs: quietWaitS * 1000,
  };
}

export function makeScratchDir(parentDir: string, bench: string): string {
  return fs.mkdtempSync(path.join(parentDir, `blockwal-bench-${bench}-`));
}

export function removeScratchDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

/** Takes the machine-wide bench lock, or throws naming the holder. */
export function acquireRunLock(): () => void {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(LOCK_PATH, String(process.pid), { flag: 'wx' });
      const release = (): void => {
        process.removeListener('exit', release);
        fs.rmSync(LOCK_PATH, { force: true });
      };
      process.on('exit', release); // also on process.exit() from a signal handler
      return release;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number(fs.readFileSync(LOCK_PATH, 'utf8').trim());
      if (Number.isInteger(holder) && holder > 0 && processAlive(holder)) {
        throw new Error(`another bench run (pid ${holder}) holds ${LOCK_PATH}; benches must not overlap`);
      }
      fs.rmSync(LOCK_PATH, { force: true }); // stale: its owner is gone
    }
  }
  throw new Error(`cannot take ${LOCK_PATH}`);
}

/** Names the filesystem type of dir, for the report. */
export function filesystemName(dir: string): string {
  const magic = fs.statfsSync(dir).type;
  const known: Record<number, string> = {
    0xef53: 'ext4',
    0x58465342: 'xfs',
    0x9123683e: 'btrfs',
    0x01021994: 'tmpfs',
    0x2fc12fc1: 'zfs',
    0x794c7630: 'overlayfs',
  };
  return known[magic] ?? `0x${magic.toString(16)}`;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function positiveNumber(raw: string | undefined, fallback: number, name: string): number {
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) throw new RangeError(`${name} must be a positive number, got '${raw}'`);
  return value;
}
