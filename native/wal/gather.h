// Gather: copies block payloads out of WAL records that were read into memory
// into 4 KiB-aligned write buffers, verifying each record first. Pure: no I/O,
// no allocation; the caller checks every offset against its buffer (the
// binding does, at the edge) and the functions assert it again.
//
// The flusher reads WAL extents (many records, header and padding included)
// into the arena and then issues one gather call per extent: one op per piece
// (consecutive blocks of one record), ops of one record next to each other,
// so a record is verified once (full XXH3 of header and payload, its LSN,
// kind and block range) however many pieces it gives.
#pragma once

#include <cstdint>

#include "wal/format.h"

namespace blockwal::wal {

struct GatherOp {
  uint64_t src_offset;     // the record header, in the buffer
  uint32_t span_bytes;     // the record's span (header + payload, padded to 8)
  uint64_t lsn;            // the LSN the record must carry
  uint32_t first_index;    // first payload block to copy
  uint32_t length_blocks;  // blocks to copy (>= 1)
  uint64_t dst_offset;     // 4 KiB aligned, in the buffer
};

enum class GatherError : uint8_t {
  ok = 0,
  bad_record,     // fails decode_record (checksum, magic, shape, truncated)
  wrong_lsn,      // a valid record, but not the one expected there
  wrong_kind,     // not a write record: it has no blocks
  out_of_record,  // first_index + length_blocks beyond the record's blocks
};
const char* gather_error_name(GatherError e);

// Upper bound of GatherOp::span_bytes: the span of a maximal record.
constexpr uint32_t kGatherSpanBytesMax = record_span_bytes(kRecordPayloadMax);
constexpr uint32_t kGatherBlocksMax = kRecordPayloadMax / kBlockBytes;

// True when op's own fields are in range: a record span of a header up to a
// maximal record, 1..kGatherBlocksMax blocks from first_index inside a
// maximal record, an LSN in [1, kLsnMax]. Says nothing of where it points.
bool gather_op_shape_valid(const GatherOp& op);

// True when op's destination lies inside a buffer of buffer_bytes starting at
// offset `floor`, 4096-aligned, with room for its blocks. Says nothing of the
// source.
bool gather_dst_in_bounds(const GatherOp& op, uint64_t floor, uint64_t buffer_bytes);

// True when op lies inside a buffer of buffer_bytes starting at offset
// `floor` (src and dst ranges inside, dst aligned, lengths in range, source
// and destination disjoint).
bool gather_op_in_bounds(const GatherOp& op, uint64_t floor, uint64_t buffer_bytes);

// Runs ops in order on buf. Stops at the first failing op: returns its error
// and sets *failed_index (ops before it were copied). Asserts bounds.
GatherError gather_blocks(uint8_t* buf, uint64_t buffer_bytes, const GatherOp* ops, uint32_t count,
                          uint32_t* failed_index);

// gather_blocks with op i's record at records[i] (its src_offset unused), in
// memory the caller vouches for: records this process encoded and
// checksummed, still held where it wrote them (the WAL's group slots and
// frame cache). Every header field is still checked (shape, LSN, kind, block
// range); the payload is not hashed again. Asserts the destination bounds.
GatherError gather_blocks_trusted(uint8_t* buf, uint64_t buffer_bytes, const GatherOp* ops,
                                  const uint8_t* const* records, uint32_t count, uint32_t* failed_index);

}  // namespace blockwal::wal
