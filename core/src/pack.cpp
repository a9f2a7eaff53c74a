// Repacking ternary weights into the 4-row-interleaved 2-bit block layout (see kernels.h).
#include <string>

#include "bitmamba/kernels.h"

namespace bm {

void packed_init(PackedMatrix& m, int rows, int cols) {
    if (rows <= 0 || cols <= 0) throw FormatError("ternary matrix with non-positive shape");
    m.rows = rows;
    m.cols = cols;
    m.rows_pad = round_up(rows, kRowGroup);
    m.cols_pad = round_up(cols, kBlockK);
    m.groups = m.rows_pad / kRowGroup;
    m.kblocks = m.cols_pad / kBlockK;
    std::size_t bytes = static_cast<std::size_t>(m.groups) * m.kblocks * kRowGroup * kBlockBytes;
    m.data.reset(bytes);
    // Code 1 (weight 0) everywhere, including padding: 0b01010101.
    std::memset(m.data.data(), 0x55, bytes);
}

namespace {

// Position of weight (r, c) in the packed buffer: byte index and bit shift.
inline void locate(const PackedMatrix& m, int r, int c, std::size_t& byte, int& shift) {
    int g = r / kRowGroup, rr = r % kRowGroup;
    int kb = c / kBlockK, k = c % kBlockK;
    int quarter = k / kBlockBytes, j = k % kBlockBytes;
    byte = ((static_cast<std::size_t>(g) * m.kblocks + kb) * kRowGroup + rr) * kBlockBytes + j;
    shift = 2 * quarter;
}

inline void put(PackedMatrix& m, int r, int c, unsigned code) {
    std::size_t byte;
    int shift;
    locate(m, r, c, byte, shift);
    uint8_t& b = m.data[byte];
    b = static_cast<uint8_t>((b & ~(3u << shift)) | (code << shift));
}

}  // namespace

void packed_from_file_codes(PackedMatrix& m, const uint8_t* src, int rows, int cols, const char* what) {
    packed_init(m, rows, cols);
    const int row_bytes = (cols + 3) / 4;
    for (int r = 0; r < rows; ++r) {
        const uint8_t* row = src + static_cast<std::size_t>(r) * row_bytes;
        // Fast path: whole 128-column blocks become one 32-byte block each.
        int c = 0;
        for (; c + kBlockK <= cols; c += kBlockK) {
            const uint8_t* in = row + c / 4;  // 32 source bytes: weights c .. c+127, 4 per byte
            std::size_t byte;
            int shift;
            locate(m, r, c, byte, shift);
            uint8_t* out = m.data.data() + byte;
            uint8_t bad = 0;
            for (int j = 0; j < kBlockBytes; ++j) {
                // destination byte j holds weights j, j+32, j+64, j+96 of the block
                unsigned w0 = (in[j / 4] >> (2 * (j % 4))) & 3u;
                unsigned w1 = (in[(j + 32) / 4] >> (2 * ((j + 32) % 4))) & 3u;
                unsigned w2 = (in[(j + 64) / 4] >> (2 * ((j + 64) % 4))) & 3u;
                unsigned w3 = (in[(j + 96) / 4] >> (2 * ((j + 96) % 4))) & 3u;
                bad |= static_cast<uint8_t>((w0 == 3) | (w1 == 3) | (w2 == 3) | (w3 == 3));
                out[j] = static_cast<uint8_t>(w0 | (w1 << 2) | (w2 << 4) | (w3 << 6));
            }
            if (bad)
                throw FormatError(std::string("tensor '") + what + "': invalid ternary code 3 in row " +
                                  std::to_string(r) + " (corrupt packed weights)");
        }
        for (; c < cols; ++c) {
            unsigned code = (row[c / 4] >> (2 * (c % 4))) & 3u;
            if (code == 3)
                throw FormatError(std::string("tensor '") + what + "': invalid ternary code 3 at row " +
                                  std::to_string(r) + ", column " + std::to_string(c) +
                                  " (corrupt packed weights)");
            put(m, r, c, code);
        }
    }
}

void packed_from_int8(PackedMatrix& m, const int8_t* q, int rows, int cols, const char* what) {
    packed_init(m, rows, cols);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            int v = q[static_cast<std::size_t>(r) * cols + c];
            if (v < -1 || v > 1)
                throw FormatError(std::string("tensor '") + what + "': value " + std::to_string(v) +
                                  " is not ternary (row " + std::to_string(r) + ")");
            put(m, r, c, static_cast<unsigned>(v + 1));
        }
}

void packed_to_int8(const PackedMatrix& m, int8_t* out) {
    for (int r = 0; r < m.rows; ++r)
        for (int c = 0; c < m.cols; ++c) {
            std::size_t byte;
            int shift;
            locate(m, r, c, byte, shift);
            out[static_cast<std::size_t>(r) * m.cols + c] = static_cast<int8_t>(((m.data[byte] >> shift) & 3) - 1);
        }
}

}  // namespace bm
