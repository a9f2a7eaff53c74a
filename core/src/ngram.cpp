// N-gram counts for the cache language model; see bitmamba/ngram.h.
#include "bitmamba/ngram.h"

#include <algorithm>
#include <stdexcept>

namespace bm {

namespace {

constexpr uint64_t kEmpty = 0, kDead = 1;
constexpr uint64_t kMul = 0x9E3779B97F4A7C15ull;

// The key of a context extended by one more token on the left (the context of order k from k-1).
inline uint64_t extend(uint64_t key, int32_t token) {
    uint64_t h = (key + static_cast<uint64_t>(token) + 1) * kMul;
    h ^= h >> 29;
    return h < 2 ? h + 2 : h;
}

inline size_t home(uint64_t key, size_t mask) {
    uint64_t h = key ^ (key >> 31);
    h *= 0xBF58476D1CE4E5B9ull;
    return static_cast<size_t>(h ^ (h >> 32)) & mask;
}

}  // namespace

NGramIndex::NGramIndex(int order, int vocab) : order_(order), vocab_(vocab), tables_(order + 1) {
    if (order < 1 || order > 32) throw std::invalid_argument("n-gram order must be 1..32");
    if (vocab < 1) throw std::invalid_argument("vocab must be positive");
}

size_t NGramIndex::contexts() const {
    size_t n = 0;
    for (const auto& t : tables_) n += t.used;
    return n;
}

size_t NGramIndex::bytes() const {
    size_t n = pool_.capacity() * sizeof(Entry);
    for (const auto& t : tables_) n += t.slots.capacity() * sizeof(Slot);
    return n;
}

void NGramIndex::clear() {
    for (auto& t : tables_) t = Table{};
    pool_.clear();
    free_ = -1;
    tokens_ = 0;
}

NGramIndex::Slot* NGramIndex::find(const Table& t, uint64_t key) const {
    if (t.slots.empty()) return nullptr;
    const size_t mask = t.slots.size() - 1;
    for (size_t i = home(key, mask);; i = (i + 1) & mask) {
        const Slot& s = t.slots[i];
        if (s.key == key) return const_cast<Slot*>(&s);
        if (s.key == kEmpty) return nullptr;
    }
}

void NGramIndex::grow(Table& t) {
    size_t cap = t.slots.empty() ? 64 : t.slots.size();
    while ((t.used + 1) * 10 > cap * 5) cap *= 2;  // rebuild at half load: room to 0.7
    std::vector<Slot> old;
    old.swap(t.slots);
    t.slots.assign(cap, Slot{kEmpty, 0, 0});
    t.used = t.dead = 0;
    const size_t mask = cap - 1;
    for (const Slot& s : old) {
        if (s.key < 2) continue;
        size_t i = home(s.key, mask);
        while (t.slots[i].key != kEmpty) i = (i + 1) & mask;
        t.slots[i] = s;
        ++t.used;
    }
}

NGramIndex::Slot& NGramIndex::insert_slot(Table& t, uint64_t key) {
    if (t.slots.empty() || (t.used + t.dead + 1) * 10 > t.slots.size() * 7) grow(t);
    const size_t mask = t.slots.size() - 1;
    size_t i = home(key, mask);
    size_t tomb = SIZE_MAX;
    for (;; i = (i + 1) & mask) {
        Slot& s = t.slots[i];
        if (s.key == key) return s;
        if (s.key == kDead && tomb == SIZE_MAX) tomb = i;
        if (s.key == kEmpty) break;
    }
    if (tomb != SIZE_MAX) {
        i = tomb;
        --t.dead;
    }
    t.slots[i] = Slot{key, 0, 0};
    ++t.used;
    return t.slots[i];
}

int32_t NGramIndex::new_entry(int32_t token, uint32_t count, int32_t link) {
    int32_t e;
    if (free_ >= 0) {
        e = free_;
        free_ = pool_[e].link;
        pool_[e] = Entry{token, count, link};
    } else {
        e = static_cast<int32_t>(pool_.size());
        pool_.push_back(Entry{token, count, link});
    }
    return e;
}

void NGramIndex::free_entry(int32_t e) {
    pool_[e].link = free_;
    free_ = e;
}

void NGramIndex::add(int k, uint64_t key, int32_t token) {
    Table& t = tables_[k];
    Slot* found = find(t, key);
    if (found == nullptr) {
        Slot& s = insert_slot(t, key);
        s.total = 1;
        s.next = token;
        return;
    }
    Slot& s = *found;
    if (s.next >= 0) {
        if (s.next == token) {
            ++s.total;
            return;
        }
        // a second distinct next token: move the first into the pool
        int32_t first = new_entry(s.next, s.total, -1);
        int32_t second = new_entry(token, 1, first);
        s.next = -(second + 1);
        ++s.total;
        return;
    }
    ++s.total;
    for (int32_t e = -(s.next + 1); e >= 0; e = pool_[e].link) {
        if (pool_[e].token == token) {
            ++pool_[e].count;
            return;
        }
    }
    s.next = -(new_entry(token, 1, -(s.next + 1)) + 1);
}

void NGramIndex::remove(int k, uint64_t key, int32_t token) {
    Table& t = tables_[k];
    Slot* found = find(t, key);
    if (found == nullptr) return;
    Slot& s = *found;
    if (s.next >= 0) {
        if (s.next != token) return;
        if (--s.total == 0) {
            s.key = kDead;
            --t.used;
            ++t.dead;
        }
        return;
    }
    int32_t prev = -1;
    for (int32_t e = -(s.next + 1); e >= 0; prev = e, e = pool_[e].link) {
        if (pool_[e].token != token) continue;
        --s.total;
        if (--pool_[e].count == 0) {
            int32_t link = pool_[e].link;
            if (prev < 0)
                s.next = -(link + 1);
            else
                pool_[prev].link = link;
            free_entry(e);
        }
        // back to the inline form when one next token is left
        int32_t head = -(s.next + 1);
        if (head >= 0 && pool_[head].link < 0) {
            s.next = pool_[head].token;
            free_entry(head);
        }
        return;
    }
}

void NGramIndex::update(const int32_t* ids, size_t n, size_t lo, size_t hi, int sign, int64_t ta, int64_t tb) {
    hi = std::min(hi, n);
    for (size_t i = std::max<size_t>(lo, 1); i < hi; ++i) {
        const int32_t next = ids[i];
        if (next < 0 || next >= vocab_) throw std::invalid_argument("token id outside the vocabulary");
        uint64_t key = 0;
        const size_t kmax = std::min<size_t>(order_, i);
        for (size_t k = 1; k <= kmax; ++k) {
            const int32_t tok = ids[i - k];
            if (tok < 0 || tok >= vocab_) throw std::invalid_argument("token id outside the vocabulary");
            key = extend(key, tok);
            if (ta >= 0 && !(static_cast<int64_t>(i - k) < tb && static_cast<int64_t>(i) >= ta)) continue;
            if (sign > 0)
                add(static_cast<int>(k), key, next);
            else
                remove(static_cast<int>(k), key, next);
        }
        if (ta < 0) tokens_ += sign > 0 ? 1 : -1;
    }
}

int64_t NGramIndex::count_of(const Slot& s, int32_t token) const {
    if (s.next >= 0) return s.next == token ? s.total : 0;
    for (int32_t e = -(s.next + 1); e >= 0; e = pool_[e].link)
        if (pool_[e].token == token) return pool_[e].count;
    return 0;
}

int NGramIndex::lookup(const int32_t* ctx, size_t n, int min_order, const NGramIndex* exclude, int64_t& total,
                       std::vector<std::pair<int32_t, int32_t>>& counts) const {
    counts.clear();
    total = 0;
    int best = 0;
    const Slot* best_slot = nullptr;
    const Slot* best_ex = nullptr;
    uint64_t key = 0;
    const size_t kmax = std::min<size_t>(order_, n);
    for (size_t k = 1; k <= kmax; ++k) {
        key = extend(key, ctx[n - k]);
        const Slot* s = find(tables_[k], key);
        if (s == nullptr) break;
        const Slot* ex = nullptr;
        if (exclude != nullptr && k < exclude->tables_.size()) ex = exclude->find(exclude->tables_[k], key);
        if (ex != nullptr && ex->total >= s->total) break;  // seen only where excluded: so is any longer context
        if (static_cast<int>(k) >= min_order) {
            best = static_cast<int>(k);
            best_slot = s;
            best_ex = ex;
        }
    }
    if (best == 0) return 0;
    auto emit = [&](int32_t token, int64_t c) {
        if (best_ex != nullptr) c -= exclude->count_of(*best_ex, token);
        if (c > 0) {
            counts.emplace_back(token, static_cast<int32_t>(c));
            total += c;
        }
    };
    if (best_slot->next >= 0)
        emit(best_slot->next, best_slot->total);
    else
        for (int32_t e = -(best_slot->next + 1); e >= 0; e = pool_[e].link) emit(pool_[e].token, pool_[e].count);
    if (total == 0) return 0;
    return best;
}

}  // namespace bm
