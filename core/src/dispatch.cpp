// Which kernel set this build uses: the row of core/simd_levels.txt that CMake chose
// (cmake/simd_levels.cmake writes bitmamba_build_level.h). Compiled for the baseline ISA: the
// names and the table are read before the CPU check; the kernel sets themselves only after it.
#include <sstream>

#include "bitmamba_build_level.h"
#include "bitmamba/kernels.h"
#include "bitmamba/simd_levels.h"

namespace bm {

const KernelSet& best_kernels() { return BITMAMBA_BUILD_KERNELS(); }

const char* simd_level() { return best_kernels().name; }

const char* simd_build_level() { return BITMAMBA_BUILD_LEVEL; }

const char* simd_build_options() { return BITMAMBA_BUILD_OPTIONS; }

const char* simd_option_names() { return BITMAMBA_BUILD_OPTION_VARS; }

const std::vector<std::vector<std::string>>& simd_level_table() {
    static const std::vector<std::vector<std::string>> table = [] {
        std::vector<std::vector<std::string>> rows;
        for (const char* line : BITMAMBA_BUILD_TABLE) {
            std::istringstream in(line);
            std::vector<std::string> cells;
            for (std::string cell; in >> cell;) cells.push_back(cell);
            rows.push_back(std::move(cells));
        }
        return rows;
    }();
    return table;
}

const std::vector<const KernelSet*>& carried_kernels() {
#define BM_CARRIED(fn) &fn(),
    static const std::vector<const KernelSet*> sets = {BITMAMBA_BUILD_CARRIED(BM_CARRIED)};
#undef BM_CARRIED
    return sets;
}

const KernelSet* kernels_named(const std::string& name) {
    if (name == scalar_kernels().name) return &scalar_kernels();
    if (name == simd_build_level()) return &best_kernels();
    for (const KernelSet* k : carried_kernels())
        if (name == k->name) return k;
    return nullptr;
}

// simd_supported_by_cpu() is in core/src/arch/<family>/cpu_<family>.cpp, compiled for the baseline ISA.

}  // namespace bm
