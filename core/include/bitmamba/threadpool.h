// A persistent worker pool. The calling thread takes part as worker 0. Workers spin briefly
// between jobs (a forward pass issues ~50 jobs per token, microseconds apart), then sleep on a
// condition variable so an idle daemon uses no CPU.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace bm {

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_; }

    // Run f(thread_index, n_threads) on every thread and wait for all. Not re-entrant and not
    // thread-safe: one caller at a time (Model serialises its forward passes).
    template <typename F>
    void run(F&& f) {
        if (n_ == 1) {
            f(0, 1);
            return;
        }
        using Fn = std::remove_reference_t<F>;
        job_ = [](void* ctx, int i, int n) { (*static_cast<Fn*>(ctx))(i, n); };
        ctx_ = static_cast<void*>(&f);
        dispatch();
    }

    // How long idle workers spin before sleeping (iterations of a pause loop).
    void set_spin(int iterations) { spin_ = iterations; }

    static int default_threads();

private:
    void dispatch();
    void worker(int index);

    int n_;
    std::vector<std::thread> threads_;
    void (*job_)(void*, int, int) = nullptr;
    void* ctx_ = nullptr;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> pending_{0};
    std::atomic<int> sleepers_{0};
    std::atomic<bool> stop_{false};
    std::atomic<int> spin_{200000};
    std::mutex sleep_mutex_;
    std::condition_variable sleep_cv_;
};

// Split [0, n) into `parts` contiguous ranges; range of part i.
inline void split_range(int n, int parts, int i, int& begin, int& end) {
    const int base = n / parts, extra = n % parts;
    begin = i * base + (i < extra ? i : extra);
    end = begin + base + (i < extra ? 1 : 0);
}

}  // namespace bm
