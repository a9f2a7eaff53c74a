// Repacking ternary weights into the 4-row-interleaved 2-bit block layout (see kernels.h).
#include <cstring>
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

namespace {
// spread[b]: the four 2-bit fields of b, one per byte (field i in byte i, bits 0-1). Little-endian.
const uint32_t* spread_table() {
    static const struct Table {
        uint32_t v[256];
        Table() {
            for (unsigned b = 0; b < 256; ++b)
                v[b] = (b & 3u) | (((b >> 2) & 3u) << 8) | (((b >> 4) & 3u) << 16) | (((b >> 6) & 3u) << 24);
        }
    } table;
    return table.v;
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
            // Source byte 8q+k holds weights 32q+4k .. 32q+4k+3 (2 bits each); they go to destination
            // bytes 4k .. 4k+3 at bit 2q. A table spreads a source byte's four fields into the four
            // bytes of a uint32, so each destination uint32 is four lookups, shifts and ORs.
            const uint8_t* in = row + c / 4;  // 32 source bytes: weights c .. c+127
            std::size_t byte;
            int shift;
            locate(m, r, c, byte, shift);
            uint8_t* out = m.data.data() + byte;
            uint64_t words[4];
            std::memcpy(words, in, sizeof(words));
            uint64_t bad = 0;
            for (uint64_t w : words) bad |= w & (w >> 1) & 0x5555555555555555ull;  // a field equal to 3
            if (bad)
                throw FormatError(std::string("tensor '") + what + "': invalid ternary code 3 in row " +
                                  std::to_string(r) + " (corrupt packed weights)");
            const uint32_t* spread = spread_table();
            for (int k = 0; k < 8; ++k) {
                const uint32_t v = spread[in[k]] | (spread[in[8 + k]] << 2) | (spread[in[16 + k]] << 4) |
                                   (spread[in[24 + k]] << 6);
                std::memcpy(out + 4 * k, &v, 4);
            }
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
