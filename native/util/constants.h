// Sizes and limits shared by the native layer. Every limit is named here and
// the relationships between them are checked at compile time.
#pragma once

#include <cstddef>
#include <cstdint>

namespace blockwal {

// The block size of a volume and the alignment of every O_DIRECT transfer.
constexpr uint32_t kBlockBytes = 4096;
constexpr uint32_t kDirectAlignBytes = 4096;
// Torn-write granularity of the disks we target (logical sector).
constexpr uint32_t kSectorBytes = 512;

// io_uring: submission queue depth; the completion queue is twice as large.
constexpr uint32_t kRingDepthDefault = 256;
constexpr uint32_t kRingDepthMax = 4096;

// WAL segments.
constexpr uint64_t kSegmentBytesDefault = 64ull << 20;
constexpr uint64_t kSegmentBytesMin = 1ull << 20;
constexpr uint64_t kSegmentBytesMax = 1ull << 30;

// Group commit: bytes per group (one frame), groups in flight.
constexpr uint32_t kGroupBytesMin = 64u << 10;
constexpr uint32_t kGroupBytesDefault = 1u << 20;
constexpr uint32_t kGroupBytesMax = 4u << 20;
constexpr uint32_t kGroupsInFlightMin = 1;
constexpr uint32_t kGroupsInFlightDefault = 4;
// The longest a writer may hold its open group for more records (setGroupHold).
constexpr uint64_t kGroupHoldUsMax = 60000000;
constexpr uint32_t kGroupsInFlightMax = 8;

// A single record's payload. Larger writes are split into several records by
// the volume layer (a request need not be atomic; each record is).
constexpr uint32_t kRecordPayloadMax = 1u << 20;
// Control records (feature flags, resize, epochs) are small.
constexpr uint32_t kControlPayloadMax = 64u << 10;

static_assert(kBlockBytes % kSectorBytes == 0);
static_assert(kDirectAlignBytes == kBlockBytes);
static_assert(kGroupBytesMin % kBlockBytes == 0);
static_assert(kGroupBytesDefault % kBlockBytes == 0);
static_assert(kGroupBytesMax % kBlockBytes == 0);
static_assert(kGroupBytesMin <= kGroupBytesDefault && kGroupBytesDefault <= kGroupBytesMax);
static_assert(kSegmentBytesMin >= kGroupBytesMax / 4);
static_assert(kSegmentBytesDefault % kGroupBytesDefault == 0);
static_assert(kControlPayloadMax <= kRecordPayloadMax);
static_assert(kRecordPayloadMax % kBlockBytes == 0);

inline constexpr uint64_t align_up(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}
inline constexpr uint64_t align_down(uint64_t value, uint64_t alignment) {
  return value / alignment * alignment;
}
inline constexpr bool is_aligned(uint64_t value, uint64_t alignment) {
  return value % alignment == 0;
}

}  // namespace blockwal
