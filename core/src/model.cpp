// The parts of Model shared by every architecture: threads, argument checks, snapshots, and the
// batched forward pass (prefill, step_batch) around the architecture's layers_batch().
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "bitmamba/model.h"

namespace bm {

Model::Model(int n_threads, const KernelSet* kernels)
    : pool_(std::make_unique<ThreadPool>(n_threads > 0 ? n_threads : ThreadPool::default_threads())),
      kernels_(kernels ? kernels : &best_kernels()),
      run_(pool_, kernels_),
      same_state_(kChunk, nullptr) {
    chunk_snaps_.reserve(kChunk);  // positions are strictly increasing: at most one per token of a chunk
}

void Model::set_threads(int n) {
    if (n <= 0) n = ThreadPool::default_threads();
    std::unique_ptr<ThreadPool> old;
    {
        std::lock_guard<std::mutex> lk(mutex_);  // no forward pass is running
        if (n == pool_->size()) return;
        old = std::move(pool_);
        pool_ = std::make_unique<ThreadPool>(n);
    }
}

void Model::set_lora(const std::vector<LoraLayerViews>&, float) {
    throw FormatError("LoRA adapters apply to BitMamba-2 models, this model is " + info_.arch);
}

void Model::check_state(const State& st) const {
    if (!(st.layout() == layout_)) throw std::invalid_argument("state belongs to a different model");
}

void Model::check_tokens(const int32_t* tokens, int n) const {
    for (int i = 0; i < n; ++i)
        if (tokens[i] < 0 || tokens[i] >= info_.vocab_size)
            throw std::out_of_range("token id " + std::to_string(tokens[i]) + " is outside the vocabulary (0.." +
                                    std::to_string(info_.vocab_size - 1) + ")");
}

void Model::snapshot_layer(const State& st, int layer, State& dst, int c0, int c1) const {
    // Per layer: conv [3][C] (C = conv_floats / 3 channels), then ssm [C][ssm_floats / C].
    const int C = layout_.conv_floats / 3;
    const int per = layout_.ssm_floats / C;
    const float* src = st.layer(layer);
    float* out = dst.layer(layer);
    for (int k = 0; k < 3; ++k)
        std::memcpy(out + k * C + c0, src + k * C + c0, sizeof(float) * (c1 - c0));
    std::memcpy(out + 3 * C + static_cast<std::size_t>(c0) * per, src + 3 * C + static_cast<std::size_t>(c0) * per,
                sizeof(float) * (c1 - c0) * per);
}

void Model::init_shared_scratch() {
    const std::size_t d = static_cast<std::size_t>(info_.d_model);
    h_.reset(d);
    fn_.reset(d);
    Hb_.reset(kChunk * d);
    Fb_.reset(kChunk * d);
}

void Model::embed(const int32_t* tokens, int n, float* dst) const {
    const std::size_t d = static_cast<std::size_t>(info_.d_model);
    for (int t = 0; t < n; ++t)
        std::memcpy(dst + t * d, embed_ + static_cast<std::size_t>(tokens[t]) * d, sizeof(float) * d);
}

void Model::head(const float* h, float* logits) {
    kernels_->rmsnorm(h, norm_f_.data(), info_.d_model, norm_f_eps_, fn_.data());
    run_.apply(lm_head_, fn_.data(), logits, false, kStageHead);
}

void Model::head_rows(int first, int n, float* logits) {
    const int d = info_.d_model;
    for (int t = first; t < n; ++t)
        kernels_->rmsnorm(Hb_.data() + static_cast<std::size_t>(t) * d, norm_f_.data(), d, norm_f_eps_,
                          Fb_.data() + static_cast<std::size_t>(t) * d);
    run_.apply_rows(lm_head_, Fb_.data() + static_cast<std::size_t>(first) * d, d, n - first, logits,
                    info_.vocab_size, false, kStageHead);
}

void Model::prefill(State& st, const int32_t* tokens, int T, float* logits, bool all_logits,
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
    BatchClock clock(*this);
    const int64_t base_tokens = st.n_tokens;
    const std::size_t V = static_cast<std::size_t>(info_.vocab_size);
    std::fill(same_state_.begin(), same_state_.end(), &st);
    std::size_t snap_i = 0;
    for (int t0 = 0; t0 < T; t0 += kChunk) {
        const int n = std::min(kChunk, T - t0);
        embed(tokens + t0, n, Hb_.data());
        chunk_snaps_.clear();
        for (; snap_i < snapshots.size() && snapshots[snap_i].first <= t0 + n; ++snap_i)
            chunk_snaps_.emplace_back(snapshots[snap_i].first - t0 - 1, snapshots[snap_i].second);
        layers_batch(same_state_.data(), n, chunk_snaps_);
        for (auto& cs : chunk_snaps_) cs.second->n_tokens = base_tokens + t0 + cs.first + 1;
        if (logits && (all_logits || t0 + n == T))
            head_rows(all_logits ? 0 : n - 1, n, all_logits ? logits + static_cast<std::size_t>(t0) * V : logits);
    }
    st.n_tokens = base_tokens + T;
    clock.done();
}

Model::BatchClock::BatchClock(Model& m)
    : m_(m), ck_(m.profiling_ ? &m.clock_ : nullptr), t0_(ck_ ? StageClock::now() : 0) {
    m_.run_.set_clock(ck_);
}

Model::BatchClock::~BatchClock() { m_.run_.set_clock(nullptr); }

void Model::BatchClock::done() {
    if (!ck_) return;
    ck_->add(kStageStep, t0_, StageClock::now());
    ck_->steps += 1;
}

void Model::step_batch(State* const* states, const int32_t* tokens, int n, float* logits) {
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
    BatchClock clock(*this);
    embed(tokens, n, Hb_.data());
    chunk_snaps_.clear();
    layers_batch(states, n, chunk_snaps_);
    if (logits) head_rows(0, n, logits);
    for (int t = 0; t < n; ++t) states[t]->n_tokens += 1;
    clock.done();
}

}  // namespace bm
