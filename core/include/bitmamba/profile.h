// Opt-in per-stage timing of BitMamba-2's single-token steps and of batched passes (`bitmamba bench --profile`). Off by default:
// then each probe is one predictable branch on a null pointer.
#pragma once

#include <chrono>
#include <cstdint>

namespace bm {

enum Stage : int { kStageQuant = 0, kStageMatmul, kStageHead, kStageMix, kStageStep, kStageSample, kStageCount };

struct StageClock {
    double ns[kStageCount] = {};
    int64_t steps = 0;

    static int64_t now() {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(
                   std::chrono::steady_clock::now().time_since_epoch())
            .count();
    }
    void add(Stage s, int64_t t0, int64_t t1) { ns[s] += static_cast<double>(t1 - t0); }
    void reset() { *this = StageClock(); }
};

}  // namespace bm
