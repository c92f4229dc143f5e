// Where each record the WAL still holds lives: segment, offset and span per
// LSN, for contiguous LSNs from lsnFirst to lsnLast, plus the running sum of
// spans so that "WAL bytes after LSN x" is one subtraction. A primary uses it
// to stream retained WAL to a replica that fell behind (catch-up) and to say
// what that costs; every node keeps it so that a promoted replica can too.
//
// Rules:
//  - LSNs are added in order, each exactly one above the last (replay at
//    open, then appends); anything else is a bug and throws;
//  - entries below the WAL's tail (recycled segments) are dropped by
//    dropBelow(); the index never claims a record the WAL no longer has,
//    and a reader still verifies every record it reads (LSN and checksum);
//  - memory: 24 bytes per record in typed arrays that grow by doubling and
//    compact when half of them lie below lsnFirst.

export interface WalLocation {
  lsn: number;
  segmentSeq: number;
  offsetBytes: number;
  spanBytes: number;
}

const CAPACITY_MIN = 1024;

export class WalIndex {
  private segmentSeq = new Uint32Array(CAPACITY_MIN);
  private offsetBytes = new Uint32Array(CAPACITY_MIN);
  private spanBytes = new Uint32Array(CAPACITY_MIN);
  // bytesBefore[i]: sum of the spans of the records before entry i (since the index began).
  private bytesBefore = new Float64Array(CAPACITY_MIN);
  private start = 0; // index of lsnFirst's entry
  private end = 0; // one past the last entry
  private lsnStart = 0; // LSN of entry 0 (0: empty and never used)
  private bytesTotal = 0;

  get lsnFirst(): number {
    return this.end > this.start ? this.lsnStart + this.start : 0;
  }

  get lsnLast(): number {
    return this.end > this.start ? this.lsnStart + this.end - 1 : 0;
  }

  get count(): number {
    return this.end - this.start;
  }

  add(lsn: number, segmentSeq: number, offsetBytes: number, spanBytes: number): void {
    if (this.end > this.start && lsn !== this.lsnLast + 1) {
      throw new Error(`WalIndex: LSN ${lsn} added after ${this.lsnLast}`);
    }
    if (this.end === this.start) {
      // Empty: restart the arrays at this LSN.
      this.start = 0;
      this.end = 0;
      this.lsnStart = lsn;
    }
    if (this.end === this.segmentSeq.length) this.makeRoom();
    const i = this.end++;
    this.segmentSeq[i] = segmentSeq;
    this.offsetBytes[i] = offsetBytes;
    this.spanBytes[i] = spanBytes;
    this.bytesBefore[i] = this.bytesTotal;
    this.bytesTotal += spanBytes;
  }

  get(lsn: number): WalLocation | undefined {
    if (lsn < this.lsnFirst || lsn > this.lsnLast || this.end === this.start) return undefined;
    const i = lsn - this.lsnStart;
    return { lsn, segmentSeq: this.segmentSeq[i]!, offsetBytes: this.offsetBytes[i]!, spanBytes: this.spanBytes[i]! };
  }

  // Bytes of the indexed records with LSN > lsn (all of them when lsn is
  // below the first).
  bytesAfter(lsn: number): number {
    if (this.end === this.start || lsn >= this.lsnLast) return 0;
    const from = Math.max(lsn + 1, this.lsnFirst) - this.lsnStart;
    return this.bytesTotal - this.bytesBefore[from]!;
  }

  // The highest LSN L (lsnFirst - 1 ≤ L ≤ lsnLast) with bytesAfter(L) ≥
  // bytes: releasing the WAL up to L still keeps `bytes` of records. When all
  // of them add up to less, lsnFirst - 1 (0 when empty). Binary search.
  lsnKeeping(bytes: number): number {
    if (this.end === this.start) return 0;
    if (bytes <= 0) return this.lsnLast;
    // Entry i: bytes after LSN (lsnStart + i - 1) = bytesTotal - bytesBefore[i].
    let lo = this.start; // holds (bytes after lsnFirst - 1 = all) or nothing does
    let hi = this.end - 1;
    if (this.bytesTotal - this.bytesBefore[lo]! < bytes) return this.lsnFirst - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.bytesTotal - this.bytesBefore[mid]! >= bytes) lo = mid;
      else hi = mid - 1;
    }
    return this.lsnStart + lo - 1;
  }

  // The longest run of records from lsn on that lie back to back in one
  // segment (frame headers and padding between them count towards the
  // span read), within spanBytesMax (at least one record).
  run(lsn: number, spanBytesMax: number): { segmentSeq: number; startBytes: number; endBytes: number; records: WalLocation[] } | undefined {
    const first = this.get(lsn);
    if (first === undefined) return undefined;
    const records = [first];
    let endBytes = first.offsetBytes + first.spanBytes;
    for (let l = lsn + 1; l <= this.lsnLast; l++) {
      const i = l - this.lsnStart;
      if (this.segmentSeq[i] !== first.segmentSeq || this.offsetBytes[i]! < endBytes) break;
      const end = this.offsetBytes[i]! + this.spanBytes[i]!;
      if (end - first.offsetBytes > spanBytesMax) break;
      records.push({ lsn: l, segmentSeq: first.segmentSeq, offsetBytes: this.offsetBytes[i]!, spanBytes: this.spanBytes[i]! });
      endBytes = end;
    }
    return { segmentSeq: first.segmentSeq, startBytes: first.offsetBytes, endBytes, records };
  }

  // Forgets the records below lsn (their segments were recycled).
  dropBelow(lsn: number): void {
    if (this.end === this.start || lsn <= this.lsnFirst) return;
    this.start = Math.min(this.end, lsn - this.lsnStart);
  }

  // Forgets everything (the WAL was replaced).
  clear(): void {
    this.start = 0;
    this.end = 0;
    this.lsnStart = 0;
  }

  private makeRoom(): void {
    const live = this.end - this.start;
    const capacity = live * 2 > this.segmentSeq.length ? this.segmentSeq.length * 2 : this.segmentSeq.length;
    const move = <T extends Uint32Array | Float64Array>(a: T, make: (n: number) => T): T => {
      const b = make(capacity);
      b.set(a.subarray(this.start, this.end));
      return b;
    };
    this.segmentSeq = move(this.segmentSeq, (n) => new Uint32Array(n));
    this.offsetBytes = move(this.offsetBytes, (n) => new Uint32Array(n));
    this.spanBytes = move(this.spanBytes, (n) => new Uint32Array(n));
    this.bytesBefore = move(this.bytesBefore, (n) => new Float64Array(n));
    this.lsnStart += this.start;
    this.end = live;
    this.start = 0;
  }
}
