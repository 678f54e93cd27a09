// A thread of its own that runs queued jobs one after the other.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>
#include <utility>

namespace qtool {

/// Runs run(job) on a thread of its own for each job added, in the order added. Jobs carry a size
/// in units of the caller's choice (bytes of a buffer, say): Add blocks while the jobs waiting and
/// the one under way hold more than `max_queued` units (a larger job goes in once the queue is
/// empty). A job that throws ends the queue: the jobs after it are dropped, and its exception is
/// rethrown by the next Add and by Wait.
template <typename Job>
class JobThread {
 public:
  explicit JobThread(std::function<void(Job&)> run,
                     uint64_t max_queued = std::numeric_limits<uint64_t>::max())
      : run_(std::move(run)), max_queued_(max_queued), thread_([this] { Loop(); }) {}
  JobThread(const JobThread&) = delete;
  JobThread& operator=(const JobThread&) = delete;
  /// Drops the jobs not yet started and waits for the one under way (which can see stopping()).
  ~JobThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  void Add(Job job, uint64_t units = 0) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return error_ || queued_ == 0 || queued_ + units <= max_queued_; });
    if (error_) std::rethrow_exception(error_);
    queued_ += units;
    ++pending_;
    jobs_.push_back({std::move(job), units});
    cv_.notify_all();
  }

  /// Waits until every job added has run.
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return error_ || pending_ == 0; });
    if (error_) std::rethrow_exception(error_);
  }

  /// Whether the destructor is waiting: a long job may end early.
  bool stopping() const { return stop_; }

 private:
  struct Entry {
    Job job;
    uint64_t units;
  };

  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (stop_) return;
      Entry e = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      std::exception_ptr error;
      try {
        run_(e.job);
      } catch (...) {
        error = std::current_exception();
      }
      const uint64_t units = e.units;
      e = Entry{};  // the job's resources go before the lock is taken
      lock.lock();
      queued_ -= units;
      --pending_;
      if (error) {
        error_ = error;
        for (const Entry& dropped : jobs_) queued_ -= dropped.units;
        pending_ -= jobs_.size();
        jobs_.clear();
      }
      cv_.notify_all();
    }
  }

  std::function<void(Job&)> run_;
  const uint64_t max_queued_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Entry> jobs_;
  uint64_t queued_ = 0;   // units of the jobs waiting and the one under way
  uint64_t pending_ = 0;  // those jobs
  std::atomic<bool> stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;  // last: starts once the rest is set up
};

}  // namespace qtool
