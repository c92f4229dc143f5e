// Moving a primary's WAL in multi-process tests without fio: writes through
// a node's NBD export (fixed-size writes, a few in flight, a byte pattern
// from a seed, then a FLUSH; every reply must be a success), and waiting for
// the primary's checkpoint to pass an LSN.
import * as assert from 'node:assert/strict';

import { type ClusterNode, NbdSession, until } from './cluster';

const WRITE_BYTES = 128 * 1024;
const IN_FLIGHT = 8;

// Writes totalBytes from offsetBytes (wrapping at the export's size), then flushes.
export async function writeThrough(node: ClusterNode, offsetBytes: number, totalBytes: number, seed: number): Promise<void> {
  const s = await NbdSession.open(node.nbd);
  try {
    const pending = new Set<Promise<void>>();
    for (let at = 0; at < totalBytes; at += WRITE_BYTES) {
      const payload = Buffer.alloc(WRITE_BYTES, (seed + at / WRITE_BYTES) & 0xff);
      payload.writeUInt32LE(seed, 0);
      const offset = (offsetBytes + at) % s.sizeBytes;
      const tracked: Promise<void> = s
        .write(offset, payload)
        .then((r) => assert.equal(r.error, 0, `write at ${offset}`))
        .finally(() => pending.delete(tracked));
      pending.add(tracked);
      if (pending.size >= IN_FLIGHT) await Promise.race(pending);
    }
    await Promise.all(pending);
    assert.equal((await s.flush()).error, 0, 'flush');
  } finally {
    s.close();
  }
}

// Until the primary has checkpointed everything it holds, past lsn; returns
// the checkpoint and the WAL tail it reports then.
export async function checkpointedPast(primary: ClusterNode, lsn: number, what: string): Promise<{ checkpointLsn: number; walTail: number }> {
  return until(what, async () => {
    const v = await primary.volumeStatus();
    const walTail = (await primary.primaryStatus()).wal.lsnTail;
    return v.checkpointLsn > lsn && v.lsnHead === v.checkpointLsn && { checkpointLsn: v.checkpointLsn, walTail };
  });
}
