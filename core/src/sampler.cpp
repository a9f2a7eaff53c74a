#include "bitmamba/sampler.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

#include "bitmamba/kernels.h"

#if defined(__AVX2__)
#include <immintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

namespace bm {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Maximum of x[0..n) with `a > m ? a : m` (a NaN is never chosen; all NaN gives -inf), 64 values at a
// time as 8 (or 4) independent lanes; n <= 64. The compiler left the plain loop nearly scalar
// (10 us for a 50k vocabulary, against 3.7 us for the whole argmax kernel).
inline float block_max(const float* x, int n) {
    int i = 0;
    float mb = kNegInf;
#if defined(__AVX2__)
    __m256 m0 = _mm256_set1_ps(kNegInf), m1 = m0;
    for (; i + 16 <= n; i += 16) {
        m0 = _mm256_max_ps(_mm256_loadu_ps(x + i), m0);  // max_ps(a, b) = a > b ? a : b
        m1 = _mm256_max_ps(_mm256_loadu_ps(x + i + 8), m1);
    }
    m0 = _mm256_max_ps(m1, m0);
    __m128 h = _mm_max_ps(_mm256_extractf128_ps(m0, 1), _mm256_castps256_ps128(m0));
    h = _mm_max_ps(_mm_movehl_ps(h, h), h);
    h = _mm_max_ss(_mm_shuffle_ps(h, h, 1), h);
    mb = _mm_cvtss_f32(h);
#elif defined(__ARM_NEON)
    float32x4_t m0 = vdupq_n_f32(kNegInf), m1 = m0;
    for (; i + 8 <= n; i += 8) {
        const float32x4_t a = vld1q_f32(x + i), b = vld1q_f32(x + i + 4);
        m0 = vbslq_f32(vcgtq_f32(a, m0), a, m0);
        m1 = vbslq_f32(vcgtq_f32(b, m1), b, m1);
    }
    float lanes[8];
    vst1q_f32(lanes, m0);
    vst1q_f32(lanes + 4, m1);
    for (float v : lanes) mb = v > mb ? v : mb;
#endif
    for (; i < n; ++i) mb = x[i] > mb ? x[i] : mb;
    return mb;
}

}  // namespace

Sampler::Sampler(int vocab_size, const SamplerConfig& cfg)
    : vocab_(vocab_size), cfg_(cfg), rng_(cfg.seed), protected_(vocab_size, 0), stamp_(vocab_size, 0),
      cand_(vocab_size), prob_(vocab_size), logits_(vocab_size), bmax_((vocab_size + kBlock - 1) / kBlock),
      bsel_((vocab_size + kBlock - 1) / kBlock) {
    if (vocab_size <= 0) throw std::invalid_argument("sampler: vocab_size must be positive");
    if (!(cfg.temperature >= 0.0f) || !std::isfinite(cfg.temperature))
        throw std::invalid_argument("sampler: temperature must be a finite number >= 0");
    if (cfg.top_k < 0) throw std::invalid_argument("sampler: top_k must be >= 0");
    if (!(cfg.top_p > 0.0f && cfg.top_p <= 1.0f)) throw std::invalid_argument("sampler: top_p must be in (0, 1]");
    if (!(cfg.min_p >= 0.0f && cfg.min_p < 1.0f)) throw std::invalid_argument("sampler: min_p must be in [0, 1)");
    if (!(cfg.repetition_penalty > 0.0f) || !std::isfinite(cfg.repetition_penalty))
        throw std::invalid_argument("sampler: repetition_penalty must be a positive number");
    if (cfg.penalty_window < 0 || cfg.penalty_window > (1 << 20))
        throw std::invalid_argument("sampler: penalty_window must be in 0..1048576");
    for (int32_t id : cfg.protected_ids)
        if (id >= 0 && id < vocab_size) protected_[id] = 1;
    history_.assign(std::max(1, cfg.penalty_window), 0);
}

void Sampler::accept(int32_t token) {
    if (cfg_.penalty_window == 0 || token < 0 || token >= vocab_) return;
    history_[hist_pos_] = token;
    hist_pos_ = (hist_pos_ + 1) % cfg_.penalty_window;
    hist_len_ = std::min(hist_len_ + 1, cfg_.penalty_window);
}

void Sampler::reset_history() { hist_pos_ = hist_len_ = 0; }

void Sampler::apply_penalty(float* logits) {
    if (cfg_.repetition_penalty == 1.0f || hist_len_ == 0) return;
    if (++stamp_now_ == 0) {  // wrapped: clear stamps
        std::fill(stamp_.begin(), stamp_.end(), 0);
        stamp_now_ = 1;
    }
    const float p = cfg_.repetition_penalty;
    for (int i = 0; i < hist_len_; ++i) {
        const int32_t t = history_[i];
        if (protected_[t] || stamp_[t] == stamp_now_) continue;
        stamp_[t] = stamp_now_;
        logits[t] = logits[t] > 0.0f ? logits[t] / p : logits[t] * p;
    }
}

int32_t Sampler::sample(float* logits) {
    apply_penalty(logits);
    const KernelSet& k = best_kernels();
    if (cfg_.temperature < 0.05f) return k.argmax(logits, vocab_);
    // Maxima of blocks of 64 logits, in one pass: the overall maximum (no separate argmax pass), a
    // lower bound for the k-th largest logit, and a skip test for whole blocks below the threshold.
    const int nb = (vocab_ + kBlock - 1) / kBlock;
    float* bm = bmax_.data();
    for (int b = 0; b < nb; ++b) {
        const int i0 = b * kBlock;
        bm[b] = block_max(logits + i0, std::min(vocab_, i0 + kBlock) - i0);
    }
    int top_block = 0;
    for (int b = 1; b < nb; ++b)
        if (bm[b] > bm[top_block]) top_block = b;
    const float m = bm[top_block];
    if (!std::isfinite(m)) return k.argmax(logits, vocab_);  // all -inf / NaN: what greedy would do
    const float T = cfg_.temperature;

    // 1. min-p as a logit threshold: p_i / p_max >= min_p  <=>  l_i >= m + T * log(min_p)
    float thr = cfg_.min_p > 0.0f ? m + T * std::log(cfg_.min_p) : kNegInf;
    auto by_logit = [logits](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    const int k_top = cfg_.top_k > 0 && cfg_.top_k < vocab_ ? cfg_.top_k : 0;
    // 2. top-k: k blocks reach the k-th largest block maximum, so at least k logits do, and the k-th
    // largest logit is at least that: a threshold before looking at a single logit.
    if (k_top && nb > k_top) {
        std::copy(bm, bm + nb, bsel_.data());
        std::nth_element(bsel_.begin(), bsel_.begin() + (k_top - 1), bsel_.begin() + nb, std::greater<float>());
        thr = std::max(thr, bsel_[k_top - 1]);
    }
    // 3. collect the candidates at or above the threshold, skipping blocks whose maximum is below it.
    // Should the buffer still grow past `cap` (many equal logits), it is cut to the best k and the
    // threshold rises to the k-th logit (ties at the threshold are kept and resolved by index).
    const int cap = k_top ? std::max(8 * k_top, 512) : vocab_;
    int n = 0;
    for (int b = 0; b < nb; ++b) {
        if (bm[b] < thr) continue;
        const int i0 = b * kBlock, i1 = std::min(vocab_, i0 + kBlock);
        int32_t* c = cand_.data();
        for (int i = i0; i < i1; ++i) {
            c[n] = i;
            n += logits[i] >= thr ? 1 : 0;
        }
        if (k_top && n > cap) {
            std::nth_element(cand_.begin(), cand_.begin() + (k_top - 1), cand_.begin() + n, by_logit);
            thr = std::max(thr, logits[cand_[k_top - 1]]);
            n = k_top;  // [0, k) are the k best under the total order
        }
    }
    if (k_top && n > k_top) {
        std::nth_element(cand_.begin(), cand_.begin() + k_top, cand_.begin() + n, by_logit);
        n = k_top;
    }
    // With top-k, a canonical order (best first, at most k) so that a seed gives the same token
    // whatever path found them; without, the candidates are already in index order (sorting
    // thousands per token cost 0.3 ms on a 4k vocabulary).
    if (k_top) std::sort(cand_.begin(), cand_.begin() + n, by_logit);
    // 3. probabilities of the survivors (temperature applied)
    const float inv_t = 1.0f / T;
    for (int i = 0; i < n; ++i) prob_[i] = (logits[cand_[i]] - m) * inv_t;
    k.exp(prob_.data(), n);
    double total = 0.0;
    for (int i = 0; i < n; ++i) total += prob_[i];
    // 4. top-p: order survivors by probability, growing a sorted prefix until it holds top_p of the mass
    int keep = n;
    if (cfg_.top_p < 1.0f && n > 1) {
        const double target = static_cast<double>(cfg_.top_p) * total;
        int sorted = 0;
        double acc = 0.0;
        keep = -1;
        for (int want = std::min(n, 64); keep < 0; want = std::min(n, want * 4)) {
            // Move the `want` largest of [sorted, n) into place and sort them.
            std::vector<int32_t>::iterator first = cand_.begin() + sorted, last = cand_.begin() + n;
            auto cmp = by_logit;
            if (want < n) std::nth_element(first, cand_.begin() + want, last, cmp);
            std::sort(first, cand_.begin() + want, cmp);
            for (int i = sorted; i < want; ++i) {
                acc += std::exp(static_cast<double>((logits[cand_[i]] - m) * inv_t));
                if (acc >= target) {
                    keep = i + 1;
                    break;
                }
            }
            sorted = want;
            if (keep < 0 && want == n) keep = n;
        }
        // Candidates were reordered: recompute the kept probabilities.
        for (int i = 0; i < keep; ++i) prob_[i] = (logits[cand_[i]] - m) * inv_t;
        k.exp(prob_.data(), keep);
        total = 0.0;
        for (int i = 0; i < keep; ++i) total += prob_[i];
    }
    // 5. draw
    const double u = std::generate_canonical<double, 53>(rng_) * total;
    double acc = 0.0;
    for (int i = 0; i < keep; ++i) {
        acc += prob_[i];
        if (u < acc) return cand_[i];
    }
    return cand_[keep - 1];
}

}  // namespace bm
