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
  pending_.push_back(Entry{lsn_first, lsn_last, file, clock_, 0, 0, dsync, State::in_flight});
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
  it->first_written_stamp = it->written_stamp;
  merge_written_neighbours(static_cast<size_t>(it - pending_.begin()));
}

// Adjacent written ranges of one file become one entry, which keeps pending_
// bounded however many non-durable groups pile up before a flush. The merged
// stamp is the larger one, so only a sync covering both covers the merge:
// ranges that a sync in flight tells apart (it covers one, not the other)
// stay apart until it completes. Merging them would hand the older range the
// newer stamp, and under a steady stream of group completions no sync would
// ever cover it: the durable LSN would stall while a sync went out after
// every group.
bool Pipeline::mergeable(size_t a, size_t b) const {
  const Entry& x = pending_[a];
  const Entry& y = pending_[b];
  if (x.state != State::written || y.state != State::written || x.file != y.file || x.lsn_last + 1 != y.lsn_first) {
    return false;
  }
  return std::none_of(syncs_.begin(), syncs_.end(), [&](const Sync& s) {
    return s.file == x.file && (s.stamp >= x.written_stamp) != (s.stamp >= y.written_stamp);
  });
}

void Pipeline::merge_into(size_t index) {
  Entry& x = pending_[index];
  const Entry& y = pending_[index + 1];
  x.lsn_last = y.lsn_last;
  x.written_stamp = std::max(x.written_stamp, y.written_stamp);
  x.first_written_stamp = std::min(x.first_written_stamp, y.first_written_stamp);
  pending_.erase(pending_.begin() + static_cast<long>(index) + 1);
}

void Pipeline::merge_written_neighbours(size_t index) {
  if (index + 1 < pending_.size() && mergeable(index, index + 1)) merge_into(index);
  if (index > 0 && mergeable(index - 1, index)) merge_into(index - 1);
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
    // Wait for the file's non-dsync groups up to the target that were in
    // flight when this range's first write completed (earlier ones and
    // later ones alike), so one sync covers them all: concurrent flushes
    // merge. A group submitted after that point never holds the sync.
    bool wait_for_in_flight = std::any_of(pending_.begin(), pending_.end(), [&](const Entry& o) {
      return o.state == State::in_flight && !o.dsync && o.file == e.file && o.lsn_first <= lsn_durable_target_ &&
             o.submit_stamp < e.first_written_stamp;
    });
    if (wait_for_in_flight) continue;
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
  // Ranges this sync told apart may merge now.
  for (size_t i = pending_.size(); i-- > 1;) {
    if (mergeable(i - 1, i)) merge_into(i - 1);
  }
}

bool Pipeline::group_in_flight(uint64_t lsn_first) const {
  return std::any_of(pending_.begin(), pending_.end(), [&](const Entry& e) {
    return e.lsn_first == lsn_first && e.state == State::in_flight;
  });
}

bool Pipeline::sync_in_flight(uint64_t sync_id) const {
  return std::any_of(syncs_.begin(), syncs_.end(), [&](const Sync& s) { return s.id == sync_id; });
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
