// BitMamba-2 forward pass (FORMATS.md section 1), one token at a time or batched over T tokens.
//
// Per layer (residual): p = bitlinear(h, in_proj) = [z | x | B | C | dt]; causal depthwise conv
// (width 4) on x, silu; per head dt = softplus(dt + dt_bias), decay = exp(-exp(A_log) * dt);
// s = s * decay + xa * B * dt; y = (s * C + xa * D) * silu(z); h += bitlinear(y, out_proj).
// logits = bitlinear(rmsnorm(h, norm_f), lm_head).
//
// The batched path (prefill, step_batch) computes exactly the same float operations per token as
// step(): the integer products are exact and every float expression is shared, so a prefill of T
// tokens leaves a state bit-identical to T calls of step().
#include <algorithm>
#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>

#include "bitmamba/model.h"

namespace bm {
namespace {

constexpr float kNormEps = 1e-6f;
constexpr int kChunk = 64;      // tokens per batched pass
constexpr int kChanAlign = 16;  // channel split granularity (keeps SIMD tails identical across splits)

inline float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

// Run f(c0, c1, slot) over channel ranges whose bounds are multiples of kChanAlign.
template <typename F>
void for_channels(ThreadPool& pool, int n, F&& f) {
    const int units = (n + kChanAlign - 1) / kChanAlign;
    pool.parallel_for(units, pool.grain_for(units, 2), [&](int b, int e, int slot) {
        f(std::min(n, b * kChanAlign), std::min(n, e * kChanAlign), slot);
    });
}

const TensorView& get(const TensorMap& t, const std::string& name) {
    auto it = t.find(name);
    if (it == t.end()) throw FormatError("missing tensor '" + name + "'");
    return it->second;
}

int64_t count(const TensorView& v) {
    int64_t n = 1;
    for (auto d : v.shape) n *= d;
    return n;
}

void copy_f32(const TensorMap& t, const std::string& name, int64_t n, AlignedBuffer<float>& out) {
    const TensorView& v = get(t, name);
    if (v.dtype != "f32") throw FormatError("tensor '" + name + "': expected float32, got " + v.dtype);
    if (count(v) != n)
        throw FormatError("tensor '" + name + "': has " + std::to_string(count(v)) + " values, expected " +
                          std::to_string(n));
    out.reset(static_cast<std::size_t>(n));
    std::memcpy(out.data(), v.data, sizeof(float) * n);
    for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(out[i])) throw FormatError("tensor '" + name + "': contains NaN or Inf");
}

void load_ternary(const TensorMap& t, const std::string& name, int rows, int cols, BitLinear& out) {
    const TensorView& v = get(t, name);
    if (v.shape.size() != 2 || v.shape[0] != rows)
        throw FormatError("tensor '" + name + "': wrong shape for a " + std::to_string(rows) + "x" +
                          std::to_string(cols) + " ternary matrix");
    if (!(std::isfinite(v.scale) && v.scale > 0.0f))
        throw FormatError("tensor '" + name + "': scale is not a positive finite number");
    if (v.dtype == "u8") {
        if (v.cols != cols || v.shape[1] != (cols + 3) / 4)
            throw FormatError("tensor '" + name + "': packed row size does not match " + std::to_string(cols) +
                              " columns");
        packed_from_file_codes(out.w, static_cast<const uint8_t*>(v.data), rows, cols, name.c_str());
    } else if (v.dtype == "i8") {
        if (v.shape[1] != cols) throw FormatError("tensor '" + name + "': wrong number of columns");
        packed_from_int8(out.w, static_cast<const int8_t*>(v.data), rows, cols, name.c_str());
    } else {
        throw FormatError("tensor '" + name + "': unsupported ternary dtype " + v.dtype);
    }
    out.scale = v.scale;
}

uint64_t fnv1a(const std::string& s) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    return h;
}

class BitMamba2 final : public Model {
public:
    BitMamba2(const TensorMap& t, int vocab, int d_model, int n_layers, int n_heads, int n_threads,
              const KernelSet* kernels);

    void step(State& st, int32_t token, float* logits) override;
    void prefill(State& st, const int32_t* tokens, int T, float* logits, bool all_logits,
                 const std::vector<std::pair<int, State*>>& snapshots) override;
    void step_batch(State* const* states, const int32_t* tokens, int n, float* logits) override;

private:
    struct Layer {
        BitLinear in_proj, out_proj;
        AlignedBuffer<float> conv_w;  // [4][d_inner], tap k of every channel contiguous
        AlignedBuffer<float> conv_b, dt_bias, A, D;  // A = -exp(A_log)
    };

    // out[r] (=|+=) bitlinear(x)[r] for one token
    void matvec(const BitLinear& L, const float* x, float* out, bool accumulate);
    // Quantize n rows of `in` (row stride n_in) for L into X_ (row stride cols_pad), padded to npad.
    void quantize_rows(const BitLinear& L, const float* in, int n, int npad);
    // out[t * ld + r] (=|+=) bitlinear(row t)[r] for the rows quantized by quantize_rows.
    void matmul_rows(const BitLinear& L, int n, int npad, float* out, int ld, bool accumulate);
    // The conv + selective-scan part for channels [c0, c1) of one token.
    void mix(const Layer& ly, float* st, const float* p, float* y, float* zt, int c0, int c1) const;
    void logits_one(const float* h, float* logits);
    void ensure_all_logits_buffer(int npad);

    int d_, di_, H_, hd_, dproj_, V_;
    const float* embed_ = nullptr;
    std::vector<Layer> layers_;
    AlignedBuffer<float> norm_f_;
    BitLinear lm_head_;
    int kpad_max_ = 0, rows_pad_max_ = 0;

    // single-token scratch
    AlignedBuffer<float> h_, xn_, fn_, p_, y_, z_;
    AlignedBuffer<int8_t> xq_;
    AlignedBuffer<int32_t> acc_;
    // batched scratch (kChunk tokens)
    AlignedBuffer<float> Hb_, Pb_, Yb_, Zb_, Fb_, sx_, xn_thr_;
    AlignedBuffer<int8_t> X_;
    AlignedBuffer<int32_t> sum_, Acc_, AccV_;
    AlignedBuffer<uint8_t> panels_;
    int n_thread_slots_ = 0;
    void ensure_thread_scratch();
};

BitMamba2::BitMamba2(const TensorMap& t, int vocab, int d_model, int n_layers, int n_heads, int n_threads,
                     const KernelSet* kernels)
    : Model(n_threads, kernels) {
    if (vocab <= 0 || d_model <= 0 || n_layers <= 0 || n_heads <= 0)
        throw FormatError("config: every dimension must be positive");
    d_ = d_model;
    di_ = 2 * d_model;
    H_ = n_heads;
    if (di_ % H_) throw FormatError("config: d_inner is not divisible by n_heads");
    hd_ = di_ / H_;
    dproj_ = 2 * di_ + 3 * H_;
    V_ = vocab;

    const TensorView& e = get(t, "embed");
    if (e.dtype != "f32" || count(e) != static_cast<int64_t>(vocab) * d_model)
        throw FormatError("tensor 'embed': expected float32 [" + std::to_string(vocab) + ", " +
                          std::to_string(d_model) + "]");
    embed_ = static_cast<const float*>(e.data);

    layers_.resize(n_layers);
    for (int l = 0; l < n_layers; ++l) {
        const std::string p = "layers." + std::to_string(l) + ".";
        Layer& ly = layers_[l];
        copy_f32(t, p + "in_proj_norm", d_, ly.in_proj.norm);
        load_ternary(t, p + "in_proj", dproj_, d_, ly.in_proj);
        AlignedBuffer<float> cw;
        copy_f32(t, p + "conv1d_w", static_cast<int64_t>(di_) * 4, cw);
        ly.conv_w.reset(static_cast<std::size_t>(di_) * 4);
        for (int c = 0; c < di_; ++c)
            for (int k = 0; k < 4; ++k) ly.conv_w[static_cast<std::size_t>(k) * di_ + c] = cw[c * 4 + k];
        copy_f32(t, p + "conv1d_b", di_, ly.conv_b);
        copy_f32(t, p + "dt_bias", H_, ly.dt_bias);
        copy_f32(t, p + "A_log", H_, ly.A);
        for (int h = 0; h < H_; ++h) ly.A[h] = -std::exp(ly.A[h]);
        copy_f32(t, p + "D", di_, ly.D);
        copy_f32(t, p + "out_proj_norm", di_, ly.out_proj.norm);
        load_ternary(t, p + "out_proj", d_, di_, ly.out_proj);
        weight_bytes_ += ly.in_proj.w.bytes() + ly.out_proj.w.bytes() + sizeof(float) * (8 * di_ + 2 * H_ + d_);
    }
    copy_f32(t, "norm_f", d_, norm_f_);
    copy_f32(t, "lm_head_norm", d_, lm_head_.norm);
    load_ternary(t, "lm_head", V_, d_, lm_head_);
    weight_bytes_ += lm_head_.w.bytes() + sizeof(float) * 2 * d_;

    info_.arch = "bitmamba2";
    info_.vocab_size = V_;
    info_.d_model = d_;
    info_.n_layers = n_layers;
    info_.dims = {{"n_heads", H_}, {"d_inner", di_}, {"head_dim", hd_}, {"d_state", 1}, {"d_conv", 4}};
    layout_.n_layers = n_layers;
    layout_.conv_floats = 3 * di_;
    layout_.ssm_floats = di_;
    layout_.signature = fnv1a("bitmamba2:" + std::to_string(V_) + ":" + std::to_string(d_) + ":" +
                              std::to_string(n_layers) + ":" + std::to_string(H_));

    kpad_max_ = std::max({layers_[0].in_proj.w.cols_pad, layers_[0].out_proj.w.cols_pad, lm_head_.w.cols_pad});
    rows_pad_max_ = std::max(layers_[0].in_proj.w.rows_pad, layers_[0].out_proj.w.rows_pad);
    h_.reset(d_);
    xn_.reset(kpad_max_);
    fn_.reset(d_);
    p_.reset(dproj_);
    y_.reset(di_);
    z_.reset(di_);
    xq_.reset(kpad_max_);
    acc_.reset(std::max(rows_pad_max_, lm_head_.w.rows_pad));
    Hb_.reset(static_cast<std::size_t>(kChunk) * d_);
    Pb_.reset(static_cast<std::size_t>(kChunk) * dproj_);
    Yb_.reset(static_cast<std::size_t>(kChunk) * di_);
    Zb_.reset(static_cast<std::size_t>(kChunk) * di_);
    Fb_.reset(static_cast<std::size_t>(kChunk) * d_);
    sx_.reset(kChunk);
    X_.reset(static_cast<std::size_t>(kChunk) * kpad_max_);
    sum_.reset(kChunk);
    Acc_.reset(static_cast<std::size_t>(kChunk) * rows_pad_max_);
}

void BitMamba2::ensure_thread_scratch() {
    const int n = pool_->size();
    if (n == n_thread_slots_) return;
    panels_.reset(static_cast<std::size_t>(n) * kRowGroup * kpad_max_);
    xn_thr_.reset(static_cast<std::size_t>(n) * kpad_max_);
    n_thread_slots_ = n;
}

void BitMamba2::matvec(const BitLinear& L, const float* x, float* out, bool accumulate) {
    const KernelSet& k = *kernels_;
    const int n_in = L.in();
    k.rmsnorm(x, L.norm.data(), n_in, kNormEps, xn_.data());
    int32_t sum_q = 0;
    const float sx = k.quantize(xn_.data(), n_in, xq_.data(), &sum_q);
    std::memset(xq_.data() + n_in, 0, L.w.cols_pad - n_in);
    const float s = 1.0f / (sx * L.scale);
    const int rows = L.out();
    int32_t* acc = acc_.data();
    const int8_t* xq = xq_.data();
    pool_->parallel_for(L.w.groups, pool_->grain_for(L.w.groups), [&](int g0, int g1, int) {
        k.gemv(L.w, xq, sum_q, acc, g0, g1);
        const int r1 = std::min(rows, g1 * kRowGroup);
        if (accumulate)
            for (int r = g0 * kRowGroup; r < r1; ++r) out[r] += static_cast<float>(acc[r]) * s;
        else
            for (int r = g0 * kRowGroup; r < r1; ++r) out[r] = static_cast<float>(acc[r]) * s;
    });
}

void BitMamba2::quantize_rows(const BitLinear& L, const float* in, int n, int npad) {
    const KernelSet& k = *kernels_;
    const int n_in = L.in(), stride = L.w.cols_pad;
    pool_->parallel_for(npad, 1, [&](int t0, int t1, int slot) {
        float* xn = xn_thr_.data() + static_cast<std::size_t>(slot) * kpad_max_;
        for (int t = t0; t < t1; ++t) {
            int8_t* xq = X_.data() + static_cast<std::size_t>(t) * stride;
            if (t >= n) {  // padding token: zero row contributes nothing
                std::memset(xq, 0, stride);
                sum_[t] = 0;
                sx_[t] = 1.0f;
                continue;
            }
            k.rmsnorm(in + static_cast<std::size_t>(t) * n_in, L.norm.data(), n_in, kNormEps, xn);
            sx_[t] = k.quantize(xn, n_in, xq, &sum_[t]);
            std::memset(xq + n_in, 0, stride - n_in);
        }
    });
}

void BitMamba2::matmul_rows(const BitLinear& L, int n, int npad, float* out, int ld, bool accumulate) {
    const KernelSet& k = *kernels_;
    const int rows = L.out();
    const int ldy = L.w.rows_pad;
    int32_t* Acc = (ldy > rows_pad_max_) ? AccV_.data() : Acc_.data();
    pool_->parallel_for(L.w.groups, pool_->grain_for(L.w.groups), [&](int g0, int g1, int slot) {
        k.gemm(L.w, X_.data(), sum_.data(), npad, Acc, ldy, g0, g1,
               panels_.data() + static_cast<std::size_t>(slot) * kRowGroup * kpad_max_);
        const int r0 = g0 * kRowGroup, r1 = std::min(rows, g1 * kRowGroup);
        for (int t = 0; t < n; ++t) {
            const float s = 1.0f / (sx_[t] * L.scale);
            const int32_t* a = Acc + static_cast<std::size_t>(t) * ldy;
            float* o = out + static_cast<std::size_t>(t) * ld;
            if (accumulate)
                for (int r = r0; r < r1; ++r) o[r] += static_cast<float>(a[r]) * s;
            else
                for (int r = r0; r < r1; ++r) o[r] = static_cast<float>(a[r]) * s;
        }
    });
}

void BitMamba2::mix(const Layer& ly, float* st, const float* p, float* y, float* zt, int c0, int c1) const {
    const int di = di_;
    float* s0 = st;
    float* s1 = st + di;
    float* s2 = st + 2 * di;
    float* ssm = st + 3 * di;
    const float* z = p;
    const float* x = p + di;
    const float* B = p + 2 * di;
    const float* C = B + H_;
    const float* dt = C + H_;
    const float* w0 = ly.conv_w.data();
    const float* w1 = w0 + di;
    const float* w2 = w1 + di;
    const float* w3 = w2 + di;
    const float* cb = ly.conv_b.data();
    for (int i = c0; i < c1; ++i) {
        const float xi = x[i];
        y[i] = cb[i] + s0[i] * w0[i] + s1[i] * w1[i] + s2[i] * w2[i] + xi * w3[i];
        s0[i] = s1[i];
        s1[i] = s2[i];
        s2[i] = xi;
        zt[i] = z[i];
    }
    kernels_->silu(y + c0, c1 - c0);
    kernels_->silu(zt + c0, c1 - c0);
    const float* Dv = ly.D.data();
    for (int h = c0 / hd_; h < H_ && h * hd_ < c1; ++h) {
        const float dth = softplus(dt[h] + ly.dt_bias[h]);
        const float decay = std::exp(ly.A[h] * dth);
        const float bdt = B[h] * dth;
        const float ch = C[h];
        const int i0 = std::max(c0, h * hd_), i1 = std::min(c1, (h + 1) * hd_);
        for (int i = i0; i < i1; ++i) {
            const float s = ssm[i] * decay + y[i] * bdt;
            ssm[i] = s;
            y[i] = (s * ch + y[i] * Dv[i]) * zt[i];
        }
    }
}

void BitMamba2::logits_one(const float* h, float* logits) {
    kernels_->rmsnorm(h, norm_f_.data(), d_, kNormEps, fn_.data());
    matvec(lm_head_, fn_.data(), logits, false);
}

void BitMamba2::step(State& st, int32_t token, float* logits) {
    std::lock_guard<std::mutex> lk(mutex_);
    check_state(st);
    check_tokens(&token, 1);
    std::memcpy(h_.data(), embed_ + static_cast<std::size_t>(token) * d_, sizeof(float) * d_);
    for (std::size_t l = 0; l < layers_.size(); ++l) {
        const Layer& ly = layers_[l];
        matvec(ly.in_proj, h_.data(), p_.data(), false);
        float* sl = st.layer(static_cast<int>(l));
        for_channels(*pool_, di_, [&](int c0, int c1, int) { mix(ly, sl, p_.data(), y_.data(), z_.data(), c0, c1); });
        matvec(ly.out_proj, y_.data(), h_.data(), true);
    }
    if (logits) logits_one(h_.data(), logits);
    st.n_tokens += 1;
}

void BitMamba2::ensure_all_logits_buffer(int npad) {
    const std::size_t need = static_cast<std::size_t>(npad) * lm_head_.w.rows_pad;
    if (AccV_.size() < need) AccV_.reset(static_cast<std::size_t>(kChunk) * lm_head_.w.rows_pad);
}

void BitMamba2::prefill(State& st, const int32_t* tokens, int T, float* logits, bool all_logits,
                        const std::vector<std::pair<int, State*>>& snapshots) {
    std::lock_guard<std::mutex> lk(mutex_);
    check_state(st);
    if (T <= 0) throw std::invalid_argument("prefill needs at least one token");
    check_tokens(tokens, T);
    int prev = 0;
    for (const auto& sp : snapshots) {
        if (sp.first <= prev || sp.first > T)
            throw std::invalid_argument("snapshot positions must be increasing and within 1..T");
        if (!sp.second) throw std::invalid_argument("null snapshot state");
        check_state(*sp.second);
        prev = sp.first;
    }
    ensure_thread_scratch();
    if (all_logits && logits) ensure_all_logits_buffer(round_up(std::min(T, kChunk), kGemmTokens));
    const int64_t base_tokens = st.n_tokens;
    std::size_t snap_i = 0;
    std::vector<std::pair<int, State*>> chunk_snaps;
    chunk_snaps.reserve(snapshots.size());

    for (int t0 = 0; t0 < T; t0 += kChunk) {
        const int n = std::min(kChunk, T - t0);
        const int npad = round_up(n, kGemmTokens);
        for (int t = 0; t < n; ++t)
            std::memcpy(Hb_.data() + static_cast<std::size_t>(t) * d_,
                        embed_ + static_cast<std::size_t>(tokens[t0 + t]) * d_, sizeof(float) * d_);
        chunk_snaps.clear();
        while (snap_i < snapshots.size() && snapshots[snap_i].first <= t0 + n) {
            chunk_snaps.emplace_back(snapshots[snap_i].first - t0 - 1, snapshots[snap_i].second);
            ++snap_i;
        }
        for (std::size_t l = 0; l < layers_.size(); ++l) {
            const Layer& ly = layers_[l];
            quantize_rows(ly.in_proj, Hb_.data(), n, npad);
            matmul_rows(ly.in_proj, n, npad, Pb_.data(), dproj_, false);
            float* sl = st.layer(static_cast<int>(l));
            for_channels(*pool_, di_, [&](int c0, int c1, int) {
                std::size_t si = 0;
                for (int t = 0; t < n; ++t) {
                    mix(ly, sl, Pb_.data() + static_cast<std::size_t>(t) * dproj_,
                        Yb_.data() + static_cast<std::size_t>(t) * di_, Zb_.data() + static_cast<std::size_t>(t) * di_,
                        c0, c1);
                    while (si < chunk_snaps.size() && chunk_snaps[si].first == t) {
                        snapshot_layer(st, static_cast<int>(l), *chunk_snaps[si].second, c0, c1);
                        ++si;
                    }
                }
            });
            quantize_rows(ly.out_proj, Yb_.data(), n, npad);
            matmul_rows(ly.out_proj, n, npad, Hb_.data(), d_, true);
        }
        for (auto& cs : chunk_snaps) cs.second->n_tokens = base_tokens + t0 + cs.first + 1;
        if (all_logits && logits) {
            for (int t = 0; t < n; ++t)
                kernels_->rmsnorm(Hb_.data() + static_cast<std::size_t>(t) * d_, norm_f_.data(), d_, kNormEps,
                                  Fb_.data() + static_cast<std::size_t>(t) * d_);
            quantize_rows(lm_head_, Fb_.data(), n, npad);
            matmul_rows(lm_head_, n, npad, logits + static_cast<std::size_t>(t0) * V_, V_, false);
        }
        if (t0 + n == T && logits && !all_logits) logits_one(Hb_.data() + static_cast<std::size_t>(n - 1) * d_, logits);
    }
    st.n_tokens = base_tokens + T;
}

void BitMamba2::step_batch(State* const* states, const int32_t* tokens, int n, float* logits) {
    std::lock_guard<std::mutex> lk(mutex_);
    if (n <= 0) return;
    if (n > kChunk) throw std::invalid_argument("step_batch: at most " + std::to_string(kChunk) + " sequences");
    for (int i = 0; i < n; ++i) {
        if (!states[i]) throw std::invalid_argument("step_batch: null state");
        check_state(*states[i]);
        for (int j = 0; j < i; ++j)
            if (states[j] == states[i]) throw std::invalid_argument("step_batch: the same state appears twice");
    }
    check_tokens(tokens, n);
    ensure_thread_scratch();
    const int npad = round_up(n, kGemmTokens);
    if (logits) ensure_all_logits_buffer(npad);
    for (int t = 0; t < n; ++t)
        std::memcpy(Hb_.data() + static_cast<std::size_t>(t) * d_, embed_ + static_cast<std::size_t>(tokens[t]) * d_,
                    sizeof(float) * d_);
    for (std::size_t l = 0; l < layers_.size(); ++l) {
        const Layer& ly = layers_[l];
        quantize_rows(ly.in_proj, Hb_.data(), n, npad);
        matmul_rows(ly.in_proj, n, npad, Pb_.data(), dproj_, false);
        for_channels(*pool_, di_, [&](int c0, int c1, int) {
            for (int t = 0; t < n; ++t)
                mix(ly, states[t]->layer(static_cast<int>(l)), Pb_.data() + static_cast<std::size_t>(t) * dproj_,
                    Yb_.data() + static_cast<std::size_t>(t) * di_, Zb_.data() + static_cast<std::size_t>(t) * di_, c0,
                    c1);
        });
        quantize_rows(ly.out_proj, Yb_.data(), n, npad);
        matmul_rows(ly.out_proj, n, npad, Hb_.data(), d_, true);
    }
    if (logits) {
        for (int t = 0; t < n; ++t)
            kernels_->rmsnorm(Hb_.data() + static_cast<std::size_t>(t) * d_, norm_f_.data(), d_, kNormEps,
                              Fb_.data() + static_cast<std::size_t>(t) * d_);
        quantize_rows(lm_head_, Fb_.data(), n, npad);
        matmul_rows(lm_head_, n, npad, logits, V_, false);
    }
    for (int t = 0; t < n; ++t) states[t]->n_tokens += 1;
}

}  // namespace

std::unique_ptr<Model> make_bitmamba2(const TensorMap& tensors, int vocab, int d_model, int n_layers, int n_heads,
                                      int n_threads, const KernelSet* kernels) {
    return std::make_unique<BitMamba2>(tensors, vocab, d_model, n_layers, n_heads, n_threads, kernels);
}

}  // namespace bm
