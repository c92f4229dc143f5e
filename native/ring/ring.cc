#include "ring/ring.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "util/assert.h"
#include "util/constants.h"
#include "util/huge_pages.h"

namespace blockwal::ring {

Ring::~Ring() { shutdown(); }

int Ring::init(uint32_t depth, uint64_t arena_bytes, bool register_buffers, std::string* what) {
  BW_ASSERT(!ring_ready_);
  BW_ASSERT(depth >= 8 && depth <= kRingDepthMax);
  BW_ASSERT(is_aligned(arena_bytes, kDirectAlignBytes) && arena_bytes > 0);

  // Anonymous memory comes zeroed and is faulted in lazily; transparent huge
  // pages make the faults (or the pinning of registered buffers) about five
  // times cheaper here than 4 KiB pages: a 24 MiB arena took 17 ms to touch.
  void* mem = map_huge_pages(arena_bytes);
  if (mem == nullptr) {
    *what = "mmap(arena)";
    return -errno;
  }
  arena_ = static_cast<uint8_t*>(mem);
  arena_bytes_ = arena_bytes;
  reserve_limit_ = arena_bytes;

  // Completions are only ever reaped by this thread, which enters the kernel
  // many times per turn anyway (socket reads and writes, epoll): cooperative
  // task running lets a completion wait for that entry instead of an
  // interrupt of this thread. Kernels before 5.19 refuse the flag.
  int rc = -EINVAL;
  for (uint32_t coop : {IORING_SETUP_COOP_TASKRUN, 0u}) {
    io_uring_params params{};
    params.flags = IORING_SETUP_CQSIZE | coop;
    params.cq_entries = depth * 2;
    rc = io_uring_queue_init_params(depth, &ring_, &params);
    coop_taskrun_ = rc == 0 && coop != 0;
    if (rc != -EINVAL) break;
  }
  if (rc < 0) {
    *what = "io_uring_queue_init_params";
    munmap(arena_, arena_bytes_);
    arena_ = nullptr;
    return rc;
  }
  ring_ready_ = true;
  depth_ = depth;

  // Registered buffers save a pin/unpin per op; the arena is still usable
  // with plain READ/WRITE when RLIMIT_MEMLOCK refuses the registration.
  iovec iov{arena_, static_cast<size_t>(arena_bytes_)};
  buffers_registered_ =
      register_buffers && arena_bytes_ <= (1ull << 30) && io_uring_register_buffers(&ring_, &iov, 1) == 0;

  slots_.resize(depth);
  free_slots_.reserve(depth);
  for (uint32_t i = depth; i > 0; i--) free_slots_.push_back(i - 1);
  batch_.reserve(depth * 2);
  return 0;
}

void Ring::shutdown() {
  if (ring_ready_) {
    BW_ASSERT(in_flight_ == 0);
    io_uring_queue_exit(&ring_);
    ring_ready_ = false;
  }
  if (arena_ != nullptr) {
    munmap(arena_, arena_bytes_);
    arena_ = nullptr;
  }
}

bool Ring::reserve(uint64_t bytes, uint64_t* arena_offset) {
  uint64_t size = align_up(bytes, kDirectAlignBytes);
  if (reserved_bytes_ + size > reserve_limit_) return false;
  *arena_offset = reserved_bytes_;
  reserved_bytes_ += size;
  return true;
}

void Ring::unreserve(uint64_t arena_offset, uint64_t bytes) {
  BW_ASSERT(arena_offset + align_up(bytes, kDirectAlignBytes) == reserved_bytes_);
  reserved_bytes_ = arena_offset;
}

uint64_t Ring::claim_js_region() {
  if (reserve_limit_ == arena_bytes_) reserve_limit_ = reserved_bytes_;
  return reserve_limit_;
}

bool Ring::match_fault(const Op& op, int32_t* result) {
  for (FaultRule& rule : faults_) {
    if (!rule.active || rule.kind != op.kind) continue;
    if (rule.purpose != Purpose::any && rule.purpose != op.purpose) continue;
    if (rule.skip > 0) {
      rule.skip--;
      continue;
    }
    rule.active = false;
    *result = rule.short_write ? static_cast<int32_t>(op.length_bytes / 2) : -rule.err;
    return true;
  }
  return false;
}

void Ring::prep(const Op& op, Owner* owner, uint64_t cookie, uint64_t trace_a, uint64_t trace_b) {
  BW_ASSERT(ring_ready_);
  BW_ASSERT(!free_slots_.empty());
  BW_ASSERT(owner != nullptr);
  if (op.kind == OpKind::read || op.kind == OpKind::write) {
    BW_ASSERT(op.arena_offset + op.length_bytes <= arena_bytes_);
    BW_ASSERT(is_aligned(op.arena_offset, kDirectAlignBytes));
    BW_ASSERT(is_aligned(op.file_offset, kSectorBytes));
    BW_ASSERT(is_aligned(op.length_bytes, kSectorBytes) && op.length_bytes > 0);
  }
  uint32_t index = free_slots_.back();
  free_slots_.pop_back();
  Slot& slot = slots_[index];
  slot = Slot{owner, cookie, op, 0, false};

  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  BW_ASSERT(sqe != nullptr);  // queued <= in flight <= depth = SQ entries
  int32_t forced = 0;
  if (match_fault(op, &forced)) {
    slot.forced = true;
    slot.forced_result = forced;
    io_uring_prep_nop(sqe);
  } else {
    uint8_t* buf = arena_ + op.arena_offset;
    switch (op.kind) {
      case OpKind::read:
        if (buffers_registered_) io_uring_prep_read_fixed(sqe, op.fd, buf, op.length_bytes, op.file_offset, 0);
        else io_uring_prep_read(sqe, op.fd, buf, op.length_bytes, op.file_offset);
        break;
      case OpKind::write:
        if (buffers_registered_) io_uring_prep_write_fixed(sqe, op.fd, buf, op.length_bytes, op.file_offset, 0);
        else io_uring_prep_write(sqe, op.fd, buf, op.length_bytes, op.file_offset);
        sqe->rw_flags = op.rw_flags;
        break;
      case OpKind::fsync: io_uring_prep_fsync(sqe, op.fd, 0); break;
      case OpKind::fdatasync: io_uring_prep_fsync(sqe, op.fd, IORING_FSYNC_DATASYNC); break;
      case OpKind::punch_hole:
        io_uring_prep_fallocate(sqe, op.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                static_cast<off_t>(op.file_offset), static_cast<off_t>(op.length_bytes));
        break;
      case OpKind::nop: io_uring_prep_nop(sqe); break;
      default: BW_UNREACHABLE();
    }
  }
  io_uring_sqe_set_data64(sqe, index);
  in_flight_++;
  queued_++;
  BW_ASSERT(in_flight_ <= depth_);
  if (tracing_) {
    trace_.push_back(TraceEvent{++trace_seq_, TraceType::submit, static_cast<uint8_t>(op.kind), op.fd,
                                op.file_offset, op.length_bytes, op.rw_flags, 0, trace_a, trace_b, op.purpose, index, now_ns()});
  }
  if (recording_) record_submit(op, index, trace_a, trace_b);
}

int Ring::submit() {
  if (queued_ == 0) return 0;
  int rc = io_uring_submit(&ring_);
  if (rc < 0) return rc;
  BW_ASSERT(static_cast<uint32_t>(rc) <= queued_);
  queued_ -= static_cast<uint32_t>(rc);
  return 0;
}

uint32_t Ring::drain() {
  uint32_t total = 0;
  // Loop: owners may submit during dispatch and fast completions may land
  // before we return. Bounded by the number of slots per pass.
  for (int pass = 0; pass < 4; pass++) {
    batch_.clear();
    io_uring_cqe* cqe = nullptr;
    unsigned head = 0;
    unsigned seen = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      batch_.emplace_back(static_cast<uint32_t>(io_uring_cqe_get_data64(cqe)), cqe->res);
      seen++;
    }
    if (seen == 0) break;
    io_uring_cq_advance(&ring_, seen);
    if (shuffle_) std::shuffle(batch_.begin(), batch_.end(), shuffle_rng_);
    for (const auto& [index, result] : batch_) dispatch(index, result);
    total += seen;
  }
  return total;
}

void Ring::dispatch(uint32_t index, int32_t result) {
  BW_ASSERT(index < slots_.size());
  Slot slot = slots_[index];
  BW_ASSERT(slot.owner != nullptr);
  if (slot.forced) result = slot.forced_result;
  slots_[index].owner = nullptr;
  free_slots_.push_back(index);
  BW_ASSERT(in_flight_ > 0);
  in_flight_--;
  if (tracing_) {
    trace_.push_back(TraceEvent{++trace_seq_, TraceType::complete, static_cast<uint8_t>(slot.op.kind), slot.op.fd,
                                slot.op.file_offset, slot.op.length_bytes, slot.op.rw_flags, result, 0, 0,
                                slot.op.purpose, index, now_ns()});
  }
  if (recording_) record_complete(slot, index, result);
  slot.owner->on_complete(slot.cookie, result);
}

void Ring::set_shuffle(bool on, uint64_t seed) {
  shuffle_ = on;
  shuffle_rng_.seed(seed);
}

void Ring::trace_event(uint8_t kind, uint64_t a, uint64_t b) {
  if (!tracing_) return;
  trace_.push_back(TraceEvent{++trace_seq_, TraceType::event, kind, -1, 0, 0, 0, 0, a, b, Purpose::any, 0, now_ns()});
}

uint64_t Ring::now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

std::vector<TraceEvent> Ring::take_trace() {
  std::vector<TraceEvent> out;
  out.swap(trace_);
  return out;
}

// ---- recording ------------------------------------------------------------
//
// Each write's bytes are copied at submission (owners must not touch a buffer
// in flight; the copy is compared again at completion and a difference is
// flagged). Files are identified by (st_dev, st_ino), read with fstat at each
// submission, because the WAL renames segments outside the ring: the first
// sight of an inode adds a `file` event with its path at that moment, and an
// fsync of a directory adds a `dir` event listing the directory as that fsync
// will persist it. Everything counts against cap_bytes; past it the recording
// stops and is marked overflowed rather than grow without bound.

void Ring::set_recording(bool on, uint64_t cap_bytes, bool with_data) {
  if (on) {
    record_data_ = with_data;
    rec_ = Recording{};
    rec_.cap_bytes = cap_bytes;
    rec_files_seen_.clear();
    record_generation_++;
  }
  recording_ = on;
}

uint64_t Ring::recording_bytes() const {
  return rec_.data.size() + rec_.events.size() * sizeof(RecordEvent);
}

bool Ring::record_room(uint64_t bytes) {
  if (rec_.overflow) return false;
  if (recording_bytes() + bytes + sizeof(RecordEvent) > rec_.cap_bytes) rec_.overflow = true;
  return !rec_.overflow;
}

RecordEvent& Ring::record_push(RecordType type) {
  RecordEvent e{};
  e.seq = ++record_seq_;
  e.type = type;
  e.fd = -1;
  e.data_offset = kNoData;
  e.time_ns = now_ns();
  rec_.events.push_back(e);
  return rec_.events.back();
}

uint64_t Ring::record_bytes(const uint8_t* bytes, uint64_t length) {
  uint64_t at = rec_.data.size();
  rec_.data.insert(rec_.data.end(), bytes, bytes + length);
  return at;
}

void Ring::record_identity(int fd, RecordEvent* e) {
  struct stat st {};
  if (fd < 0 || fstat(fd, &st) != 0) return;
  e->dev = st.st_dev;
  e->ino = st.st_ino;
  if (S_ISDIR(st.st_mode)) e->bits |= kRecordDirectory;
  if (!rec_files_seen_.insert({e->dev, e->ino}).second) return;
  char link[PATH_MAX];
  std::string proc = "/proc/self/fd/" + std::to_string(fd);
  ssize_t n = readlink(proc.c_str(), link, sizeof(link));
  if (n <= 0 || !record_room(static_cast<uint64_t>(n))) return;
  RecordEvent& file = record_push(RecordType::file);
  file.fd = fd;
  file.dev = e->dev;
  file.ino = e->ino;
  file.bits = e->bits & kRecordDirectory;
  file.data_offset = record_bytes(reinterpret_cast<const uint8_t*>(link), static_cast<uint64_t>(n));
  file.data_bytes = static_cast<uint64_t>(n);
}

void Ring::record_directory(int fd, uint64_t dev, uint64_t ino) {
  int dir_fd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return;
  DIR* d = fdopendir(dir_fd);
  if (d == nullptr) {
    ::close(dir_fd);
    return;
  }
  std::vector<uint8_t> listing;
  auto put = [&listing](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    listing.insert(listing.end(), b, b + n);
  };
  while (dirent* entry = readdir(d)) {
    if (std::strcmp(entry->d_name, ".") == 0 || std::strcmp(entry->d_name, "..") == 0) continue;
    struct stat st {};
    if (fstatat(dir_fd, entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    uint64_t fields[2] = {static_cast<uint64_t>(st.st_ino), static_cast<uint64_t>(st.st_size)};
    uint32_t mode_and_name[2] = {st.st_mode, static_cast<uint32_t>(std::strlen(entry->d_name))};
    put(fields, sizeof(fields));
    put(mode_and_name, sizeof(mode_and_name));
    put(entry->d_name, mode_and_name[1]);
  }
  closedir(d);
  if (!record_room(listing.size())) return;
  RecordEvent& e = record_push(RecordType::dir);
  e.fd = fd;
  e.dev = dev;
  e.ino = ino;
  e.bits = kRecordDirectory;
  e.data_offset = record_bytes(listing.data(), listing.size());
  e.data_bytes = listing.size();
}

void Ring::record_submit(const Op& op, uint32_t slot_index, uint64_t a, uint64_t b) {
  Slot& slot = slots_[slot_index];
  bool write = op.kind == OpKind::write && !slot.forced && record_data_;
  if (!record_room(write ? op.length_bytes : 0)) return;
  RecordEvent e{};
  if (op.kind != OpKind::nop) record_identity(op.fd, &e);
  bool dir_sync = (e.bits & kRecordDirectory) && (op.kind == OpKind::fsync || op.kind == OpKind::fdatasync);
  // The listing this fsync will persist: everything renamed before it.
  if (dir_sync && !slot.forced) record_directory(op.fd, e.dev, e.ino);
  if (!record_room(write ? op.length_bytes : 0)) return;
  RecordEvent& s = record_push(RecordType::submit);
  s.kind = static_cast<uint8_t>(op.kind);
  s.purpose = op.purpose;
  s.bits = static_cast<uint8_t>(e.bits | (slot.forced ? kRecordForced : 0));
  s.fd = op.fd;
  s.flags = op.rw_flags;
  s.slot = slot_index;
  s.length = op.length_bytes;
  s.offset = op.file_offset;
  s.dev = e.dev;
  s.ino = e.ino;
  s.a = a;
  s.b = b;
  if (write) {
    s.data_offset = record_bytes(arena_ + op.arena_offset, op.length_bytes);
    s.data_bytes = op.length_bytes;
    slot.recorded_data = s.data_offset;
    slot.recorded_generation = record_generation_;
  }
}

void Ring::record_complete(const Slot& slot, uint32_t slot_index, int32_t result) {
  if (!record_room(0)) return;
  bool changed = slot.recorded_data != kNoData && slot.recorded_generation == record_generation_ &&
                 std::memcmp(rec_.data.data() + slot.recorded_data, arena_ + slot.op.arena_offset,
                             slot.op.length_bytes) != 0;
  RecordEvent& c = record_push(RecordType::complete);
  c.kind = static_cast<uint8_t>(slot.op.kind);
  c.purpose = slot.op.purpose;
  c.bits = static_cast<uint8_t>((slot.forced ? kRecordForced : 0) | (changed ? kRecordChanged : 0));
  c.fd = slot.op.fd;
  c.result = result;
  c.flags = slot.op.rw_flags;
  c.slot = slot_index;
  c.length = slot.op.length_bytes;
  c.offset = slot.op.file_offset;
}

uint64_t Ring::record_mark(uint8_t kind, uint64_t a, uint64_t b) {
  if (!recording_ || !record_room(0)) return 0;
  RecordEvent& m = record_push(RecordType::mark);
  m.kind = kind;
  m.a = a;
  m.b = b;
  return m.seq;
}

Recording Ring::take_recording() {
  Recording out;
  out.cap_bytes = rec_.cap_bytes;
  std::swap(out, rec_);
  // Writes still in flight keep their copy's offset into the old data: forget it.
  record_generation_++;
  return out;
}

}  // namespace blockwal::ring
