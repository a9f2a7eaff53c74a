#include "bitmamba/threadpool.h"

#include <algorithm>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define BM_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define BM_PAUSE() asm volatile("yield" ::: "memory")
#else
#define BM_PAUSE() std::this_thread::yield()
#endif

namespace bm {

int ThreadPool::default_threads() {
    unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : static_cast<int>(std::min(n, 64u));
}

ThreadPool::ThreadPool(int n_threads) : n_(std::max(1, n_threads)) {
    threads_.reserve(n_ - 1);
    for (int i = 1; i < n_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lk(sleep_mutex_);
        stop_.store(true);
        generation_.fetch_add(1);
    }
    sleep_cv_.notify_all();
    for (auto& t : threads_) t.join();
}

void ThreadPool::work(int slot) {
    for (;;) {
        const int b = next_.fetch_add(grain_, std::memory_order_relaxed);
        if (b >= total_) return;
        body_(ctx_, b, std::min(total_, b + grain_), slot);
    }
}

void ThreadPool::dispatch() {
    // The job's fields are written before `open_` (seq_cst), so a worker that sees the job open
    // sees them too.
    open_.store(true);
    generation_.fetch_add(1);
    if (sleepers_.load() > 0) {
        std::lock_guard<std::mutex> lk(sleep_mutex_);
        sleep_cv_.notify_all();
    }
    work(0);
    // Close the job, then wait only for workers that entered it (they may still be in a chunk).
    open_.store(false);
    while (active_.load() != 0) BM_PAUSE();
}

void ThreadPool::worker(int slot) {
    uint64_t seen = 0;  // the generation at construction; a job may be posted before this thread runs
    for (;;) {
        int spins = 0;
        const int limit = spin_.load(std::memory_order_relaxed);
        while (generation_.load(std::memory_order_acquire) == seen) {
            if (++spins < limit) {
                BM_PAUSE();
                continue;
            }
            std::unique_lock<std::mutex> lk(sleep_mutex_);
            sleepers_.fetch_add(1);
            sleep_cv_.wait(lk, [&] { return generation_.load() != seen; });
            sleepers_.fetch_sub(1);
            break;
        }
        seen = generation_.load();
        if (stop_.load()) return;
        active_.fetch_add(1);
        if (open_.load()) work(slot);  // a job closed before we got here is skipped, not waited for
        active_.fetch_sub(1);
    }
}

}  // namespace bm
