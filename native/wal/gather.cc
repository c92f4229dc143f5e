#include "wal/gather.h"

#include <cstring>

#include "util/assert.h"

namespace blockwal::wal {

const char* gather_error_name(GatherError e) {
  switch (e) {
    case GatherError::ok: return "ok";
    case GatherError::bad_record: return "bad_record";
    case GatherError::wrong_lsn: return "wrong_lsn";
    case GatherError::wrong_kind: return "wrong_kind";
    case GatherError::out_of_record: return "out_of_record";
  }
  BW_UNREACHABLE();
}

bool gather_op_shape_valid(const GatherOp& op) {
  if (op.span_bytes < kRecordHeaderBytes || op.span_bytes > kGatherSpanBytesMax) return false;
  if (op.length_blocks == 0 || op.length_blocks > kGatherBlocksMax) return false;
  if (op.first_index >= kGatherBlocksMax || op.first_index + op.length_blocks > kGatherBlocksMax) return false;
  return op.lsn != 0 && op.lsn <= kLsnMax;
}

bool gather_dst_in_bounds(const GatherOp& op, uint64_t floor, uint64_t buffer_bytes) {
  const uint64_t copy_bytes = uint64_t{op.length_blocks} * kBlockBytes;
  if (op.dst_offset < floor || op.dst_offset > buffer_bytes || copy_bytes > buffer_bytes - op.dst_offset) return false;
  return is_aligned(op.dst_offset, kDirectAlignBytes);
}

bool gather_op_in_bounds(const GatherOp& op, uint64_t floor, uint64_t buffer_bytes) {
  if (!gather_op_shape_valid(op) || !gather_dst_in_bounds(op, floor, buffer_bytes)) return false;
  const uint64_t copy_bytes = uint64_t{op.length_blocks} * kBlockBytes;
  if (op.src_offset < floor || op.src_offset > buffer_bytes || op.span_bytes > buffer_bytes - op.src_offset) return false;
  const bool disjoint = op.dst_offset + copy_bytes <= op.src_offset || op.src_offset + op.span_bytes <= op.dst_offset;
  return disjoint;
}

namespace {

// The loop both gathers share: ops of one record come together, so a record
// is decoded once (reused only for an op naming the same record, span and
// LSN). record_of(i) is op i's record; decode checks it.
template <typename RecordOf, typename Decode>
GatherError gather_loop(uint8_t* buf, const GatherOp* ops, uint32_t count, uint32_t* failed_index, RecordOf record_of,
                        Decode decode) {
  const uint8_t* verified = nullptr;
  uint32_t verified_span = 0;
  RecordHeader header{};
  for (uint32_t i = 0; i < count; i++) {
    const GatherOp& op = ops[i];
    const uint8_t* record = record_of(i);
    if (record != verified || op.span_bytes != verified_span || op.lsn != header.lsn) {
      verified = nullptr;
      *failed_index = i;
      if (decode(record, op.span_bytes, &header) != RecordError::ok) return GatherError::bad_record;
      if (header.lsn != op.lsn) return GatherError::wrong_lsn;
      if (header.kind != static_cast<uint8_t>(RecordKind::write)) return GatherError::wrong_kind;
      verified = record;
      verified_span = op.span_bytes;
    }
    if (uint64_t{op.first_index} + op.length_blocks > header.length_blocks) {
      *failed_index = i;
      return GatherError::out_of_record;
    }
    // The payload lies inside the span: the decode checked payload_bytes
    // (= length_blocks * 4096) against span_bytes.
    const uint8_t* src = record + kRecordHeaderBytes + uint64_t{op.first_index} * kBlockBytes;
    std::memcpy(buf + op.dst_offset, src, uint64_t{op.length_blocks} * kBlockBytes);
  }
  return GatherError::ok;
}

}  // namespace

GatherError gather_blocks(uint8_t* buf, uint64_t buffer_bytes, const GatherOp* ops, uint32_t count,
                          uint32_t* failed_index) {
  BW_ASSERT(buf != nullptr || count == 0);
  BW_ASSERT(failed_index != nullptr);
  for (uint32_t i = 0; i < count; i++) BW_ASSERT(gather_op_in_bounds(ops[i], 0, buffer_bytes));
  return gather_loop(
      buf, ops, count, failed_index, [&](uint32_t i) { return buf + ops[i].src_offset; }, decode_record);
}

GatherError gather_blocks_trusted(uint8_t* buf, uint64_t buffer_bytes, const GatherOp* ops,
                                  const uint8_t* const* records, uint32_t count, uint32_t* failed_index) {
  BW_ASSERT(buf != nullptr || count == 0);
  BW_ASSERT(failed_index != nullptr);
  for (uint32_t i = 0; i < count; i++) {
    BW_ASSERT(records[i] != nullptr);
    BW_ASSERT(gather_op_shape_valid(ops[i]) && gather_dst_in_bounds(ops[i], 0, buffer_bytes));
  }
  return gather_loop(
      buf, ops, count, failed_index, [&](uint32_t i) { return records[i]; }, decode_record_header);
}

}  // namespace blockwal::wal
