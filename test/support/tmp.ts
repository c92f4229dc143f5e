// Temporary directories for tests, removed afterwards.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export function tempDir(prefix: string): { dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `blockwal-${prefix}-`));
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

// A small deterministic PRNG (mulberry32) for seeded tests.
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Lets the event loop turn until pred() holds or nothing can change any more.
export async function turnUntil(pred: () => boolean, maxTurns = 200000): Promise<boolean> {
  for (let i = 0; i < maxTurns; i++) {
    if (pred()) return true;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  return pred();
}
