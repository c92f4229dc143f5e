// DenseBitmap.readRuns over a byte-per-block array, for the in-memory
// bitmaps of the simulator and the unit tests: maximal runs of set blocks
// inside [fromBlock, endBlock) as (startBlock, lengthBlocks) pairs in out, at
// most out.length / 2 of them (fewer only when no more follow).
export function readSetRuns(bits: Uint8Array, fromBlock: number, endBlock: number, out: Float64Array): number {
  let count = 0;
  for (let block = fromBlock; block < endBlock && count < out.length / 2; ) {
    if (bits[block] !== 1) {
      block++;
      continue;
    }
    const start = block;
    while (block < endBlock && bits[block] === 1) block++;
    out[2 * count] = start;
    out[2 * count + 1] = block - start;
    count++;
  }
  return count;
}
