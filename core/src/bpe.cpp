// GPT-2's byte-level BPE for ASCII text (bitmamba/bpe.h).
#include "bitmamba/bpe.h"

#include <climits>
#include <cstdint>

namespace bm {

namespace {

enum Cls : uint8_t { kOut = 0, kSpace, kLetter, kDigit, kOther };

// Classes of the covered bytes; kOut: outside (a control byte, DEL, any byte >= 0x80).
struct Classes {
    uint8_t c[256];
    Classes() {
        for (int b = 0; b < 256; ++b) {
            Cls k = kOut;
            if (b == ' ' || b == '\t' || b == '\n' || b == '\r') k = kSpace;
            else if ((b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z')) k = kLetter;
            else if (b >= '0' && b <= '9') k = kDigit;
            else if (b > ' ' && b < 0x7f) k = kOther;
            c[b] = static_cast<uint8_t>(k);
        }
    }
};
const Classes kClasses;

inline uint8_t cls(const char* t, size_t i) { return kClasses.c[static_cast<uint8_t>(t[i])]; }

inline uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// The length of the contraction at t[i] ('s 't 're 've 'm 'll 'd), or 0.
size_t contraction(const char* t, size_t i, size_t n) {
    if (t[i] != '\'' || i + 1 >= n) return 0;
    const char a = t[i + 1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (i + 2 < n) {
        const char b = t[i + 2];
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    }
    return 0;
}

// The length of the piece the pattern matches at t[i] (i < n; every byte covered).
size_t piece_at(const char* t, size_t i, size_t n) {
    if (size_t c = contraction(t, i, n)) return c;
    // ' ?X+' for X a letter, a digit or another character: an optional space, then a run
    size_t j = i;
    if (t[i] == ' ' && i + 1 < n && cls(t, i + 1) != kSpace) j = i + 1;
    const uint8_t k = cls(t, j);
    if (k != kSpace) {
        size_t e = j + 1;
        while (e < n && cls(t, e) == k) ++e;
        return e - i;
    }
    // whitespace: \s+(?!\S) leaves the last space of a run for the word after it, else \s+
    size_t e = i + 1;
    while (e < n && cls(t, e) == kSpace) ++e;
    if (e < n && e - i >= 2) return e - i - 1;  // a non-space follows
    return e - i;
}

}  // namespace

AsciiBpe::AsciiBpe(const int32_t* merges, size_t n_merges, const int32_t* byte_ids, int32_t first_merged) {
    rank_.reserve(n_merges * 2);
    for (size_t r = 0; r < n_merges; ++r)
        rank_.emplace(pair_key(merges[2 * r], merges[2 * r + 1]), first_merged + static_cast<int32_t>(r));
    for (int b = 0; b < 256; ++b) byte_id_[b] = byte_ids[b];
}

void AsciiBpe::merge_piece(const char* p, size_t n, std::vector<int32_t>& out) const {
    // pieces are short (a word, a run of spaces; at most kMaxPiece): repeated scans for the
    // lowest-ranked pair, n^2 / 2 lookups at worst
    int32_t ids[kMaxPiece];
    for (size_t i = 0; i < n; ++i) ids[i] = byte_id_[static_cast<uint8_t>(p[i])];
    size_t m = n;
    while (m > 1) {
        int32_t best = INT32_MAX;
        size_t at = 0;
        for (size_t i = 0; i + 1 < m; ++i) {
            auto it = rank_.find(pair_key(ids[i], ids[i + 1]));
            if (it != rank_.end() && it->second < best) {
                best = it->second;
                at = i;
            }
        }
        if (best == INT32_MAX) break;
        ids[at] = best;
        for (size_t i = at + 1; i + 1 < m; ++i) ids[i] = ids[i + 1];
        --m;
    }
    out.insert(out.end(), ids, ids + m);
}

bool AsciiBpe::encode(const char* text, size_t n, std::vector<int32_t>& out) const {
    for (size_t i = 0; i < n; ++i)
        if (cls(text, i) == kOut) return false;
    // the pieces first: one longer than kMaxPiece (a base64 run, a line of dashes) is the
    // library's, whose merge heap does not slow down with the square of a piece's length
    std::vector<uint32_t> lens;
    lens.reserve(n / 4 + 1);
    for (size_t i = 0; i < n;) {
        const size_t len = piece_at(text, i, n);
        if (len > kMaxPiece) return false;
        lens.push_back(static_cast<uint32_t>(len));
        i += len;
    }
    size_t i = 0;
    for (uint32_t len : lens) {
        merge_piece(text + i, len, out);
        i += len;
    }
    return true;
}

}  // namespace bm
