// A replica's rebuild on disk: `rebuild.json` (the session and its persisted
// progress) and `rebuild.bitmap` (one bit per block: a WAL record newer than
// the session's base LSN was applied there). While rebuild.json exists the
// base image is partial: the volume refuses reads and reports the unfinished
// rebuild to its primary, which resumes it or starts afresh.
//
// Rules:
//  - rebuild.json is written before anything local is dropped, and removed
//    only after the rebuilt image and the checkpoint that covers the session
//    are durable; every write of it is atomic (temp file, fsync, rename,
//    fsync of the directory);
//  - a bitmap that does not open cleanly is never trusted: the session is
//    reported as unresumable (the primary then starts a fresh one).
import * as fs from 'node:fs';
import * as path from 'node:path';

import { DenseBitmap } from '../native/bitmap';

export const REBUILD_FILES = { state: 'rebuild.json', bitmap: 'rebuild.bitmap' } as const;

// What rebuild.json holds.
export interface RebuildSaved {
  sessionId: number;
  epoch: number;
  lsnBase: number;
  lsnTarget: number;
  chunkBlocks: number;
  chunksTotal: number;
  // The session logic's own progress record (lib/protocol/rebuild_session.ts), opaque here.
  progress: unknown;
  updatedAtMs: number;
  // Set when rebuild.json did not parse: the image is partial and the session unresumable.
  damaged?: string;
}

export function readRebuildSaved(dir: string): RebuildSaved | undefined {
  const file = path.join(dir, REBUILD_FILES.state);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const saved = JSON.parse(text) as RebuildSaved;
    for (const k of ['sessionId', 'epoch', 'lsnBase', 'lsnTarget', 'chunkBlocks', 'chunksTotal'] as const) {
      if (!Number.isSafeInteger(saved[k]) || saved[k] < 0) throw new Error(`field ${k} is ${JSON.stringify(saved[k])}`);
    }
    return saved;
  } catch (err) {
    // Damaged: the base image is still partial; a session the primary cannot resume.
    return { sessionId: 0, epoch: 0, lsnBase: 0, lsnTarget: 0, chunkBlocks: 1, chunksTotal: 0, progress: undefined, updatedAtMs: 0, damaged: (err as Error).message };
  }
}

export async function writeRebuildSaved(dir: string, saved: RebuildSaved): Promise<void> {
  const file = path.join(dir, REBUILD_FILES.state);
  const tmp = `${file}.tmp`;
  await fs.promises.writeFile(tmp, `${JSON.stringify(saved, null, 2)}\n`);
  const fh = await fs.promises.open(tmp, 'r');
  await fh.sync().finally(() => fh.close());
  await fs.promises.rename(tmp, file);
  await syncDir(dir);
}

export async function removeRebuildFiles(dir: string): Promise<void> {
  await fs.promises.rm(path.join(dir, REBUILD_FILES.state), { force: true });
  await fs.promises.rm(path.join(dir, REBUILD_FILES.bitmap), { force: true });
  await syncDir(dir);
}

// A fresh bitmap for a new session (any old one is removed first).
export function createRebuildBitmap(dir: string, blockCount: number): DenseBitmap {
  const file = path.join(dir, REBUILD_FILES.bitmap);
  fs.rmSync(file, { force: true });
  return DenseBitmap.create(file, { blockCount });
}

// The session's bitmap, or undefined when it is missing or does not verify.
export function openRebuildBitmap(dir: string): DenseBitmap | undefined {
  try {
    return DenseBitmap.open(path.join(dir, REBUILD_FILES.bitmap));
  } catch {
    return undefined;
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await fs.promises.open(dir, 'r');
  await fh.sync().finally(() => fh.close());
}
