// Recurrent state: copy, compare, serialise.
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

}  // namespace bm
