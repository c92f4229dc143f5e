// Dense bitmaps: one bit per 4 KiB block, kept in an mmap'd file. Used for
// rebuild bitmaps (blocks the WAL lane has applied) and dirty bitmaps (blocks
// written since a replica fell behind).
//
// File format (all integers little-endian):
//   [0, 4096)                 header page: Header below, then zeros
//   [4096, 4096 + bits_bytes) the bits: bit i = block i, stored in 64-bit
//                             little-endian words (so also byte i/8, bit i%8);
//                             bits_bytes is a multiple of 4096; bits at and
//                             beyond block_count are always zero.
// The file is created sparse (ftruncate): unwritten bits are holes that read
// as zero and take no disk space.
//
// Header rules:
//  - header_checksum is XXH3-64 over the Header struct with the field zero. The
//    struct fits in the first 512-byte sector, so a torn header write (the
//    disks we target tear at sector granularity) leaves either the old or the
//    new header, never a mix.
//  - open() marks the header not-clean and bumps `generation` durably before
//    any bit may change; close(clean) makes the bits durable first, then
//    writes bits_checksum (see checksum_bits_area) with the clean flag. A
//    clean header whose bits do not match their checksum is corruption.
//
// Summary (invariant `summary_zero_page`): one in-memory bit per 4 KiB page of
// bits, "this page may hold a set bit". A clear summary bit means the page is
// all zeros, so reads skip it without touching the mapping: a page fault on a
// hole would allocate page cache, and a 16 TiB volume (2^32 blocks) has 512 MiB
// of bits, nearly all holes. The summary is built at open from SEEK_DATA /
// SEEK_HOLE (allocated pages may hold bits; holes are zero) and refined by
// the open-time checksum pass (allocated pages found all zero are unmarked);
// setRange marks pages, clearRange unmarks the pages it leaves all zero.
//
// Crash semantics. Bits live in the page cache; the kernel may write any
// dirty page back at any time. After a crash (power loss):
//  - every bit changed before a completed sync() (or an fsync/fdatasync of
//    fd(), which also writes back pages dirtied through the mapping) is durable;
//  - a change made after the last sync may or may not be on disk, independently
//    per page (even per 512-byte sector): cleared bits may reappear, set bits
//    may vanish. Callers that rely on a set bit must sync before acting on it.
//  - the header then says not-clean (wasClean = false at the next open): the
//    bits are whatever reached the disk, and are not verified by a checksum.
// A failed sync is never retried (the fsyncgate lesson): the bitmap refuses
// further syncs and a clean close, so it can never claim bits it lost.
//
// SIGBUS. A fault on the mapping that the kernel cannot serve kills the
// process. So setRange first writes zeros (pwrite) to the pages it will dirty
// for the first time: a full disk is then an ENOSPC error, not a signal. A
// read error on a bits page (EIO) or a file truncated while mapped would still
// SIGBUS. The file is flock'ed exclusively while open (a second opener gets
// EWOULDBLOCK) and nothing here ever shrinks it.
// No napi.h here: errors are Status values the binding turns into JS errors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "util/constants.h"

namespace blockwal::bitmap {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the bitmap file format is little-endian");

constexpr uint64_t kMagic = 0x50414d5449425742ull;  // "BWBITMAP"
constexpr uint32_t kFormatVersion = 1;
constexpr uint32_t kHeaderBytes = 4096;
constexpr uint32_t kPageBytes = 4096;  // unit of bits_bytes and of the summary
constexpr uint32_t kTagBytesMax = 64;
constexpr uint32_t kFlagClean = 1;
constexpr uint64_t kBitsPerWord = 64;
constexpr uint64_t kWordsPerPage = kPageBytes / sizeof(uint64_t);
constexpr uint64_t kBlocksPerPage = uint64_t{kPageBytes} * 8;
// 2^36 blocks of 4 KiB = a 256 TiB volume = 8 GiB of bits (mapped, mostly
// holes) and a 256 KiB summary. The 16 TiB volumes we target need 2^32.
constexpr uint64_t kBlockCountMax = 1ull << 36;
// Most runs one runs() call returns: bounds the work of one call on the JS thread.
constexpr uint32_t kRunsPerCallMax = 1u << 16;

static_assert(kHeaderBytes == kPageBytes);
static_assert(kPageBytes == kBlockBytes);
static_assert(kBlocksPerPage == kWordsPerPage * kBitsPerWord);
static_assert(kBlockCountMax % kBlocksPerPage == 0);
static_assert(kBlockCountMax <= (1ull << 53), "block numbers must be exact JS numbers");

#pragma pack(push, 1)
struct Header {
  uint64_t magic;
  uint32_t version;
  uint32_t header_bytes;       // kHeaderBytes
  uint64_t block_count;        // blocks covered, 1..kBlockCountMax
  uint64_t bits_offset_bytes;  // kHeaderBytes
  uint64_t bits_bytes;         // bits_bytes_for(block_count)
  uint64_t generation;         // +1 at every open: which session last changed the bits
  uint32_t flags;              // kFlagClean
  uint32_t tag_bytes;          // 0..kTagBytesMax
  uint8_t tag[kTagBytesMax];   // the caller's identity for the bitmap (replica, epoch, LSN...)
  uint64_t bits_checksum;      // checksum_bits_area(); meaningful only when clean
  uint64_t header_checksum;    // XXH3-64 of this struct with this field zero
};
#pragma pack(pop)
static_assert(sizeof(Header) <= kSectorBytes, "the header must not tear: one sector");

// Bytes of the bits area for block_count blocks: whole pages, at least one.
inline constexpr uint64_t bits_bytes_for(uint64_t block_count) {
  return align_up(align_up(block_count, kBitsPerWord) / 8, kPageBytes);
}
static_assert(bits_bytes_for(1) == kPageBytes);
static_assert(bits_bytes_for(kBlocksPerPage) == kPageBytes);
static_assert(bits_bytes_for(kBlocksPerPage + 1) == 2 * kPageBytes);

// Word-at-a-time operations on bits [start, end) of a word array. Pure.
namespace words {
void set(uint64_t* words, uint64_t start, uint64_t end);
void clear(uint64_t* words, uint64_t start, uint64_t end);
uint64_t count(const uint64_t* words, uint64_t start, uint64_t end);
// The first set (clear) bit in [start, end), or end when there is none.
uint64_t next_set(const uint64_t* words, uint64_t start, uint64_t end);
uint64_t next_clear(const uint64_t* words, uint64_t start, uint64_t end);
bool all_zero(const uint64_t* words, uint64_t word_count);
}  // namespace words

enum class StatusKind : uint8_t { ok, io, corrupt };

// The outcome of an operation that can fail for reasons other than a bug.
struct Status {
  StatusKind kind = StatusKind::ok;
  int err = 0;                    // errno, for io
  const char* syscall = nullptr;  // for io
  std::string message;

  bool ok() const { return kind == StatusKind::ok; }
  static Status success() { return Status{}; }
  static Status io(int err, const char* syscall, std::string message);
  // io with the current errno, read before the message is built.
  static Status from_errno(const char* syscall, const char* what, const std::string& path);
  static Status corrupt(std::string message);
};

// A bitmap file, mapped. Single-threaded: one owner calls everything.
class MappedBitmap {
 public:
  MappedBitmap() = default;
  ~MappedBitmap();
  MappedBitmap(const MappedBitmap&) = delete;
  MappedBitmap& operator=(const MappedBitmap&) = delete;

  // Creates a new file (fails with EEXIST if path exists) with all bits zero,
  // marked clean, and makes it and its directory entry durable; uses (and
  // replaces) `<path>.creating` on the way. Does not open it.
  static Status create_file(const std::string& path, uint64_t block_count, const uint8_t* tag, uint32_t tag_bytes);

  // Maps and validates an existing file, then durably marks it not-clean.
  Status open(const std::string& path);
  // msync(MS_SYNC) of the mapping + fdatasync.
  Status sync();
  // clean: sync the bits, then durably record their checksum and the clean
  // flag. Always unmaps and closes, even on failure; closing twice is a no-op.
  Status close(bool clean);
  // Unmaps and closes without writing anything: the next open sees not-clean.
  void release();

  bool is_open() const { return map_ != nullptr; }
  bool was_clean() const { return was_clean_; }
  bool sync_failed() const { return sync_failed_; }
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  uint64_t block_count() const { return header_.block_count; }
  uint64_t generation() const { return header_.generation; }
  const uint8_t* tag() const { return header_.tag; }
  uint32_t tag_bytes() const { return header_.tag_bytes; }

  // Block arguments are asserted in range: the binding validates them.
  bool get(uint64_t block) const;
  // Fails (io, ENOSPC) only when pages it would touch cannot be allocated;
  // then no bit has changed.
  Status set_range(uint64_t start, uint64_t count);
  void clear_range(uint64_t start, uint64_t count);
  uint64_t count_set() const;
  uint64_t count_set_in_range(uint64_t start, uint64_t count) const;
  bool any_set_in_range(uint64_t start, uint64_t count) const;
  // The first set (clear) block in [from, end), or end when there is none.
  uint64_t next_set(uint64_t from, uint64_t end) const;
  uint64_t next_clear(uint64_t from, uint64_t end) const;
  // Writes up to runs_max maximal runs of set bits inside [from, end) as
  // (start, length) pairs and returns how many. When it returns runs_max, the
  // walk resumes from the end of the last run.
  uint32_t runs(uint64_t from, uint64_t end, double* out, uint32_t runs_max) const;

 private:
  uint64_t page_count() const { return header_.bits_bytes / kPageBytes; }
  bool page_may_be_set(uint64_t page) const;
  // The first page in [page, page_end) whose summary bit is set, else page_end.
  uint64_t next_marked_page(uint64_t page, uint64_t page_end) const;

  Status reserve_pages(uint64_t page, uint64_t page_end);
  Status map_and_validate();
  Status load_summary();
  Status check_tail_zero() const;
  uint64_t checksum_bits();
  // full_fsync: fsync rather than fdatasync (the clean close, the last word).
  Status write_header(bool full_fsync);

  int fd_ = -1;
  uint8_t* map_ = nullptr;
  uint64_t map_bytes_ = 0;
  uint64_t* bits_ = nullptr;
  Header header_{};              // the in-memory copy; the mapping's page 0 is written from it
  std::vector<uint64_t> summary_;  // one bit per page: may hold a set bit
  bool was_clean_ = false;
  bool sync_failed_ = false;
  std::string path_;
};

// The bits checksum: XXH3-64 over, for each page of bits that is not all zero
// in ascending order, its index (u64 little-endian) then its 4096 bytes. Zero
// pages, allocated or holes, contribute nothing, so the cost follows the data,
// not the volume size (a 2^32-block map is 512 MiB of mostly holes), and a bit
// changed anywhere still changes the sum. Only pages whose summary bit is set
// are read, and those found all zero are unmarked (keeping summary_zero_page);
// a null summary means every page is zero (bits may then be null).
uint64_t checksum_bits_area(const uint64_t* bits, uint64_t bits_bytes, uint64_t* summary);

}  // namespace blockwal::bitmap
