// Kernel sets of the individual instruction-set levels (each defined only where compiled).
#pragma once

#include "bitmamba/kernels.h"

namespace bm {
const KernelSet& avx2_kernels();
const KernelSet& avx512_kernels();
const KernelSet& neon_kernels();
}  // namespace bm
