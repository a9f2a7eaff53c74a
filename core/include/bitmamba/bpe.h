// GPT-2's byte-level BPE for ASCII text, in C++: what a daemon's first request encodes before the
// `tokenizers` library has built its own BPE (bitmamba_lsp/engine/tokenizer.py, `TextTokenizer`).
//
// Building that library's BPE takes 40-60 ms of Python-held time at every start; this table builds
// in a few milliseconds from the merges as id pairs (the tokenizer cache keeps them), without the
// GIL. It covers text whose bytes are printable ASCII, tab, line feed and carriage return, where
// GPT-2's pre-tokenization pattern
//     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// needs no Unicode tables; `encode` says when a text is outside that, or has a piece longer than
// kMaxPiece bytes, whose merges here would cost the square of its length (the caller then uses the
// library). Each piece is merged lowest rank first, leftmost first among equal pairs, as the
// library does. The tests compare the two on generated and real text.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace bm {

class AsciiBpe {
public:
    // merges: n pairs (left id, right id); merge r makes the id `first_merged + r` (GPT-2: the ids
    // after the 256 single bytes are in merge order). byte_ids[b]: the id of the single byte b.
    AsciiBpe(const int32_t* merges, size_t n_merges, const int32_t* byte_ids, int32_t first_merged);

    // Append the ids of text[0..n) to out; false (out unchanged) when a byte is outside the
    // covered set or a piece is longer than kMaxPiece bytes.
    bool encode(const char* text, size_t n, std::vector<int32_t>& out) const;

    static constexpr size_t kMaxPiece = 128;

    size_t merges() const { return rank_.size(); }

private:
    void merge_piece(const char* p, size_t n, std::vector<int32_t>& out) const;

    std::unordered_map<uint64_t, int32_t> rank_;  // (left << 32 | right) -> merged id
    int32_t byte_id_[256];
};

}  // namespace bm
