// The scalar level runs on any CPU (its row of core/simd_levels.txt checks nothing).
#include "bitmamba/kernels.h"

namespace bm {

bool simd_supported_by_cpu() { return true; }

}  // namespace bm
