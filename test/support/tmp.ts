// Temporary directories for tests, removed afterwards.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { mulberry32 } from '../../lib/util/prng';

export function tempDir(prefix: string): { dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `blockwal-${prefix}-`));
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

// Overwrites bytes of an existing file at offsetBytes (a test's damage or patch).
export function writeAt(file: string, offsetBytes: number, bytes: Uint8Array): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, bytes, 0, bytes.length, offsetBytes);
  } finally {
    fs.closeSync(fd);
  }
}

// A small deterministic PRNG (mulberry32) for seeded tests.
export const prng = mulberry32;

// Lets the event loop turn until pred() holds or nothing can change any more.
export async function turnUntil(pred: () => boolean, maxTurns = 200000): Promise<boolean> {
  for (let i = 0; i < maxTurns; i++) {
    if (pred()) return true;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  return pred();
}
