#include "commit/pipeline.h"

#include <algorithm>

#include "util/assert.h"

namespace blockwal::commit {

Pipeline::Pipeline(uint64_t lsn_next) : lsn_next_(lsn_next) {
  BW_ASSERT(lsn_next >= 1);
  lsn_durable_target_ = lsn_next - 1;
}

void Pipeline::group_submitted(uint64_t lsn_first, uint64_t lsn_last, uint64_t file, bool dsync) {
  BW_ASSERT(!failed());
  BW_ASSERT(lsn_first == lsn_next_);
  BW_ASSERT(lsn_last >= lsn_first);
  pending_.push_back(Entry{lsn_first, lsn_last, file, 0, dsync, State::in_flight});
  lsn_next_ = lsn_last + 1;
  in_flight_count_++;
}

void Pipeline::group_completed(uint64_t lsn_first, int64_t result, int64_t expected_bytes) {
  auto it = std::find_if(pending_.begin(), pending_.end(), [&](const Entry& e) {
    return e.lsn_first == lsn_first && e.state == State::in_flight;
  });
  BW_ASSERT(it != pending_.end());
  BW_ASSERT(in_flight_count_ > 0);
  in_flight_count_--;
  if (failed()) return;
  if (result != expected_bytes) {
    // A short write is as fatal as an error: the frame on disk is torn.
    fail(result < 0 ? static_cast<int>(-result) : 5 /* EIO */, false, it->file);
    return;
  }
  if (it->dsync) {
    pending_.erase(it);
    return;
  }
  it->state = State::written;
  it->written_stamp = ++clock_;
  merge_written_neighbours(static_cast<size_t>(it - pending_.begin()));
}

// Adjacent written ranges of one file become one entry: a later sync covering
// the newer stamp covers both, so the merged stamp is the larger one. This keeps
// pending_ bounded however many non-durable groups pile up before a flush.
void Pipeline::merge_written_neighbours(size_t index) {
  auto mergeable = [&](size_t a, size_t b) {
    const Entry& x = pending_[a];
    const Entry& y = pending_[b];
    return x.state == State::written && y.state == State::written && x.file == y.file &&
           x.lsn_last + 1 == y.lsn_first;
  };
  if (index + 1 < pending_.size() && mergeable(index, index + 1)) {
    pending_[index].lsn_last = pending_[index + 1].lsn_last;
    pending_[index].written_stamp = std::max(pending_[index].written_stamp, pending_[index + 1].written_stamp);
    pending_.erase(pending_.begin() + static_cast<long>(index) + 1);
  }
  if (index > 0 && mergeable(index - 1, index)) {
    pending_[index - 1].lsn_last = pending_[index].lsn_last;
    pending_[index - 1].written_stamp = std::max(pending_[index - 1].written_stamp, pending_[index].written_stamp);
    pending_.erase(pending_.begin() + static_cast<long>(index));
  }
}

void Pipeline::request_durable(uint64_t lsn) {
  lsn_durable_target_ = std::max(lsn_durable_target_, lsn);
}

bool Pipeline::sync_wanted(uint64_t* file) const {
  if (failed()) return false;
  for (const Entry& e : pending_) {
    if (e.lsn_first > lsn_durable_target_) break;
    if (e.state != State::written) continue;
    // An fdatasync already in flight for this file covers the entry if it was
    // submitted after the entry's write completed.
    bool covered = std::any_of(syncs_.begin(), syncs_.end(), [&](const Sync& s) {
      return s.file == e.file && s.stamp >= e.written_stamp;
    });
    if (covered) continue;
    // Wait for earlier in-flight non-dsync groups of the same file, so one sync
    // covers them all (concurrent flushes merge).
    bool earlier_in_flight = std::any_of(pending_.begin(), pending_.end(), [&](const Entry& o) {
      return o.state == State::in_flight && !o.dsync && o.file == e.file && o.lsn_first < e.lsn_first;
    });
    if (earlier_in_flight) continue;
    *file = e.file;
    return true;
  }
  return false;
}

uint64_t Pipeline::sync_submitted(uint64_t file) {
  BW_ASSERT(!failed());
  uint64_t id = sync_id_next_++;
  syncs_.push_back(Sync{id, file, clock_});
  return id;
}

void Pipeline::sync_completed(uint64_t sync_id, int64_t result) {
  auto it = std::find_if(syncs_.begin(), syncs_.end(), [&](const Sync& s) { return s.id == sync_id; });
  BW_ASSERT(it != syncs_.end());
  Sync sync = *it;
  syncs_.erase(it);
  if (failed()) return;
  if (result < 0) {
    fail(static_cast<int>(-result), true, sync.file);
    return;
  }
  std::erase_if(pending_, [&](const Entry& e) {
    return e.state == State::written && e.file == sync.file && e.written_stamp <= sync.stamp;
  });
}

uint64_t Pipeline::lsn_written() const {
  for (const Entry& e : pending_) {
    if (e.state == State::in_flight) return e.lsn_first - 1;
  }
  return lsn_next_ - 1;
}

uint64_t Pipeline::lsn_durable() const {
  if (pending_.empty()) return lsn_next_ - 1;
  return pending_.front().lsn_first - 1;
}

void Pipeline::fail(int err, bool during_sync, uint64_t file) {
  if (failed()) return;
  failure_ = Failure{err, during_sync, file};
}

}  // namespace blockwal::commit
