#include "wal/writer.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "util/assert.h"
#include "util/huge_pages.h"
#include "wal/scan.h"

namespace blockwal::wal {

namespace {

constexpr uint32_t kZeroBufferBytes = 1u << 20;
constexpr uint32_t kReadsInFlightMax = 256;
constexpr uint64_t kCookieIndexMask = (1ull << 56) - 1;

}  // namespace

Writer::Writer(ring::Ring& ring, ring::Owner* js_sink) : ring_(ring), js_sink_(js_sink) {
  BW_ASSERT(js_sink != nullptr);
}

Writer::~Writer() {
  if (!closed_) close();
}

std::string Writer::segment_path(uint64_t seq, bool tmp) const {
  return options_.dir + "/" + segment_file_name(seq) + (tmp ? ".tmp" : "");
}

int Writer::open(const WriterOptions& options, std::string* what) {
  BW_ASSERT(closed_);
  BW_ASSERT(options.segment_bytes >= kSegmentBytesMin && options.segment_bytes <= kSegmentBytesMax);
  BW_ASSERT(is_aligned(options.segment_bytes, kBlockBytes));
  BW_ASSERT(options.group_bytes >= kGroupBytesMin && options.group_bytes <= kGroupBytesMax);
  BW_ASSERT(options.groups_in_flight >= kGroupsInFlightMin && options.groups_in_flight <= kGroupsInFlightMax);
  BW_ASSERT(options.group_slots >= options.groups_in_flight + 2);
  BW_ASSERT(options.lsn_next >= 1 && options.seq_next >= 1);
  options_ = options;
  lsn_next_ = options.lsn_next;
  seq_next_ = options.seq_next;
  pipeline_ = commit::Pipeline(lsn_next_);

  dir_fd_ = ::open(options.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd_ < 0) {
    *what = "open(" + options.dir + ")";
    return -errno;
  }
  closed_ = false;
  // A crash while creating a segment leaves a .tmp file: never part of the log.
  if (DIR* d = fdopendir(dup(dir_fd_))) {
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name.size() > 8 && name.ends_with(".wal.tmp")) unlinkat(dir_fd_, name.c_str(), 0);
    }
    closedir(d);
  }
  for (const ExistingSegment& e : options.existing) {
    BW_ASSERT(e.seq < seq_next_);
    int fd = ::open(segment_path(e.seq, false).c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
    if (fd < 0) {
      *what = "open(" + segment_path(e.seq, false) + ")";
      return -errno;
    }
    segments_[e.seq] = Segment{e.seq, fd, e.in_chain ? SegState::chain : SegState::free, e.lsn_first, e.lsn_last};
  }

  slot_bytes_ = static_cast<uint32_t>(align_up(std::max(options.group_bytes, kFrameBytesMax), kBlockBytes));
  slots_.resize(options.group_slots);
  arena_first_ = ring_.reserved_bytes();
  for (Slot& s : slots_) {
    s = Slot{};
    s.state = SlotState::free;
    if (!ring_.reserve(slot_bytes_, &s.arena_offset)) {
      *what = "arena too small for " + std::to_string(options.group_slots) + " group slots";
      return -ENOMEM;
    }
  }
  zero_bytes_ = kZeroBufferBytes;
  if (!ring_.reserve(zero_bytes_, &zero_offset_)) {
    *what = "arena too small for the segment zero buffer";
    return -ENOMEM;
  }
  std::memset(ring_.arena() + zero_offset_, 0, zero_bytes_);
  arena_reserved_ = ring_.reserved_bytes() - arena_first_;
  reads_.assign(kReadsInFlightMax, PendingRead{});
  // Pages of the cache are touched only as frames arrive.
  if (options.cache_bytes >= slot_bytes_) {
    // On huge pages: each sealed frame is copied to the next bytes of the
    // ring and a checkpoint gathers from all over it; on 4 KiB pages nearly
    // every frame copied lands on a page the TLB has not seen.
    void* mem = map_huge_pages(options.cache_bytes);
    if (mem == nullptr) {
      *what = "memory for a WAL cache of " + std::to_string(options.cache_bytes) + " bytes";
      return -ENOMEM;
    }
    cache_ = static_cast<uint8_t*>(mem);
  }
  return 0;
}

bool Writer::ring_has_room(uint32_t ops) const { return ring_.slots_free() >= ops; }

AppendStatus Writer::append(const RecordFields& fields_in, const uint8_t* payload, uint32_t payload_bytes, bool fua,
                            AppendResult* out) {
  if (closed_) return AppendStatus::closed;
  if (failed()) return AppendStatus::failed;
  BW_ASSERT(record_shape_valid(fields_in.kind, payload_bytes, fields_in.length_blocks));
  uint32_t span = record_span_bytes(payload_bytes);
  if (open_slot_ >= 0) {
    const Slot& s = slots_[static_cast<uint32_t>(open_slot_)];
    uint64_t grown = align_up(kFrameHeaderBytes + s.builder.body_bytes() + span, kBlockBytes);
    if (grown > options_.group_bytes || !s.builder.fits(payload_bytes)) seal_open_group();
  }
  if (open_slot_ < 0 && !open_group(span)) return AppendStatus::busy;

  Slot& s = slots_[static_cast<uint32_t>(open_slot_)];
  RecordFields fields = fields_in;
  fields.lsn = lsn_next_++;
  uint32_t offset = s.builder.add(fields, payload, payload_bytes);
  if (fua) {
    s.has_fua = true;
    pipeline_.request_durable(fields.lsn);
  }
  Segment& seg = segments_.at(s.segment_seq);
  if (seg.lsn_first == 0) seg.lsn_first = fields.lsn;
  seg.lsn_last = fields.lsn;
  busy_reason_ = BusyReason::none;
  *out = AppendResult{fields.lsn, s.segment_seq, s.file_offset + offset, s.builder.data() + offset, span};
  return AppendStatus::ok;
}

bool Writer::open_group(uint32_t span_bytes) {
  BW_ASSERT(open_slot_ < 0);
  uint64_t needed = align_up(kFrameHeaderBytes + span_bytes, kBlockBytes);
  BW_ASSERT(needed <= options_.segment_bytes);  // refused at the binding edge
  Slot& s = slots_[next_slot_];
  if (s.state != SlotState::free && s.state != SlotState::written) {
    busy_reason_ = BusyReason::slots;
    return false;
  }
  if (active_fd_ < 0 || cursor_ + needed > options_.segment_bytes) {
    if (spares_.empty()) {
      bool can_grow = segments_.size() < options_.segments_max ||
                      std::any_of(segments_.begin(), segments_.end(),
                                  [](const auto& kv) { return kv.second.state == SegState::free; });
      busy_reason_ = (prep_seq_ != 0 || can_grow) ? BusyReason::segment : BusyReason::wal_full;
      return false;
    }
    if (active_fd_ >= 0) segments_.at(active_seq_).state = SegState::chain;
    active_seq_ = spares_.front();
    spares_.erase(spares_.begin());
    Segment& seg = segments_.at(active_seq_);
    seg.state = SegState::active;
    active_fd_ = seg.fd;
    cursor_ = 0;
  }
  s.state = SlotState::open;
  s.segment_seq = active_seq_;
  s.file_offset = cursor_;
  s.frame_bytes = 0;
  s.has_fua = false;
  uint64_t room = align_down(std::min<uint64_t>(slot_bytes_, options_.segment_bytes - cursor_), kBlockBytes);
  s.builder.reset(ring_.arena() + s.arena_offset, static_cast<uint32_t>(room), active_seq_, lsn_next_);
  open_slot_ = static_cast<int32_t>(next_slot_);
  open_ns_ = ring::Ring::now_ns();
  next_slot_ = (next_slot_ + 1) % static_cast<uint32_t>(slots_.size());
  return true;
}

void Writer::seal_open_group() {
  BW_ASSERT(open_slot_ >= 0);
  Slot& s = slots_[static_cast<uint32_t>(open_slot_)];
  BW_ASSERT(s.state == SlotState::open && !s.builder.empty());
  // The hint is a durable LSN already reached: recovery uses it to tell a torn
  // tail from a lost acknowledged frame.
  s.frame_bytes = s.builder.seal(pipeline_.lsn_durable(), s.has_fua ? kFrameFlagDsync : 0);
  BW_ASSERT(s.segment_seq == active_seq_ && s.file_offset == cursor_);
  cursor_ += s.frame_bytes;
  BW_ASSERT(cursor_ <= options_.segment_bytes);
  s.state = SlotState::sealed;
  sealed_.push_back(static_cast<uint32_t>(open_slot_));
  open_slot_ = -1;
  cache_frame(s);
}

// Copies a sealed frame into the cache, evicting the oldest frames it
// overlaps. Frames are sealed in (seq, offset) order and placed in the ring
// in that order, so the deque stays sorted and its front is the oldest frame
// after the head.
void Writer::cache_frame(const Slot& s) {
  if (cache_ == nullptr || s.frame_bytes > options_.cache_bytes) return;
  uint64_t pos = cache_head_;
  if (pos + s.frame_bytes > options_.cache_bytes) {
    // Wrap: the rest of this lap goes unused, and the frames there are older
    // than every frame from the start of the ring.
    while (!cache_frames_.empty() && cache_frames_.front().pos >= pos) cache_frames_.pop_front();
    pos = 0;
  }
  while (!cache_frames_.empty() && cache_frames_.front().pos < pos + s.frame_bytes &&
         pos < cache_frames_.front().pos + cache_frames_.front().bytes) {
    cache_frames_.pop_front();
  }
  BW_ASSERT(cache_frames_.empty() || std::make_pair(cache_frames_.back().seq, cache_frames_.back().file_offset) <
                                         std::make_pair(s.segment_seq, s.file_offset));
  std::memcpy(cache_ + pos, ring_.arena() + s.arena_offset, s.frame_bytes);
  cache_frames_.push_back(CachedFrame{s.segment_seq, s.file_offset, pos, s.frame_bytes});
  cache_head_ = pos + s.frame_bytes;
}

void Writer::request_durable(uint64_t lsn) {
  if (closed_ || failed()) return;
  pipeline_.request_durable(std::min(lsn, lsn_next_ - 1));
}

uint32_t Writer::kick() {
  if (closed_) return 0;
  uint32_t held_us = 0;
  if (!failed()) {
    bool pipeline_room = pipeline_.groups_in_flight() < options_.groups_in_flight;
    // The hold is reported even while the pipeline has no room, so the
    // caller's kick comes when it runs out whichever kick finds the room.
    if (open_slot_ >= 0) held_us = hold_left_us();
    if (open_slot_ >= 0 && held_us == 0 && sealed_.empty() && pipeline_room) seal_open_group();
    submit_sealed();
    submit_syncs();
    prepare_step();
  }
  int rc = ring_.submit();
  if (rc < 0 && rc != -EAGAIN && rc != -EBUSY && rc != -EINTR) fail_prepare(-rc, "io_uring_submit");
  return held_us;
}

// How much longer the open group may wait for more records: 0 when it must
// go now (no hold, a FUA record in it, a durability request reaching past
// what is submitted, or the hold used up).
uint32_t Writer::hold_left_us() const {
  if (group_hold_us_ == 0) return 0;
  const Slot& s = slots_[static_cast<uint32_t>(open_slot_)];
  if (s.has_fua || pipeline_.lsn_durable_target() > pipeline_.lsn_submitted()) return 0;
  uint64_t hold_ns = uint64_t{group_hold_us_} * 1000;
  uint64_t age_ns = ring::Ring::now_ns() - open_ns_;
  if (age_ns >= hold_ns) return 0;
  return static_cast<uint32_t>((hold_ns - age_ns + 999) / 1000);
}

void Writer::submit_sealed() {
  while (!sealed_.empty() && pipeline_.groups_in_flight() < options_.groups_in_flight && ring_has_room(1)) {
    uint32_t index = sealed_.front();
    sealed_.erase(sealed_.begin());
    Slot& s = slots_[index];
    BW_ASSERT(s.state == SlotState::sealed);
    uint64_t lsn_first = s.builder.lsn_first();
    uint64_t lsn_last = s.builder.lsn_next() - 1;
    bool dsync = s.has_fua || pipeline_.lsn_durable_target() >= lsn_first;
    pipeline_.group_submitted(lsn_first, lsn_last, s.segment_seq, dsync);
    ring::Op op{ring::OpKind::write, segments_.at(s.segment_seq).fd, s.arena_offset, s.frame_bytes,
                s.file_offset, dsync ? RWF_DSYNC : 0, ring::Purpose::wal_group};
    ring_.prep(op, this, cookie(OpType::group_write, index), lsn_first, lsn_last);
    s.state = SlotState::in_flight;
    ops_in_flight_++;
    groups_submitted_++;
    if (dsync) dsync_groups_submitted_++;
  }
}

void Writer::submit_syncs() {
  uint64_t seq = 0;
  while (ring_has_room(1) && pipeline_.sync_wanted(&seq)) {
    uint64_t id = pipeline_.sync_submitted(seq);
    ring::Op op{ring::OpKind::fdatasync, segments_.at(seq).fd, 0, 0, 0, 0, ring::Purpose::wal_sync};
    ring_.prep(op, this, cookie(OpType::sync, id), seq, 0);
    ops_in_flight_++;
    syncs_submitted_++;
  }
}

void Writer::release(uint64_t lsn) {
  if (closed_) return;
  // Never recycle what is not durable yet: a pending sync may still name it.
  uint64_t limit = std::min(lsn, pipeline_.lsn_durable());
  for (auto& [seq, seg] : segments_) {
    if (seg.state == SegState::chain && seg.lsn_last != 0 && seg.lsn_last <= limit) seg.state = SegState::free;
    if (seg.state == SegState::chain && seg.lsn_last == 0) seg.state = SegState::free;
  }
}

void Writer::trace_progress() {
  if (!ring_.tracing()) return;
  uint64_t written = pipeline_.lsn_written();
  uint64_t durable = pipeline_.lsn_durable();
  if (written != traced_written_) {
    traced_written_ = written;
    ring_.trace_event(static_cast<uint8_t>(WalTrace::written), written, 0);
  }
  if (durable != traced_durable_) {
    traced_durable_ = durable;
    ring_.trace_event(static_cast<uint8_t>(WalTrace::durable), durable, 0);
  }
}

void Writer::on_complete(uint64_t c, int32_t result) {
  BW_ASSERT(ops_in_flight_ > 0);
  ops_in_flight_--;
  uint64_t index = c & kCookieIndexMask;
  switch (static_cast<OpType>(c >> 56)) {
    case OpType::group_write: on_group_written(static_cast<uint32_t>(index), result); break;
    case OpType::sync: pipeline_.sync_completed(index, result); break;
    case OpType::prep_write: finish_prepare_write(result); break;
    case OpType::prep_fsync: finish_prepare_fsync(result); break;
    case OpType::dir_fsync: finish_dir_fsync(result); break;
    case OpType::read: on_read(static_cast<uint32_t>(index), result); break;
    default: BW_UNREACHABLE();
  }
  trace_progress();
}

void Writer::on_group_written(uint32_t index, int32_t result) {
  Slot& s = slots_[index];
  BW_ASSERT(s.state == SlotState::in_flight);
  pipeline_.group_completed(s.builder.lsn_first(), result, s.frame_bytes);
  s.state = SlotState::written;
  if (result > 0) bytes_written_ += static_cast<uint64_t>(result);
}

uint64_t Writer::lsn_tail() const {
  uint64_t tail = 0;
  for (const auto& [seq, seg] : segments_) {
    if ((seg.state == SegState::chain || seg.state == SegState::active) && seg.lsn_first != 0) {
      if (tail == 0 || seg.lsn_first < tail) tail = seg.lsn_first;
    }
  }
  return tail;
}

int Writer::failure_errno() const {
  if (pipeline_.failed()) return pipeline_.failure().err;
  return prep_error_;
}

std::string Writer::failure_message() const {
  if (pipeline_.failed()) {
    const commit::Failure& f = pipeline_.failure();
    std::string name = segment_file_name(f.file);
    return f.during_sync ? "fdatasync of WAL segment " + name + " failed"
                         : "write to WAL segment " + name + " failed";
  }
  if (prep_error_ != 0) return "WAL segment preparation failed at " + prep_error_what_;
  return "";
}

void Writer::close() {
  if (closed_) return;
  BW_ASSERT(ops_in_flight_ == 0);
  for (auto& [seq, seg] : segments_) {
    if (seg.fd >= 0) ::close(seg.fd);
    seg.fd = -1;
  }
  segments_.clear();
  if (dir_fd_ >= 0) ::close(dir_fd_);
  dir_fd_ = -1;
  active_fd_ = -1;
  if (arena_reserved_ > 0) ring_.unreserve(arena_first_, arena_reserved_);
  arena_reserved_ = 0;
  if (cache_ != nullptr) munmap(cache_, options_.cache_bytes);
  cache_ = nullptr;
  cache_frames_.clear();
  closed_ = true;
}

}  // namespace blockwal::wal
