// The WAL's on-disk format. Pure: no I/O, no allocation.
//
// A WAL is a directory of fixed-size segment files named `<seq>.wal`, seq a
// 16-digit lower-case hex number that only grows (a recycled segment is renamed
// to a new seq). A segment holds frames back to back from offset 0; every
// frame starts at a 4 KiB boundary and its length is a multiple of 4 KiB. A
// frame is one commit group: a 64-byte frame header followed by records, then
// zero padding up to the next 4 KiB boundary.
//
// A record is a 64-byte header followed by its payload, padded to 8 bytes.
// Its checksum is XXH3-64 over the header (with the checksum field zero) and
// the payload, so a record stays verifiable on its own when it is shipped to a
// replica. All integers are little-endian.
//
// Rules the writer keeps and recovery relies on:
//  - frame.segment_seq equals the seq in the segment's file name; a frame of a
//    segment's earlier life (before it was recycled) is therefore invalid.
//  - records in a frame have consecutive LSNs starting at frame.lsn_first, and
//    frames in the log continue each other's LSNs across segments.
//  - frame.lsn_durable_hint is the durable LSN the writer knew when it
//    submitted the frame. If a frame is bad and a later valid frame carries a
//    hint >= the bad frame's first LSN, the bad frame had been acknowledged as
//    durable: that is corruption, not a torn tail.
//  - a block that holds acknowledged data is never rewritten; after recovery
//    the writer starts a fresh segment.
#pragma once

#include <cstddef>
#include <cstdint>

#include "util/constants.h"

namespace blockwal::wal {

constexpr uint32_t kRecordMagic = 0x52574c42;          // "BLWR"
constexpr uint64_t kFrameMagic = 0x454d415246574c42ull;  // "BLWFRAME"
constexpr uint8_t kFormatVersion = 1;
constexpr uint32_t kRecordHeaderBytes = 64;
constexpr uint32_t kFrameHeaderBytes = 64;
constexpr uint32_t kRecordAlignBytes = 8;
// The largest frame: one maximal record alone.
constexpr uint32_t kFrameBytesMax =
    static_cast<uint32_t>(align_up(kFrameHeaderBytes + kRecordHeaderBytes + kRecordPayloadMax, kBlockBytes));

enum class RecordKind : uint8_t {
  write = 1,    // payload = length_blocks * 4096 bytes of data for blocks [lba, lba+length_blocks)
  trim = 2,     // no payload; blocks read as zeros afterwards, may be deallocated
  zero = 3,     // no payload; blocks read as zeros afterwards
  control = 4,  // payload = a control entry (opaque here), lba = length_blocks = 0
};

constexpr uint16_t kFrameFlagDsync = 1;  // written with RWF_DSYNC

#pragma pack(push, 1)
struct RecordHeader {
  uint32_t magic;
  uint8_t version;
  uint8_t kind;
  uint16_t flags;
  uint32_t payload_bytes;
  uint32_t reserved0;
  uint64_t epoch;
  uint64_t lsn;
  uint64_t lba;            // in 4 KiB blocks
  uint64_t length_blocks;  // in 4 KiB blocks
  uint64_t reserved1;
  uint64_t checksum;  // XXH3-64 over header (this field zero) + payload
};

struct FrameHeader {
  uint64_t magic;
  uint16_t version;
  uint16_t flags;
  uint32_t record_count;
  uint64_t segment_seq;
  uint64_t lsn_first;
  uint64_t lsn_durable_hint;
  uint32_t frame_bytes;  // multiple of 4096, header and padding included
  uint32_t body_bytes;   // bytes of records after the header
  uint64_t reserved;
  uint64_t checksum;  // XXH3-64 over the header with this field zero
};
#pragma pack(pop)

// Field ranges a valid record keeps, so that LSNs, epochs and block addresses
// cross into JS as exact numbers (<= 2^53 - 1) and byte offsets (lba * 4096)
// stay exact too. LSN 0 is never used: the first LSN of a log is 1.
constexpr uint64_t kLsnMax = (1ull << 53) - 1;
constexpr uint64_t kEpochMax = (1ull << 53) - 1;
constexpr uint64_t kLbaLimit = (1ull << 53) / kBlockBytes;  // lba + length_blocks <= kLbaLimit
// Segment seqs (file names, frame.segment_seq) stay exact JS numbers too.
constexpr uint64_t kSegmentSeqMax = (1ull << 53) - 1;

// The largest frame_bytes a frame header may carry: a full group, or one
// maximal record alone when that is larger. FrameBuilder asserts its capacity
// against it so the writer can never produce a frame recovery would refuse.
constexpr uint32_t kFrameBytesLimit = kGroupBytesMax > kFrameBytesMax ? kGroupBytesMax : kFrameBytesMax;

static_assert(sizeof(RecordHeader) == kRecordHeaderBytes);
static_assert(kFrameBytesLimit % kBlockBytes == 0);
static_assert(sizeof(FrameHeader) == kFrameHeaderBytes);
static_assert(kFrameBytesMax % kBlockBytes == 0);

// What a caller supplies for a record; the encoder fills in magic, version,
// payload_bytes and checksum.
struct RecordFields {
  RecordKind kind;
  uint64_t epoch;
  uint64_t lsn;
  uint64_t lba;
  uint64_t length_blocks;
};

// Bytes a record takes in a frame: header + payload, padded to 8.
inline constexpr uint32_t record_span_bytes(uint32_t payload_bytes) {
  return static_cast<uint32_t>(align_up(kRecordHeaderBytes + payload_bytes, kRecordAlignBytes));
}

enum class RecordError : uint8_t {
  ok = 0,
  truncated,       // fewer bytes than the header says
  bad_magic,
  bad_version,
  bad_kind,
  bad_shape,       // payload/length do not fit the kind
  bad_checksum,
};
const char* record_error_name(RecordError e);

// Checks a kind/payload/length combination; true when a record may carry it.
bool record_shape_valid(RecordKind kind, uint32_t payload_bytes, uint64_t length_blocks);

// Checks everything a caller supplies for a record: the shape, lsn in
// [1, kLsnMax], epoch <= kEpochMax, lba + length_blocks <= kLbaLimit, and a
// control record's lba == 0. encode_record asserts it; decode_record checks it.
bool record_fields_valid(const RecordFields& fields, uint32_t payload_bytes);

// Writes header + payload (+ zero padding to 8) at dst and returns the span in
// bytes. dst must have record_span_bytes(payload_bytes) bytes. payload may be
// null only when payload_bytes is 0. Asserts the shape is valid.
uint32_t encode_record(uint8_t* dst, const RecordFields& fields, const uint8_t* payload, uint32_t payload_bytes);

// Verifies a record at src with `available` readable bytes. On ok, *out holds
// the header (checksum verified) and the payload follows it at src + 64.
RecordError decode_record(const uint8_t* src, size_t available, RecordHeader* out);

// decode_record without the checksum: every header field and the length
// against `available`. For bytes this process encoded (and checksummed) and
// still holds in memory, where hashing them again only costs time.
RecordError decode_record_header(const uint8_t* src, size_t available, RecordHeader* out);

// Builds one frame in an aligned buffer: reset, add records, seal.
class FrameBuilder {
 public:
  // buf must be 4096-aligned with capacity_bytes (a multiple of 4096) bytes.
  void reset(uint8_t* buf, uint32_t capacity_bytes, uint64_t segment_seq, uint64_t lsn_first);
  // True when a record with this payload still fits (an empty frame always
  // accepts one record of up to kRecordPayloadMax if capacity allows).
  bool fits(uint32_t payload_bytes) const;
  // Appends a record whose lsn must be lsn_first + record_count. Returns the
  // record's offset from the start of the frame.
  uint32_t add(const RecordFields& fields, const uint8_t* payload, uint32_t payload_bytes);
  // Appends an already-encoded record (replica path). The record must decode
  // and carry the next LSN; returns its offset from the start of the frame.
  uint32_t add_encoded(const uint8_t* record, uint32_t span_bytes);
  // Writes the header and zero padding; returns frame_bytes.
  uint32_t seal(uint64_t lsn_durable_hint, uint16_t flags);

  uint32_t record_count() const { return record_count_; }
  uint32_t body_bytes() const { return body_bytes_; }
  // Frame bytes if sealed now.
  uint32_t frame_bytes() const;
  uint64_t lsn_first() const { return lsn_first_; }
  uint64_t lsn_next() const { return lsn_first_ + record_count_; }
  bool empty() const { return record_count_ == 0; }
  // The frame's bytes so far (records at the offsets add() returned).
  const uint8_t* data() const { return buf_; }

 private:
  uint8_t* buf_ = nullptr;
  uint32_t capacity_bytes_ = 0;
  uint64_t segment_seq_ = 0;
  uint64_t lsn_first_ = 0;
  uint32_t record_count_ = 0;
  uint32_t body_bytes_ = 0;
};

enum class FrameError : uint8_t {
  ok = 0,
  not_a_frame,     // magic or header checksum wrong (zeros, stale or torn data)
  wrong_segment,   // a valid frame from the segment's earlier life
  bad_shape,       // header fields out of range
  bad_record,      // a record inside fails to decode
  lsn_gap,         // records' LSNs are not consecutive from lsn_first
};
const char* frame_error_name(FrameError e);

// Validates the frame header at src only (magic, checksum, version, ranges,
// seq). available = readable bytes from src to the end of the segment.
FrameError check_frame_header(const uint8_t* src, size_t available, uint64_t segment_seq, FrameHeader* out);

// Validates a whole frame: header, every record, consecutive LSNs.
FrameError check_frame(const uint8_t* src, size_t available, uint64_t segment_seq, FrameHeader* out);

// One step of the chained apply checksum (lib/replication/apply_checksum.ts):
// XXH3-64 of the previous chain value and the record's checksum, each as 8
// big-endian bytes.
uint64_t apply_checksum_step(uint64_t chain, uint64_t record_checksum);

// XXH3-64 of the concatenation of count byte ranges, hashed where they lie
// (the replication link's frame checksum: header bytes, then body parts).
struct ByteRange {
  const uint8_t* data;
  size_t length;
};
uint64_t xxh3_concat(const ByteRange* parts, size_t count);

}  // namespace blockwal::wal
