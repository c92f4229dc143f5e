// JS binding of the WAL format (record and frame codec) and the recovery scan.
//
// The codec functions are synchronous and small: tests and the replica path
// use them. scanWal runs wal::scan_wal in an AsyncWorker: it is a one-off at
// open that reads the whole log, so it must not block the JS thread, and one
// worker per open is no cost. Its records cross back as one typed array per
// field (not one object per record), so a log of millions of records costs a
// few allocations.
//
// Every 64-bit LSN, epoch and LBA becomes a JS number: the format keeps them
// at or below 2^53 - 1 (wal::kLsnMax, kEpochMax, kLbaLimit), asserted here again.
#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>

#include "binding/errors.h"
#include "binding/init.h"
#include "util/assert.h"
#include "wal/format.h"
#include "wal/scan.h"

namespace blockwal::binding {

namespace {

constexpr uint64_t kJsSafeIntegerMax = (1ull << 53) - 1;
static_assert(wal::kLsnMax <= kJsSafeIntegerMax && wal::kEpochMax <= kJsSafeIntegerMax);
static_assert(wal::kLbaLimit <= kJsSafeIntegerMax && wal::kSegmentSeqMax <= kJsSafeIntegerMax);

Napi::Number js_u64(Napi::Env env, uint64_t value) {
  BW_ASSERT(value <= kJsSafeIntegerMax);
  return Napi::Number::New(env, static_cast<double>(value));
}

Napi::Object arg_object(const Napi::CallbackInfo& info, size_t index, const char* name) {
  if (info.Length() <= index || !info[index].IsObject()) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be an object");
  }
  return info[index].As<Napi::Object>();
}

uint64_t field_u64(Napi::Object obj, const char* name, uint64_t max) {
  Napi::Env env = obj.Env();
  Napi::Value value = obj.Get(name);
  if (!value.IsNumber()) throw Napi::TypeError::New(env, std::string(name) + " must be a number");
  const double d = value.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > static_cast<double>(max) || d > static_cast<double>(kJsSafeIntegerMax) || d != std::floor(d)) {
    throw Napi::RangeError::New(env, std::string(name) + " must be an integer from 0 to " + std::to_string(max));
  }
  return static_cast<uint64_t>(d);
}

bool field_bool(Napi::Object obj, const char* name) {
  Napi::Value value = obj.Get(name);
  if (value.IsUndefined()) return false;
  if (!value.IsBoolean()) throw Napi::TypeError::New(obj.Env(), std::string(name) + " must be a boolean");
  return value.As<Napi::Boolean>().Value();
}

// A Uint8Array (Buffer included) argument or property; null/undefined give an empty span.
struct Bytes {
  const uint8_t* data = nullptr;
  size_t length = 0;
};

Bytes bytes_of(Napi::Env env, Napi::Value value, const char* name) {
  if (value.IsNull() || value.IsUndefined()) return Bytes{};
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw Napi::TypeError::New(env, std::string(name) + " must be a Uint8Array or null");
  }
  Napi::Uint8Array array = value.As<Napi::Uint8Array>();
  return Bytes{array.Data(), array.ByteLength()};
}

wal::RecordKind kind_of(Napi::Object obj) {
  const uint64_t kind = field_u64(obj, "kind", static_cast<uint64_t>(wal::RecordKind::control));
  if (kind < static_cast<uint64_t>(wal::RecordKind::write)) {
    throw Napi::RangeError::New(obj.Env(), "kind must be 1 (write), 2 (trim), 3 (zero) or 4 (control)");
  }
  return static_cast<wal::RecordKind>(kind);
}

// Reads {kind, epoch, lba, lengthBlocks} (and lsn when with_lsn) and checks
// them with the payload length: a bad combination is ERR_RECORD, not an assert.
wal::RecordFields record_fields(Napi::Object obj, bool with_lsn, uint64_t lsn, size_t payload_bytes) {
  Napi::Env env = obj.Env();
  wal::RecordFields fields{};
  fields.kind = kind_of(obj);
  fields.epoch = field_u64(obj, "epoch", wal::kEpochMax);
  fields.lsn = with_lsn ? field_u64(obj, "lsn", wal::kLsnMax) : lsn;
  fields.lba = field_u64(obj, "lba", wal::kLbaLimit);
  fields.length_blocks = field_u64(obj, "lengthBlocks", wal::kLbaLimit);
  if (payload_bytes > kRecordPayloadMax ||
      !wal::record_fields_valid(fields, static_cast<uint32_t>(payload_bytes))) {
    Napi::Error error = make_error(env, "ERR_RECORD", "invalid record: kind, lsn, lba, lengthBlocks and payload do not fit");
    error.Value().Set("reason", Napi::String::New(env, wal::record_error_name(wal::RecordError::bad_shape)));
    throw error;
  }
  return fields;
}

Napi::Value encode_record(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object obj = arg_object(info, 0, "fields");
  const Bytes payload = bytes_of(env, info[1], "payload");
  const wal::RecordFields fields = record_fields(obj, true, 0, payload.length);
  const uint32_t payload_bytes = static_cast<uint32_t>(payload.length);
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, wal::record_span_bytes(payload_bytes));
  const uint32_t span_bytes = wal::encode_record(out.Data(), fields, payload.data, payload_bytes);
  BW_ASSERT(span_bytes == out.Length());
  return out;
}

Napi::Value decode_record(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Bytes buf = bytes_of(env, info[0], "buf");
  if (info[0].IsNull() || info[0].IsUndefined()) throw Napi::TypeError::New(env, "buf must be a Uint8Array");
  uint64_t offset = 0;
  if (info.Length() > 1 && !info[1].IsUndefined()) offset = arg_u64(info, 1, "offset", buf.length);
  wal::RecordHeader header;
  const wal::RecordError error = wal::decode_record(buf.data + offset, buf.length - offset, &header);
  if (error != wal::RecordError::ok) {
    Napi::Error e = make_error(env, "ERR_RECORD", std::string("record at offset ") + std::to_string(offset) +
                                                      " does not decode: " + wal::record_error_name(error));
    e.Value().Set("reason", Napi::String::New(env, wal::record_error_name(error)));
    throw e;
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("kind", Napi::Number::New(env, header.kind));
  out.Set("epoch", js_u64(env, header.epoch));
  out.Set("lsn", js_u64(env, header.lsn));
  out.Set("lba", js_u64(env, header.lba));
  out.Set("lengthBlocks", js_u64(env, header.length_blocks));
  out.Set("payloadBytes", Napi::Number::New(env, header.payload_bytes));
  out.Set("checksum", Napi::BigInt::New(env, header.checksum));
  out.Set("spanBytes", Napi::Number::New(env, wal::record_span_bytes(header.payload_bytes)));
  return out;
}

// Builds one frame from JS (tests write WAL files with it). Records get LSNs
// lsnFirst, lsnFirst + 1, ...; the frame is exactly as the writer seals it.
Napi::Value encode_frame(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object opts = arg_object(info, 0, "options");
  if (info.Length() < 2 || !info[1].IsArray()) throw Napi::TypeError::New(env, "records must be an array");
  Napi::Array records = info[1].As<Napi::Array>();
  const uint64_t seq = field_u64(opts, "segmentSeq", wal::kSegmentSeqMax);
  const uint64_t lsn_first = field_u64(opts, "lsnFirst", wal::kLsnMax);
  const uint64_t hint = field_u64(opts, "lsnDurableHint", wal::kLsnMax);
  const bool dsync = field_bool(opts, "dsync");
  if (records.Length() == 0) throw Napi::RangeError::New(env, "a frame holds at least one record");
  if (lsn_first == 0 || lsn_first > wal::kLsnMax - records.Length()) {
    throw Napi::RangeError::New(env, "lsnFirst must be from 1 and leave room for every record");
  }
  if (hint >= lsn_first) throw Napi::RangeError::New(env, "lsnDurableHint must be below lsnFirst");

  void* raw = nullptr;
  BW_ASSERT(posix_memalign(&raw, kDirectAlignBytes, wal::kFrameBytesLimit) == 0);
  std::unique_ptr<uint8_t, decltype(&std::free)> buf(static_cast<uint8_t*>(raw), &std::free);
  wal::FrameBuilder builder;
  builder.reset(buf.get(), wal::kFrameBytesLimit, seq, lsn_first);
  for (uint32_t i = 0; i < records.Length(); i++) {
    Napi::Value item = records.Get(i);
    if (!item.IsObject()) throw Napi::TypeError::New(env, "records[" + std::to_string(i) + "] must be an object");
    Napi::Object obj = item.As<Napi::Object>();
    const Bytes payload = bytes_of(env, obj.Get("payload"), "payload");
    const wal::RecordFields fields = record_fields(obj, false, lsn_first + i, payload.length);
    if (!builder.fits(static_cast<uint32_t>(payload.length))) {
      throw Napi::RangeError::New(env, "records do not fit in one frame of " + std::to_string(wal::kFrameBytesLimit) + " bytes");
    }
    builder.add(fields, payload.data, static_cast<uint32_t>(payload.length));
  }
  const uint32_t frame_bytes = builder.seal(hint, dsync ? wal::kFrameFlagDsync : 0);
  return Napi::Buffer<uint8_t>::Copy(env, buf.get(), frame_bytes);
}

// checkFrame(buf, segmentSeq, offset?) -> {error, ...header fields when ok}.
// A frame that does not check is an expected outcome here (tests, tools), so
// it is a value, not an exception.
Napi::Value check_frame(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info[0].IsNull() || info[0].IsUndefined()) throw Napi::TypeError::New(env, "buf must be a Uint8Array");
  const Bytes buf = bytes_of(env, info[0], "buf");
  const uint64_t seq = arg_u64(info, 1, "segmentSeq", wal::kSegmentSeqMax);
  uint64_t offset = 0;
  if (info.Length() > 2 && !info[2].IsUndefined()) offset = arg_u64(info, 2, "offset", buf.length);
  wal::FrameHeader header;
  const wal::FrameError error = wal::check_frame(buf.data + offset, buf.length - offset, seq, &header);
  Napi::Object out = Napi::Object::New(env);
  out.Set("error", Napi::String::New(env, wal::frame_error_name(error)));
  if (error != wal::FrameError::ok) return out;
  out.Set("segmentSeq", js_u64(env, header.segment_seq));
  out.Set("lsnFirst", js_u64(env, header.lsn_first));
  out.Set("lsnDurableHint", js_u64(env, header.lsn_durable_hint));
  out.Set("recordCount", Napi::Number::New(env, header.record_count));
  out.Set("frameBytes", Napi::Number::New(env, header.frame_bytes));
  out.Set("bodyBytes", Napi::Number::New(env, header.body_bytes));
  out.Set("dsync", Napi::Boolean::New(env, (header.flags & wal::kFrameFlagDsync) != 0));
  return out;
}

Napi::Value segment_file_name(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), wal::segment_file_name(arg_u64(info, 0, "seq", wal::kSegmentSeqMax)));
}

const char* role_name(wal::SegmentRole role) {
  switch (role) {
    case wal::SegmentRole::chain: return "chain";
    case wal::SegmentRole::free: return "free";
    case wal::SegmentRole::spare: return "spare";
  }
  BW_UNREACHABLE();
}

template <typename Array, typename Get>
Array column(Napi::Env env, const std::vector<wal::ScannedRecord>& records, Get get) {
  Array array = Array::New(env, records.size());
  for (size_t i = 0; i < records.size(); i++) array[i] = get(records[i]);
  return array;
}

Napi::Object records_object(Napi::Env env, const std::vector<wal::ScannedRecord>& records) {
  using R = wal::ScannedRecord;
  for (const R& r : records) {
    BW_ASSERT(r.lsn <= wal::kLsnMax && r.epoch <= wal::kEpochMax && r.lba <= wal::kLbaLimit);
    BW_ASSERT(r.length_blocks <= wal::kLbaLimit && r.segment_seq <= wal::kSegmentSeqMax);
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("lsn", column<Napi::Float64Array>(env, records, [](const R& r) { return static_cast<double>(r.lsn); }));
  out.Set("epoch", column<Napi::Float64Array>(env, records, [](const R& r) { return static_cast<double>(r.epoch); }));
  out.Set("lba", column<Napi::Float64Array>(env, records, [](const R& r) { return static_cast<double>(r.lba); }));
  out.Set("lengthBlocks",
          column<Napi::Float64Array>(env, records, [](const R& r) { return static_cast<double>(r.length_blocks); }));
  out.Set("segmentSeq",
          column<Napi::Float64Array>(env, records, [](const R& r) { return static_cast<double>(r.segment_seq); }));
  out.Set("offsetBytes", column<Napi::Uint32Array>(env, records, [](const R& r) { return r.offset_bytes; }));
  out.Set("payloadBytes", column<Napi::Uint32Array>(env, records, [](const R& r) { return r.payload_bytes; }));
  out.Set("kind", column<Napi::Uint8Array>(env, records, [](const R& r) { return static_cast<uint8_t>(r.kind); }));
  out.Set("checksum", column<Napi::BigUint64Array>(env, records, [](const R& r) { return r.checksum; }));
  return out;
}

Napi::Array segments_array(Napi::Env env, const std::vector<wal::ScannedSegment>& segments) {
  Napi::Array out = Napi::Array::New(env, segments.size());
  for (size_t i = 0; i < segments.size(); i++) {
    const wal::ScannedSegment& s = segments[i];
    Napi::Object obj = Napi::Object::New(env);
    obj.Set("seq", js_u64(env, s.seq));
    obj.Set("lsnFirst", js_u64(env, s.lsn_first));
    obj.Set("lsnLast", js_u64(env, s.lsn_last));
    obj.Set("role", Napi::String::New(env, role_name(s.role)));
    out.Set(static_cast<uint32_t>(i), obj);
  }
  return out;
}

Napi::Object scan_result_object(Napi::Env env, const wal::ScanResult& result) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("records", records_object(env, result.records));
  out.Set("controlPayloads", Napi::Buffer<uint8_t>::Copy(env, result.control_payloads.data(),
                                                          result.control_payloads.size()));
  out.Set("segments", segments_array(env, result.segments));
  out.Set("lsnNext", js_u64(env, result.lsn_next));
  out.Set("lsnFirstRetained", js_u64(env, result.lsn_first_retained));
  out.Set("seqMax", js_u64(env, result.seq_max));
  out.Set("bytesScanned", js_u64(env, result.bytes_scanned));
  out.Set("tornTailBytes", js_u64(env, result.torn_tail_bytes));
  return out;
}

Napi::Error scan_error(Napi::Env env, const wal::ScanResult& result) {
  if (result.error_errno != 0) return make_error(env, "ERR_IO", "WAL scan: " + result.error, result.error_errno);
  Napi::Error error = make_error(env, "ERR_WAL_CORRUPT", result.error);
  error.Value().Set("segmentSeq", js_u64(env, result.error_segment_seq));
  error.Value().Set("segmentFile", Napi::String::New(env, wal::segment_file_name(result.error_segment_seq)));
  error.Value().Set("offsetBytes", js_u64(env, result.error_offset_bytes));
  return error;
}

// Runs the scan off the JS thread and settles a promise with its result.
class ScanWorker : public Napi::AsyncWorker {
 public:
  ScanWorker(Napi::Env env, wal::ScanOptions options)
      : Napi::AsyncWorker(env, "blockwal.scanWal"), options_(std::move(options)), deferred_(env) {}
  Napi::Promise promise() const { return deferred_.Promise(); }

  void Execute() override { result_ = wal::scan_wal(options_); }
  void OnOK() override {
    Napi::Env env = Env();
    if (!result_.ok) {
      deferred_.Reject(scan_error(env, result_).Value());
      return;
    }
    deferred_.Resolve(scan_result_object(env, result_));
  }
  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }

 private:
  wal::ScanOptions options_;
  wal::ScanResult result_;
  Napi::Promise::Deferred deferred_;
};

Napi::Value scan_wal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object opts = arg_object(info, 0, "options");
  wal::ScanOptions options;
  Napi::Value dir = opts.Get("dir");
  if (!dir.IsString() || dir.As<Napi::String>().Utf8Value().empty()) {
    throw Napi::TypeError::New(env, "dir must be a non-empty string");
  }
  options.dir = dir.As<Napi::String>().Utf8Value();
  options.lsn_from = field_u64(opts, "lsnFrom", wal::kLsnMax);
  if (options.lsn_from == 0) throw Napi::RangeError::New(env, "lsnFrom must be at least 1");
  options.segment_bytes = field_u64(opts, "segmentBytes", kSegmentBytesMax);
  if (options.segment_bytes < kSegmentBytesMin || !is_aligned(options.segment_bytes, kBlockBytes)) {
    throw Napi::RangeError::New(env, "segmentBytes must be a multiple of 4096 from " + std::to_string(kSegmentBytesMin) +
                                         " to " + std::to_string(kSegmentBytesMax));
  }
  options.want_control_payloads = field_bool(opts, "wantControlPayloads");
  ScanWorker* worker = new ScanWorker(env, std::move(options));
  Napi::Promise promise = worker->promise();
  worker->Queue();  // the worker deletes itself after OnOK/OnError
  return promise;
}

Napi::Object limits_object(Napi::Env env) {
  Napi::Object limits = Napi::Object::New(env);
  limits.Set("blockBytes", Napi::Number::New(env, kBlockBytes));
  limits.Set("recordHeaderBytes", Napi::Number::New(env, wal::kRecordHeaderBytes));
  limits.Set("frameHeaderBytes", Napi::Number::New(env, wal::kFrameHeaderBytes));
  limits.Set("recordAlignBytes", Napi::Number::New(env, wal::kRecordAlignBytes));
  limits.Set("recordPayloadMax", Napi::Number::New(env, kRecordPayloadMax));
  limits.Set("controlPayloadMax", Napi::Number::New(env, kControlPayloadMax));
  limits.Set("frameBytesLimit", Napi::Number::New(env, wal::kFrameBytesLimit));
  limits.Set("lsnMax", js_u64(env, wal::kLsnMax));
  limits.Set("epochMax", js_u64(env, wal::kEpochMax));
  limits.Set("lbaLimit", js_u64(env, wal::kLbaLimit));
  limits.Set("segmentSeqMax", js_u64(env, wal::kSegmentSeqMax));
  limits.Set("segmentBytesMin", js_u64(env, kSegmentBytesMin));
  limits.Set("segmentBytesMax", js_u64(env, kSegmentBytesMax));
  limits.Freeze();
  return limits;
}

uint64_t arg_bigint_u64(const Napi::CallbackInfo& info, size_t index, const char* name) {
  if (info.Length() <= index || !info[index].IsBigInt()) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a bigint");
  }
  bool lossless = false;
  uint64_t value = info[index].As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) throw Napi::RangeError::New(info.Env(), std::string(name) + " must be a bigint in [0, 2^64)");
  return value;
}

// The bytes of a typed array of the given type, in one N-API call (these two
// functions run per record and per frame: node-addon-api's checks and
// conversions would cost several calls per argument); false when value is
// not such an array.
bool typed_bytes(napi_env env, napi_value value, napi_typedarray_type want, void** data, size_t* length) {
  napi_typedarray_type type;
  size_t elements = 0;
  if (napi_get_typedarray_info(env, value, &type, &elements, data, nullptr, nullptr) != napi_ok || type != want) return false;
  *length = elements;
  return true;
}

// decodeRecordInto(buf, offset, fields: Float64Array(7), checksum: BigUint64Array(1)) -> 0 or -1.
// decodeRecord without an object per call (the replica's path: one call per
// received record): fields get kind, epoch, lsn, lba, lengthBlocks,
// payloadBytes and spanBytes, checksum[0] the record's checksum. -1: the
// record does not decode; decodeRecord on it throws the reason.
Napi::Value decode_record_into(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  void* buf = nullptr;
  void* fields_data = nullptr;
  void* checksum_data = nullptr;
  size_t buf_bytes = 0, field_count = 0, checksum_count = 0;
  double offset = -1;
  if (info.Length() < 4 || !typed_bytes(env, info[0], napi_uint8_array, &buf, &buf_bytes) ||
      napi_get_value_double(env, info[1], &offset) != napi_ok ||
      !typed_bytes(env, info[2], napi_float64_array, &fields_data, &field_count) ||
      !typed_bytes(env, info[3], napi_biguint64_array, &checksum_data, &checksum_count)) {
    throw Napi::TypeError::New(env, "decodeRecordInto(buf: Uint8Array, offset: number, fields: Float64Array, checksum: BigUint64Array)");
  }
  if (!(offset >= 0 && offset <= static_cast<double>(buf_bytes)) || offset != std::floor(offset)) {
    throw Napi::RangeError::New(env, "offset must be a whole number within buf");
  }
  if (field_count < 7 || checksum_count < 1) throw Napi::RangeError::New(env, "fields needs 7 elements and checksum 1");
  const size_t at = static_cast<size_t>(offset);
  wal::RecordHeader header;
  if (wal::decode_record(static_cast<const uint8_t*>(buf) + at, buf_bytes - at, &header) != wal::RecordError::ok) {
    return Napi::Number::New(env, -1);
  }
  BW_ASSERT(header.epoch <= kJsSafeIntegerMax && header.lsn <= kJsSafeIntegerMax && header.lba <= kJsSafeIntegerMax &&
            header.length_blocks <= kJsSafeIntegerMax);
  double* fields = static_cast<double*>(fields_data);
  fields[0] = header.kind;
  fields[1] = static_cast<double>(header.epoch);
  fields[2] = static_cast<double>(header.lsn);
  fields[3] = static_cast<double>(header.lba);
  fields[4] = static_cast<double>(header.length_blocks);
  fields[5] = header.payload_bytes;
  fields[6] = wal::record_span_bytes(header.payload_bytes);
  static_cast<uint64_t*>(checksum_data)[0] = header.checksum;
  return Napi::Number::New(env, 0);
}

// xxh3Parts(out: Uint8Array, outOffset, ...parts: Uint8Array[]): XXH3-64 of
// the parts' bytes in order, as if joined, written at out[outOffset..+8]
// big-endian (the canonical form; the replication frame checksum), in one
// call. The parts come as arguments: reading them from an array costs an
// N-API call each.
Napi::Value xxh3_parts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  void* out = nullptr;
  size_t out_bytes = 0;
  double out_offset = -1;
  if (info.Length() < 2 || !typed_bytes(env, info[0], napi_uint8_array, &out, &out_bytes) ||
      napi_get_value_double(env, info[1], &out_offset) != napi_ok) {
    throw Napi::TypeError::New(env, "xxh3Parts(out: Uint8Array, outOffset: number, ...parts: Uint8Array[])");
  }
  if (!(out_offset >= 0 && out_offset + 8 <= static_cast<double>(out_bytes)) || out_offset != std::floor(out_offset)) {
    throw Napi::RangeError::New(env, "outOffset must leave 8 bytes within out");
  }
  const size_t count = info.Length() - 2;
  constexpr size_t kInline = 16;
  wal::ByteRange inline_ranges[kInline];
  std::unique_ptr<wal::ByteRange[]> heap;
  wal::ByteRange* ranges = inline_ranges;
  if (count > kInline) {
    heap = std::make_unique<wal::ByteRange[]>(count);
    ranges = heap.get();
  }
  for (size_t i = 0; i < count; i++) {
    void* data = nullptr;
    size_t length = 0;
    if (!typed_bytes(env, info[i + 2], napi_uint8_array, &data, &length)) {
      throw Napi::TypeError::New(env, "part " + std::to_string(i) + " must be a Uint8Array");
    }
    ranges[i] = wal::ByteRange{static_cast<const uint8_t*>(data), length};
  }
  const uint64_t digest = wal::xxh3_concat(ranges, count);
  uint8_t* target = static_cast<uint8_t*>(out) + static_cast<size_t>(out_offset);
  for (int i = 0; i < 8; i++) target[i] = static_cast<uint8_t>(digest >> (56 - 8 * i));
  return env.Undefined();
}

// applyChecksumExtend(chain: bigint, recordChecksum: bigint) -> bigint
Napi::Value apply_checksum_extend(const Napi::CallbackInfo& info) {
  uint64_t chain = arg_bigint_u64(info, 0, "chain");
  uint64_t record = arg_bigint_u64(info, 1, "recordChecksum");
  return Napi::BigInt::New(info.Env(), wal::apply_checksum_step(chain, record));
}

// applyChecksumChain(chain: bigint, recordChecksums: BigUint64Array, count) -> bigint:
// the first count checksums folded in order.
Napi::Value apply_checksum_chain(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t chain = arg_bigint_u64(info, 0, "chain");
  if (info.Length() < 3 || !info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array ||
      !info[2].IsNumber()) {
    throw Napi::TypeError::New(env, "applyChecksumChain(chain, recordChecksums: BigUint64Array, count)");
  }
  Napi::TypedArrayOf<uint64_t> checksums = info[1].As<Napi::TypedArrayOf<uint64_t>>();
  double count = info[2].As<Napi::Number>().DoubleValue();
  if (!(count >= 0 && count <= static_cast<double>(checksums.ElementLength())) || count != std::floor(count)) {
    throw Napi::RangeError::New(env, "count must be a whole number within the array");
  }
  for (size_t i = 0; i < static_cast<size_t>(count); i++) chain = wal::apply_checksum_step(chain, checksums[i]);
  return Napi::BigInt::New(env, chain);
}

}  // namespace

void init_wal_format(Napi::Env env, Napi::Object exports) {
  exports.Set("applyChecksumExtend", Napi::Function::New(env, apply_checksum_extend, "applyChecksumExtend"));
  exports.Set("decodeRecordInto", Napi::Function::New(env, decode_record_into, "decodeRecordInto"));
  exports.Set("xxh3Parts", Napi::Function::New(env, xxh3_parts, "xxh3Parts"));
  exports.Set("applyChecksumChain", Napi::Function::New(env, apply_checksum_chain, "applyChecksumChain"));
  exports.Set("walFormatLimits", limits_object(env));
  exports.Set("encodeRecord", Napi::Function::New(env, encode_record, "encodeRecord"));
  exports.Set("decodeRecord", Napi::Function::New(env, decode_record, "decodeRecord"));
  exports.Set("encodeFrame", Napi::Function::New(env, encode_frame, "encodeFrame"));
  exports.Set("checkFrame", Napi::Function::New(env, check_frame, "checkFrame"));
  exports.Set("scanWal", Napi::Function::New(env, scan_wal, "scanWal"));
  exports.Set("segmentFileName", Napi::Function::New(env, segment_file_name, "segmentFileName"));
}

}  // namespace blockwal::binding
