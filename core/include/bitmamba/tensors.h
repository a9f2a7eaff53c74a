// Reading the loader's TensorMap: lookups with errors that name the tensor.
#pragma once

#include <cmath>
#include <string>

#include "bitmamba/layers.h"
#include "bitmamba/model.h"

namespace bm {

inline const TensorView& get_tensor(const TensorMap& t, const std::string& name) {
    auto it = t.find(name);
    if (it == t.end()) throw FormatError("missing tensor '" + name + "'");
    return it->second;
}

inline bool has_tensor(const TensorMap& t, const std::string& name) { return t.count(name) > 0; }

inline int64_t numel(const TensorView& v) {
    int64_t n = 1;
    for (auto d : v.shape) n *= d;
    return n;
}

// A float32 tensor of exactly n values (any shape).
inline const float* f32_tensor(const TensorMap& t, const std::string& name, int64_t n) {
    const TensorView& v = get_tensor(t, name);
    if (v.dtype != "f32") throw FormatError("tensor '" + name + "': expected float32, got " + v.dtype);
    if (numel(v) != n)
        throw FormatError("tensor '" + name + "': has " + std::to_string(numel(v)) + " values, expected " +
                          std::to_string(n));
    return static_cast<const float*>(v.data);
}

inline void copy_f32(const TensorMap& t, const std::string& name, int64_t n, AlignedBuffer<float>& out) {
    const float* p = f32_tensor(t, name, n);
    out.reset(static_cast<std::size_t>(n));
    std::memcpy(out.data(), p, sizeof(float) * n);
    for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(out[i])) throw FormatError("tensor '" + name + "': contains NaN or Inf");
}

// A depthwise conv's weights, [channels][4] in the file, stored tap-major ([4][channels]: tap k of
// every channel contiguous, as the forward passes read them).
inline void copy_conv_taps(const TensorMap& t, const std::string& name, int channels, AlignedBuffer<float>& out) {
    AlignedBuffer<float> cw;
    copy_f32(t, name, static_cast<int64_t>(channels) * 4, cw);
    out.reset(static_cast<std::size_t>(channels) * 4);
    for (int c = 0; c < channels; ++c)
        for (int k = 0; k < 4; ++k) out[static_cast<std::size_t>(k) * channels + c] = cw[c * 4 + k];
}

// A ternary matrix as the .bin loader hands it over: packed file codes ("u8") or int8 values ("i8").
inline void load_ternary(const TensorMap& t, const std::string& name, int rows, int cols, Linear& out) {
    const TensorView& v = get_tensor(t, name);
    if (v.shape.size() != 2 || v.shape[0] != rows)
        throw FormatError("tensor '" + name + "': wrong shape for a " + std::to_string(rows) + "x" +
                          std::to_string(cols) + " ternary matrix");
    if (!(std::isfinite(v.scale) && v.scale > 0.0f))
        throw FormatError("tensor '" + name + "': scale is not a positive finite number");
    if (v.dtype == "u8") {
        if (v.cols != cols || v.shape[1] != (cols + 3) / 4)
            throw FormatError("tensor '" + name + "': packed row size does not match " + std::to_string(cols) +
                              " columns");
        out.set_ternary_codes(static_cast<const uint8_t*>(v.data), rows, cols, v.scale, name.c_str());
    } else if (v.dtype == "i8") {
        if (v.shape[1] != cols) throw FormatError("tensor '" + name + "': wrong number of columns");
        out.set_ternary_values(static_cast<const int8_t*>(v.data), rows, cols, v.scale, name.c_str());
    } else {
        throw FormatError("tensor '" + name + "': unsupported ternary dtype " + v.dtype);
    }
}

inline uint64_t fnv1a(const std::string& s) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    return h;
}

}  // namespace bm
