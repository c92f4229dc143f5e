// The WAL writer: appends records into commit groups (frames) held in arena
// slots, submits them through the ring, and manages segment files: a fresh
// segment after every open, spares prepared ahead of need (recycled by rename
// when a released segment exists, else created by writing zeros), released
// segments recycled rather than deleted.
//
// Group commit: records join the open group; an idle pipeline submits at once
// (kick() once per event-loop iteration, from JS, after its drains); up to
// groups_in_flight groups are in flight; a group carrying a FUA record or
// covered by a durability request is written with RWF_DSYNC. With a group
// hold set (a replica, whose acknowledgements do not wait for its own WAL
// writes), an idle pipeline keeps the open group open for more records up to
// the hold, unless it carries a FUA record or a durability request reaches
// it: fewer, larger writes, each of which costs a submission on this kind of
// machine whatever its size. What is written
// and durable is decided by commit::Pipeline alone (one owner of the durable
// LSN). Any write or sync error, including segment preparation, is fatal: no
// later append is accepted and nothing further is acknowledged.
//
// Back-pressure: append returns busy when no slot or segment space is free; the
// caller waits for a drain and retries. Nothing here grows without bound.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "commit/pipeline.h"
#include "ring/ring.h"
#include "wal/format.h"
#include "wal/gather.h"

namespace blockwal::wal {

// The largest read_span: bounds one flusher read (a few MiB in practice).
constexpr uint32_t kReadSpanBytesMax = 64u << 20;
static_assert(kReadSpanBytesMax % kBlockBytes == 0);

struct ExistingSegment {
  uint64_t seq;
  uint64_t lsn_first;  // 0 when it holds no part of the log
  uint64_t lsn_last;
  bool in_chain;       // holds records the caller may still need
};

struct WriterOptions {
  std::string dir;
  uint64_t segment_bytes = kSegmentBytesDefault;
  uint32_t group_bytes = kGroupBytesDefault;
  uint32_t groups_in_flight = kGroupsInFlightDefault;
  uint32_t group_slots = 16;
  uint32_t segments_max = 64;
  // Bytes of recently sealed frames kept in memory after their group slot is
  // reused, so the flusher and catch-up reads of recent records do not go to
  // the disk (0: only the group slots serve reads).
  uint64_t cache_bytes = 0;
  uint64_t lsn_next = 1;
  uint64_t seq_next = 1;  // greater than every existing seq
  std::vector<ExistingSegment> existing;
};

enum class AppendStatus : uint8_t { ok = 0, busy = 1, failed = 2, closed = 3 };
enum class BusyReason : uint8_t { none = 0, slots = 1, segment = 2, wal_full = 3 };

struct AppendResult {
  uint64_t lsn;
  uint64_t segment_seq;
  uint64_t offset_bytes;  // of the record header within its segment
  // The encoded record (header + payload + padding) in its group buffer:
  // valid until the next call into the writer.
  const uint8_t* record;
  uint32_t span_bytes;
};

// Trace event kinds the writer adds to the ring trace.
enum class WalTrace : uint8_t { written = 1, durable = 2, group = 3 };

class Writer : public ring::Owner {
 public:
  // js_sink receives the completions of record reads (cookie = caller's tag).
  Writer(ring::Ring& ring, ring::Owner* js_sink);
  ~Writer() override;

  // Opens the directory and existing segments and reserves arena space.
  // Returns 0 or -errno with *what naming the step.
  int open(const WriterOptions& options, std::string* what);

  AppendStatus append(const RecordFields& fields, const uint8_t* payload, uint32_t payload_bytes, bool fua,
                      AppendResult* out);
  // Makes every LSN <= lsn durable (a flush, or FUA of an earlier record).
  void request_durable(uint64_t lsn);
  // Segments whose records are all <= lsn may be recycled (checkpoint/retention).
  void release(uint64_t lsn);
  // Submits what can go now. Call at the end of each JS turn and after drains.
  // Returns how many microseconds the open group is still held (0 when none
  // is): the caller kicks again by then.
  uint32_t kick();
  // The group hold (microseconds, 0 = none); takes effect at the next kick.
  void set_group_hold_us(uint32_t us) { group_hold_us_ = us; }
  uint32_t group_hold_us() const { return group_hold_us_; }

  // Reads the record at (seq, offset) of span_bytes into the arena at
  // dest_offset (capacity dest_bytes). Returns 1 when served from memory (the
  // record starts at dest_offset), 0 when a read was submitted (the js_sink
  // later gets tag with the record's offset from dest_offset, or -errno;
  // -EBADMSG when it fails verification), or -errno now.
  int read_record(uint64_t seq, uint64_t offset_bytes, uint32_t span_bytes, uint64_t dest_offset,
                  uint64_t dest_bytes, uint64_t tag);
  // Reads length_bytes of segment seq at offset_bytes (both 4 KiB multiples,
  // at most kReadSpanBytesMax) into the arena at dest_offset (4 KiB aligned),
  // unverified: the caller verifies the records it uses (wal/gather.h). For
  // the flusher, which reads many records per call. Returns 1 when the range
  // was copied from group slots still in memory, 0 when a read was submitted
  // (the js_sink later gets tag with length_bytes, or -errno; a short read is
  // -EIO), or -errno now: -ENOENT when seq is not a segment of the log,
  // -EINVAL for a range outside it, -EBUSY when no read or ring slot is free
  // (retry after a drain).
  int read_span(uint64_t seq, uint64_t offset_bytes, uint32_t length_bytes, uint64_t dest_offset, uint64_t tag);
  // The flusher's shortcut past read_span + gather_blocks: when every record
  // the ops name (src_offset = the record's byte offset in segment seq) lies
  // in a sealed frame still in memory (a group slot or the frame cache), its
  // blocks are copied straight from there into the arena (wal/gather.h,
  // gather_blocks_trusted: the header is checked, the payload not hashed
  // again: these are the bytes this writer encoded). Returns 1 when the
  // records were all in memory, with *err saying whether every op was copied
  // (ok) or which one failed (*failed_index; the ops before it were copied); 0
  // when some record is not in memory (nothing copied: read the span);
  // -ENOENT when seq is not a segment of the log. The caller checks the
  // destinations against the arena.
  int gather_from_memory(uint64_t seq, const GatherOp* ops, uint32_t count, GatherError* err, uint32_t* failed_index);

  void on_complete(uint64_t cookie, int32_t result) override;

  uint64_t lsn_next() const { return lsn_next_; }
  uint64_t lsn_written() const { return pipeline_.lsn_written(); }
  uint64_t lsn_durable() const { return pipeline_.lsn_durable(); }
  bool failed() const { return pipeline_.failed() || prep_error_ != 0; }
  int failure_errno() const;
  std::string failure_message() const;
  BusyReason busy_reason() const { return busy_reason_; }
  bool spare_ready() const { return !spares_.empty(); }
  // The lowest LSN still held by a segment of the log (0 when none).
  uint64_t lsn_tail() const;
  uint32_t segment_count() const { return static_cast<uint32_t>(segments_.size()); }
  uint64_t active_seq() const { return active_seq_; }
  uint64_t active_offset() const { return cursor_; }
  uint32_t ops_in_flight() const { return ops_in_flight_; }
  uint64_t groups_submitted() const { return groups_submitted_; }
  uint64_t dsync_groups_submitted() const { return dsync_groups_submitted_; }
  uint64_t syncs_submitted() const { return syncs_submitted_; }
  uint64_t bytes_written() const { return bytes_written_; }
  // Bytes read_span and read_record served from memory (slots or the frame
  // cache) and from the disk.
  uint64_t read_memory_bytes() const { return read_memory_bytes_; }
  uint64_t read_disk_bytes() const { return read_disk_bytes_; }
  // Closes every file. Asserts nothing is in flight.
  void close();

 private:
  enum class SlotState : uint8_t { free, open, sealed, in_flight, written };
  struct Slot {
    uint64_t arena_offset;
    SlotState state;
    FrameBuilder builder;
    uint64_t segment_seq;
    uint64_t file_offset;
    uint32_t frame_bytes;
    bool has_fua;
  };
  enum class SegState : uint8_t { chain, active, spare, free, preparing };
  struct Segment {
    uint64_t seq;
    int fd;
    SegState state;
    uint64_t lsn_first;
    uint64_t lsn_last;
  };
  enum class OpType : uint8_t { group_write = 1, sync = 2, prep_write = 3, prep_fsync = 4, dir_fsync = 5, read = 6 };
  struct PendingRead {
    uint64_t tag;
    uint64_t dest_offset;
    uint32_t lead_bytes;
    uint32_t span_bytes;
    uint32_t read_bytes;
    bool verify;  // read_record: decode the record; read_span: bytes only
    bool used;
  };

  static uint64_t cookie(OpType type, uint64_t index) { return (static_cast<uint64_t>(type) << 56) | index; }
  bool open_group(uint32_t span_bytes);
  void seal_open_group();
  uint32_t hold_left_us() const;
  void submit_sealed();
  void submit_syncs();
  void prepare_step();
  bool start_recycle();
  bool start_create();
  void finish_prepare_write(int32_t result);
  void finish_prepare_fsync(int32_t result);
  void finish_dir_fsync(int32_t result);
  void fail_prepare(int err, const std::string& what);
  void on_group_written(uint32_t slot_index, int32_t result);
  void on_read(uint32_t read_index, int32_t result);
  bool copy_from_memory(uint64_t seq, uint64_t start, uint64_t end, uint64_t dest_offset);
  const uint8_t* memory_at(uint64_t seq, uint64_t at, uint64_t* until) const;
  // Segment seq when it is part of the log (chain or active), else nullptr.
  const Segment* log_segment(uint64_t seq) const;
  void cache_frame(const Slot& s);
  int submit_read(int fd, uint64_t seq, uint64_t start, uint64_t end, uint64_t dest_offset, const PendingRead& read);
  void trace_progress();
  bool ring_has_room(uint32_t ops) const;
  std::string segment_path(uint64_t seq, bool tmp) const;

  ring::Ring& ring_;
  ring::Owner* js_sink_;
  WriterOptions options_;
  commit::Pipeline pipeline_{1};
  int dir_fd_ = -1;
  bool closed_ = true;

  std::vector<Slot> slots_;
  uint32_t slot_bytes_ = 0;
  uint32_t next_slot_ = 0;
  int32_t open_slot_ = -1;
  uint64_t open_ns_ = 0;  // CLOCK_MONOTONIC when the open group was opened
  uint32_t group_hold_us_ = 0;
  std::vector<uint32_t> sealed_;  // FIFO in LSN order
  uint64_t zero_offset_ = 0;      // arena: a zeroed buffer for segment creation
  uint64_t arena_first_ = 0;      // start of everything this writer reserved
  uint64_t arena_reserved_ = 0;
  uint32_t zero_bytes_ = 0;

  std::map<uint64_t, Segment> segments_;
  std::vector<uint64_t> spares_;  // ready, in seq order
  uint64_t active_seq_ = 0;
  int active_fd_ = -1;
  uint64_t cursor_ = 0;
  uint64_t lsn_next_ = 1;
  uint64_t seq_next_ = 1;

  // Segment preparation (one at a time).
  uint64_t prep_seq_ = 0;
  int prep_fd_ = -1;
  uint64_t prep_next_offset_ = 0;
  uint32_t prep_writes_in_flight_ = 0;
  bool prep_rename_pending_ = false;  // created file: rename .tmp after fsync
  int prep_error_ = 0;
  std::string prep_error_what_;

  // The frame cache: a byte ring of cache_bytes holding sealed frames in
  // (segment seq, file offset) order, which is also their order in the ring.
  struct CachedFrame {
    uint64_t seq;
    uint64_t file_offset;
    uint64_t pos;  // in cache_
    uint32_t bytes;
  };
  uint8_t* cache_ = nullptr;
  uint64_t cache_head_ = 0;
  std::deque<CachedFrame> cache_frames_;
  uint64_t read_memory_bytes_ = 0;
  std::vector<const uint8_t*> gather_records_;  // gather_from_memory's scratch
  uint64_t read_disk_bytes_ = 0;

  std::vector<PendingRead> reads_;
  uint32_t ops_in_flight_ = 0;
  BusyReason busy_reason_ = BusyReason::none;
  uint64_t traced_written_ = 0;
  uint64_t traced_durable_ = 0;
  uint64_t groups_submitted_ = 0;
  uint64_t dsync_groups_submitted_ = 0;
  uint64_t syncs_submitted_ = 0;
  uint64_t bytes_written_ = 0;
};

}  // namespace blockwal::wal
