// Fork-join parallelism over index ranges, on threads the library keeps for the process.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

namespace qtool {

namespace detail {
/// Runs body(0) on the calling thread and body(1) .. body(helpers) on threads of a pool that lives
/// as long as the process (started on first use, grown to the most helpers any call asked for),
/// and returns when every call that started has returned. Helpers are the pool's idle threads:
/// one busy elsewhere (with another caller's work, or an outer level of this caller's) is not
/// waited for, and its index is then not run. A body that shares its work through a counter, as
/// ParallelFor's does, therefore finishes with whatever threads join, and nested calls cannot
/// deadlock. `body` must not throw.
void RunOnPool(int helpers, const std::function<void(int)>& body);
}  // namespace detail

/// Threads to use for `requested` (0 or less: every hardware thread).
inline int ResolveThreads(int requested) {
  if (requested > 0) return requested;
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

/// Calls fn(begin, end, worker) over [0, n) in chunks of `chunk` taken dynamically by up to
/// `threads` workers (worker in [0, threads); the caller is worker 0, the others come from the
/// library's thread pool, see detail::RunOnPool). The first exception thrown by any call is
/// rethrown here once all workers have stopped; the remaining chunks are then skipped.
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
  if (threads == 1) {
    work(0);
  } else {
    detail::RunOnPool(threads - 1, work);
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace qtool
