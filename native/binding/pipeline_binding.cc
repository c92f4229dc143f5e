// CommitPipeline: the group-commit bookkeeping (native/commit/pipeline.h) on
// its own, driven step by step from JS. A test hook: the WAL writer owns the
// real one; this lets tests replay exact orders of submissions, completions
// and syncs that a real disk would produce only by chance. Calls that break
// the pipeline's preconditions throw instead of reaching its assertions.
#include <string>

#include "binding/errors.h"
#include "binding/init.h"
#include "commit/pipeline.h"

namespace blockwal::binding {

namespace {

constexpr uint64_t kMaxSafe = (1ULL << 53) - 1;

class PipelineWrap : public Napi::ObjectWrap<PipelineWrap> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "CommitPipeline",
                       {
                           InstanceMethod<&PipelineWrap::group_submitted>("groupSubmitted"),
                           InstanceMethod<&PipelineWrap::group_completed>("groupCompleted"),
                           InstanceMethod<&PipelineWrap::request_durable>("requestDurable"),
                           InstanceMethod<&PipelineWrap::sync_wanted>("syncWanted"),
                           InstanceMethod<&PipelineWrap::sync_submitted>("syncSubmitted"),
                           InstanceMethod<&PipelineWrap::sync_completed>("syncCompleted"),
                           InstanceAccessor<&PipelineWrap::lsn_submitted>("lsnSubmitted"),
                           InstanceAccessor<&PipelineWrap::lsn_written>("lsnWritten"),
                           InstanceAccessor<&PipelineWrap::lsn_durable>("lsnDurable"),
                           InstanceAccessor<&PipelineWrap::lsn_durable_target>("lsnDurableTarget"),
                           InstanceAccessor<&PipelineWrap::groups_in_flight>("groupsInFlight"),
                           InstanceAccessor<&PipelineWrap::syncs_in_flight>("syncsInFlight"),
                           InstanceAccessor<&PipelineWrap::pending_entries>("pendingEntries"),
                           InstanceAccessor<&PipelineWrap::failed>("failed"),
                       });
  }

  // new CommitPipeline(lsnNext)
  explicit PipelineWrap(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<PipelineWrap>(info), pipeline_(first_lsn(info)) {}

 private:
  static uint64_t first_lsn(const Napi::CallbackInfo& info) {
    uint64_t lsn_next = arg_u64(info, 0, "lsnNext", kMaxSafe);
    if (lsn_next == 0) throw Napi::RangeError::New(info.Env(), "lsnNext must be at least 1");
    return lsn_next;
  }

  void refuse(const Napi::CallbackInfo& info, const std::string& why) const {
    throw_error(info.Env(), "ERR_PIPELINE", why);
  }

  // groupSubmitted(lsnFirst, lsnLast, file, dsync)
  Napi::Value group_submitted(const Napi::CallbackInfo& info) {
    uint64_t first = arg_u64(info, 0, "lsnFirst", kMaxSafe);
    uint64_t last = arg_u64(info, 1, "lsnLast", kMaxSafe);
    uint64_t file = arg_u64(info, 2, "file", kMaxSafe);
    bool dsync = arg_bool(info, 3, "dsync");
    if (pipeline_.failed()) refuse(info, "the pipeline has failed");
    if (first != pipeline_.lsn_submitted() + 1) {
      refuse(info, "groups are submitted in LSN order without gaps: expected " +
                       std::to_string(pipeline_.lsn_submitted() + 1) + ", got " + std::to_string(first));
    }
    if (last < first) refuse(info, "lsnLast is below lsnFirst");
    pipeline_.group_submitted(first, last, file, dsync);
    return info.Env().Undefined();
  }

  // groupCompleted(lsnFirst, result, expectedBytes): result is bytes or -errno.
  Napi::Value group_completed(const Napi::CallbackInfo& info) {
    uint64_t first = arg_u64(info, 0, "lsnFirst", kMaxSafe);
    if (info.Length() <= 1 || !info[1].IsNumber()) throw Napi::TypeError::New(info.Env(), "result must be a number");
    int64_t result = info[1].As<Napi::Number>().Int64Value();
    int64_t expected = static_cast<int64_t>(arg_u64(info, 2, "expectedBytes", kMaxSafe));
    if (!pipeline_.group_in_flight(first)) refuse(info, "no group starting at LSN " + std::to_string(first) + " is in flight");
    pipeline_.group_completed(first, result, expected);
    return info.Env().Undefined();
  }

  Napi::Value request_durable(const Napi::CallbackInfo& info) {
    pipeline_.request_durable(arg_u64(info, 0, "lsn", kMaxSafe));
    return info.Env().Undefined();
  }

  // syncWanted() -> the file that needs an fdatasync now, or -1.
  Napi::Value sync_wanted(const Napi::CallbackInfo& info) {
    uint64_t file = 0;
    if (!pipeline_.sync_wanted(&file)) return Napi::Number::New(info.Env(), -1);
    return Napi::Number::New(info.Env(), static_cast<double>(file));
  }

  // syncSubmitted(file) -> sync id
  Napi::Value sync_submitted(const Napi::CallbackInfo& info) {
    uint64_t file = arg_u64(info, 0, "file", kMaxSafe);
    if (pipeline_.failed()) refuse(info, "the pipeline has failed");
    return Napi::Number::New(info.Env(), static_cast<double>(pipeline_.sync_submitted(file)));
  }

  // syncCompleted(id, result): result 0 or -errno.
  Napi::Value sync_completed(const Napi::CallbackInfo& info) {
    uint64_t id = arg_u64(info, 0, "id", kMaxSafe);
    if (info.Length() <= 1 || !info[1].IsNumber()) throw Napi::TypeError::New(info.Env(), "result must be a number");
    int64_t result = info[1].As<Napi::Number>().Int64Value();
    if (!pipeline_.sync_in_flight(id)) refuse(info, "no sync " + std::to_string(id) + " is in flight");
    pipeline_.sync_completed(id, result);
    return info.Env().Undefined();
  }

  Napi::Value number(const Napi::CallbackInfo& info, uint64_t value) const {
    return Napi::Number::New(info.Env(), static_cast<double>(value));
  }
  Napi::Value lsn_submitted(const Napi::CallbackInfo& info) { return number(info, pipeline_.lsn_submitted()); }
  Napi::Value lsn_written(const Napi::CallbackInfo& info) { return number(info, pipeline_.lsn_written()); }
  Napi::Value lsn_durable(const Napi::CallbackInfo& info) { return number(info, pipeline_.lsn_durable()); }
  Napi::Value lsn_durable_target(const Napi::CallbackInfo& info) { return number(info, pipeline_.lsn_durable_target()); }
  Napi::Value groups_in_flight(const Napi::CallbackInfo& info) { return number(info, pipeline_.groups_in_flight()); }
  Napi::Value syncs_in_flight(const Napi::CallbackInfo& info) { return number(info, pipeline_.syncs_in_flight()); }
  Napi::Value pending_entries(const Napi::CallbackInfo& info) { return number(info, pipeline_.pending_entries()); }
  Napi::Value failed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), pipeline_.failed()); }

  commit::Pipeline pipeline_;
};

}  // namespace

void init_pipeline(Napi::Env env, Napi::Object exports) {
  exports.Set("CommitPipeline", PipelineWrap::define(env));
}

}  // namespace blockwal::binding
