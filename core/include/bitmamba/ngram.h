// N-gram counts for the daemon's cache language model (bitmamba_lsp/lsp/cache_model.py): for every
// context of 1..order tokens seen in some token sequences, how often each next token followed it.
// Windows of a sequence are added and removed incrementally, so an edit costs work in proportion
// to the edit. Memory: one 16-byte slot per context in an open-addressing table per order (load at
// most 0.7), plus one 12-byte entry per extra distinct next token of a context.
//
// Contexts are keyed by a 64-bit polynomial hash of their tokens (read backwards from the next
// token); two different contexts of the same order share a key with probability about n^2 / 2^65
// for n contexts (1e-7 for a million): a collision merges their counts, it never crashes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace bm {

class NGramIndex {
public:
    NGramIndex(int order, int vocab);

    int order() const { return order_; }
    int vocab() const { return vocab_; }
    int64_t tokens() const { return tokens_; }  // next-token positions counted (not touching updates)
    size_t contexts() const;                    // contexts with a positive count, over all orders
    size_t bytes() const;                       // memory held by the tables and the entry pool

    // Add (sign > 0) or remove (sign < 0) the n-grams whose next token is ids[i], lo <= i < hi, of
    // every order whose context fits in ids[0..n). With ta >= 0, only those that include a token of
    // ids[ta..tb). Removing what was never added is ignored.
    void update(const int32_t* ids, size_t n, size_t lo, size_t hi, int sign, int64_t ta = -1, int64_t tb = -1);

    // The longest context of at least min_order tokens ending ctx[0..n) that was seen, counting
    // what `exclude` (may be null) holds as not seen. Returns its order (0: none) and fills `total`
    // and the (token, count) pairs of its next tokens (count > 0).
    int lookup(const int32_t* ctx, size_t n, int min_order, const NGramIndex* exclude, int64_t& total,
               std::vector<std::pair<int32_t, int32_t>>& counts) const;

    void clear();

private:
    struct Slot {
        uint64_t key;    // 0: empty, 1: deleted
        uint32_t total;  // occurrences of the context
        int32_t next;    // >= 0: the only next token (count == total); < 0: -(first entry + 1)
    };
    struct Entry {
        int32_t token;
        uint32_t count;
        int32_t link;  // next entry of the same context, -1: last
    };
    struct Table {
        std::vector<Slot> slots;
        size_t used = 0;  // slots with a live key
        size_t dead = 0;  // deleted slots
    };

    Slot* find(const Table& t, uint64_t key) const;
    Slot& insert_slot(Table& t, uint64_t key);
    void grow(Table& t);
    void add(int k, uint64_t key, int32_t token);
    void remove(int k, uint64_t key, int32_t token);
    int32_t new_entry(int32_t token, uint32_t count, int32_t link);
    void free_entry(int32_t e);
    int64_t count_of(const Slot& s, int32_t token) const;

    int order_;
    int vocab_;
    int64_t tokens_ = 0;
    std::vector<Table> tables_;  // [1..order]
    std::vector<Entry> pool_;
    int32_t free_ = -1;
};

}  // namespace bm
