// The scalar level runs on any CPU.
#include "bitmamba/kernels.h"

namespace bm {

bool simd_supported_by_cpu() { return true; }

}  // namespace bm
