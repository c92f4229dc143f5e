// Group commit bookkeeping. Pure: no I/O, no clock. The WAL writer tells it
// what it submitted and what completed; it answers which LSNs are written and
// which are durable, and which files need a sync for a requested target.
//
// Durability rules (strict POSIX, not "whatever Linux happens to do"):
//  - a group written with RWF_DSYNC is durable when its write completes;
//  - an fdatasync of file f makes durable every group on f whose write had
//    completed before the sync was submitted (never one still in flight);
//  - nothing else makes anything durable.
// lsn_written and lsn_durable are contiguous prefixes: an LSN counts only
// when every LSN below it does too, because recovery keeps only the longest
// valid prefix of the log. Any failed write or sync is fatal and final: the
// prefixes stop advancing and no new submission is accepted (never retried).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace blockwal::commit {

struct Failure {
  int err = 0;           // positive errno; 0 = healthy
  bool during_sync = false;
  uint64_t file = 0;
};

class Pipeline {
 public:
  explicit Pipeline(uint64_t lsn_next);

  // A group [lsn_first, lsn_last] was submitted to `file`. Groups are
  // submitted in LSN order without gaps.
  void group_submitted(uint64_t lsn_first, uint64_t lsn_last, uint64_t file, bool dsync);
  // The write of the group starting at lsn_first completed with `result`
  // (bytes written, or -errno).
  void group_completed(uint64_t lsn_first, int64_t result, int64_t expected_bytes);

  // Asks for every LSN <= lsn to become durable.
  void request_durable(uint64_t lsn);
  // A file that needs an fdatasync now for the requested target, or false.
  // Only asks when every group it would cover has completed its write, and
  // waits for the file's groups up to the target that were already in
  // flight when the oldest of them completed: one sync then covers them
  // all (on a disk without FUA each sync is a cache flush that stalls the
  // whole queue). Groups submitted later never hold it back, so a stream of
  // requests cannot postpone a sync for ever.
  bool sync_wanted(uint64_t* file) const;
  // An fdatasync of `file` was submitted; returns its id.
  uint64_t sync_submitted(uint64_t file);
  void sync_completed(uint64_t sync_id, int64_t result);

  uint64_t lsn_submitted() const { return lsn_next_ - 1; }
  uint64_t lsn_written() const;
  uint64_t lsn_durable() const;
  uint64_t lsn_durable_target() const { return lsn_durable_target_; }
  uint32_t groups_in_flight() const { return in_flight_count_; }
  uint32_t syncs_in_flight() const { return static_cast<uint32_t>(syncs_.size()); }
  bool failed() const { return failure_.err != 0; }
  // Whether a group starting at lsn_first is in flight / a sync with this id
  // is: the preconditions of group_completed and sync_completed, for callers
  // that cannot vouch for them (the binding's test hook).
  bool group_in_flight(uint64_t lsn_first) const;
  bool sync_in_flight(uint64_t sync_id) const;
  const Failure& failure() const { return failure_; }
  // Entries tracked: in-flight groups and written ranges not yet durable.
  // Adjacent written ranges of a file merge unless a sync in flight covers
  // one and not the other; a completed RWF_DSYNC group leaves a gap between
  // its neighbours until a sync covers them.
  size_t pending_entries() const { return pending_.size(); }

 private:
  enum class State : uint8_t { in_flight, written };
  struct Entry {
    uint64_t lsn_first;
    uint64_t lsn_last;
    uint64_t file;
    uint64_t submit_stamp;   // clock value when the write was submitted
    uint64_t written_stamp;  // clock value when the write completed
    uint64_t first_written_stamp;  // the oldest written_stamp merged in
    bool dsync;
    State state;
  };
  struct Sync {
    uint64_t id;
    uint64_t file;
    uint64_t stamp;  // covers written entries with written_stamp <= stamp
  };

  bool mergeable(size_t a, size_t b) const;
  void merge_into(size_t index);
  void merge_written_neighbours(size_t index);
  void fail(int err, bool during_sync, uint64_t file);

  std::vector<Entry> pending_;  // not yet durable, in LSN order
  std::vector<Sync> syncs_;     // in flight
  uint64_t lsn_next_;
  uint64_t lsn_durable_target_ = 0;
  uint64_t clock_ = 0;
  uint64_t sync_id_next_ = 1;
  uint32_t in_flight_count_ = 0;
  Failure failure_;
};

}  // namespace blockwal::commit
