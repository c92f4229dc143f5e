#include "ring/ring.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "util/assert.h"
#include "util/constants.h"

namespace blockwal::ring {

Ring::~Ring() { shutdown(); }

int Ring::init(uint32_t depth, uint64_t arena_bytes, bool register_buffers, std::string* what) {
  BW_ASSERT(!ring_ready_);
  BW_ASSERT(depth >= 8 && depth <= kRingDepthMax);
  BW_ASSERT(is_aligned(arena_bytes, kDirectAlignBytes) && arena_bytes > 0);

  void* mem = nullptr;
  int rc = posix_memalign(&mem, kDirectAlignBytes, arena_bytes);
  if (rc != 0) {
    *what = "posix_memalign(arena)";
    return -rc;
  }
  std::memset(mem, 0, arena_bytes);
  arena_ = static_cast<uint8_t*>(mem);
  arena_bytes_ = arena_bytes;
  reserve_limit_ = arena_bytes;

  io_uring_params params{};
  params.flags = IORING_SETUP_CQSIZE;
  params.cq_entries = depth * 2;
  rc = io_uring_queue_init_params(depth, &ring_, &params);
  if (rc < 0) {
    *what = "io_uring_queue_init_params";
    std::free(arena_);
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
    std::free(arena_);
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

}  // namespace blockwal::ring
