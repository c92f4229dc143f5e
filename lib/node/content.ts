// A volume's logical content, read in order: its XXH3-64 checksum (equal on
// every node holding the same data, whatever its WAL/base split) and a raw
// image export. Holes are not read: the checksum hashes zeros from memory,
// the export leaves them sparse.
import * as fs from 'node:fs';

import { XXHash3 } from 'xxhash-addon';

import type { Volume } from '../engine/volume';

// Bytes per read; reads of data overlap by this many in flight.
const CHUNK_BYTES = 8 << 20;
const READS_IN_FLIGHT = 4;

export interface ContentProgress {
  doneBytes: number;
  totalBytes: number;
}

type Piece = { offsetBytes: number; lengthBytes: number; hole: boolean };

// Every piece of the volume in order: data in pieces of at most CHUNK_BYTES,
// each hole whole.
function* pieces(volume: Volume): Generator<Piece> {
  let pos = 0;
  while (pos < volume.sizeBytes) {
    for (const e of volume.blockStatus(pos, volume.sizeBytes - pos)) {
      const step = e.zero ? e.lengthBytes : CHUNK_BYTES;
      for (let at = 0; at < e.lengthBytes; at += step) {
        yield { offsetBytes: pos + at, lengthBytes: Math.min(step, e.lengthBytes - at), hole: e.zero };
      }
      pos += e.lengthBytes;
    }
  }
}

// Visits the content in order: data pieces read with READS_IN_FLIGHT reads
// overlapping, holes passed as undefined.
async function visit(volume: Volume, onPiece: (piece: Piece, data: Buffer | undefined) => void, onProgress?: (p: ContentProgress) => void): Promise<void> {
  const window: { piece: Piece; data: Promise<Buffer> | undefined }[] = [];
  let reads = 0;
  let doneBytes = 0;
  const drainOne = async (): Promise<void> => {
    const head = window.shift()!;
    if (head.data !== undefined) reads--;
    onPiece(head.piece, head.data === undefined ? undefined : await head.data);
    doneBytes += head.piece.lengthBytes;
    onProgress?.({ doneBytes, totalBytes: volume.sizeBytes });
  };
  for (const piece of pieces(volume)) {
    const data = piece.hole ? undefined : volume.read(piece.offsetBytes, piece.lengthBytes);
    // Keep a later read from rejecting unobserved while an earlier one is awaited.
    data?.catch(() => undefined);
    if (data !== undefined) reads++;
    window.push({ piece, data });
    while (window.length > 0 && (window[0]!.data === undefined || reads >= READS_IN_FLIGHT)) await drainOne();
  }
  while (window.length > 0) await drainOne();
}

// XXH3-64 (seed 0) of the whole logical content, as 16 hex digits.
export async function checksumVolume(volume: Volume, onProgress?: (p: ContentProgress) => void): Promise<string> {
  const hash = new XXHash3(Buffer.alloc(8));
  const zeros = Buffer.alloc(CHUNK_BYTES);
  const hashZeros = (lengthBytes: number): void => {
    for (let at = 0; at < lengthBytes; at += CHUNK_BYTES) hash.update(zeros.subarray(0, Math.min(CHUNK_BYTES, lengthBytes - at)));
  };
  await visit(volume, (piece, data) => (data === undefined ? hashZeros(piece.lengthBytes) : hash.update(data)), onProgress);
  return hash.digest().toString('hex');
}

// Writes the content to file as a raw image of the volume's size; holes stay
// sparse. The file is fsynced before this resolves.
export async function exportVolume(volume: Volume, file: string, onProgress?: (p: ContentProgress) => void): Promise<void> {
  const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o644);
  try {
    fs.ftruncateSync(fd, volume.sizeBytes);
    await visit(
      volume,
      (piece, data) => {
        if (data !== undefined) fs.writeSync(fd, data, 0, data.length, piece.offsetBytes);
      },
      onProgress,
    );
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
