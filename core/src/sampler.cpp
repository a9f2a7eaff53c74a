#include "bitmamba/sampler.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <tuple>

#include "bitmamba/kernels.h"

#if defined(__AVX2__)
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
// GCC 12's _mm512_reduce_add_ps trips -Wmaybe-uninitialized on its own _mm256_undefined_pd()
// operand (GCC bug 105593, fixed in 13), as in kernels_avx512.cpp
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
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

// Sum and count of the x[i] >= level among x[0..n), n <= 64, in vector lanes (the compiler left the
// plain loop's additions scalar); the order of the float additions is fixed for a build.
inline std::pair<float, int> block_mass(const float* x, int n, float level) {
    int i = 0, c = 0;
    float s = 0.0f;
#if defined(__AVX512F__)
    const __m512 lv = _mm512_set1_ps(level);
    __m512 a = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        const __mmask16 m = _mm512_cmp_ps_mask(v, lv, _CMP_GE_OQ);
        a = _mm512_mask_add_ps(a, m, a, v);
        c += __builtin_popcount(static_cast<unsigned>(m));
    }
    if (i < n) {
        const __mmask16 tail = static_cast<__mmask16>((1u << (n - i)) - 1u);
        const __m512 v = _mm512_maskz_loadu_ps(tail, x + i);
        const __mmask16 m = _mm512_mask_cmp_ps_mask(tail, v, lv, _CMP_GE_OQ);
        a = _mm512_mask_add_ps(a, m, a, v);
        c += __builtin_popcount(static_cast<unsigned>(m));
        i = n;
    }
    s = _mm512_reduce_add_ps(a);
#elif defined(__AVX2__)
    const __m256 lv = _mm256_set1_ps(level);
    __m256 a = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256 m = _mm256_cmp_ps(v, lv, _CMP_GE_OQ);
        a = _mm256_add_ps(a, _mm256_and_ps(m, v));
        c += __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(m)));
    }
    __m128 h = _mm_add_ps(_mm256_extractf128_ps(a, 1), _mm256_castps256_ps128(a));
    h = _mm_add_ps(_mm_movehl_ps(h, h), h);
    h = _mm_add_ss(_mm_shuffle_ps(h, h, 1), h);
    s = _mm_cvtss_f32(h);
#elif defined(__ARM_NEON)
    const float32x4_t lv = vdupq_n_f32(level);
    float32x4_t a = vdupq_n_f32(0.0f);
    uint32x4_t cn = vdupq_n_u32(0);
    for (; i + 4 <= n; i += 4) {
        const float32x4_t v = vld1q_f32(x + i);
        const uint32x4_t m = vcgeq_f32(v, lv);
        a = vaddq_f32(a, vreinterpretq_f32_u32(vandq_u32(m, vreinterpretq_u32_f32(v))));
        cn = vsubq_u32(cn, m);  // a lane that holds is all ones: -1
    }
    float lanes[4];
    uint32_t counts[4];
    vst1q_f32(lanes, a);
    vst1q_u32(counts, cn);
    s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    c = static_cast<int>(counts[0] + counts[1] + counts[2] + counts[3]);
#endif
    for (; i < n; ++i)
        if (x[i] >= level) {
            s += x[i];
            ++c;
        }
    return {s, c};
}

// Append to out[n..) the i in [i0, i1) with lo <= x[i] < hi and x[i] > 0 (in index order); the new n.
inline int collect_band(const float* x, int i0, int i1, float lo, float hi, int32_t* out, int n) {
    int i = i0;
#if defined(__AVX512F__)
    const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi), zero = _mm512_setzero_ps();
    const __m512i step = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (; i + 16 <= i1; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        __mmask16 m = _mm512_cmp_ps_mask(v, vlo, _CMP_GE_OQ);
        m = _mm512_mask_cmp_ps_mask(m, v, vhi, _CMP_LT_OQ);
        m = _mm512_mask_cmp_ps_mask(m, v, zero, _CMP_GT_OQ);
        _mm512_mask_compressstoreu_epi32(out + n, m, _mm512_add_epi32(_mm512_set1_epi32(i), step));
        n += __builtin_popcount(static_cast<unsigned>(m));
    }
#endif
    for (; i < i1; ++i) {
        out[n] = i;
        n += x[i] >= lo && x[i] > 0.0f && x[i] < hi ? 1 : 0;
    }
    return n;
}

}  // namespace

Sampler::Sampler(int vocab_size, const SamplerConfig& cfg)
    : vocab_(vocab_size), cfg_(cfg), rng_(cfg.seed), protected_(vocab_size, 0), stamp_(vocab_size, 0),
      cand_(vocab_size), prob_(vocab_size), logits_(vocab_size), bmax_((vocab_size + kBlock - 1) / kBlock),
      bsel_((vocab_size + kBlock - 1) / kBlock), bsum_((vocab_size + kBlock - 1) / kBlock),
      bpmax_((vocab_size + kBlock - 1) / kBlock) {
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
    if (!k_top) return sample_dense(logits, m, thr);
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

std::pair<double, int> Sampler::level_stats(float level) const {
    // One pass over the blocks whose largest probability reaches `level`. With AVX-512 the whole
    // blocks add into vector lanes kept across blocks (a horizontal sum per block cost more than the
    // block's own four compares and adds); the order of the float additions is fixed for a build.
    // The draw sums the same set block by block, so its mass may differ from this one by float
    // rounding (~1e-6 relative): a u past the draw's mass falls to the band, then the last kept token.
    const int nb = (vocab_ + kBlock - 1) / kBlock;
    double mass = 0.0;
    int count = 0;
    int b = 0;
#if defined(__AVX512F__)
    static_assert(kBlock == 64, "four zmm loads a block");
    const int full = vocab_ / kBlock;  // blocks of exactly kBlock values
    const __m512 lv = _mm512_set1_ps(level);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (; b < full; ++b) {
        if (bpmax_[b] < level) continue;
        const float* x = prob_.data() + b * kBlock;
        const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        const __m512 v2 = _mm512_loadu_ps(x + 32), v3 = _mm512_loadu_ps(x + 48);
        const __mmask16 m0 = _mm512_cmp_ps_mask(v0, lv, _CMP_GE_OQ), m1 = _mm512_cmp_ps_mask(v1, lv, _CMP_GE_OQ);
        const __mmask16 m2 = _mm512_cmp_ps_mask(v2, lv, _CMP_GE_OQ), m3 = _mm512_cmp_ps_mask(v3, lv, _CMP_GE_OQ);
        a0 = _mm512_mask_add_ps(a0, m0, a0, v0);
        a1 = _mm512_mask_add_ps(a1, m1, a1, v1);
        a2 = _mm512_mask_add_ps(a2, m2, a2, v2);
        a3 = _mm512_mask_add_ps(a3, m3, a3, v3);
        const uint64_t bits = static_cast<uint64_t>(m0) | static_cast<uint64_t>(m1) << 16 |
                              static_cast<uint64_t>(m2) << 32 | static_cast<uint64_t>(m3) << 48;
        count += __builtin_popcountll(bits);
    }
    mass = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#endif
    for (; b < nb; ++b) {
        if (bpmax_[b] < level) continue;
        const int i0 = b * kBlock;
        const auto [s, c] = block_mass(prob_.data() + i0, std::min(vocab_, i0 + kBlock) - i0, level);
        mass += s;
        count += c;
    }
    return {mass, count};
}

int32_t Sampler::sample_dense(const float* logits, float m, float thr) {
    const KernelSet& k = best_kernels();
    const int V = vocab_, nb = (V + kBlock - 1) / kBlock;
    const float inv_t = 1.0f / cfg_.temperature;
    float* p = prob_.data();
    // 1. p_i = exp((l_i - m) / T) (the most likely token has 1), 0 below the min-p threshold and for
    // NaN (a comparison with NaN is false); the masses of the blocks and the total
    for (int i = 0; i < V; ++i) p[i] = logits[i] >= thr ? (logits[i] - m) * inv_t : kNegInf;
    k.exp(p, V);
    double total = 0.0;
    for (int b = 0; b < nb; ++b) {
        const int i0 = b * kBlock;
        bsum_[b] = block_mass(p + i0, std::min(V, i0 + kBlock) - i0, 0.0f).first;
        total += bsum_[b];
    }
    // 2. top-p: the kept tokens are those with p >= `upper` (mass `upper_mass` < the target) and the
    // best of the `band` [lower, upper) in logit order (then index) until the mass reaches the target.
    // Levels are p = exp(-c), c in nats below the best token: doubling c brackets the target, then
    // bisection narrows the band until it holds few tokens.
    float upper = std::numeric_limits<float>::infinity();  // kept level set: p >= upper (none yet)
    double kept = total;
    int band = 0;
    if (cfg_.top_p < 1.0f) {
        for (int b = 0; b < nb; ++b) bpmax_[b] = (bmax_[b] - m) * inv_t;
        k.exp(bpmax_.data(), nb);
        const double target = static_cast<double>(cfg_.top_p) * total;
        constexpr float kTiny = std::numeric_limits<float>::denorm_min();  // p > 0: every candidate
        double c_up = -1.0, c_lo = 1.0;  // nats: exp(1) > 1 holds no token
        double up_mass = 0.0, lo_mass = 0.0;
        int up_count = 0, lo_count = 0;
        for (;;) {  // bracket: the mass of p >= exp(-c_lo) reaches the target
            const float level = c_lo > 80.0 ? kTiny : static_cast<float>(std::exp(-c_lo));
            std::tie(lo_mass, lo_count) = level_stats(level);
            if (lo_mass >= target || level == kTiny) break;
            c_up = c_lo;
            up_mass = lo_mass;
            up_count = lo_count;
            c_lo *= 2.0;
        }
        for (int it = 0; it < 40 && lo_count - up_count > 256 && c_lo <= 80.0; ++it) {  // bisect
            const double c = 0.5 * (c_up + c_lo);
            const auto [ms, cn] = level_stats(static_cast<float>(std::exp(-c)));
            if (ms >= target) {
                c_lo = c;
                lo_count = cn;
            } else {
                c_up = c;
                up_mass = ms;
                up_count = cn;
            }
        }
        const float lo = c_lo > 80.0 ? kTiny : static_cast<float>(std::exp(-c_lo));
        upper = c_up < 0.0 ? std::numeric_limits<float>::infinity() : static_cast<float>(std::exp(-c_up));
        int n = 0;
        for (int b = 0; b < nb; ++b) {
            if (bpmax_[b] < lo) continue;
            const int i0 = b * kBlock, i1 = std::min(V, i0 + kBlock);
            n = collect_band(p, i0, i1, lo, upper, cand_.data(), n);
        }
        auto by_logit = [logits](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
        std::sort(cand_.begin(), cand_.begin() + n, by_logit);
        kept = up_mass;
        while (band < n) {
            kept += p[cand_[band++]];
            if (kept >= target) break;
        }
    } else {
        upper = 0.0f;  // every candidate (p = 0 adds nothing)
    }
    // 3. draw: the level set block by block (skipping whole blocks by their mass), then the band
    const double u = std::generate_canonical<double, 53>(rng_) * kept;
    double acc = 0.0;
    int32_t last = -1;
    if (upper <= 1.0f) {
        for (int b = 0; b < nb; ++b) {
            if (upper > 0.0f && bpmax_[b] < upper) continue;
            const int i0 = b * kBlock, i1 = std::min(V, i0 + kBlock);
            const double s = upper > 0.0f ? block_mass(p + i0, i1 - i0, upper).first : bsum_[b];
            if (s <= 0.0) continue;
            if (u >= acc + s) {
                acc += s;
                for (int i = i1 - 1; i >= i0; --i)
                    if (p[i] > 0.0f && p[i] >= upper) {
                        last = i;
                        break;
                    }
                continue;
            }
            for (int i = i0; i < i1; ++i) {
                if (!(p[i] > 0.0f && p[i] >= upper)) continue;
                acc += p[i];
                last = i;
                if (u < acc) return i;
            }
        }
    }
    for (int j = 0; j < band; ++j) {
        acc += p[cand_[j]];
        last = cand_[j];
        if (u < acc) return last;
    }
    // rounding left u at the very end of the mass: the last kept token
    return last >= 0 ? last : k.argmax(logits, V);
}

}  // namespace bm
