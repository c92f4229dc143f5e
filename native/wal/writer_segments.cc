// Segment preparation and record/span reads for the WAL writer.
//
// A spare segment is ready only when it is fully allocated and written (zeros
// for a new file, stale frames of an older seq for a recycled one) and its
// name is durable in the directory: a new file is zero-filled under a .tmp
// name, fsynced, renamed, and the directory fsynced; a recycled file is
// renamed to a new seq and the directory fsynced. Pre-writing matters: a
// DSYNC write into unwritten extents costs twice as much (reference/io.md).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <utility>

#include "util/assert.h"
#include "wal/scan.h"
#include "wal/writer.h"

namespace blockwal::wal {

namespace {
constexpr uint32_t kPrepWritesMax = 4;
}

void Writer::prepare_step() {
  if (prep_seq_ != 0) {
    if (!prep_rename_pending_) return;  // recycling: waiting for the dir fsync
    while (prep_writes_in_flight_ < kPrepWritesMax && prep_next_offset_ < options_.segment_bytes &&
           ring_has_room(1)) {
      uint32_t length = static_cast<uint32_t>(std::min<uint64_t>(zero_bytes_, options_.segment_bytes - prep_next_offset_));
      ring::Op op{ring::OpKind::write, prep_fd_, zero_offset_, length, prep_next_offset_, 0, ring::Purpose::wal_prepare};
      ring_.prep(op, this, cookie(OpType::prep_write, length), prep_seq_, 0);
      prep_next_offset_ += length;
      prep_writes_in_flight_++;
      ops_in_flight_++;
    }
    return;
  }
  if (!spares_.empty() || !ring_has_room(1)) return;
  if (start_recycle()) return;
  if (start_create()) prepare_step();
}

bool Writer::start_recycle() {
  auto it = std::find_if(segments_.begin(), segments_.end(),
                         [](const auto& kv) { return kv.second.state == SegState::free; });
  if (it == segments_.end()) return false;
  Segment seg = it->second;
  uint64_t seq = seq_next_++;
  std::string from = segment_file_name(seg.seq);
  std::string to = segment_file_name(seq);
  if (renameat(dir_fd_, from.c_str(), dir_fd_, to.c_str()) != 0) {
    fail_prepare(errno, "rename " + from + " to " + to);
    return true;
  }
  segments_.erase(it);
  seg.seq = seq;
  seg.state = SegState::preparing;
  seg.lsn_first = 0;
  seg.lsn_last = 0;
  segments_[seq] = seg;
  prep_seq_ = seq;
  prep_fd_ = seg.fd;
  prep_rename_pending_ = false;
  ring::Op op{ring::OpKind::fsync, dir_fd_, 0, 0, 0, 0, ring::Purpose::wal_prepare};
  ring_.prep(op, this, cookie(OpType::dir_fsync, 0), seq, 0);
  ops_in_flight_++;
  return true;
}

bool Writer::start_create() {
  if (segments_.size() >= options_.segments_max) return false;
  uint64_t seq = seq_next_++;
  std::string path = segment_path(seq, true);
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_DIRECT | O_CLOEXEC, 0644);
  if (fd < 0) {
    fail_prepare(errno, "open " + path);
    return false;
  }
  segments_[seq] = Segment{seq, fd, SegState::preparing, 0, 0};
  prep_seq_ = seq;
  prep_fd_ = fd;
  prep_next_offset_ = 0;
  prep_writes_in_flight_ = 0;
  prep_rename_pending_ = true;
  return true;
}

void Writer::finish_prepare_write(int32_t result) {
  BW_ASSERT(prep_writes_in_flight_ > 0);
  prep_writes_in_flight_--;
  if (result < 0) return fail_prepare(-result, "zero-fill of " + segment_file_name(prep_seq_) + ".tmp");
  if (result == 0) return fail_prepare(EIO, "zero-fill of " + segment_file_name(prep_seq_) + ".tmp (short write)");
  if (prep_error_ != 0) return;
  if (prep_next_offset_ >= options_.segment_bytes && prep_writes_in_flight_ == 0) {
    ring::Op op{ring::OpKind::fsync, prep_fd_, 0, 0, 0, 0, ring::Purpose::wal_prepare};
    ring_.prep(op, this, cookie(OpType::prep_fsync, 0), prep_seq_, 0);
    ops_in_flight_++;
  }
}

void Writer::finish_prepare_fsync(int32_t result) {
  if (result < 0) return fail_prepare(-result, "fsync of " + segment_file_name(prep_seq_) + ".tmp");
  std::string from = segment_file_name(prep_seq_) + ".tmp";
  std::string to = segment_file_name(prep_seq_);
  if (renameat(dir_fd_, from.c_str(), dir_fd_, to.c_str()) != 0) return fail_prepare(errno, "rename " + from);
  prep_rename_pending_ = false;
  ring::Op op{ring::OpKind::fsync, dir_fd_, 0, 0, 0, 0, ring::Purpose::wal_prepare};
  ring_.prep(op, this, cookie(OpType::dir_fsync, 0), prep_seq_, 0);
  ops_in_flight_++;
}

void Writer::finish_dir_fsync(int32_t result) {
  if (result < 0) return fail_prepare(-result, "fsync of the WAL directory");
  if (prep_error_ != 0) return;
  segments_.at(prep_seq_).state = SegState::spare;
  spares_.push_back(prep_seq_);
  prep_seq_ = 0;
  prep_fd_ = -1;
}

void Writer::fail_prepare(int err, const std::string& what) {
  if (prep_error_ != 0) return;
  prep_error_ = err == 0 ? EIO : err;
  prep_error_what_ = what;
}

int Writer::read_record(uint64_t seq, uint64_t offset_bytes, uint32_t span_bytes, uint64_t dest_offset,
                        uint64_t dest_bytes, uint64_t tag) {
  if (closed_) return -EBADF;
  if (span_bytes < kRecordHeaderBytes || dest_offset + dest_bytes > ring_.arena_bytes()) return -EINVAL;
  // Recent records come from the group slots (reference/io.md §4: never
  // re-read what is still in memory), the open group's included.
  for (const Slot& s : slots_) {
    if (s.state == SlotState::free || s.segment_seq != seq) continue;
    uint64_t end = s.file_offset + (s.state == SlotState::open ? kFrameHeaderBytes + s.builder.body_bytes() : s.frame_bytes);
    if (offset_bytes < s.file_offset + kFrameHeaderBytes || offset_bytes + span_bytes > end) continue;
    if (span_bytes > dest_bytes) return -EINVAL;
    std::memcpy(ring_.arena() + dest_offset, ring_.arena() + s.arena_offset + (offset_bytes - s.file_offset), span_bytes);
    read_memory_bytes_ += span_bytes;
    return 1;
  }
  auto seg = segments_.find(seq);
  if (seg == segments_.end() || seg->second.state == SegState::free || seg->second.state == SegState::spare) return -ENOENT;
  uint64_t until = 0;
  if (const uint8_t* src = memory_at(seq, offset_bytes, &until); src != nullptr && offset_bytes + span_bytes <= until) {
    if (span_bytes > dest_bytes) return -EINVAL;
    std::memcpy(ring_.arena() + dest_offset, src, span_bytes);
    read_memory_bytes_ += span_bytes;
    return 1;
  }
  uint64_t start = align_down(offset_bytes, kBlockBytes);
  uint64_t end = align_up(offset_bytes + span_bytes, kBlockBytes);
  if (end > options_.segment_bytes) return -EINVAL;
  if (end - start > dest_bytes || !is_aligned(dest_offset, kBlockBytes)) return -EINVAL;
  PendingRead read{tag, dest_offset, static_cast<uint32_t>(offset_bytes - start), span_bytes,
                   static_cast<uint32_t>(end - start), true, true};
  return submit_read(seg->second.fd, seq, start, end, dest_offset, read);
}

int Writer::read_span(uint64_t seq, uint64_t offset_bytes, uint32_t length_bytes, uint64_t dest_offset, uint64_t tag) {
  if (closed_) return -EBADF;
  if (length_bytes == 0 || length_bytes > kReadSpanBytesMax || !is_aligned(offset_bytes, kBlockBytes) ||
      !is_aligned(length_bytes, kBlockBytes) || !is_aligned(dest_offset, kDirectAlignBytes) ||
      dest_offset > ring_.arena_bytes() || length_bytes > ring_.arena_bytes() - dest_offset) {
    return -EINVAL;
  }
  const Segment* seg = log_segment(seq);
  if (seg == nullptr) return -ENOENT;
  if (offset_bytes > options_.segment_bytes || length_bytes > options_.segment_bytes - offset_bytes) return -EINVAL;
  const uint64_t end = offset_bytes + length_bytes;
  if (copy_from_memory(seq, offset_bytes, end, dest_offset)) {
    read_memory_bytes_ += length_bytes;
    return 1;
  }
  PendingRead read{tag, dest_offset, 0, length_bytes, length_bytes, false, true};
  return submit_read(seg->fd, seq, offset_bytes, end, dest_offset, read);
}

const Writer::Segment* Writer::log_segment(uint64_t seq) const {
  auto seg = segments_.find(seq);
  if (seg == segments_.end()) return nullptr;
  const SegState state = seg->second.state;
  return state == SegState::chain || state == SegState::active ? &seg->second : nullptr;
}

int Writer::gather_from_memory(uint64_t seq, const GatherOp* ops, uint32_t count, GatherError* err,
                               uint32_t* failed_index) {
  BW_ASSERT(err != nullptr && failed_index != nullptr);
  if (closed_) return -EBADF;
  if (log_segment(seq) == nullptr) return -ENOENT;
  // Every record first: either all of them are copied from memory or none.
  gather_records_.resize(count);
  uint64_t bytes = 0;
  for (uint32_t i = 0; i < count; i++) {
    const GatherOp& op = ops[i];
    if (i > 0 && op.src_offset == ops[i - 1].src_offset && op.span_bytes == ops[i - 1].span_bytes) {
      gather_records_[i] = gather_records_[i - 1];
      continue;
    }
    uint64_t until = 0;
    const uint8_t* record = memory_at(seq, op.src_offset, &until);
    // A record never spans two frames; one that seems to is not ours to copy.
    if (record == nullptr || op.span_bytes > until - op.src_offset) return 0;
    gather_records_[i] = record;
    bytes += op.span_bytes;
  }
  *err = gather_blocks_trusted(ring_.arena(), ring_.arena_bytes(), ops, gather_records_.data(), count, failed_index);
  if (*err == GatherError::ok) read_memory_bytes_ += bytes;
  return 1;
}

// Byte `at` of segment seq when a sealed frame in memory (a group slot, else
// the frame cache) holds it, with *until set to the end of that frame; the
// open group's bytes are not final and never count. nullptr otherwise.
const uint8_t* Writer::memory_at(uint64_t seq, uint64_t at, uint64_t* until) const {
  for (const Slot& s : slots_) {
    if (s.state == SlotState::free || s.state == SlotState::open || s.segment_seq != seq) continue;
    if (at >= s.file_offset && at < s.file_offset + s.frame_bytes) {
      *until = s.file_offset + s.frame_bytes;
      return ring_.arena() + s.arena_offset + (at - s.file_offset);
    }
  }
  // The last cached frame starting at or before (seq, at).
  auto after = std::upper_bound(cache_frames_.begin(), cache_frames_.end(), std::make_pair(seq, at),
                                [](const std::pair<uint64_t, uint64_t>& key, const CachedFrame& f) {
                                  return key < std::make_pair(f.seq, f.file_offset);
                                });
  if (after == cache_frames_.begin()) return nullptr;
  const CachedFrame& f = *std::prev(after);
  if (f.seq != seq || at >= f.file_offset + f.bytes) return nullptr;
  *until = f.file_offset + f.bytes;
  return cache_ + f.pos + (at - f.file_offset);
}

// Copies [start, end) of segment seq from memory when sealed frames there
// cover all of it. False, with nothing copied, otherwise.
bool Writer::copy_from_memory(uint64_t seq, uint64_t start, uint64_t end, uint64_t dest_offset) {
  uint64_t until = 0;
  for (uint64_t at = start; at < end; at = until) {
    if (memory_at(seq, at, &until) == nullptr) return false;
  }
  for (uint64_t at = start; at < end; at = until) {
    const uint8_t* src = memory_at(seq, at, &until);
    BW_ASSERT(src != nullptr);
    until = std::min(until, end);
    std::memcpy(ring_.arena() + dest_offset + (at - start), src, until - at);
  }
  return true;
}

int Writer::submit_read(int fd, uint64_t seq, uint64_t start, uint64_t end, uint64_t dest_offset, const PendingRead& read) {
  BW_ASSERT(is_aligned(start, kBlockBytes) && is_aligned(end, kBlockBytes) && end > start);
  BW_ASSERT(is_aligned(dest_offset, kDirectAlignBytes) && dest_offset + (end - start) <= ring_.arena_bytes());
  auto free_read = std::find_if(reads_.begin(), reads_.end(), [](const PendingRead& r) { return !r.used; });
  if (free_read == reads_.end() || !ring_has_room(1)) return -EBUSY;
  *free_read = read;
  ring::Op op{ring::OpKind::read, fd, dest_offset, static_cast<uint32_t>(end - start), start, 0, ring::Purpose::wal_read};
  ring_.prep(op, this, cookie(OpType::read, static_cast<uint64_t>(free_read - reads_.begin())), seq, 0);
  ops_in_flight_++;
  read_disk_bytes_ += end - start;
  return 0;
}

void Writer::on_read(uint32_t index, int32_t result) {
  PendingRead r = reads_.at(index);
  BW_ASSERT(r.used);
  reads_[index].used = false;
  if (result < 0) return js_sink_->on_complete(r.tag, result);
  if (static_cast<uint32_t>(result) < r.read_bytes) return js_sink_->on_complete(r.tag, -EIO);
  if (!r.verify) return js_sink_->on_complete(r.tag, static_cast<int32_t>(r.read_bytes));
  RecordHeader header{};
  const uint8_t* src = ring_.arena() + r.dest_offset + r.lead_bytes;
  RecordError err = decode_record(src, r.span_bytes, &header);
  js_sink_->on_complete(r.tag, err == RecordError::ok ? static_cast<int32_t>(r.lead_bytes) : -EBADMSG);
}

}  // namespace blockwal::wal
