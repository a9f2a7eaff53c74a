// bitmamba-student: Mamba-1 blocks with BitLinear projections (the issue that asks for this model
// gives the architecture; tensor names are mapped by the Python loader).
//
// Per layer (residual), with d_inner channels and d_state S:
//   p = in_proj(rmsnorm(h, norm)) = [x | z]           (BitLinear: per-row scale, per-token int8, alpha)
//   xa = silu(conv1d(x))                              (depthwise causal, width 4, bias)
//   [dt_in | B | C] = x_proj(xa)                      (float)
//   dt = softplus(dt_proj(dt_in) + dt_bias)           (float, per channel)
//   h[i,n] = exp(dt[i] * A[i,n]) * h[i,n] + dt[i] * B[n] * xa[i];  y[i] = sum_n h[i,n] * C[n]
//   gate "mul_d" (the training code): y * silu(z) * D;  "skip_d" (standard Mamba): (y + D * xa) * silu(z)
//   h += out_proj(gated)
// logits = lm_head(rmsnorm(h, norm_f))  (float weights, int8 per row by default).
//
// As in bitmamba2.cpp, the batched and single-token paths share every float expression.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "bitmamba/layers.h"
#include "bitmamba/model.h"
#include "bitmamba/tensors.h"

namespace bm {
namespace {

constexpr int kMaxState = 256;

class Mamba1 final : public Model {
public:
    Mamba1(const TensorMap& t, const Mamba1Config& cfg, int n_threads, const KernelSet* kernels);

    void step(State& st, int32_t token, float* logits) override;

private:
    struct Layer {
        Linear in_proj, out_proj, x_proj, dt_proj;
        AlignedBuffer<float> conv_w, conv_b, dt_b, A, D;  // conv_w [4][di]; A [di][S] = -exp(A_log)
    };

    void conv(const Layer& ly, float* st, const float* x, float* xa, int c0, int c1) const;
    void dt_of(const Layer& ly, const float* xa, float* xdbl, float* dt);
    void scan(const Layer& ly, float* st, const float* xa, const float* xdbl, const float* dt, const float* z,
              float* zt, float* y, int c0, int c1) const;
    void layers_batch(State* const* states, int n, const ChunkSnapshots& snaps) override;
    void snapshot_part(const State& st, int layer, State& dst, int c0, int c1, bool conv_part) const;

    Mamba1Config cfg_;
    int d_, di_, S_, R_, V_;
    std::vector<Layer> layers_;
    // batched scratch (kChunk tokens; step() uses the first row)
    AlignedBuffer<float> Pb_, XAb_, XDb_, DTb_, Zb_, Yb_;
};

Mamba1::Mamba1(const TensorMap& t, const Mamba1Config& cfg, int n_threads, const KernelSet* kernels)
    : Model(n_threads, kernels), cfg_(cfg) {
    d_ = cfg.d_model;
    di_ = cfg.d_inner;
    S_ = cfg.d_state;
    R_ = cfg.dt_rank;
    V_ = cfg.vocab_size;
    if (d_ <= 0 || di_ <= 0 || R_ <= 0 || V_ <= 0 || cfg.n_layers <= 0)
        throw FormatError("config: every dimension must be positive");
    if (S_ <= 0 || S_ > kMaxState) throw FormatError("config: d_state must be in 1..256");
    if (cfg.d_conv != 4) throw FormatError("config: only d_conv = 4 is supported");
    if (cfg.gate != "mul_d" && cfg.gate != "skip_d") throw FormatError("config: gate must be 'mul_d' or 'skip_d'");

    embed_ = f32_tensor(t, "embed", static_cast<int64_t>(V_) * d_);
    layers_.resize(cfg.n_layers);
    for (int l = 0; l < cfg.n_layers; ++l) {
        const std::string p = "layers." + std::to_string(l) + ".";
        Layer& ly = layers_[l];
        copy_f32(t, p + "norm", d_, ly.in_proj.norm);
        ly.in_proj.norm_eps = cfg.norm_eps;
        auto bitlinear = [&](const std::string& name, int rows, int cols, Linear& L) {
            const float* W = f32_tensor(t, name, static_cast<int64_t>(rows) * cols);
            if (cfg.quantize) L.set_ternary_from_float_rows(W, rows, cols, name.c_str());
            else L.set_float(W, rows, cols, name.c_str());
            if (has_tensor(t, name + ".alpha")) {
                AlignedBuffer<float> a;
                copy_f32(t, name + ".alpha", rows, a);
                L.scale_rows(a.data());
            }
        };
        bitlinear(p + "in_proj", 2 * di_, d_, ly.in_proj);
        bitlinear(p + "out_proj", d_, di_, ly.out_proj);
        ly.x_proj.set_float(f32_tensor(t, p + "x_proj", static_cast<int64_t>(R_ + 2 * S_) * di_), R_ + 2 * S_, di_,
                            (p + "x_proj").c_str());
        ly.dt_proj.set_float(f32_tensor(t, p + "dt_proj", static_cast<int64_t>(di_) * R_), di_, R_,
                             (p + "dt_proj").c_str());
        copy_f32(t, p + "dt_proj_b", di_, ly.dt_b);
        copy_conv_taps(t, p + "conv1d_w", di_, ly.conv_w);
        copy_f32(t, p + "conv1d_b", di_, ly.conv_b);
        copy_f32(t, p + "A_log", static_cast<int64_t>(di_) * S_, ly.A);
        for (std::size_t i = 0; i < ly.A.size(); ++i) ly.A[i] = -std::exp(ly.A[i]);
        copy_f32(t, p + "D", di_, ly.D);
        weight_bytes_ += ly.in_proj.bytes() + ly.out_proj.bytes() + ly.x_proj.bytes() + ly.dt_proj.bytes() +
                         sizeof(float) * (static_cast<std::size_t>(di_) * (7 + S_));
    }
    copy_f32(t, "norm_f", d_, norm_f_);
    norm_f_eps_ = cfg.norm_eps;
    const std::string head = has_tensor(t, "lm_head") ? "lm_head" : "embed";  // tied embeddings
    const float* Wh = f32_tensor(t, head, static_cast<int64_t>(V_) * d_);
    if (cfg.lm_head == "int8") lm_head_.set_int8_from_float_rows(Wh, V_, d_, head.c_str());
    else if (cfg.lm_head == "f32") lm_head_.set_float(Wh, V_, d_, head.c_str());
    else throw FormatError("config: lm_head must be 'int8' or 'f32'");
    weight_bytes_ += lm_head_.bytes() + sizeof(float) * d_;

    info_.arch = "mamba1-bitlinear";
    info_.vocab_size = V_;
    info_.d_model = d_;
    info_.n_layers = cfg.n_layers;
    info_.dims = {{"d_inner", di_}, {"d_state", S_}, {"dt_rank", R_}, {"d_conv", 4}, {"quantized", cfg.quantize ? 1 : 0},
                  {"lm_head_int8", cfg.lm_head == "int8" ? 1 : 0}, {"gate_skip_d", cfg.gate == "skip_d" ? 1 : 0}};
    layout_.n_layers = cfg.n_layers;
    layout_.conv_floats = 3 * di_;
    layout_.ssm_floats = di_ * S_;
    layout_.signature = fnv1a("mamba1:" + std::to_string(V_) + ":" + std::to_string(d_) + ":" +
                              std::to_string(cfg.n_layers) + ":" + std::to_string(di_) + ":" + std::to_string(S_));

    run_.reserve(std::max(d_, di_), std::max({2 * di_, d_, V_, R_ + 2 * S_}), kChunk, std::max(2 * di_, d_));
    init_shared_scratch();
    Pb_.reset(static_cast<std::size_t>(kChunk) * 2 * di_);
    XAb_.reset(static_cast<std::size_t>(kChunk) * di_);
    XDb_.reset(static_cast<std::size_t>(kChunk) * (R_ + 2 * S_));
    DTb_.reset(static_cast<std::size_t>(kChunk) * di_);
    Zb_.reset(static_cast<std::size_t>(kChunk) * di_);
    Yb_.reset(static_cast<std::size_t>(kChunk) * di_);
}

void Mamba1::conv(const Layer& ly, float* st, const float* x, float* xa, int c0, int c1) const {
    const int di = di_;
    float* s0 = st;
    float* s1 = st + di;
    float* s2 = st + 2 * di;
    const float* w0 = ly.conv_w.data();
    const float* w1 = w0 + di;
    const float* w2 = w1 + di;
    const float* w3 = w2 + di;
    for (int i = c0; i < c1; ++i) {
        const float xi = x[i];
        xa[i] = ly.conv_b[i] + s0[i] * w0[i] + s1[i] * w1[i] + s2[i] * w2[i] + xi * w3[i];
        s0[i] = s1[i];
        s1[i] = s2[i];
        s2[i] = xi;
    }
    kernels_->silu(xa + c0, c1 - c0);
}

void Mamba1::dt_of(const Layer& ly, const float* xa, float* xdbl, float* dt) {
    run_.apply(ly.x_proj, xa, xdbl);
    run_.apply(ly.dt_proj, xdbl, dt);  // the first dt_rank values of xdbl are dt_in
    for (int i = 0; i < di_; ++i) dt[i] = softplus(dt[i] + ly.dt_b[i]);
}

void Mamba1::scan(const Layer& ly, float* st, const float* xa, const float* xdbl, const float* dt, const float* z,
                  float* zt, float* y, int c0, int c1) const {
    float* ssm = st + 3 * di_;
    const float* B = xdbl + R_;
    const float* C = B + S_;
    const bool skip = cfg_.gate == "skip_d";
    std::memcpy(zt + c0, z + c0, sizeof(float) * (c1 - c0));
    kernels_->silu(zt + c0, c1 - c0);
    float dA[kMaxState];
    for (int i = c0; i < c1; ++i) {
        const float* Ai = ly.A.data() + static_cast<std::size_t>(i) * S_;
        float* hi = ssm + static_cast<std::size_t>(i) * S_;
        const float dti = dt[i];
        for (int n = 0; n < S_; ++n) dA[n] = dti * Ai[n];
        kernels_->exp(dA, S_);
        const float dbx = dti * xa[i];
        float acc = 0.0f;
        for (int n = 0; n < S_; ++n) {
            const float h = dA[n] * hi[n] + dbx * B[n];
            hi[n] = h;
            acc += h * C[n];
        }
        y[i] = skip ? (acc + ly.D[i] * xa[i]) * zt[i] : acc * zt[i] * ly.D[i];
    }
}

void Mamba1::snapshot_part(const State& st, int layer, State& dst, int c0, int c1, bool conv_part) const {
    const float* src = st.layer(layer);
    float* out = dst.layer(layer);
    if (conv_part) {
        for (int k = 0; k < 3; ++k)
            std::memcpy(out + k * di_ + c0, src + k * di_ + c0, sizeof(float) * (c1 - c0));
    } else {
        const std::size_t off = 3 * static_cast<std::size_t>(di_) + static_cast<std::size_t>(c0) * S_;
        std::memcpy(out + off, src + off, sizeof(float) * (c1 - c0) * S_);
    }
}

void Mamba1::step(State& st, int32_t token, float* logits) {
    std::lock_guard<std::mutex> lk(mutex_);
    check_state(st);
    check_tokens(&token, 1);
    embed(&token, 1, h_.data());
    float* p = Pb_.data();
    float* xa = XAb_.data();
    float* xd = XDb_.data();
    float* dt = DTb_.data();
    float* zt = Zb_.data();
    float* y = Yb_.data();
    for (std::size_t l = 0; l < layers_.size(); ++l) {
        const Layer& ly = layers_[l];
        float* sl = st.layer(static_cast<int>(l));
        run_.apply(ly.in_proj, h_.data(), p);
        for_channels(*pool_, di_, [&](int c0, int c1, int) { conv(ly, sl, p, xa, c0, c1); });
        dt_of(ly, xa, xd, dt);
        for_channels(*pool_, di_, [&](int c0, int c1, int) { scan(ly, sl, xa, xd, dt, p + di_, zt, y, c0, c1); });
        run_.apply(ly.out_proj, y, h_.data(), true);
    }
    if (logits) head(h_.data(), logits);
    st.n_tokens += 1;
}

// The chunk's tokens through every layer (Model::prefill / step_batch): the projections batched over
// the chunk; the conv, then dt, then the scan of every token in order (each token reads the state its
// predecessor left), the conv and scan split over the channels on the pool.
void Mamba1::layers_batch(State* const* states, int n, const ChunkSnapshots& snaps) {
    const int P = 2 * di_, XD = R_ + 2 * S_;
    for (std::size_t l = 0; l < layers_.size(); ++l) {
        const Layer& ly = layers_[l];
        const int li = static_cast<int>(l);
        run_.apply_rows(ly.in_proj, Hb_.data(), d_, n, Pb_.data(), P);
        for_channels(*pool_, di_, [&](int c0, int c1, int) {
            std::size_t si = 0;
            for (int t = 0; t < n; ++t) {
                conv(ly, states[t]->layer(li), Pb_.data() + static_cast<std::size_t>(t) * P,
                     XAb_.data() + static_cast<std::size_t>(t) * di_, c0, c1);
                for (; si < snaps.size() && snaps[si].first == t; ++si)
                    snapshot_part(*states[t], li, *snaps[si].second, c0, c1, true);
            }
        });
        for (int t = 0; t < n; ++t)
            dt_of(ly, XAb_.data() + static_cast<std::size_t>(t) * di_, XDb_.data() + static_cast<std::size_t>(t) * XD,
                  DTb_.data() + static_cast<std::size_t>(t) * di_);
        for_channels(*pool_, di_, [&](int c0, int c1, int) {
            std::size_t si = 0;
            for (int t = 0; t < n; ++t) {
                const std::size_t o = static_cast<std::size_t>(t) * di_;
                scan(ly, states[t]->layer(li), XAb_.data() + o, XDb_.data() + static_cast<std::size_t>(t) * XD,
                     DTb_.data() + o, Pb_.data() + static_cast<std::size_t>(t) * P + di_, Zb_.data() + o, Yb_.data() + o,
                     c0, c1);
                for (; si < snaps.size() && snaps[si].first == t; ++si)
                    snapshot_part(*states[t], li, *snaps[si].second, c0, c1, false);
            }
        });
        run_.apply_rows(ly.out_proj, Yb_.data(), di_, n, Hb_.data(), d_, true);
    }
}

}  // namespace

std::unique_ptr<Model> make_mamba1(const TensorMap& tensors, const Mamba1Config& cfg, int n_threads,
                                   const KernelSet* kernels) {
    return std::make_unique<Mamba1>(tensors, cfg, n_threads, kernels);
}

}  // namespace bm
