// Minimal fork-join parallelism over index ranges.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace qtool {

/// Threads to use for `requested` (0 or less: every hardware thread).
inline int ResolveThreads(int requested) {
  if (requested > 0) return requested;
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

/// Calls fn(begin, end, worker) over [0, n) in chunks of `chunk` taken dynamically by `threads`
/// workers (worker in [0, threads)). The first exception thrown by any call is rethrown here once
/// all workers have stopped; the remaining chunks are then skipped.
template <typename Fn>
void ParallelFor(int64_t n, int64_t chunk, int threads, Fn&& fn) {
  if (n <= 0) return;
  chunk = std::max<int64_t>(1, chunk);
  const int64_t nchunks = (n + chunk - 1) / chunk;
  threads = static_cast<int>(std::min<int64_t>(std::max(1, threads), nchunks));
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mu;
  auto work = [&](int worker) {
    try {
      for (int64_t c = next++; c < nchunks && !failed; c = next++) {
        const int64_t b = c * chunk;
        fn(b, std::min(n, b + chunk), worker);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
      failed = true;
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace qtool
