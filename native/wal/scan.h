// Recovery scan: reads a WAL directory and returns the log it holds.
//
// Runs off the JS thread (an AsyncWorker at open) with O_DIRECT reads in large
// chunks, the next one prefetched through a small private io_uring; it never
// touches the volume's ring. The log is the longest chain of valid frames with
// consecutive LSNs, following segments in seq order. A bad frame ends the log
// (torn tail) unless a later valid frame proves it had been acknowledged
// durable (frame.lsn_durable_hint >= the bad frame's first LSN):
// then the scan fails with the segment and offset of the bad frame.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "wal/format.h"

namespace blockwal::wal {

struct ScanOptions {
  std::string dir;          // the WAL directory
  uint64_t lsn_from = 1;    // first LSN the caller needs (records below are checked but not returned)
  uint64_t segment_bytes = kSegmentBytesDefault;
  bool want_control_payloads = true;
};

struct ScannedRecord {
  uint64_t lsn;
  uint64_t epoch;
  uint64_t lba;
  uint64_t length_blocks;
  uint64_t checksum;
  uint64_t segment_seq;
  uint32_t offset_bytes;   // where the record header starts in its segment
  uint32_t payload_bytes;
  RecordKind kind;
};

enum class SegmentRole : uint8_t {
  chain = 1,   // holds part of the log
  free = 2,    // every record below lsn_from, or no valid frame (stale): reusable
  spare = 3,   // seq above the end of the log: reusable
};

struct ScannedSegment {
  uint64_t seq;
  uint64_t lsn_first;  // 0 when it holds no valid frame
  uint64_t lsn_last;   // 0 when it holds no valid frame in the chain
  SegmentRole role;
};

struct ScanResult {
  bool ok = true;
  std::string error;            // mid-log corruption or I/O failure, human-readable
  int error_errno = 0;          // for I/O failures
  uint64_t error_segment_seq = 0;
  uint64_t error_offset_bytes = 0;

  std::vector<ScannedRecord> records;       // lsn >= lsn_from, in LSN order
  std::vector<uint8_t> control_payloads;    // payloads of control records, concatenated in record order
  std::vector<ScannedSegment> segments;     // every segment file, by seq
  uint64_t lsn_next = 1;                    // the LSN the writer assigns next
  uint64_t lsn_first_retained = 0;          // lowest LSN still readable in the chain (0 if none)
  uint64_t seq_max = 0;                     // the highest seq of any file (0 if none)
  uint64_t bytes_scanned = 0;
  uint64_t torn_tail_bytes = 0;             // bytes of bad frames dropped at the tail
};

ScanResult scan_wal(const ScanOptions& options);

// File name of a segment: 16 lower-case hex digits + ".wal".
std::string segment_file_name(uint64_t seq);
// Parses a segment file name; false when the name is not one.
bool parse_segment_file_name(const std::string& name, uint64_t* seq);

}  // namespace blockwal::wal
