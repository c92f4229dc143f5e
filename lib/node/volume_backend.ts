// A Volume as an NBD export's backend. The volume does the work: bounds,
// read-modify-write, ordering, durability. Flush is volume-wide, so a FLUSH on
// any connection covers writes completed on every connection (multi-conn).
// On a replicated primary a gate holds each acknowledgement until the
// durability mode allows it (replication/primary.ts).
import type { Volume } from '../engine/volume';
import { BlockwalError } from '../native/errors';
import type { Extent, NbdBackend, ZeroOptions } from '../nbd/backend';
import { ioBuffers } from '../util/buffer_pool';

// What the durability mode requires before a write or flush is acknowledged.
export interface AckGate {
  // Throws when writes are refused before they start (a fenced primary);
  // returns when the write started (performance.now()), for written().
  admit(): number;
  // The write ending at lsn (local WAL has it; durable too when fua),
  // admitted at admittedAtMs (its acknowledged latency is measured).
  written(lsn: number, fua: boolean, admittedAtMs?: number): Promise<void>;
  // A flush: everything up to lsn is durable locally.
  flushed(lsn: number): Promise<void>;
}

const FUA = Object.freeze({ fua: true });
const NO_FUA = Object.freeze({ fua: false });

export class VolumeBackend implements NbdBackend {
  constructor(
    private readonly volume: Volume,
    readonly readOnly: boolean,
    private readonly gate?: AckGate,
  ) {}

  get sizeBytes(): number {
    return this.volume.sizeBytes;
  }

  // Large results go into pooled buffers, back in the pool once the reply
  // is written (readDone). A read that fails leaves its buffer to the
  // collector: parts of it may still be in flight.
  read(offsetBytes: number, lengthBytes: number): Promise<Uint8Array> {
    const into = lengthBytes > 0 && offsetBytes >= 0 && offsetBytes + lengthBytes <= this.volume.sizeBytes ? ioBuffers.take(lengthBytes) : undefined;
    if (into === undefined) return this.volume.read(offsetBytes, lengthBytes);
    return this.volume.readInto(offsetBytes, into);
  }

  readDone(data: Uint8Array): void {
    ioBuffers.give(data);
  }

  write(offsetBytes: number, data: Uint8Array, fua: boolean): Promise<unknown> {
    if (this.gate === undefined && !this.readOnly) return this.volume.write(offsetBytes, data, fua ? FUA : NO_FUA);
    return this.writeGated(offsetBytes, data, fua);
  }

  // One promise from the volume and one from then() per write (no async
  // function around them: this is every replicated write's path).
  private writeGated(offsetBytes: number, data: Uint8Array, fua: boolean): Promise<unknown> {
    let admittedAtMs: number | undefined;
    try {
      admittedAtMs = this.checkWritable();
    } catch (err) {
      return Promise.reject(err);
    }
    const written = this.volume.write(offsetBytes, data, fua ? FUA : NO_FUA);
    const gate = this.gate;
    if (gate === undefined) return written;
    return written.then((lsn) => gate.written(lsn, fua, admittedAtMs));
  }

  // The local flush and the replicas' (the gate asks them to sync) run at
  // once: the acknowledgement waits for both, not for one after the other.
  async flush(): Promise<void> {
    const lsn = this.volume.lsnHead;
    const local = this.volume.flush();
    if (this.gate === undefined) return local;
    const replicas = this.gate.flushed(lsn);
    await Promise.all([local, replicas]).catch(async (err: unknown) => {
      // Both settle before the error goes back (neither is left unobserved).
      await Promise.allSettled([local, replicas]);
      throw err;
    });
  }

  async trim(offsetBytes: number, lengthBytes: number, fua: boolean): Promise<void> {
    const admittedAtMs = this.checkWritable();
    const lsn = await this.volume.trim(offsetBytes, lengthBytes);
    if (fua) await this.volume.flush();
    if (this.gate !== undefined) await this.gate.written(lsn, fua, admittedAtMs);
  }

  // Zeroing is one metadata record whatever the length, so it is always fast.
  // Without NO_HOLE the range may be deallocated: a trim, which reads back as
  // zeros here. With NO_HOLE it stays allocated until a checkpoint.
  async writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void> {
    if (!options.noHole) return this.trim(offsetBytes, lengthBytes, options.fua);
    const admittedAtMs = this.checkWritable();
    const lsn = await this.volume.writeZeroes(offsetBytes, lengthBytes, { fua: options.fua });
    if (this.gate !== undefined) await this.gate.written(lsn, options.fua, admittedAtMs);
  }

  async cache(): Promise<void> {
    // Reads come from the WAL or base.img with O_DIRECT; there is no cache to fill.
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    return this.volume.blockStatus(offsetBytes, lengthBytes);
  }

  private checkWritable(): number | undefined {
    if (this.readOnly) throw new BlockwalError('ERR_READ_ONLY', `volume ${this.volume.dir} is served read-only`);
    return this.gate?.admit();
  }
}
