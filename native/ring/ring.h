// io_uring ownership: setup, SQE preparation, submission and CQE draining.
// Knows nothing about the WAL. Each operation occupies a preallocated slot
// whose index is the SQE's user_data; a completion is handed to the slot's
// owner. The ring belongs to the JS thread: every call happens there.
//
// The arena is one 4 KiB-aligned allocation made at start-up, registered with
// the ring when RLIMIT_MEMLOCK allows (READ_FIXED/WRITE_FIXED), otherwise used
// with plain READ/WRITE. Every O_DIRECT buffer comes from it.
//
// Test hooks (always compiled, off by default): fault rules that turn the n-th
// matching operation into an error without touching the disk; a seeded shuffle
// of each drained batch of completions; a trace of submissions, completions
// and owner events for checking ordering properties; a recording (the trace
// plus a copy of every write's bytes, each file's identity and the listing of
// every directory at its fsync) from which test/support/crash_images.ts builds
// the disk states a power cut could leave. Off, each hook costs one branch.
#pragma once

#include <liburing.h>

#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace blockwal::ring {

enum class OpKind : uint8_t { read = 1, write = 2, fsync = 3, fdatasync = 4, punch_hole = 5, nop = 6 };

class Owner {
 public:
  virtual ~Owner() = default;
  virtual void on_complete(uint64_t cookie, int32_t result) = 0;
};

// What an operation is for: lets fault rules and traces target one kind of
// traffic (a WAL group write, a WAL sync, ...).
enum class Purpose : uint8_t { js = 0, wal_group = 1, wal_sync = 2, wal_prepare = 3, wal_read = 4, any = 255 };

struct Op {
  OpKind kind;
  int fd;
  uint64_t arena_offset;  // read/write: where in the arena
  uint32_t length_bytes;  // read/write/punch_hole
  uint64_t file_offset;   // read/write/punch_hole
  int rw_flags;           // write: RWF_DSYNC or 0
  Purpose purpose;
};

struct FaultRule {
  OpKind kind;
  Purpose purpose;   // Purpose::any matches every purpose
  uint32_t skip;     // let this many matching ops through first
  int32_t err;       // positive errno to report
  bool short_write;  // report a short write instead of an error
  bool active;
};

enum class TraceType : uint8_t { submit = 1, complete = 2, event = 3 };

struct TraceEvent {
  uint64_t seq;
  TraceType type;
  uint8_t kind;   // OpKind for submit/complete, owner-defined for events
  int32_t fd;
  uint64_t offset;
  uint32_t length;
  int32_t flags;
  int32_t result;
  uint64_t a;  // owner-defined (e.g. LSN range)
  uint64_t b;
  Purpose purpose;
  uint32_t slot;  // pairs a completion with its submission
  uint64_t time_ns;  // CLOCK_MONOTONIC when traced (submission: when queued)
};

// Recording: what reached (or may have reached) the disk, in order.
enum class RecordType : uint8_t { submit = 1, complete = 2, mark = 3, file = 4, dir = 5 };

// Bits of RecordEvent::bits.
constexpr uint8_t kRecordForced = 1;     // fault injection: the op never reached the disk
constexpr uint8_t kRecordChanged = 2;    // complete of a write: its buffer changed while in flight
constexpr uint8_t kRecordDirectory = 4;  // the fd is a directory

struct RecordEvent {
  uint64_t seq;
  RecordType type;
  uint8_t kind;  // OpKind for submit/complete, the caller's for marks
  Purpose purpose;
  uint8_t bits;
  int32_t fd;
  int32_t result;  // complete
  int32_t flags;   // submit/complete of a write: rw_flags (RWF_DSYNC)
  uint32_t slot;   // pairs a completion with its submission
  uint32_t length;
  uint64_t offset;
  uint64_t dev;  // file identity (st_dev, st_ino); 0 when unknown
  uint64_t ino;
  uint64_t a;  // submit: the owner's trace values; mark: the caller's
  uint64_t b;
  // Into Recording::data: a write's bytes (submit), a path (file), a listing
  // of {u64 ino, u64 size, u32 mode, u32 name bytes, name} entries (dir).
  uint64_t data_offset;
  uint64_t data_bytes;
  uint64_t time_ns;
};

struct Recording {
  std::vector<RecordEvent> events;
  std::vector<uint8_t> data;
  uint64_t cap_bytes = 0;
  bool overflow = false;  // the cap was reached: the recording is incomplete
};

class Ring {
 public:
  Ring() = default;
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // Returns 0 or -errno; on failure *what names the step.
  int init(uint32_t depth, uint64_t arena_bytes, bool register_buffers, std::string* what);
  void shutdown();

  int fd() const { return ring_.ring_fd; }
  uint8_t* arena() const { return arena_; }
  uint64_t arena_bytes() const { return arena_bytes_; }
  bool buffers_registered() const { return buffers_registered_; }
  // Set up with IORING_SETUP_COOP_TASKRUN: completions run at this thread's
  // next kernel entry rather than interrupting it.
  bool coop_taskrun() const { return coop_taskrun_; }
  // Reserves a region of the arena at start-up (bump allocation, 4 KiB aligned).
  // Returns false when the arena is too small.
  bool reserve(uint64_t bytes, uint64_t* arena_offset);
  // Returns the most recent reservation (LIFO), e.g. when a WAL closes.
  void unreserve(uint64_t arena_offset, uint64_t bytes);
  // JS takes [reserved_bytes, arena_bytes) for its own slices; from then on a
  // reservation may only reuse space released below that line.
  uint64_t claim_js_region();
  uint64_t reserved_bytes() const { return reserved_bytes_; }

  uint32_t depth() const { return depth_; }
  uint32_t in_flight() const { return in_flight_; }
  uint32_t slots_free() const { return static_cast<uint32_t>(free_slots_.size()); }

  // Queues one operation; asserts a slot is free (callers check slots_free()).
  // The trace records (a, b) with the submission.
  void prep(const Op& op, Owner* owner, uint64_t cookie, uint64_t trace_a = 0, uint64_t trace_b = 0);
  // Submits everything queued; returns 0 or -errno.
  int submit();
  // Reaps every available CQE and hands each to its owner (in a seeded
  // shuffled order when enabled). Returns the number reaped.
  uint32_t drain();

  // Test hooks.
  void add_fault(const FaultRule& rule) { faults_.push_back(rule); }
  void clear_faults() { faults_.clear(); }
  void set_shuffle(bool on, uint64_t seed);
  void set_trace(bool on) { tracing_ = on; }
  bool tracing() const { return tracing_; }
  void trace_event(uint8_t kind, uint64_t a, uint64_t b);
  static uint64_t now_ns();
  std::vector<TraceEvent> take_trace();
  // Starts a fresh recording bounded by cap_bytes (events + data), or stops.
  // Without with_data, writes are recorded without their bytes.
  void set_recording(bool on, uint64_t cap_bytes, bool with_data = true);
  bool recording() const { return recording_; }
  // Adds a caller's event (e.g. "acknowledged"); returns its seq (0: off).
  uint64_t record_mark(uint8_t kind, uint64_t a, uint64_t b);
  // Hands over what was recorded so far; recording continues if on.
  Recording take_recording();
  uint64_t recording_bytes() const;

 private:
  static constexpr uint64_t kNoData = UINT64_MAX;
  struct Slot {
    Owner* owner;
    uint64_t cookie;
    Op op;
    int32_t forced_result;  // fault injection: result to report instead
    bool forced;
    uint64_t recorded_data = kNoData;  // recording: the copy of a write's bytes
    uint64_t recorded_generation = 0;
  };

  bool match_fault(const Op& op, int32_t* result);
  void dispatch(uint32_t slot_index, int32_t result);
  void record_submit(const Op& op, uint32_t slot_index, uint64_t a, uint64_t b);
  void record_complete(const Slot& slot, uint32_t slot_index, int32_t result);
  bool record_room(uint64_t bytes);
  uint64_t record_bytes(const uint8_t* bytes, uint64_t length);
  RecordEvent& record_push(RecordType type);
  void record_identity(int fd, RecordEvent* e);
  void record_directory(int fd, uint64_t dev, uint64_t ino);

  io_uring ring_{};
  bool ring_ready_ = false;
  uint8_t* arena_ = nullptr;
  uint64_t arena_bytes_ = 0;
  uint64_t reserved_bytes_ = 0;
  uint64_t reserve_limit_ = 0;
  bool buffers_registered_ = false;
  bool coop_taskrun_ = false;
  uint32_t depth_ = 0;
  uint32_t in_flight_ = 0;
  uint32_t queued_ = 0;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_slots_;
  std::vector<std::pair<uint32_t, int32_t>> batch_;  // reaped completions of one drain
  std::vector<FaultRule> faults_;
  bool shuffle_ = false;
  std::mt19937_64 shuffle_rng_;
  bool tracing_ = false;
  uint64_t trace_seq_ = 0;
  std::vector<TraceEvent> trace_;
  bool recording_ = false;
  bool record_data_ = true;
  uint64_t record_seq_ = 0;
  uint64_t record_generation_ = 0;  // bumped by take: older slots' copies are gone
  Recording rec_;
  std::set<std::pair<uint64_t, uint64_t>> rec_files_seen_;  // (dev, ino)
};

}  // namespace blockwal::ring
