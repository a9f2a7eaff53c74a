// Logits -> token. Greedy or sampled (repetition penalty, temperature, top-k, min-p, top-p) with a
// seedable RNG. Never sorts the whole vocabulary: candidates are cut with O(V) passes and partial
// selection, and only the survivors are ordered.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace bm {

struct SamplerConfig {
    float temperature = 0.8f;         // < 0.05: greedy
    int top_k = 40;                   // 0: off
    float top_p = 0.9f;               // 1: off
    float min_p = 0.05f;              // 0: off (relative to the most likely token)
    float repetition_penalty = 1.0f;  // 1: off. Positive logits divided, negative multiplied.
    int penalty_window = 256;         // the last N accepted tokens, each distinct token penalised once
    std::vector<int32_t> protected_ids;  // never penalised
    uint64_t seed = 0;
};

class Sampler {
public:
    Sampler(int vocab_size, const SamplerConfig& cfg);

    // Pick a token from logits (modified in place: penalty applied, temperature scaling).
    int32_t sample(float* logits);
    // Record a token in the penalty window (the caller accepts what it feeds to the model).
    void accept(int32_t token);
    void reset_history();
    void reseed(uint64_t seed) { rng_.seed(seed); }

    const SamplerConfig& config() const { return cfg_; }
    int vocab_size() const { return vocab_; }
    // Scratch logits buffer owned by the sampler (used by Model.step_sample).
    float* logits_buffer() { return logits_.data(); }

private:
    void apply_penalty(float* logits);
    // Without top-k: every logit at or above the min-p threshold `thr` is a candidate, sampled from
    // dense probabilities over the whole vocabulary (vector passes, masses per block; top-p by a
    // search over probability levels that orders only the tokens at its boundary).
    int32_t sample_dense(const float* logits, float m, float thr);
    // (mass, count) of the probabilities p >= level, over the blocks whose largest p reaches it
    std::pair<double, int> level_stats(float level) const;

    int vocab_;
    SamplerConfig cfg_;
    std::mt19937_64 rng_;
    std::vector<int32_t> history_;  // ring buffer
    int hist_pos_ = 0, hist_len_ = 0;
    std::vector<uint8_t> protected_;
    std::vector<uint32_t> stamp_;
    uint32_t stamp_now_ = 0;
    std::vector<int32_t> cand_;
    std::vector<float> prob_;
    std::vector<float> logits_;
    static constexpr int kBlock = 64;  // logits per block of the block-maxima pass
    std::vector<float> bmax_, bsel_;
    std::vector<float> bsum_, bpmax_;  // per block: its probability mass and its largest probability
};

}  // namespace bm
