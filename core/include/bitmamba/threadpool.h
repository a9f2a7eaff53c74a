// A persistent worker pool with dynamic (work-stealing) chunks. The calling thread takes part as
// slot 0. Work is claimed chunk by chunk from an atomic counter, so a worker that the OS has not
// scheduled yet (the machine is busy with an editor, a compiler...) is simply not waited for: the
// caller does its share, closes the job, and waits only for workers that are inside it.
// Idle workers spin briefly (a forward pass issues ~70 jobs per token, microseconds apart), then
// sleep on a condition variable so an idle daemon uses no CPU.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace bm {

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_; }

    // Call f(begin, end, slot) over [0, n) in chunks of `grain` items; slot < size() identifies the
    // participating thread (for per-thread scratch). Not re-entrant and not thread-safe: one caller
    // at a time (Model serialises its forward passes).
    template <typename F>
    void parallel_for(int n, int grain, F&& f) {
        if (n <= 0) return;
        if (grain < 1) grain = 1;
        if (n_ == 1 || n <= grain) {
            f(0, n, 0);
            return;
        }
        using Fn = std::remove_reference_t<F>;
        body_ = [](void* ctx, int b, int e, int slot) { (*static_cast<Fn*>(ctx))(b, e, slot); };
        ctx_ = static_cast<void*>(&f);
        total_ = n;
        grain_ = grain;
        next_.store(0, std::memory_order_relaxed);
        dispatch();
    }

    // A grain that gives each thread a few chunks.
    int grain_for(int n, int chunks_per_thread = 4, int multiple = 1) const {
        int g = n / (n_ * chunks_per_thread);
        g = (g + multiple - 1) / multiple * multiple;
        return g < multiple ? multiple : g;
    }

    // How long idle workers spin before sleeping (iterations of a pause loop).
    void set_spin(int iterations) { spin_ = iterations; }

    static int default_threads();

private:
    void dispatch();
    void worker(int slot);
    void work(int slot);

    int n_;
    std::vector<std::thread> threads_;
    void (*body_)(void*, int, int, int) = nullptr;
    void* ctx_ = nullptr;
    int total_ = 0;
    int grain_ = 1;
    std::atomic<int> next_{0};
    std::atomic<uint64_t> generation_{0};
    std::atomic<bool> open_{false};
    std::atomic<int> active_{0};
    std::atomic<int> sleepers_{0};
    std::atomic<bool> stop_{false};
    std::atomic<int> spin_{20000};
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
