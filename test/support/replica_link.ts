// A ReplicaReplication in one process, fed by a hand-driven
// ReplicationLink: a source volume whose writes become the records a primary
// would ship, a replica volume, and the receiver serving it on loopback.
import * as assert from 'node:assert/strict';
import * as path from 'node:path';

import pino from 'pino';

import { type ShippedRecord, Volume } from '../../lib/engine/volume';
import type { Frame, HelloFrame } from '../../lib/replication/frames';
import { type LinkCloseReason, ReplicationLink } from '../../lib/replication/link';
import { ReplicaReplication } from '../../lib/replication/replica';
import { tempDir } from './tmp';

export const MiB = 1 << 20;
export const VOLUME = { sizeBytes: 8 * MiB, walSegmentBytes: MiB, walSegmentsMax: 16, flushIdleMs: 0 } as const;
export const silent = pino({ level: 'silent' });

export interface Fixture {
  source: Volume; // writes here become the records a primary would ship
  shipped: ShippedRecord[];
  replica: Volume;
  receiver: ReplicaReplication;
}

export async function withReplica(fn: (f: Fixture) => Promise<void>, walGroupHoldUs?: number): Promise<void> {
  const { dir, cleanup } = tempDir('repl-link');
  const shipped: ShippedRecord[] = [];
  const source = await Volume.create(path.join(dir, 'p'), { ...VOLUME, onRecord: (r) => shipped.push(r) });
  await (await Volume.create(path.join(dir, 'r'), VOLUME)).close();
  const replica = await Volume.open(path.join(dir, 'r'), { role: 'replica', flushIdleMs: 0 });
  const receiver = await ReplicaReplication.start({ volume: replica, nodeId: 'r', listen: { host: '127.0.0.1', port: 0 }, logger: silent, walGroupHoldUs });
  try {
    await fn({ source, shipped, replica, receiver });
  } finally {
    await receiver.close();
    await replica.close();
    await source.close();
    cleanup();
  }
}

export function hello(source: Volume, overrides: Partial<HelloFrame> = {}): HelloFrame {
  return {
    type: 'hello',
    epoch: source.epoch,
    role: 'primary',
    volumeUuid: source.uuid,
    nodeId: 'p',
    lsnDurable: source.lsnDurable,
    lsnApplied: source.lsnApplied,
    lsnTail: 0,
    lsnHead: source.lsnHead,
    applyChecksum: source.applyChecksum,
    ...overrides,
  };
}

// A link to the receiver; collects frames and the close reason.
export async function connect(receiver: ReplicaReplication): Promise<{ link: ReplicationLink; frames: Frame[]; closed: Promise<LinkCloseReason> }> {
  const link = await ReplicationLink.connect('127.0.0.1', receiver.port, { epoch: () => 1, logger: silent });
  const frames: Frame[] = [];
  link.onFrame = (f) => frames.push(f);
  const closed = new Promise<LinkCloseReason>((resolve) => {
    link.onClose = resolve;
  });
  return { link, frames, closed };
}

export async function until(pred: () => boolean): Promise<void> {
  for (let i = 0; i < 12000 && !pred(); i++) await new Promise((r) => setTimeout(r, 5)); // up to a minute on a loaded host
  assert.ok(pred(), 'condition not reached');
}
