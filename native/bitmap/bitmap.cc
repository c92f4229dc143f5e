// Dense bitmap: word operations, the page summary and the mapped file.
// See bitmap.h for the format, the summary invariant and crash semantics.
#include "bitmap/bitmap.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "util/assert.h"

namespace blockwal::bitmap {

namespace words {

namespace {

constexpr uint64_t kAllOnes = ~uint64_t{0};

// Bits of the word holding `start` at or above start's position.
constexpr uint64_t mask_from(uint64_t start) { return kAllOnes << (start % kBitsPerWord); }
// Bits of the word holding `end - 1` at or below its position.
constexpr uint64_t mask_to(uint64_t end) { return kAllOnes >> (kBitsPerWord - 1 - (end - 1) % kBitsPerWord); }

static_assert(mask_from(0) == kAllOnes && mask_from(63) == 1ull << 63);
static_assert(mask_to(64) == kAllOnes && mask_to(1) == 1);

}  // namespace

void set(uint64_t* words, uint64_t start, uint64_t end) {
  if (start >= end) return;
  const uint64_t w_first = start / kBitsPerWord;
  const uint64_t w_last = (end - 1) / kBitsPerWord;
  if (w_first == w_last) {
    words[w_first] |= mask_from(start) & mask_to(end);
    return;
  }
  words[w_first] |= mask_from(start);
  for (uint64_t w = w_first + 1; w < w_last; w++) words[w] = kAllOnes;
  words[w_last] |= mask_to(end);
}

void clear(uint64_t* words, uint64_t start, uint64_t end) {
  if (start >= end) return;
  const uint64_t w_first = start / kBitsPerWord;
  const uint64_t w_last = (end - 1) / kBitsPerWord;
  if (w_first == w_last) {
    words[w_first] &= ~(mask_from(start) & mask_to(end));
    return;
  }
  words[w_first] &= ~mask_from(start);
  for (uint64_t w = w_first + 1; w < w_last; w++) words[w] = 0;
  words[w_last] &= ~mask_to(end);
}

// Compiled twice and picked at load time (ifunc): the x86-64 baseline has no
// POPCNT instruction, and without it __builtin_popcountll is a libgcc call
// per word (2.6 GB/s measured here, against memory speed with it).
__attribute__((target_clones("popcnt", "default"))) uint64_t count(const uint64_t* words, uint64_t start,
                                                                     uint64_t end) {
  if (start >= end) return 0;
  const uint64_t w_first = start / kBitsPerWord;
  const uint64_t w_last = (end - 1) / kBitsPerWord;
  if (w_first == w_last) return __builtin_popcountll(words[w_first] & mask_from(start) & mask_to(end));
  uint64_t total = __builtin_popcountll(words[w_first] & mask_from(start));
  for (uint64_t w = w_first + 1; w < w_last; w++) total += __builtin_popcountll(words[w]);
  return total + __builtin_popcountll(words[w_last] & mask_to(end));
}

// The first bit in [start, end) whose value XOR invert is 1, else end.
static uint64_t next_one(const uint64_t* words, uint64_t start, uint64_t end, uint64_t invert) {
  if (start >= end) return end;
  uint64_t w = start / kBitsPerWord;
  uint64_t word = (words[w] ^ invert) & mask_from(start);
  while (word == 0) {
    w++;
    if (w * kBitsPerWord >= end) return end;
    word = words[w] ^ invert;
  }
  return std::min(w * kBitsPerWord + __builtin_ctzll(word), end);
}

uint64_t next_set(const uint64_t* words, uint64_t start, uint64_t end) { return next_one(words, start, end, 0); }

uint64_t next_clear(const uint64_t* words, uint64_t start, uint64_t end) {
  return next_one(words, start, end, kAllOnes);
}

bool all_zero(const uint64_t* words, uint64_t word_count) {
  uint64_t any = 0;
  for (uint64_t w = 0; w < word_count; w++) any |= words[w];
  return any == 0;
}

}  // namespace words

Status Status::io(int err, const char* syscall, std::string message) {
  BW_ASSERT(err != 0);
  return Status{StatusKind::io, err, syscall, std::move(message)};
}

Status Status::from_errno(const char* syscall, const char* what, const std::string& path) {
  const int err = errno;  // first, before anything can overwrite it
  return io(err, syscall, std::string(what) + ": " + path);
}

Status Status::corrupt(std::string message) { return Status{StatusKind::corrupt, 0, nullptr, std::move(message)}; }

namespace {

struct StateDeleter {
  void operator()(XXH3_state_t* state) const { XXH3_freeState(state); }
};

uint64_t header_checksum(Header header) {
  header.header_checksum = 0;
  return XXH3_64bits(&header, sizeof header);
}

bool summary_test(const uint64_t* summary, uint64_t page) {
  return summary != nullptr && ((summary[page / kBitsPerWord] >> (page % kBitsPerWord)) & 1) != 0;
}

uint64_t page_first_block(uint64_t page) { return page * kBlocksPerPage; }
uint64_t page_of(uint64_t block) { return block / kBlocksPerPage; }
// One past the last page that holds a block below end.
uint64_t page_end_of(uint64_t end) { return (end + kBlocksPerPage - 1) / kBlocksPerPage; }

std::string directory_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

Status fsync_directory(const std::string& path) {
  const std::string dir = directory_of(path);
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::from_errno("open", "cannot open directory", dir);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return Status::io(err, "fsync", "cannot sync directory " + dir);
  return Status::success();
}

Status write_all_at(int fd, const void* data, size_t bytes, off_t offset, const char* what,
                    const std::string& path) {
  const ssize_t written = ::pwrite(fd, data, bytes, offset);
  if (written < 0) return Status::from_errno("pwrite", what, path);
  // A short write to a regular file means the disk is full.
  if (static_cast<size_t>(written) != bytes) return Status::io(ENOSPC, "pwrite", std::string(what) + ": " + path);
  return Status::success();
}

Header make_header(uint64_t block_count, const uint8_t* tag, uint32_t tag_bytes) {
  Header header{};
  header.magic = kMagic;
  header.version = kFormatVersion;
  header.header_bytes = kHeaderBytes;
  header.block_count = block_count;
  header.bits_offset_bytes = kHeaderBytes;
  header.bits_bytes = bits_bytes_for(block_count);
  header.generation = 0;
  header.flags = kFlagClean;
  header.tag_bytes = tag_bytes;
  if (tag_bytes > 0) std::memcpy(header.tag, tag, tag_bytes);
  header.bits_checksum = checksum_bits_area(nullptr, header.bits_bytes, nullptr);
  header.header_checksum = header_checksum(header);
  return header;
}

Status validate_header(const Header& h, uint64_t file_bytes, const std::string& path) {
  const std::string where = "bitmap " + path + ": ";
  if (h.magic != kMagic) return Status::corrupt(where + "bad magic (not a bitmap file)");
  if (h.header_checksum != header_checksum(h)) return Status::corrupt(where + "header checksum mismatch");
  if (h.version != kFormatVersion) {
    return Status::corrupt(where + "unsupported format version " + std::to_string(h.version));
  }
  const bool shape_ok = h.header_bytes == kHeaderBytes && h.bits_offset_bytes == kHeaderBytes &&
                        h.block_count >= 1 && h.block_count <= kBlockCountMax &&
                        h.bits_bytes == bits_bytes_for(h.block_count) && h.tag_bytes <= kTagBytesMax &&
                        (h.flags & ~kFlagClean) == 0;
  if (!shape_ok) return Status::corrupt(where + "inconsistent header fields");
  if (file_bytes != kHeaderBytes + h.bits_bytes) {
    return Status::corrupt(where + "file is " + std::to_string(file_bytes) + " bytes, the header says " +
                           std::to_string(kHeaderBytes + h.bits_bytes));
  }
  return Status::success();
}

}  // namespace

uint64_t checksum_bits_area(const uint64_t* bits, uint64_t bits_bytes, uint64_t* summary) {
  BW_ASSERT(bits_bytes % kPageBytes == 0);
  BW_ASSERT(summary == nullptr || bits != nullptr);
  std::unique_ptr<XXH3_state_t, StateDeleter> state(XXH3_createState());
  BW_ASSERT(state != nullptr);
  BW_ASSERT(XXH3_64bits_reset(state.get()) == XXH_OK);
  const uint64_t page_count = bits_bytes / kPageBytes;
  if (summary == nullptr) return XXH3_64bits_digest(state.get());
  for (uint64_t page = words::next_set(summary, 0, page_count); page < page_count;
       page = words::next_set(summary, page + 1, page_count)) {
    const uint64_t* page_words = bits + page * kWordsPerPage;
    // A marked page may still be all zero (allocated, or cleared bit by bit):
    // it is left out exactly like a hole, so the checksum depends on the bits
    // only, and unmarked so later scans skip it.
    if (words::all_zero(page_words, kWordsPerPage)) {
      words::clear(summary, page, page + 1);
      continue;
    }
    const uint64_t page_le = page;
    BW_ASSERT(XXH3_64bits_update(state.get(), &page_le, sizeof page_le) == XXH_OK);
    BW_ASSERT(XXH3_64bits_update(state.get(), page_words, kPageBytes) == XXH_OK);
  }
  return XXH3_64bits_digest(state.get());
}

// The file is built under a temporary name and published by a rename that
// refuses to replace: after a crash the path holds a complete bitmap or
// nothing (a leftover temporary is overwritten by the next create).
Status MappedBitmap::create_file(const std::string& path, uint64_t block_count, const uint8_t* tag,
                                 uint32_t tag_bytes) {
  BW_ASSERT(block_count >= 1 && block_count <= kBlockCountMax);
  BW_ASSERT(tag_bytes <= kTagBytesMax);
  BW_ASSERT(tag_bytes == 0 || tag != nullptr);
  const std::string temp_path = path + ".creating";
  const int fd = ::open(temp_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::from_errno("open", "cannot create bitmap", temp_path);

  const Header header = make_header(block_count, tag, tag_bytes);
  alignas(kPageBytes) uint8_t page[kHeaderBytes] = {};
  std::memcpy(page, &header, sizeof header);
  Status status = write_all_at(fd, page, sizeof page, 0, "cannot write bitmap header", temp_path);
  // The bits are a hole: sparse, zero, no disk space until a bit is set.
  if (status.ok() && ::ftruncate(fd, static_cast<off_t>(kHeaderBytes + header.bits_bytes)) != 0) {
    status = Status::from_errno("ftruncate", "cannot size bitmap", temp_path);
  }
  if (status.ok() && ::fsync(fd) != 0) status = Status::from_errno("fsync", "cannot sync bitmap", temp_path);
  ::close(fd);
  if (status.ok() && ::renameat2(AT_FDCWD, temp_path.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) != 0) {
    status = Status::from_errno("renameat2", "cannot create bitmap", path);
  }
  if (!status.ok()) {
    ::unlink(temp_path.c_str());
    return status;
  }
  return fsync_directory(path);
}

MappedBitmap::~MappedBitmap() { release(); }

Status MappedBitmap::open(const std::string& path) {
  BW_ASSERT(!is_open() && fd_ < 0);
  path_ = path;
  fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0) return Status::from_errno("open", "cannot open bitmap", path);
  Status status = map_and_validate();
  if (status.ok()) {
    // Durably not-clean before any bit changes: a crash from here on leaves
    // bits the clean checksum does not describe.
    header_.generation++;
    header_.flags &= ~kFlagClean;
    header_.bits_checksum = 0;
    status = write_header(false);
  }
  if (!status.ok()) release();
  return status;
}

Status MappedBitmap::map_and_validate() {
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    return Status::from_errno("flock", "bitmap is open elsewhere", path_);
  }
  struct stat st {};
  if (::fstat(fd_, &st) != 0) return Status::from_errno("fstat", "cannot stat bitmap", path_);
  const uint64_t file_bytes = static_cast<uint64_t>(st.st_size);
  if (file_bytes < kHeaderBytes) return Status::corrupt("bitmap " + path_ + ": too short for a header");
  // Read the header with pread, not through a mapping: a mapping past the end
  // of a short file would SIGBUS. The size is checked before mapping.
  alignas(kPageBytes) uint8_t page[kHeaderBytes];
  const ssize_t got = ::pread(fd_, page, sizeof page, 0);
  if (got < 0) return Status::from_errno("pread", "cannot read bitmap header", path_);
  if (got != static_cast<ssize_t>(sizeof page)) return Status::corrupt("bitmap " + path_ + ": short header");
  std::memcpy(&header_, page, sizeof header_);
  Status status = validate_header(header_, file_bytes, path_);
  if (!status.ok()) return status;
  was_clean_ = (header_.flags & kFlagClean) != 0;

  void* map = ::mmap(nullptr, file_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (map == MAP_FAILED) return Status::from_errno("mmap", "cannot map bitmap", path_);
  map_ = static_cast<uint8_t*>(map);
  map_bytes_ = file_bytes;
  bits_ = reinterpret_cast<uint64_t*>(map_ + kHeaderBytes);

  status = load_summary();
  if (status.ok()) status = check_tail_zero();
  if (!status.ok()) return status;
  // Always computed: the same pass drops allocated zero pages from the
  // summary. Cost: one read of every allocated page of bits.
  const uint64_t checksum = checksum_bits();
  if (was_clean_ && checksum != header_.bits_checksum) {
    return Status::corrupt("bitmap " + path_ + ": bits checksum mismatch after a clean close");
  }
  return Status::success();
}

// Builds the summary from the file's allocation: a hole reads as zero, so
// only pages with data may hold set bits (invariant summary_zero_page).
Status MappedBitmap::load_summary() {
  summary_.assign((page_count() + kBitsPerWord - 1) / kBitsPerWord, 0);
  off_t offset = kHeaderBytes;
  const off_t end = static_cast<off_t>(map_bytes_);
  while (offset < end) {
    const off_t data = ::lseek(fd_, offset, SEEK_DATA);
    if (data < 0 && errno == ENXIO) break;  // no data at or after offset
    if (data < 0) return Status::from_errno("lseek", "cannot find data in bitmap", path_);
    const off_t hole = ::lseek(fd_, data, SEEK_HOLE);
    if (hole < 0) return Status::from_errno("lseek", "cannot find holes in bitmap", path_);
    BW_ASSERT(hole > data);
    const uint64_t first = static_cast<uint64_t>(std::max<off_t>(data, kHeaderBytes) - kHeaderBytes);
    const uint64_t last = static_cast<uint64_t>(std::min(hole, end) - kHeaderBytes);
    if (last > first) words::set(summary_.data(), first / kPageBytes, (last + kPageBytes - 1) / kPageBytes);
    offset = hole;
  }
  return Status::success();
}

// Bits at and beyond block_count are zero; they all lie in the last page.
Status MappedBitmap::check_tail_zero() const {
  const uint64_t tail_end = page_count() * kBlocksPerPage;
  BW_ASSERT(tail_end >= header_.block_count && tail_end - header_.block_count < kBlocksPerPage);
  if (!page_may_be_set(page_count() - 1)) return Status::success();
  if (words::count(bits_, header_.block_count, tail_end) == 0) return Status::success();
  return Status::corrupt("bitmap " + path_ + ": bits set beyond block_count");
}

uint64_t MappedBitmap::checksum_bits() {
  BW_ASSERT(is_open());
  return checksum_bits_area(bits_, header_.bits_bytes, summary_.data());
}

// Writes header_ into the mapping's first page and makes it durable. The
// header page itself is never written any other way while mapped.
Status MappedBitmap::write_header(bool full_fsync) {
  BW_ASSERT(is_open());
  header_.header_checksum = header_checksum(header_);
  std::memcpy(map_, &header_, sizeof header_);
  if (::msync(map_, kHeaderBytes, MS_SYNC) != 0) {
    sync_failed_ = true;
    return Status::from_errno("msync", "cannot write bitmap header", path_);
  }
  const int rc = full_fsync ? ::fsync(fd_) : ::fdatasync(fd_);
  if (rc != 0) {
    sync_failed_ = true;
    return Status::from_errno(full_fsync ? "fsync" : "fdatasync", "cannot sync bitmap header", path_);
  }
  return Status::success();
}

Status MappedBitmap::sync() {
  BW_ASSERT(is_open());
  // After a failed sync the kernel may have dropped the dirty pages and marked
  // them clean: a later sync could succeed without writing them.
  if (sync_failed_) {
    return Status::io(EIO, "fdatasync", "an earlier sync failed and is never retried: " + path_);
  }
  if (::msync(map_, map_bytes_, MS_SYNC) != 0) {
    sync_failed_ = true;
    return Status::from_errno("msync", "cannot sync bitmap", path_);
  }
  if (::fdatasync(fd_) != 0) {
    sync_failed_ = true;
    return Status::from_errno("fdatasync", "cannot sync bitmap", path_);
  }
  return Status::success();
}

Status MappedBitmap::close(bool clean) {
  if (!is_open()) {
    release();
    return Status::success();
  }
  Status status = Status::success();
  if (clean) {
    // The bits must be durable before a header that vouches for them.
    status = sync();
    if (status.ok()) {
      header_.flags |= kFlagClean;
      header_.bits_checksum = checksum_bits();
      status = write_header(true);
    }
  }
  release();
  return status;
}

void MappedBitmap::release() {
  if (map_ != nullptr) BW_ASSERT(::munmap(map_, map_bytes_) == 0);
  map_ = nullptr;
  bits_ = nullptr;
  map_bytes_ = 0;
  if (fd_ >= 0) ::close(fd_);  // also drops the flock
  fd_ = -1;
  summary_ = {};
}

bool MappedBitmap::page_may_be_set(uint64_t page) const {
  BW_ASSERT(page < page_count());
  return summary_test(summary_.data(), page);
}

uint64_t MappedBitmap::next_marked_page(uint64_t page, uint64_t page_end) const {
  BW_ASSERT(page_end <= page_count());
  return words::next_set(summary_.data(), page, page_end);
}

bool MappedBitmap::get(uint64_t block) const {
  BW_ASSERT(is_open());
  BW_ASSERT(block < header_.block_count);
  // An unmarked page is zero: answer without faulting it in.
  if (!page_may_be_set(page_of(block))) return false;
  return ((bits_[block / kBitsPerWord] >> (block % kBitsPerWord)) & 1) != 0;
}

Status MappedBitmap::set_range(uint64_t start, uint64_t count) {
  BW_ASSERT(is_open());
  BW_ASSERT(start <= header_.block_count && count <= header_.block_count - start);
  if (count == 0) return Status::success();
  const uint64_t end = start + count;
  Status status = reserve_pages(page_of(start), page_end_of(end));
  if (!status.ok()) return status;
  // Mark before setting, so summary_zero_page holds at every instant.
  words::set(summary_.data(), page_of(start), page_end_of(end));
  words::set(bits_, start, end);
  return Status::success();
}

// Dirtying a hole through the mapping allocates its block in the page fault,
// and a fault that cannot allocate is a SIGBUS that kills the process. So
// pages about to be dirtied for the first time are first written with zeros
// by pwrite, where a full disk is an ENOSPC error value; the write fault then
// finds the page's blocks mapped (or reserved) and allocates nothing. An
// unmarked page is all zero (summary_zero_page), so the zeros change no bit.
// Measured on a full 8 MiB ext4: fallocate is not enough (the fault still
// SIGBUSes once ext4 leaves delayed allocation near full); this is.
Status MappedBitmap::reserve_pages(uint64_t page, uint64_t page_end) {
  alignas(64) static const uint8_t kZeros[16 * kPageBytes] = {};
  constexpr uint64_t kZeroPages = sizeof kZeros / kPageBytes;
  for (page = words::next_clear(summary_.data(), page, page_end); page < page_end;
       page = words::next_clear(summary_.data(), page, page_end)) {
    const uint64_t run_end = std::min(next_marked_page(page, page_end), page + kZeroPages);
    const off_t offset = static_cast<off_t>(kHeaderBytes + page * kPageBytes);
    const uint64_t bytes = (run_end - page) * kPageBytes;
    const Status status = write_all_at(fd_, kZeros, bytes, offset, "cannot allocate bitmap pages", path_);
    if (!status.ok()) return status;
    page = run_end;
  }
  return Status::success();
}

void MappedBitmap::clear_range(uint64_t start, uint64_t count) {
  BW_ASSERT(is_open());
  BW_ASSERT(start <= header_.block_count && count <= header_.block_count - start);
  if (count == 0) return;
  const uint64_t end = start + count;
  const uint64_t page_end = page_end_of(end);
  // Unmarked pages are already zero: skipping them keeps a huge clear from
  // faulting in (and allocating) every hole.
  for (uint64_t page = next_marked_page(page_of(start), page_end); page < page_end;
       page = next_marked_page(page + 1, page_end)) {
    const uint64_t page_start = page_first_block(page);
    const uint64_t from = std::max(start, page_start);
    const uint64_t to = std::min(end, page_start + kBlocksPerPage);
    words::clear(bits_, from, to);
    const bool whole_page = from == page_start && to == page_start + kBlocksPerPage;
    if (whole_page || words::all_zero(bits_ + page * kWordsPerPage, kWordsPerPage)) {
      words::clear(summary_.data(), page, page + 1);
    }
  }
}

uint64_t MappedBitmap::count_set() const { return count_set_in_range(0, header_.block_count); }

uint64_t MappedBitmap::count_set_in_range(uint64_t start, uint64_t count) const {
  BW_ASSERT(is_open());
  BW_ASSERT(start <= header_.block_count && count <= header_.block_count - start);
  const uint64_t end = start + count;
  const uint64_t page_end = page_end_of(end);
  uint64_t total = 0;
  for (uint64_t page = next_marked_page(page_of(start), page_end); page < page_end;
       page = next_marked_page(page + 1, page_end)) {
    const uint64_t page_start = page_first_block(page);
    total += words::count(bits_, std::max(start, page_start), std::min(end, page_start + kBlocksPerPage));
  }
  BW_ASSERT(total <= count);
  return total;
}

bool MappedBitmap::any_set_in_range(uint64_t start, uint64_t count) const {
  BW_ASSERT(start <= header_.block_count && count <= header_.block_count - start);
  return next_set(start, start + count) < start + count;
}

uint64_t MappedBitmap::next_set(uint64_t from, uint64_t end) const {
  BW_ASSERT(is_open());
  BW_ASSERT(end <= header_.block_count);
  if (from >= end) return end;
  const uint64_t page_end = page_end_of(end);
  for (uint64_t page = next_marked_page(page_of(from), page_end); page < page_end;
       page = next_marked_page(page + 1, page_end)) {
    const uint64_t page_start = page_first_block(page);
    const uint64_t to = std::min(end, page_start + kBlocksPerPage);
    const uint64_t found = words::next_set(bits_, std::max(from, page_start), to);
    if (found < to) return found;
  }
  return end;
}

uint64_t MappedBitmap::next_clear(uint64_t from, uint64_t end) const {
  BW_ASSERT(is_open());
  BW_ASSERT(end <= header_.block_count);
  if (from >= end) return end;
  for (uint64_t page = page_of(from); page < page_end_of(end); page++) {
    const uint64_t page_start = page_first_block(page);
    const uint64_t at = std::max(from, page_start);
    if (!page_may_be_set(page)) return at;  // an unmarked page is all clear
    const uint64_t to = std::min(end, page_start + kBlocksPerPage);
    const uint64_t found = words::next_clear(bits_, at, to);
    if (found < to) return found;
  }
  return end;
}

uint32_t MappedBitmap::runs(uint64_t from, uint64_t end, double* out, uint32_t runs_max) const {
  BW_ASSERT(is_open());
  BW_ASSERT(from <= end && end <= header_.block_count);
  BW_ASSERT(runs_max <= kRunsPerCallMax);
  uint32_t run_count = 0;
  uint64_t at = from;
  while (run_count < runs_max) {
    const uint64_t run_start = next_set(at, end);
    if (run_start >= end) break;
    const uint64_t run_end = next_clear(run_start, end);
    BW_ASSERT(run_end > run_start);
    out[2 * run_count] = static_cast<double>(run_start);
    out[2 * run_count + 1] = static_cast<double>(run_end - run_start);
    run_count++;
    at = run_end;
  }
  return run_count;
}

}  // namespace blockwal::bitmap
