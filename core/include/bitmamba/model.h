// Models and their recurrent state. A State is a fixed-size block of floats (per layer: the conv
// window and the SSM state); it can be copied, compared and serialised, which is what lets the
// daemon checkpoint a document and resume from any checkpoint.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "bitmamba/common.h"
#include "bitmamba/kernels.h"
#include "bitmamba/layers.h"
#include "bitmamba/profile.h"
#include "bitmamba/threadpool.h"

namespace bm {

struct StateLayout {
    int n_layers = 0;
    int conv_floats = 0;  // per layer
    int ssm_floats = 0;   // per layer
    uint64_t signature = 0;  // hash of the model's architecture/shape: states of other models are rejected

    std::size_t layer_floats() const { return static_cast<std::size_t>(conv_floats) + ssm_floats; }
    std::size_t total_floats() const { return layer_floats() * n_layers; }
    bool operator==(const StateLayout& o) const {
        return n_layers == o.n_layers && conv_floats == o.conv_floats && ssm_floats == o.ssm_floats &&
               signature == o.signature;
    }
};

class State {
public:
    explicit State(const StateLayout& layout) : layout_(layout), data_(layout.total_floats()) {}

    const StateLayout& layout() const { return layout_; }
    float* layer(int l) { return data_.data() + layout_.layer_floats() * l; }
    const float* layer(int l) const { return data_.data() + layout_.layer_floats() * l; }
    float* data() { return data_.data(); }
    const float* data() const { return data_.data(); }
    std::size_t n_floats() const { return data_.size(); }
    std::size_t n_bytes() const { return data_.size() * sizeof(float); }

    int64_t n_tokens = 0;  // tokens consumed since the empty state

    void copy_from(const State& o);
    void reset();
    bool equals(const State& o) const;
    float max_abs_diff(const State& o) const;

    // Serialised form: 32-byte header (magic "BMST", version, signature, n_tokens, n_floats) + floats.
    std::string to_bytes() const;
    void load_bytes(const char* p, std::size_t n);

private:
    StateLayout layout_;
    AlignedBuffer<float> data_;
};

// A view of one tensor handed over by the loader (the bytes belong to the caller).
struct TensorView {
    const void* data = nullptr;
    std::vector<int64_t> shape;
    std::string dtype;  // "f32", "u8" (packed file codes), "i8" (ternary values)
    float scale = 1.0f; // ternary per-tensor scale (W ~= q / scale)
    int64_t cols = 0;   // logical columns for packed "u8" codes
};
using TensorMap = std::unordered_map<std::string, TensorView>;

// One LoRA matrix pair as the caller hands it over (views; set_lora copies them).
// A [rank][in], B [out][rank], both row-major float32.
struct LoraView {
    const float* A = nullptr;
    const float* B = nullptr;
    int rank = 0, in = 0, out = 0;
};
using LoraLayerViews = std::array<LoraView, 2>;  // {in_proj, out_proj} of one layer

struct ModelInfo {
    std::string arch;
    int vocab_size = 0;
    int d_model = 0;
    int n_layers = 0;
    std::unordered_map<std::string, int64_t> dims;  // everything else worth reporting
};

// The base of every architecture. It owns what they share: the thread pool and kernel set, the
// token embedding, the final RMSNorm and the lm_head, the per-layer state layout, and the batched
// forward pass (prefill, step_batch: check the arguments, embed a chunk of tokens, run it through
// the architecture's layers, final norm + lm_head). An architecture loads its weights, sizes its
// scratch and supplies step() and layers_batch(): what one token or one chunk does in its layers.
class Model {
public:
    Model(int n_threads, const KernelSet* kernels);
    virtual ~Model() = default;

    const ModelInfo& info() const { return info_; }
    const StateLayout& state_layout() const { return layout_; }
    std::unique_ptr<State> new_state() const { return std::make_unique<State>(layout_); }

    // Consume one token; write vocab_size logits (unless logits is null).
    virtual void step(State& st, int32_t token, float* logits) = 0;
    // Consume T tokens with batched matrix products. logits: vocab_size floats for the last token,
    // or T*vocab_size when all_logits, or null. snapshots: (position p in 1..T, state) pairs sorted
    // by p: the state after the first p tokens is copied into each.
    void prefill(State& st, const int32_t* tokens, int T, float* logits, bool all_logits,
                 const std::vector<std::pair<int, State*>>& snapshots);
    // Several independent sequences, one token each, in one batched step. logits: n*vocab.
    void step_batch(State* const* states, const int32_t* tokens, int n, float* logits);
    // Attach a LoRA adapter (bitmamba.cpp's): per weight layer, out += scale * B (A xn) on in_proj
    // and out_proj, in every forward path and on every pass of the layer (RYS). Empty: detach. The
    // state signature names the adapter, so states made before (or by another adapter) are refused.
    // Throws FormatError for shapes that do not fit; architectures without it throw too.
    virtual void set_lora(const std::vector<LoraLayerViews>& layers, float scale);

    int threads() const { return pool_->size(); }
    void set_threads(int n);
    const KernelSet& kernels() const { return *kernels_; }
    void set_kernels(const KernelSet* k) { kernels_ = k; }
    std::size_t weight_bytes() const { return weight_bytes_; }
    // Held for the duration of every forward call: one pass at a time per model.
    std::mutex& lock() { return mutex_; }
    // Per-stage timing (see profile.h) of BitMamba-2's step(), and of prefill() and step_batch():
    // a batched pass adds its whole time to kStageStep and counts as one step (Mamba-1 times only
    // the products and lm_head of its batched passes).
    void set_profiling(bool on) { profiling_ = on; }
    bool profiling() const { return profiling_; }
    StageClock& clock() { return clock_; }

protected:
    static constexpr int kChunk = 64;  // tokens per batched pass (prefill chunk, step_batch maximum)
    // (token index inside the chunk, state to fill after that token), sorted by index
    using ChunkSnapshots = std::vector<std::pair<int, State*>>;

    // n <= kChunk tokens, their embeddings in Hb_ (rows d_model apart), through every layer: Hb_
    // holds the residual stream after the last one. states[t] is token t's state (the same state for
    // every token of a prefill); each snaps entry is filled with its token's state, layer by layer.
    virtual void layers_batch(State* const* states, int n, const ChunkSnapshots& snaps) = 0;

    // After the architecture has set info_ (vocab_size, d_model), norm_f_, norm_f_eps_ and lm_head_:
    // size the shared scratch.
    void init_shared_scratch();
    // Copy the embeddings of n tokens into dst (rows d_model apart).
    void embed(const int32_t* tokens, int n, float* dst) const;
    // logits = lm_head(rmsnorm(h, norm_f)) for one token (timed as kStageHead with a clock).
    void head(const float* h, float* logits);

    void check_state(const State& st) const;
    void check_tokens(const int32_t* tokens, int n) const;
    void snapshot_layer(const State& st, int layer, State& dst, int c0, int c1) const;
    // While profiling, times one batched pass (prefill, step_batch) into clock_ with its stages;
    // the runner's clock is cleared on every way out, a pass that throws included.
    class BatchClock {
    public:
        explicit BatchClock(Model& m);
        ~BatchClock();
        BatchClock(const BatchClock&) = delete;
        BatchClock& operator=(const BatchClock&) = delete;
        void done();  // the pass completed: its whole time (kStageStep) and one step
    private:
        Model& m_;
        StageClock* ck_;
        int64_t t0_;
    };

    ModelInfo info_;
    StateLayout layout_;
    std::unique_ptr<ThreadPool> pool_;
    const KernelSet* kernels_;
    std::size_t weight_bytes_ = 0;
    std::mutex mutex_;
    bool profiling_ = false;
    StageClock clock_;

    // Shared by every architecture (set by its constructor)
    const float* embed_ = nullptr;  // [vocab_size][d_model], a view of the loader's tensor
    AlignedBuffer<float> norm_f_;   // final RMSNorm weight [d_model]
    float norm_f_eps_ = 1e-6f;
    Linear lm_head_;
    LinearRunner run_;
    // scratch: h_ / fn_ one token's residual stream / final norm; Hb_ / Fb_ the same for a chunk
    AlignedBuffer<float> h_, fn_, Hb_, Fb_;

private:
    // Final norm + lm_head for tokens [first, n) of the chunk in Hb_; logits rows vocab_size apart.
    void head_rows(int first, int n, float* logits);
    // prefill's per-call lists, sized once (no allocation per call)
    std::vector<State*> same_state_;
    ChunkSnapshots chunk_snaps_;
};

struct Mamba1Config {
    int vocab_size = 0, d_model = 0, n_layers = 0, d_inner = 0, d_state = 16, dt_rank = 0, d_conv = 4;
    float norm_eps = 1e-5f;
    std::string gate = "mul_d";   // "mul_d": y * silu(z) * D (training code); "skip_d": (y + D * x) * silu(z)
    bool quantize = true;         // in/out projections ternary (false: float, for reference checks)
    std::string lm_head = "int8"; // "int8" (per-row) or "f32"
};

std::unique_ptr<Model> make_mamba1(const TensorMap& tensors, const Mamba1Config& cfg, int n_threads,
                                   const KernelSet* kernels);

// Layer repetition (RYS): layers start..end run `count` extra times right after `end`, each pass
// with its own state (count 0: none).
struct LayerRepeat {
    int start = 0;
    int end = -1;
    int count = 0;
};

std::unique_ptr<Model> make_bitmamba2(const TensorMap& tensors, int vocab, int d_model, int n_layers, int n_heads,
                                      int n_threads, const KernelSet* kernels, const LayerRepeat& repeat = {});

}  // namespace bm
