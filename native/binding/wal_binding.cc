// Wal: the JS face of wal::Writer. Appends cross one call per record (the
// payload is copied into the open group in the arena, XXH3 computed there);
// progress (written and durable LSNs, failure, back-pressure) is published
// into a shared Float64Array after every append and every drain, so JS reads
// numbers instead of making calls. The flusher's path crosses in batches too:
// readSpan reads many records of a segment into the arena at once, and one
// gatherBlocks call verifies them and copies their blocks into write buffers.
#include <napi.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "binding/errors.h"
#include "binding/init.h"
#include "binding/ring_binding.h"
#include "util/assert.h"
#include "wal/gather.h"
#include "wal/writer.h"

namespace blockwal::binding {

namespace {

// Layout of the shared state array (mirrored in lib/native/wal.ts).
enum StateField : uint32_t {
  kLsnNext = 0,
  kLsnWritten,
  kLsnDurable,
  kFailedErrno,
  kBusyReason,
  kSpareReady,
  kActiveSeq,
  kActiveOffset,
  kOpsInFlight,
  kGroupsSubmitted,
  kDsyncGroups,
  kSyncsSubmitted,
  kBytesWritten,
  kSegmentCount,
  kAppendSeq,
  kAppendOffset,
  kLsnTail,
  kReadMemoryBytes,
  kReadDiskBytes,
  kStateFields,
};

// Layout of the shared append-arguments array: JS writes the record's fields
// here and calls append(payload), so one record costs one crossing with one
// argument (no unwrap, no per-field conversion).
enum AppendField : uint32_t { kArgKind = 0, kArgEpoch, kArgLba, kArgLengthBlocks, kArgFua, kAppendFields };

// Fields of one gatherBlocks descriptor (mirrored in lib/native/wal.ts).
enum GatherField : uint32_t { kGatherSrc = 0, kGatherSpan, kGatherLsn, kGatherFirstIndex, kGatherBlocks, kGatherDst, kGatherFields };
// Descriptors per gatherBlocks call, at most (a WAL extent's pieces).
constexpr uint32_t kGatherOpsMax = 1u << 16;

constexpr double kSafeIntegerMax = 9007199254740991.0;  // 2^53 - 1
constexpr double kCacheBytesMax = 64.0 * (1ull << 30);

constexpr size_t kRecordChecksumOffset = offsetof(wal::RecordHeader, checksum);
constexpr int32_t kAppendBusy = 0;
constexpr int32_t kAppendFailed = -1;
constexpr int32_t kAppendClosed = -2;

double num(Napi::Object o, const char* key, double fallback) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : fallback;
}

}  // namespace

class WalWrap : public Napi::ObjectWrap<WalWrap> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "Wal",
                       {
                           InstanceMethod<&WalWrap::request_durable>("requestDurable"),
                           InstanceMethod<&WalWrap::release>("release"),
                           InstanceMethod<&WalWrap::set_group_hold>("setGroupHold"),
                           InstanceMethod<&WalWrap::read_record>("readRecord"),
                           InstanceMethod<&WalWrap::read_span>("readSpan"),
                           InstanceMethod<&WalWrap::gather_blocks>("gatherBlocks"),
                           InstanceMethod<&WalWrap::gather_from_memory>("gatherFromMemory"),
                           InstanceMethod<&WalWrap::failure_message>("failureMessage"),
                           InstanceMethod<&WalWrap::close>("close"),
                       });
  }

  // new Wal(ring, options)
  explicit WalWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<WalWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsObject()) {
      throw Napi::TypeError::New(env, "new Wal(ring, options)");
    }
    Napi::Object ring_obj = info[0].As<Napi::Object>();
    ring_ = Napi::ObjectWrap<RingWrap>::Unwrap(ring_obj);
    if (ring_ == nullptr || !ring_->open()) throw_error(env, "ERR_RING_CLOSED", "the ring is closed");
    ring_ref_ = Napi::Persistent(ring_obj);
    wal::WriterOptions options = parse_options(env, info[1].As<Napi::Object>());
    segment_bytes_ = options.segment_bytes;

    writer_ = std::make_unique<wal::Writer>(ring_->ring(), ring_);
    std::string what;
    int rc = writer_->open(options, &what);
    if (rc < 0) {
      writer_.reset();
      throw_error(env, rc == -ENOMEM ? "ERR_ARENA" : "ERR_OPEN", "cannot open the WAL: " + what, -rc);
    }
    Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, kStateFields * sizeof(double));
    state_ = static_cast<double*>(buf.Data());
    state_ref_ = Napi::Persistent(buf.As<Napi::Object>());
    info.This().As<Napi::Object>().Set("state", Napi::Float64Array::New(env, kStateFields, buf, 0));
    Napi::ArrayBuffer args = Napi::ArrayBuffer::New(env, kAppendFields * sizeof(double));
    append_args_ = static_cast<double*>(args.Data());
    args_ref_ = Napi::Persistent(args.As<Napi::Object>());
    info.This().As<Napi::Object>().Set("appendArgs", Napi::Float64Array::New(env, kAppendFields, args, 0));
    // The last appended record's checksum (a u64 does not fit the doubles of state).
    Napi::ArrayBuffer sum = Napi::ArrayBuffer::New(env, sizeof(uint64_t));
    append_checksum_ = static_cast<uint64_t*>(sum.Data());
    checksum_ref_ = Napi::Persistent(sum.As<Napi::Object>());
    info.This().As<Napi::Object>().Set("appendChecksum", Napi::BigUint64Array::New(env, 1, sum, 0));
    // Bound to this object (it stays referenced until close; after close the
    // function reports closed).
    info.This().As<Napi::Object>().Set("append", Napi::Function::New(env, &WalWrap::append_bound, "append", this));
    ring_->attach_writer(writer_.get(), [this] { publish(); });
    writer_->kick();  // start preparing the first segment
    ring_->update_ref();
    publish();
    Ref();  // the ring points at us until close
  }

 private:
  static wal::WriterOptions parse_options(Napi::Env env, Napi::Object o) {
    wal::WriterOptions opt;
    Napi::Value dir = o.Get("dir");
    if (!dir.IsString()) throw Napi::TypeError::New(env, "options.dir must be a string");
    opt.dir = dir.As<Napi::String>().Utf8Value();
    opt.segment_bytes = static_cast<uint64_t>(num(o, "segmentBytes", kSegmentBytesDefault));
    opt.group_bytes = static_cast<uint32_t>(num(o, "groupBytes", kGroupBytesDefault));
    opt.groups_in_flight = static_cast<uint32_t>(num(o, "groupsInFlight", kGroupsInFlightDefault));
    opt.group_slots = static_cast<uint32_t>(num(o, "groupSlots", 16));
    opt.segments_max = static_cast<uint32_t>(num(o, "segmentsMax", 64));
    const double cache_bytes = num(o, "cacheBytes", 0);
    if (!(cache_bytes >= 0 && cache_bytes <= kCacheBytesMax)) {
      throw Napi::RangeError::New(env, "cacheBytes must be from 0 to 64 GiB");
    }
    opt.cache_bytes = static_cast<uint64_t>(cache_bytes);
    opt.lsn_next = static_cast<uint64_t>(num(o, "lsnNext", 1));
    opt.seq_next = static_cast<uint64_t>(num(o, "seqNext", 1));
    if (opt.segment_bytes < kSegmentBytesMin || opt.segment_bytes > kSegmentBytesMax ||
        !is_aligned(opt.segment_bytes, kBlockBytes)) {
      throw Napi::RangeError::New(env, "segmentBytes must be a multiple of 4096 from 1 MiB to 1 GiB");
    }
    if (opt.group_bytes < kGroupBytesMin || opt.group_bytes > kGroupBytesMax || !is_aligned(opt.group_bytes, kBlockBytes)) {
      throw Napi::RangeError::New(env, "groupBytes must be a multiple of 4096 from 64 KiB to 4 MiB");
    }
    if (opt.groups_in_flight < kGroupsInFlightMin || opt.groups_in_flight > kGroupsInFlightMax) {
      throw Napi::RangeError::New(env, "groupsInFlight must be from 1 to 8");
    }
    if (opt.group_slots < opt.groups_in_flight + 2 || opt.group_slots > 256) {
      throw Napi::RangeError::New(env, "groupSlots must be from groupsInFlight + 2 to 256");
    }
    if (opt.segments_max < 2 || opt.segments_max > 1u << 20) throw Napi::RangeError::New(env, "segmentsMax must be >= 2");
    if (opt.lsn_next < 1 || opt.seq_next < 1) throw Napi::RangeError::New(env, "lsnNext and seqNext must be >= 1");
    Napi::Value existing = o.Get("existing");
    if (existing.IsArray()) {
      Napi::Array arr = existing.As<Napi::Array>();
      for (uint32_t i = 0; i < arr.Length(); i++) {
        Napi::Object e = arr.Get(i).As<Napi::Object>();
        wal::ExistingSegment seg{static_cast<uint64_t>(num(e, "seq", 0)), static_cast<uint64_t>(num(e, "lsnFirst", 0)),
                                 static_cast<uint64_t>(num(e, "lsnLast", 0)), e.Get("inChain").ToBoolean().Value()};
        if (seg.seq == 0 || seg.seq >= opt.seq_next) throw Napi::RangeError::New(env, "existing segment seq out of range");
        opt.existing.push_back(seg);
      }
    }
    return opt;
  }

  void publish() {
    if (!writer_) return;
    state_[kLsnNext] = static_cast<double>(writer_->lsn_next());
    state_[kLsnWritten] = static_cast<double>(writer_->lsn_written());
    state_[kLsnDurable] = static_cast<double>(writer_->lsn_durable());
    state_[kFailedErrno] = writer_->failed() ? writer_->failure_errno() : 0;
    state_[kBusyReason] = static_cast<double>(writer_->busy_reason());
    state_[kSpareReady] = writer_->spare_ready() ? 1 : 0;
    state_[kActiveSeq] = static_cast<double>(writer_->active_seq());
    state_[kActiveOffset] = static_cast<double>(writer_->active_offset());
    state_[kOpsInFlight] = writer_->ops_in_flight();
    state_[kGroupsSubmitted] = static_cast<double>(writer_->groups_submitted());
    state_[kDsyncGroups] = static_cast<double>(writer_->dsync_groups_submitted());
    state_[kSyncsSubmitted] = static_cast<double>(writer_->syncs_submitted());
    state_[kBytesWritten] = static_cast<double>(writer_->bytes_written());
    state_[kSegmentCount] = writer_->segment_count();
    state_[kLsnTail] = static_cast<double>(writer_->lsn_tail());
    state_[kReadMemoryBytes] = static_cast<double>(writer_->read_memory_bytes());
    state_[kReadDiskBytes] = static_cast<double>(writer_->read_disk_bytes());
  }

  wal::Writer& writer(Napi::Env env) {
    if (!writer_) throw_error(env, "ERR_WAL_CLOSED", "the WAL is closed");
    return *writer_;
  }

  static Napi::Value append_bound(const Napi::CallbackInfo& info) {
    return static_cast<WalWrap*>(info.Data())->append(info);
  }

  // An integral double in [0, max], as uint64; false otherwise (NaN too).
  static bool field_u64(double value, double max, uint64_t* out) {
    if (!(value >= 0 && value <= max) || value != static_cast<double>(static_cast<uint64_t>(value))) return false;
    *out = static_cast<uint64_t>(value);
    return true;
  }

  // append(payload | null, copyOut?) with the fields in appendArgs -> lsn
  // (> 0), 0 busy, -1 failed, -2 closed. The record's location is published in
  // state. copyOut, when given, receives the encoded record (header + payload
  // + padding, what a replica appends): it must hold the record's span.
  Napi::Value append(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!writer_) return Napi::Number::New(env, kAppendClosed);
    uint64_t kind_code = 0, epoch = 0, lba = 0, length_blocks = 0, fua = 0;
    constexpr double kSafeMax = 9007199254740991.0;
    if (!field_u64(append_args_[kArgKind], 4, &kind_code) || kind_code == 0 ||
        !field_u64(append_args_[kArgEpoch], kSafeMax, &epoch) || !field_u64(append_args_[kArgLba], kSafeMax, &lba) ||
        !field_u64(append_args_[kArgLengthBlocks], kSafeMax, &length_blocks) ||
        !field_u64(append_args_[kArgFua], 1, &fua)) {
      throw Napi::RangeError::New(env, "record fields must be non-negative safe integers (kind 1-4, fua 0/1)");
    }
    const uint8_t* payload = nullptr;
    size_t payload_bytes = 0;
    if (info.Length() > 0 && info[0].IsTypedArray()) {
      Napi::Uint8Array p = info[0].As<Napi::Uint8Array>();
      payload = p.Data();
      payload_bytes = p.ByteLength();
    } else if (info.Length() > 0 && !info[0].IsNull() && !info[0].IsUndefined()) {
      throw Napi::TypeError::New(env, "payload must be a Uint8Array or null");
    }
    auto kind = static_cast<wal::RecordKind>(kind_code);
    const uint64_t frame_bytes = align_up(wal::kFrameHeaderBytes + wal::record_span_bytes(static_cast<uint32_t>(
                                              std::min<size_t>(payload_bytes, kRecordPayloadMax))), kBlockBytes);
    if (frame_bytes > segment_bytes_) {
      throw Napi::RangeError::New(env, "record too large for the WAL segment size");
    }
    if (payload_bytes > kRecordPayloadMax ||
        !wal::record_shape_valid(kind, static_cast<uint32_t>(payload_bytes), length_blocks)) {
      throw Napi::RangeError::New(env, "record shape invalid: kind, payload size and lengthBlocks do not fit");
    }
    uint8_t* copy_out = nullptr;
    if (info.Length() > 1 && info[1].IsTypedArray()) {
      Napi::Uint8Array c = info[1].As<Napi::Uint8Array>();
      if (c.ByteLength() < wal::record_span_bytes(static_cast<uint32_t>(payload_bytes))) {
        throw Napi::RangeError::New(env, "copyOut is smaller than the record's span");
      }
      copy_out = c.Data();
    }
    wal::RecordFields fields{kind, epoch, 0, lba, length_blocks};
    wal::AppendResult result{};
    wal::AppendStatus status = writer_->append(fields, payload, static_cast<uint32_t>(payload_bytes), fua == 1, &result);
    publish();
    switch (status) {
      case wal::AppendStatus::ok:
        state_[kAppendSeq] = static_cast<double>(result.segment_seq);
        state_[kAppendOffset] = static_cast<double>(result.offset_bytes);
        std::memcpy(append_checksum_, result.record + kRecordChecksumOffset, sizeof(uint64_t));
        if (copy_out != nullptr) std::memcpy(copy_out, result.record, result.span_bytes);
        return Napi::Number::New(env, static_cast<double>(result.lsn));
      case wal::AppendStatus::busy: return Napi::Number::New(env, kAppendBusy);
      case wal::AppendStatus::failed: return Napi::Number::New(env, kAppendFailed);
      case wal::AppendStatus::closed: return Napi::Number::New(env, kAppendClosed);
    }
    BW_UNREACHABLE();
  }

  Napi::Value request_durable(const Napi::CallbackInfo& info) {
    writer(info.Env()).request_durable(arg_u64(info, 0, "lsn", UINT64_MAX));
    return info.Env().Undefined();
  }

  // setGroupHold(us): how long an idle pipeline keeps the open group open
  // for more records (0 = not at all; at most a minute).
  Napi::Value set_group_hold(const Napi::CallbackInfo& info) {
    writer(info.Env()).set_group_hold_us(static_cast<uint32_t>(arg_u64(info, 0, "us", kGroupHoldUsMax)));
    return info.Env().Undefined();
  }

  Napi::Value release(const Napi::CallbackInfo& info) {
    writer(info.Env()).release(arg_u64(info, 0, "lsn", UINT64_MAX));
    // The tail moves now, not at the next kick (JS reads it right after).
    publish();
    return info.Env().Undefined();
  }

  // readRecord(seq, offsetBytes, spanBytes, destOffset, destBytes, tag) -> 1 | 0 | -errno
  Napi::Value read_record(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    wal::Writer& w = writer(env);
    int rc = w.read_record(arg_u64(info, 0, "seq", UINT64_MAX), arg_u64(info, 1, "offsetBytes", UINT64_MAX),
                           arg_u32(info, 2, "spanBytes", wal::kFrameBytesMax), arg_u64(info, 3, "destOffset", UINT64_MAX),
                           arg_u64(info, 4, "destBytes", UINT64_MAX), arg_u32(info, 5, "tag", INT32_MAX));
    publish();
    return Napi::Number::New(env, rc);
  }

  // readSpan(seq, offsetBytes, lengthBytes, destOffset, tag) -> 1 | 0 | -errno
  // (wal::Writer::read_span). The destination must lie in the JS part of the
  // arena: a bad offset must never overwrite the writer's group slots.
  Napi::Value read_span(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    wal::Writer& w = writer(env);
    uint64_t seq = arg_u64(info, 0, "seq", wal::kSegmentSeqMax);
    uint64_t offset = arg_u64(info, 1, "offsetBytes", segment_bytes_);
    uint32_t length = arg_u32(info, 2, "lengthBytes", wal::kReadSpanBytesMax);
    uint64_t dest = arg_u64(info, 3, "destOffset", UINT64_MAX);
    uint32_t tag = arg_u32(info, 4, "tag", INT32_MAX);
    const ring::Ring& r = ring_->ring();
    if (!is_aligned(offset, kBlockBytes) || !is_aligned(length, kBlockBytes) || length == 0) {
      throw Napi::RangeError::New(env, "offsetBytes and lengthBytes must be multiples of 4096 (lengthBytes > 0)");
    }
    if (!is_aligned(dest, kDirectAlignBytes) || dest < r.reserved_bytes() || dest > r.arena_bytes() ||
        length > r.arena_bytes() - dest) {
      throw Napi::RangeError::New(env, "destOffset must be 4096-aligned with the span inside the JS part of the arena");
    }
    int rc = w.read_span(seq, offset, length, dest, tag);
    publish();
    return Napi::Number::New(env, rc);
  }

  // gatherBlocks(descriptors: Float64Array, count) -> undefined. Each
  // descriptor (GatherField order) names a record in the arena, the LSN it
  // must carry, a block range of it and a 4096-aligned destination; all lie in
  // the JS part of the arena. Malformed descriptors are a RangeError (nothing
  // is copied); a record that fails verification is ERR_RECORD (with
  // details: index, reason), after the descriptors before it were copied.
  Napi::Value gather_blocks(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!ring_->open()) throw_error(env, "ERR_RING_CLOSED", "the ring is closed");
    uint32_t count = parse_gather_ops(info, 0, true, "gatherBlocks(descriptors: Float64Array, count)");
    const ring::Ring& r = ring_->ring();
    uint32_t failed = 0;
    wal::GatherError err = wal::gather_blocks(r.arena(), r.arena_bytes(), ops_.data(), count, &failed);
    if (err != wal::GatherError::ok) throw_gather_error(env, err, failed);
    return env.Undefined();
  }

  // gatherFromMemory(seq, descriptors: Float64Array, count) -> 1 | 0 | -errno
  // (wal::Writer::gather_from_memory). Descriptors as for gatherBlocks, but a
  // record's src is its byte offset in segment seq. 1: copied; 0: some record
  // is no longer in memory, nothing copied (readSpan + gatherBlocks). Errors
  // as gatherBlocks.
  Napi::Value gather_from_memory(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    wal::Writer& w = writer(env);
    uint64_t seq = arg_u64(info, 0, "seq", wal::kSegmentSeqMax);
    uint32_t count = parse_gather_ops(info, 1, false, "gatherFromMemory(seq, descriptors: Float64Array, count)");
    wal::GatherError err = wal::GatherError::ok;
    uint32_t failed = 0;
    int rc = w.gather_from_memory(seq, ops_.data(), count, &err, &failed);
    publish();
    if (rc == 1 && err != wal::GatherError::ok) throw_gather_error(env, err, failed);
    return Napi::Number::New(env, rc);
  }

  // Reads count descriptors from info[at] (a Float64Array) and info[at + 1]
  // into ops_, checking each: sources in the JS part of the arena when
  // src_in_arena, else a byte offset within a segment; destinations there,
  // 4096-aligned. RangeError (nothing done) for the first bad one.
  uint32_t parse_gather_ops(const Napi::CallbackInfo& info, size_t at, bool src_in_arena, const char* usage) {
    Napi::Env env = info.Env();
    if (info.Length() < at + 2 || !info[at].IsTypedArray() ||
        info[at].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
      throw Napi::TypeError::New(env, usage);
    }
    Napi::Float64Array desc = info[at].As<Napi::Float64Array>();
    uint32_t count = arg_u32(info, at + 1, "count", std::min<uint32_t>(kGatherOpsMax, static_cast<uint32_t>(desc.ElementLength() / kGatherFields)));
    const ring::Ring& r = ring_->ring();
    ops_.resize(count);
    for (uint32_t i = 0; i < count; i++) {
      const double* d = desc.Data() + uint64_t{i} * kGatherFields;
      uint64_t f[kGatherFields];
      for (uint32_t k = 0; k < kGatherFields; k++) {
        if (!field_u64(d[k], kSafeIntegerMax, &f[k])) throw Napi::RangeError::New(env, "gather descriptor " + std::to_string(i) + ": fields must be non-negative integers");
      }
      if (f[kGatherSpan] > UINT32_MAX || f[kGatherFirstIndex] > UINT32_MAX || f[kGatherBlocks] > UINT32_MAX) {
        throw Napi::RangeError::New(env, "gather descriptor " + std::to_string(i) + ": out of range");
      }
      wal::GatherOp op{f[kGatherSrc], static_cast<uint32_t>(f[kGatherSpan]), f[kGatherLsn],
                       static_cast<uint32_t>(f[kGatherFirstIndex]), static_cast<uint32_t>(f[kGatherBlocks]), f[kGatherDst]};
      bool ok;
      if (src_in_arena) {
        ok = wal::gather_op_in_bounds(op, r.reserved_bytes(), r.arena_bytes());
      } else {
        ok = wal::gather_op_shape_valid(op) && wal::gather_dst_in_bounds(op, r.reserved_bytes(), r.arena_bytes()) &&
             op.src_offset <= segment_bytes_ && op.span_bytes <= segment_bytes_ - op.src_offset;
      }
      if (!ok) {
        throw Napi::RangeError::New(env, "gather descriptor " + std::to_string(i) +
                                             ": ranges must lie in the JS part of the arena" +
                                             (src_in_arena ? "" : " (destination) and the segment (source)") +
                                             ", disjoint, destination 4096-aligned, "
                                             "1-256 blocks of a record span of at most 1 MiB + 64 bytes");
      }
      ops_[i] = op;
    }
    return count;
  }

  [[noreturn]] void throw_gather_error(Napi::Env env, wal::GatherError err, uint32_t failed) {
    Napi::Error e = make_error(env, "ERR_RECORD", "WAL record for gather descriptor " + std::to_string(failed) + " (LSN " +
                                                      std::to_string(ops_[failed].lsn) + ") failed verification: " +
                                                      wal::gather_error_name(err));
    e.Value().Set("index", Napi::Number::New(env, failed));
    e.Value().Set("reason", Napi::String::New(env, wal::gather_error_name(err)));
    throw e;
  }

  Napi::Value failure_message(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), writer_ ? writer_->failure_message() : "");
  }

  // close(): every operation must have completed (the TS wrapper waits).
  Napi::Value close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!writer_) return env.Undefined();
    if (writer_->ops_in_flight() > 0) throw_error(env, "ERR_WAL_BUSY", "WAL operations are still in flight");
    writer_->close();
    ring_->detach_writer();
    writer_.reset();
    Unref();
    return env.Undefined();
  }

  RingWrap* ring_ = nullptr;
  Napi::ObjectReference ring_ref_;
  std::unique_ptr<wal::Writer> writer_;
  double* state_ = nullptr;
  Napi::ObjectReference state_ref_;
  double* append_args_ = nullptr;
  uint64_t* append_checksum_ = nullptr;
  Napi::ObjectReference checksum_ref_;
  Napi::ObjectReference args_ref_;
  uint64_t segment_bytes_ = 0;
  std::vector<wal::GatherOp> ops_;  // gatherBlocks' decoded descriptors (grows to the largest batch)
};

void init_wal(Napi::Env env, Napi::Object exports) { exports.Set("Wal", WalWrap::define(env)); }

}  // namespace blockwal::binding
