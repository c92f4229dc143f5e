// The WAL's on-disk format: record and frame encoding and verification.
//
// Verification is strict because recovery decides between "torn tail" and
// "corruption" from it: every header field is range-checked (reserved fields
// and unknown flags must be zero), the checksum covers the record header and
// payload, and check_frame also requires the padding (after each record and
// after the last one up to frame_bytes) to be zero, so no byte of a frame
// goes unverified. decode_record checks header + payload only: a record
// shipped alone stays verifiable without its padding.
//
// Headers are copied with memcpy (no unaligned loads); the host is
// little-endian, as the format is (asserted at compile time).
#include "wal/format.h"

// Stack-allocated XXH3 streaming state needs the struct definition.
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include <bit>
#include <cstddef>
#include <cstring>

#include "util/assert.h"

namespace blockwal::wal {

static_assert(std::endian::native == std::endian::little, "the WAL format is little-endian");
static_assert(kFrameBytesLimit >= kFrameBytesMax);
static_assert(kLbaLimit * kBlockBytes <= (1ull << 53));

uint64_t apply_checksum_step(uint64_t chain, uint64_t record_checksum) {
  uint8_t input[16];
  for (int i = 0; i < 8; i++) {
    input[i] = static_cast<uint8_t>(chain >> (56 - 8 * i));
    input[8 + i] = static_cast<uint8_t>(record_checksum >> (56 - 8 * i));
  }
  return XXH3_64bits(input, sizeof input);
}

uint64_t xxh3_concat(const ByteRange* parts, size_t count) {
  if (count == 1) return XXH3_64bits(parts[0].data, parts[0].length);
  XXH3_state_t state;
  XXH3_INITSTATE(&state);
  BW_ASSERT(XXH3_64bits_reset(&state) == XXH_OK);
  for (size_t i = 0; i < count; i++) {
    if (parts[i].length > 0) BW_ASSERT(XXH3_64bits_update(&state, parts[i].data, parts[i].length) == XXH_OK);
  }
  return XXH3_64bits_digest(&state);
}

namespace {

constexpr uint16_t kFrameFlagsKnown = kFrameFlagDsync;

uint64_t record_checksum(const RecordHeader& header, const uint8_t* payload, uint32_t payload_bytes) {
  RecordHeader zeroed = header;
  zeroed.checksum = 0;
  XXH3_state_t state;
  XXH3_INITSTATE(&state);
  BW_ASSERT(XXH3_64bits_reset(&state) == XXH_OK);
  BW_ASSERT(XXH3_64bits_update(&state, &zeroed, sizeof zeroed) == XXH_OK);
  if (payload_bytes > 0) BW_ASSERT(XXH3_64bits_update(&state, payload, payload_bytes) == XXH_OK);
  return XXH3_64bits_digest(&state);
}

uint64_t frame_checksum(const FrameHeader& header) {
  FrameHeader zeroed = header;
  zeroed.checksum = 0;
  return XXH3_64bits(&zeroed, sizeof zeroed);
}

bool kind_known(uint8_t kind) {
  return kind >= static_cast<uint8_t>(RecordKind::write) && kind <= static_cast<uint8_t>(RecordKind::control);
}

bool all_zero(const uint8_t* p, size_t bytes) {
  for (size_t i = 0; i < bytes; i++) {
    if (p[i] != 0) return false;
  }
  return true;
}

}  // namespace

const char* record_error_name(RecordError e) {
  switch (e) {
    case RecordError::ok: return "ok";
    case RecordError::truncated: return "truncated";
    case RecordError::bad_magic: return "bad_magic";
    case RecordError::bad_version: return "bad_version";
    case RecordError::bad_kind: return "bad_kind";
    case RecordError::bad_shape: return "bad_shape";
    case RecordError::bad_checksum: return "bad_checksum";
  }
  BW_UNREACHABLE();
}

const char* frame_error_name(FrameError e) {
  switch (e) {
    case FrameError::ok: return "ok";
    case FrameError::not_a_frame: return "not_a_frame";
    case FrameError::wrong_segment: return "wrong_segment";
    case FrameError::bad_shape: return "bad_shape";
    case FrameError::bad_record: return "bad_record";
    case FrameError::lsn_gap: return "lsn_gap";
  }
  BW_UNREACHABLE();
}

bool record_shape_valid(RecordKind kind, uint32_t payload_bytes, uint64_t length_blocks) {
  switch (kind) {
    case RecordKind::write:
      return length_blocks >= 1 && length_blocks <= kRecordPayloadMax / kBlockBytes &&
             payload_bytes == length_blocks * kBlockBytes;
    case RecordKind::trim:
    case RecordKind::zero:
      return payload_bytes == 0 && length_blocks >= 1;
    case RecordKind::control:
      return payload_bytes <= kControlPayloadMax && length_blocks == 0;
  }
  return false;  // a kind byte read from disk may hold any value
}

bool record_fields_valid(const RecordFields& fields, uint32_t payload_bytes) {
  if (!kind_known(static_cast<uint8_t>(fields.kind))) return false;
  if (!record_shape_valid(fields.kind, payload_bytes, fields.length_blocks)) return false;
  if (fields.lsn == 0 || fields.lsn > kLsnMax) return false;
  if (fields.epoch > kEpochMax) return false;
  if (fields.lba > kLbaLimit || fields.length_blocks > kLbaLimit - fields.lba) return false;
  if (fields.kind == RecordKind::control && fields.lba != 0) return false;
  return true;
}

uint32_t encode_record(uint8_t* dst, const RecordFields& fields, const uint8_t* payload, uint32_t payload_bytes) {
  BW_ASSERT(dst != nullptr);
  BW_ASSERT(payload != nullptr || payload_bytes == 0);
  BW_ASSERT(record_fields_valid(fields, payload_bytes));

  RecordHeader header{};
  header.magic = kRecordMagic;
  header.version = kFormatVersion;
  header.kind = static_cast<uint8_t>(fields.kind);
  header.payload_bytes = payload_bytes;
  header.epoch = fields.epoch;
  header.lsn = fields.lsn;
  header.lba = fields.lba;
  header.length_blocks = fields.length_blocks;
  header.checksum = 0;

  // Header (checksum zero) and payload lie contiguous in dst: one-shot XXH3
  // over them equals the definition and costs less than the streaming API on
  // the hot append path.
  const uint32_t span_bytes = record_span_bytes(payload_bytes);
  std::memcpy(dst, &header, sizeof header);
  if (payload_bytes > 0) std::memcpy(dst + kRecordHeaderBytes, payload, payload_bytes);
  std::memset(dst + kRecordHeaderBytes + payload_bytes, 0, span_bytes - kRecordHeaderBytes - payload_bytes);
  const uint64_t checksum = XXH3_64bits(dst, kRecordHeaderBytes + payload_bytes);
  std::memcpy(dst + offsetof(RecordHeader, checksum), &checksum, sizeof checksum);
  return span_bytes;
}

RecordError decode_record(const uint8_t* src, size_t available, RecordHeader* out) {
  RecordHeader header;
  const RecordError err = decode_record_header(src, available, &header);
  if (err != RecordError::ok) return err;
  if (record_checksum(header, src + kRecordHeaderBytes, header.payload_bytes) != header.checksum) {
    return RecordError::bad_checksum;
  }
  *out = header;
  return RecordError::ok;
}

RecordError decode_record_header(const uint8_t* src, size_t available, RecordHeader* out) {
  BW_ASSERT(src != nullptr || available == 0);  // an empty JS buffer may have no data pointer
  BW_ASSERT(out != nullptr);
  if (available < kRecordHeaderBytes) return RecordError::truncated;
  RecordHeader header;
  std::memcpy(&header, src, sizeof header);

  if (header.magic != kRecordMagic) return RecordError::bad_magic;
  if (header.version != kFormatVersion) return RecordError::bad_version;
  if (!kind_known(header.kind)) return RecordError::bad_kind;
  if (header.flags != 0 || header.reserved0 != 0 || header.reserved1 != 0) return RecordError::bad_shape;
  if (header.payload_bytes > kRecordPayloadMax) return RecordError::bad_shape;
  const RecordFields fields{static_cast<RecordKind>(header.kind), header.epoch, header.lsn, header.lba,
                            header.length_blocks};
  if (!record_fields_valid(fields, header.payload_bytes)) return RecordError::bad_shape;
  if (available - kRecordHeaderBytes < header.payload_bytes) return RecordError::truncated;
  *out = header;
  return RecordError::ok;
}

void FrameBuilder::reset(uint8_t* buf, uint32_t capacity_bytes, uint64_t segment_seq, uint64_t lsn_first) {
  BW_ASSERT(buf != nullptr);
  BW_ASSERT(is_aligned(reinterpret_cast<uintptr_t>(buf), kDirectAlignBytes));
  BW_ASSERT(capacity_bytes >= kBlockBytes);
  BW_ASSERT(capacity_bytes <= kFrameBytesLimit);
  BW_ASSERT(is_aligned(capacity_bytes, kBlockBytes));
  BW_ASSERT(lsn_first >= 1 && lsn_first <= kLsnMax);
  BW_ASSERT(segment_seq <= kSegmentSeqMax);
  buf_ = buf;
  capacity_bytes_ = capacity_bytes;
  segment_seq_ = segment_seq;
  lsn_first_ = lsn_first;
  record_count_ = 0;
  body_bytes_ = 0;
}

uint32_t FrameBuilder::frame_bytes() const {
  return static_cast<uint32_t>(align_up(kFrameHeaderBytes + body_bytes_, kBlockBytes));
}

bool FrameBuilder::fits(uint32_t payload_bytes) const {
  BW_ASSERT(buf_ != nullptr);
  if (payload_bytes > kRecordPayloadMax) return false;
  if (lsn_next() > kLsnMax) return false;
  const uint64_t body_bytes = uint64_t{body_bytes_} + record_span_bytes(payload_bytes);
  return align_up(kFrameHeaderBytes + body_bytes, kBlockBytes) <= capacity_bytes_;
}

uint32_t FrameBuilder::add(const RecordFields& fields, const uint8_t* payload, uint32_t payload_bytes) {
  BW_ASSERT(fits(payload_bytes));
  BW_ASSERT(fields.lsn == lsn_next());
  const uint32_t offset = kFrameHeaderBytes + body_bytes_;
  const uint32_t span_bytes = encode_record(buf_ + offset, fields, payload, payload_bytes);
  BW_ASSERT(span_bytes == record_span_bytes(payload_bytes));
  body_bytes_ += span_bytes;
  record_count_ += 1;
  return offset;
}

uint32_t FrameBuilder::add_encoded(const uint8_t* record, uint32_t span_bytes) {
  BW_ASSERT(record != nullptr);
  RecordHeader header;
  BW_ASSERT(decode_record(record, span_bytes, &header) == RecordError::ok);
  BW_ASSERT(span_bytes == record_span_bytes(header.payload_bytes));
  const uint32_t pad_offset = kRecordHeaderBytes + header.payload_bytes;
  BW_ASSERT(all_zero(record + pad_offset, span_bytes - pad_offset));
  BW_ASSERT(header.lsn == lsn_next());
  BW_ASSERT(fits(header.payload_bytes));
  const uint32_t offset = kFrameHeaderBytes + body_bytes_;
  std::memcpy(buf_ + offset, record, span_bytes);
  body_bytes_ += span_bytes;
  record_count_ += 1;
  return offset;
}

uint32_t FrameBuilder::seal(uint64_t lsn_durable_hint, uint16_t flags) {
  BW_ASSERT(buf_ != nullptr);
  BW_ASSERT(record_count_ > 0);
  // The hint is what was durable before this frame: never its own records.
  BW_ASSERT(lsn_durable_hint < lsn_first_);
  BW_ASSERT((flags & ~kFrameFlagsKnown) == 0);

  FrameHeader header{};
  header.magic = kFrameMagic;
  header.version = kFormatVersion;
  header.flags = flags;
  header.record_count = record_count_;
  header.segment_seq = segment_seq_;
  header.lsn_first = lsn_first_;
  header.lsn_durable_hint = lsn_durable_hint;
  header.frame_bytes = frame_bytes();
  header.body_bytes = body_bytes_;
  header.checksum = frame_checksum(header);

  std::memcpy(buf_, &header, sizeof header);
  const uint32_t end = kFrameHeaderBytes + body_bytes_;
  std::memset(buf_ + end, 0, header.frame_bytes - end);
  BW_ASSERT(header.frame_bytes <= capacity_bytes_);
  return header.frame_bytes;
}

FrameError check_frame_header(const uint8_t* src, size_t available, uint64_t segment_seq, FrameHeader* out) {
  BW_ASSERT(src != nullptr || available == 0);
  BW_ASSERT(out != nullptr);
  if (available < kFrameHeaderBytes) return FrameError::not_a_frame;
  FrameHeader header;
  std::memcpy(&header, src, sizeof header);
  if (header.magic != kFrameMagic) return FrameError::not_a_frame;
  if (frame_checksum(header) != header.checksum) return FrameError::not_a_frame;
  if (header.version != kFormatVersion) return FrameError::bad_shape;
  if (header.segment_seq != segment_seq) return FrameError::wrong_segment;

  if ((header.flags & ~kFrameFlagsKnown) != 0 || header.reserved != 0) return FrameError::bad_shape;
  if (header.record_count == 0) return FrameError::bad_shape;
  if (header.frame_bytes > kFrameBytesLimit || header.frame_bytes > available) return FrameError::bad_shape;
  if (header.frame_bytes != align_up(uint64_t{kFrameHeaderBytes} + header.body_bytes, kBlockBytes)) {
    return FrameError::bad_shape;
  }
  if (uint64_t{header.record_count} * kRecordHeaderBytes > header.body_bytes) return FrameError::bad_shape;
  if (header.lsn_first == 0 || header.lsn_first > kLsnMax - (header.record_count - 1)) return FrameError::bad_shape;
  if (header.lsn_durable_hint >= header.lsn_first) return FrameError::bad_shape;
  *out = header;
  return FrameError::ok;
}

FrameError check_frame(const uint8_t* src, size_t available, uint64_t segment_seq, FrameHeader* out) {
  FrameHeader header;
  const FrameError header_error = check_frame_header(src, available, segment_seq, &header);
  if (header_error != FrameError::ok) return header_error;

  const uint32_t body_end = kFrameHeaderBytes + header.body_bytes;
  uint32_t offset = kFrameHeaderBytes;
  for (uint32_t i = 0; i < header.record_count; i++) {
    RecordHeader record;
    if (offset >= body_end) return FrameError::bad_shape;
    if (decode_record(src + offset, body_end - offset, &record) != RecordError::ok) return FrameError::bad_record;
    if (record.lsn != header.lsn_first + i) return FrameError::lsn_gap;
    const uint32_t payload_end = offset + kRecordHeaderBytes + record.payload_bytes;
    const uint32_t span_end = offset + record_span_bytes(record.payload_bytes);
    if (span_end > body_end) return FrameError::bad_record;
    if (!all_zero(src + payload_end, span_end - payload_end)) return FrameError::bad_record;
    offset = span_end;
  }
  if (offset != body_end) return FrameError::bad_shape;
  if (!all_zero(src + body_end, header.frame_bytes - body_end)) return FrameError::bad_shape;
  *out = header;
  return FrameError::ok;
}

}  // namespace blockwal::wal
