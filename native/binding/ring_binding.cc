// Placeholder until this binding lands.
#include "binding/init.h"

namespace blockwal::binding {

void init_ring(Napi::Env, Napi::Object) {}

}  // namespace blockwal::binding
