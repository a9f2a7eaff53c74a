// Recurrent state and the parts of Model shared by every architecture.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "bitmamba/model.h"

namespace bm {

namespace {
constexpr uint32_t kStateMagic = 0x54534D42;  // "BMST"
constexpr uint32_t kStateVersion = 1;
struct StateHeader {
    uint32_t magic;
    uint32_t version;
    uint64_t signature;
    int64_t n_tokens;
    uint64_t n_floats;
};
static_assert(sizeof(StateHeader) == 32, "state header is 32 bytes");
}  // namespace

void State::copy_from(const State& o) {
    if (!(layout_ == o.layout_)) throw std::invalid_argument("state belongs to a different model");
    std::memcpy(data_.data(), o.data_.data(), n_bytes());
    n_tokens = o.n_tokens;
}

void State::reset() {
    std::memset(data_.data(), 0, n_bytes());
    n_tokens = 0;
}

bool State::equals(const State& o) const {
    return layout_ == o.layout_ && n_tokens == o.n_tokens && std::memcmp(data_.data(), o.data_.data(), n_bytes()) == 0;
}

float State::max_abs_diff(const State& o) const {
    if (!(layout_ == o.layout_)) throw std::invalid_argument("state belongs to a different model");
    float m = 0.0f;
    for (std::size_t i = 0; i < data_.size(); ++i) {
        float d = std::fabs(data_[i] - o.data_[i]);
        if (!(d <= m)) m = d;  // propagates NaN
    }
    return m;
}

std::string State::to_bytes() const {
    StateHeader h{kStateMagic, kStateVersion, layout_.signature, n_tokens, data_.size()};
    std::string out(sizeof(h) + n_bytes(), '\0');
    std::memcpy(out.data(), &h, sizeof(h));
    std::memcpy(out.data() + sizeof(h), data_.data(), n_bytes());
    return out;
}

void State::load_bytes(const char* p, std::size_t n) {
    StateHeader h;
    if (n < sizeof(h)) throw FormatError("state bytes: too short for the header");
    std::memcpy(&h, p, sizeof(h));
    if (h.magic != kStateMagic) throw FormatError("state bytes: wrong magic (not a saved state)");
    if (h.version != kStateVersion) throw FormatError("state bytes: unsupported version " + std::to_string(h.version));
    if (h.signature != layout_.signature || h.n_floats != data_.size())
        throw FormatError("state bytes: saved from a different model (shape or architecture differs)");
    if (n != sizeof(h) + n_bytes())
        throw FormatError("state bytes: expected " + std::to_string(sizeof(h) + n_bytes()) + " bytes, got " +
                          std::to_string(n));
    if (h.n_tokens < 0) throw FormatError("state bytes: negative token count");
    std::memcpy(data_.data(), p + sizeof(h), n_bytes());
    n_tokens = h.n_tokens;
}

Model::Model(int n_threads, const KernelSet* kernels)
    : pool_(std::make_unique<ThreadPool>(n_threads > 0 ? n_threads : ThreadPool::default_threads())),
      kernels_(kernels ? kernels : &best_kernels()) {}

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

}  // namespace bm
