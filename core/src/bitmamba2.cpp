// BitMamba-2 forward pass (docs/formats.md, BitMamba-2), one token at a time or batched over T tokens.
//
// Per layer (residual): p = bitlinear(h, in_proj) = [z | x | B | C | dt]; causal depthwise conv
// (width 4) on x, silu; per head dt = softplus(dt + dt_bias), decay = exp(-exp(A_log) * dt);
// s = s * decay + xa * B * dt; y = (s * C + xa * D) * silu(z); h += bitlinear(y, out_proj).
// logits = bitlinear(rmsnorm(h, norm_f), lm_head).
//
// Layer repetition (RYS, as bitmamba.cpp's --repeat-start S --repeat-end E --repeat-count N): the
// layers run in `schedule_` order, layers S..E N extra times right after E (4 layers, S=1, E=2, N=2:
// 0 1 2 1 2 1 2 3); each pass has its own slot in the state, the weights are shared.
//
// LoRA (bitmamba.cpp's --lora adapters, set_lora): weight layer l's in_proj and out_proj get
// out += scale * B (A xn) added after the ternary product (xn: the projection's input after its
// RMSNorm), in step() and in the batched path alike, on every pass of l in the schedule.
//
// The batched path (Model::prefill / step_batch around layers_batch here) computes exactly the same
// float operations per token as step(): the integer products are exact and every float expression
// is shared, so a prefill of T tokens leaves a state bit-identical to T calls of step().
#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "bitmamba/layers.h"
#include "bitmamba/model.h"
#include "bitmamba/tensors.h"

namespace bm {
namespace {

constexpr float kNormEps = 1e-6f;

class BitMamba2 final : public Model {
public:
    BitMamba2(const TensorMap& t, int vocab, int d_model, int n_layers, int n_heads, int n_threads,
              const KernelSet* kernels, const LayerRepeat& repeat);

    void step(State& st, int32_t token, float* logits) override;
    void set_lora(const std::vector<LoraLayerViews>& layers, float scale) override;

private:
    struct Layer {
        Linear in_proj, out_proj;
        AlignedBuffer<float> conv_w;  // [4][d_inner], tap k of every channel contiguous
        AlignedBuffer<float> conv_b, dt_bias, A, D;  // A = -exp(A_log)
    };

    // Software prefetch of what mix() reads for channels [c0, c1): the state `st` and, with
    // `constants`, the layer's conv weights, D and the out_proj norm weights (read right after).
    void prefetch_mix(const Layer& ly, const float* st, int c0, int c1, bool constants) const;
    // The conv + selective-scan part for channels [c0, c1) of one token.
    void mix(const Layer& ly, float* st, const float* p, float* y, float* zt, int c0, int c1) const;
    void layers_batch(State* const* states, int n, const ChunkSnapshots& snaps) override;
    void load_layer(const TensorMap& t, int l);  // layer l's tensors (the constructor, on the pool)

    int d_, di_, H_, hd_, dproj_, V_;
    std::vector<Layer> layers_;
    std::vector<int> schedule_;  // the layer each pass runs (pass i uses state slot i)
    std::string signature_;      // what the state signature hashes (without an adapter)
    struct LoraLayer {
        LoraMatrix in_proj, out_proj;
    };
    std::vector<LoraLayer> lora_;  // per weight layer; empty: no adapter
    float lora_scale_ = 0.0f;
    std::size_t lora_bytes_ = 0;
    // single-token scratch
    AlignedBuffer<float> p_, y_, z_;
    // batched scratch (kChunk tokens)
    AlignedBuffer<float> Pb_, Yb_, Zb_;
};

std::vector<int> layer_schedule(int n_layers, const LayerRepeat& r) {
    std::vector<int> s;
    for (int l = 0; l < n_layers; ++l) {
        s.push_back(l);
        if (r.count > 0 && l == r.end)
            for (int k = 0; k < r.count; ++k)
                for (int m = r.start; m <= r.end; ++m) s.push_back(m);
    }
    return s;
}

BitMamba2::BitMamba2(const TensorMap& t, int vocab, int d_model, int n_layers, int n_heads, int n_threads,
                     const KernelSet* kernels, const LayerRepeat& repeat)
    : Model(n_threads, kernels) {
    if (repeat.count < 0 || (repeat.count > 0 && !(0 <= repeat.start && repeat.start <= repeat.end &&
                                                   repeat.end < n_layers)))
        throw FormatError("layer repetition: the slice " + std::to_string(repeat.start) + ".." +
                          std::to_string(repeat.end) + " (x" + std::to_string(repeat.count) +
                          ") must lie within layers 0.." + std::to_string(n_layers - 1));
    if (repeat.count > 64) throw FormatError("layer repetition: at most 64 extra passes");
    if (vocab <= 0 || d_model <= 0 || n_layers <= 0 || n_heads <= 0)
        throw FormatError("config: every dimension must be positive");
    d_ = d_model;
    di_ = 2 * d_model;
    H_ = n_heads;
    if (di_ % H_) throw FormatError("config: d_inner is not divisible by n_heads");
    hd_ = di_ / H_;
    dproj_ = 2 * di_ + 3 * H_;
    V_ = vocab;

    embed_ = f32_tensor(t, "embed", static_cast<int64_t>(vocab) * d_model);  // stays mapped
    layers_.resize(n_layers);
    // The layers and the LM head are read on the model's threads (their ternary repacks are most
    // of a load: a daemon's cold start waits for them); the first error in the serial order of the
    // tensors (the layers, norm_f, lm_head_norm, lm_head) is the one reported, as it always was.
    std::vector<std::exception_ptr> failed(static_cast<std::size_t>(n_layers) + 1);
    pool_->parallel_for(n_layers + 1, 1, [&](int b, int e, int) {
        for (int i = b; i < e; ++i) {
            try {
                if (i == 0)
                    load_ternary(t, "lm_head", V_, d_, lm_head_);  // the largest item first
                else
                    load_layer(t, i - 1);
            } catch (...) {
                failed[static_cast<std::size_t>(i)] = std::current_exception();
            }
        }
    });
    for (int l = 0; l < n_layers; ++l) {
        if (failed[static_cast<std::size_t>(l) + 1]) std::rethrow_exception(failed[static_cast<std::size_t>(l) + 1]);
        const Layer& ly = layers_[l];
        weight_bytes_ += ly.in_proj.bytes() + ly.out_proj.bytes() + sizeof(float) * (6 * di_ + 2 * H_);
    }
    copy_f32(t, "norm_f", d_, norm_f_);
    norm_f_eps_ = kNormEps;
    copy_f32(t, "lm_head_norm", d_, lm_head_.norm);
    lm_head_.norm_eps = kNormEps;
    if (failed[0]) std::rethrow_exception(failed[0]);
    weight_bytes_ += lm_head_.bytes() + sizeof(float) * d_;

    info_.arch = "bitmamba2";
    info_.vocab_size = V_;
    info_.d_model = d_;
    info_.n_layers = n_layers;
    schedule_ = layer_schedule(n_layers, repeat);
    const int passes = static_cast<int>(schedule_.size());
    info_.dims = {{"n_heads", H_}, {"d_inner", di_}, {"head_dim", hd_}, {"d_state", 1}, {"d_conv", 4},
                  {"layer_passes", passes}};
    layout_.n_layers = passes;
    layout_.conv_floats = 3 * di_;
    layout_.ssm_floats = di_;
    std::string sig = "bitmamba2:" + std::to_string(V_) + ":" + std::to_string(d_) + ":" +
                      std::to_string(n_layers) + ":" + std::to_string(H_);
    if (repeat.count > 0)  // a state of the repeated model is not one of the plain model
        sig += ":rys" + std::to_string(repeat.start) + "-" + std::to_string(repeat.end) + "x" +
               std::to_string(repeat.count);
    signature_ = sig;
    layout_.signature = fnv1a(sig);

    run_.reserve(std::max(d_, di_), std::max({dproj_, d_, V_}), kChunk, std::max(dproj_, d_));
    init_shared_scratch();
    p_.reset(dproj_);
    y_.reset(di_);
    z_.reset(di_);
    Pb_.reset(static_cast<std::size_t>(kChunk) * dproj_);
    Yb_.reset(static_cast<std::size_t>(kChunk) * di_);
    Zb_.reset(static_cast<std::size_t>(kChunk) * di_);
}

// The two elementwise loops of mix() as functions with restrict-qualified parameters: with a
// dozen pointers in flight the compiler otherwise gives up on alias checks and runs them scalar.
// Same float operations in the same order per element, vectorized or not (-ffp-contract=off).
static void conv_shift(const float* __restrict x, const float* __restrict z, const float* __restrict cb,
                       const float* __restrict w0, const float* __restrict w1, const float* __restrict w2,
                       const float* __restrict w3, float* __restrict s0, float* __restrict s1,
                       float* __restrict s2, float* __restrict y, float* __restrict zt, int n) {
    for (int i = 0; i < n; ++i) {
        const float xi = x[i];
        y[i] = cb[i] + s0[i] * w0[i] + s1[i] * w1[i] + s2[i] * w2[i] + xi * w3[i];
        s0[i] = s1[i];
        s1[i] = s2[i];
        s2[i] = xi;
        zt[i] = z[i];
    }
}

static void scan_head(float* __restrict ssm, float* __restrict y, const float* __restrict Dv,
                      const float* __restrict zt, float decay, float bdt, float ch, int n) {
    for (int i = 0; i < n; ++i) {
        const float s = ssm[i] * decay + y[i] * bdt;
        ssm[i] = s;
        y[i] = (s * ch + y[i] * Dv[i]) * zt[i];
    }
}

// The state and conv weights come from DRAM every token (the weight stream is larger than the
// last-level cache); ten short streams are more than the hardware prefetcher ramps up on, so ask for
// every line of the range at once (measured -10..15% of the mixer's time, 255M, 2 threads).
void BitMamba2::prefetch_mix(const Layer& ly, const float* st, int c0, int c1, bool constants) const {
    const int di = di_;
    for (int k = 0; k < 4; ++k)  // conv window s0, s1, s2 and the ssm state
        for (int c = c0; c < c1; c += 16) prefetch(st + k * di + c);
    if (!constants) return;
    const float* w = ly.conv_w.data();
    for (const float* a : {w, w + di, w + 2 * di, w + 3 * di, ly.conv_b.data(), ly.D.data(), ly.out_proj.norm.data()})
        for (int c = c0; c < c1; c += 16) prefetch(a + c);
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
    conv_shift(x + c0, z + c0, cb + c0, w0 + c0, w1 + c0, w2 + c0, w3 + c0, s0 + c0, s1 + c0, s2 + c0, y + c0,
               zt + c0, c1 - c0);
    kernels_->silu(y + c0, c1 - c0);
    kernels_->silu(zt + c0, c1 - c0);
    const float* Dv = ly.D.data();
    for (int h = c0 / hd_; h < H_ && h * hd_ < c1; ++h) {
        const float dth = softplus(dt[h] + ly.dt_bias[h]);
        const float decay = std::exp(ly.A[h] * dth);
        const float bdt = B[h] * dth;
        const float ch = C[h];
        const int i0 = std::max(c0, h * hd_), i1 = std::min(c1, (h + 1) * hd_);
        scan_head(ssm + i0, y + i0, Dv + i0, zt + i0, decay, bdt, ch, i1 - i0);
    }
}

void BitMamba2::step(State& st, int32_t token, float* logits) {
    std::lock_guard<std::mutex> lk(mutex_);
    check_state(st);
    check_tokens(&token, 1);
    StageClock* ck = profiling_ ? &clock_ : nullptr;
    const int64_t ts = ck ? StageClock::now() : 0;
    run_.set_clock(ck);
    embed(&token, 1, h_.data());
    for (std::size_t l = 0; l < schedule_.size(); ++l) {
        const Layer& ly = layers_[schedule_[l]];
        float* sl = st.layer(static_cast<int>(l));
        const LoraLayer* lo = lora_.empty() ? nullptr : &lora_[schedule_[l]];
        run_.apply(ly.in_proj, h_.data(), p_.data());
        if (lo) run_.apply_lora(ly.in_proj, lo->in_proj, lora_scale_, h_.data(), d_, 1, p_.data(), dproj_);
        const int64_t tm = ck ? StageClock::now() : 0;
        // Split over the pool: the state and conv weights arrive from memory (the weight stream
        // evicts them every token), so two cores fetch them faster than one.
        for_channels(*pool_, di_, [&](int c0, int c1, int) {
            prefetch_mix(ly, sl, c0, c1, true);
            mix(ly, sl, p_.data(), y_.data(), z_.data(), c0, c1);
        });
        if (ck) ck->add(kStageMix, tm, StageClock::now());
        // the next in_proj's norm weights, while out_proj streams its weights
        const float* next_norm =
            l + 1 < schedule_.size() ? layers_[schedule_[l + 1]].in_proj.norm.data() : lm_head_.norm.data();
        for (int c = 0; c < d_; c += 16) prefetch(next_norm + c);
        run_.apply(ly.out_proj, y_.data(), h_.data(), true);
        if (lo) run_.apply_lora(ly.out_proj, lo->out_proj, lora_scale_, y_.data(), di_, 1, h_.data(), d_);
    }
    if (logits) head(h_.data(), logits);
    if (ck) {
        ck->add(kStageStep, ts, StageClock::now());
        ck->steps += 1;
        run_.set_clock(nullptr);
    }
    st.n_tokens += 1;
}

// The chunk's tokens through every layer (Model::prefill / step_batch): the projections batched
// over the chunk, the mixer per token in order (each token reads the state its predecessor left).
void BitMamba2::layers_batch(State* const* states, int n, const ChunkSnapshots& snaps) {
    StageClock* ck = profiling_ ? &clock_ : nullptr;
    for (std::size_t l = 0; l < schedule_.size(); ++l) {
        const Layer& ly = layers_[schedule_[l]];
        const LoraLayer* lo = lora_.empty() ? nullptr : &lora_[schedule_[l]];
        run_.apply_rows(ly.in_proj, Hb_.data(), d_, n, Pb_.data(), dproj_);
        if (lo) run_.apply_lora(ly.in_proj, lo->in_proj, lora_scale_, Hb_.data(), d_, n, Pb_.data(), dproj_);
        const int li = static_cast<int>(l);
        const int64_t tm = ck ? StageClock::now() : 0;
        for_channels(*pool_, di_, [&](int c0, int c1, int) {
            std::size_t si = 0;
            for (int t = 0; t < n; ++t) {
                // constants once per chunk, a state when it changes (step_batch; a prefill has one)
                if (t == 0 || states[t] != states[t - 1]) prefetch_mix(ly, states[t]->layer(li), c0, c1, t == 0);
                mix(ly, states[t]->layer(li), Pb_.data() + static_cast<std::size_t>(t) * dproj_,
                    Yb_.data() + static_cast<std::size_t>(t) * di_, Zb_.data() + static_cast<std::size_t>(t) * di_, c0,
                    c1);
                for (; si < snaps.size() && snaps[si].first == t; ++si)
                    snapshot_layer(*states[t], li, *snaps[si].second, c0, c1);
            }
        });
        if (ck) ck->add(kStageMix, tm, StageClock::now());  // with the snapshots
        run_.apply_rows(ly.out_proj, Yb_.data(), di_, n, Hb_.data(), d_, true);
        if (lo) run_.apply_lora(ly.out_proj, lo->out_proj, lora_scale_, Yb_.data(), di_, n, Hb_.data(), d_);
    }
}

void BitMamba2::set_lora(const std::vector<LoraLayerViews>& views, float scale) {
    std::lock_guard<std::mutex> lk(mutex_);  // no forward pass is running
    const int n_layers = static_cast<int>(layers_.size());
    if (views.empty()) {
        lora_.clear();
        weight_bytes_ -= lora_bytes_;
        lora_bytes_ = 0;
        layout_.signature = fnv1a(signature_);
        info_.dims.erase("lora_rank");
        return;
    }
    if (static_cast<int>(views.size()) != n_layers)
        throw FormatError("LoRA: the adapter has " + std::to_string(views.size()) + " layers, this model has " +
                          std::to_string(n_layers));
    if (!std::isfinite(scale)) throw FormatError("LoRA: the scale is not a finite number");
    std::vector<LoraLayer> ls(n_layers);
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the shapes and the values' bits, word by word
    auto mix = [&h](uint32_t w) { h = (h ^ w) * 1099511628211ull; };
    int max_rank = 0;
    std::size_t bytes = 0;
    for (int l = 0; l < n_layers; ++l) {
        for (int t = 0; t < 2; ++t) {
            const Linear& L = t == 0 ? layers_[l].in_proj : layers_[l].out_proj;
            const LoraView& v = views[l][t];
            const std::string what = "LoRA: layer " + std::to_string(l) + (t == 0 ? " in_proj" : " out_proj");
            if (!v.A || !v.B || v.rank <= 0 || v.in != L.cols || v.out != L.rows)
                throw FormatError(what + " is " + std::to_string(v.out) + "x" + std::to_string(v.in) + " rank " +
                                  std::to_string(v.rank) + ", the model's projection is " + std::to_string(L.rows) +
                                  "x" + std::to_string(L.cols));
            LoraMatrix& m = t == 0 ? ls[l].in_proj : ls[l].out_proj;
            m.rank = v.rank;
            m.in = v.in;
            m.out = v.out;
            const std::size_t na = static_cast<std::size_t>(v.rank) * v.in, nb = static_cast<std::size_t>(v.out) * v.rank;
            m.A.reset(na);
            m.Bt.reset(nb);
            std::memcpy(m.A.data(), v.A, sizeof(float) * na);
            for (int o = 0; o < v.out; ++o)
                for (int r = 0; r < v.rank; ++r)
                    m.Bt[static_cast<std::size_t>(r) * v.out + o] = v.B[static_cast<std::size_t>(o) * v.rank + r];
            for (std::size_t i = 0; i < na; ++i)
                if (!std::isfinite(m.A[i])) throw FormatError(what + " A contains NaN or Inf");
            for (std::size_t i = 0; i < nb; ++i)
                if (!std::isfinite(m.Bt[i])) throw FormatError(what + " B contains NaN or Inf");
            mix(static_cast<uint32_t>(v.rank));
            mix(static_cast<uint32_t>(v.in));
            mix(static_cast<uint32_t>(v.out));
            for (const AlignedBuffer<float>* buf : {&m.A, &m.Bt}) {
                uint32_t w;
                for (std::size_t i = 0; i < buf->size(); ++i) {
                    std::memcpy(&w, buf->data() + i, sizeof w);
                    mix(w);
                }
            }
            max_rank = std::max(max_rank, v.rank);
            bytes += m.bytes();
        }
    }
    uint32_t sb;
    std::memcpy(&sb, &scale, sizeof sb);
    mix(sb);
    run_.reserve_lora(std::max(d_, di_), max_rank, kChunk);
    lora_ = std::move(ls);
    lora_scale_ = scale;
    weight_bytes_ = weight_bytes_ - lora_bytes_ + bytes;
    lora_bytes_ = bytes;
    layout_.signature = fnv1a(signature_ + ":lora:" + std::to_string(h));
    info_.dims["lora_rank"] = max_rank;
}

}  // namespace

void BitMamba2::load_layer(const TensorMap& t, int l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    Layer& ly = layers_[l];
    copy_f32(t, p + "in_proj_norm", d_, ly.in_proj.norm);
    ly.in_proj.norm_eps = kNormEps;
    load_ternary(t, p + "in_proj", dproj_, d_, ly.in_proj);
    copy_conv_taps(t, p + "conv1d_w", di_, ly.conv_w);
    copy_f32(t, p + "conv1d_b", di_, ly.conv_b);
    copy_f32(t, p + "dt_bias", H_, ly.dt_bias);
    copy_f32(t, p + "A_log", H_, ly.A);
    for (int h = 0; h < H_; ++h) ly.A[h] = -std::exp(ly.A[h]);
    copy_f32(t, p + "D", di_, ly.D);
    copy_f32(t, p + "out_proj_norm", di_, ly.out_proj.norm);
    ly.out_proj.norm_eps = kNormEps;
    load_ternary(t, p + "out_proj", d_, di_, ly.out_proj);
}

std::unique_ptr<Model> make_bitmamba2(const TensorMap& tensors, int vocab, int d_model, int n_layers, int n_heads,
                                      int n_threads, const KernelSet* kernels, const LayerRepeat& repeat) {
    return std::make_unique<BitMamba2>(tensors, vocab, d_model, n_layers, n_heads, n_threads, kernels, repeat);
}

}  // namespace bm
