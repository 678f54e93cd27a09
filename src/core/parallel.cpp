#include "qtool/core/parallel.hpp"

#include <condition_variable>
#include <vector>

namespace qtool::detail {
namespace {

// Threads that wait for work for the life of the process: starting a thread per parallel loop
// costs more than a small loop itself (the runtime and the solvers run thousands of them).
class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  void Run(int helpers, const std::function<void(int)>& body) {
    Job job{&body, helpers};
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (static_cast<int>(threads_.size()) < helpers) threads_.emplace_back([this] { Loop(); });
      jobs_.push_back(&job);
    }
    work_.notify_all();
    body(0);
    std::unique_lock<std::mutex> lock(mu_);
    jobs_.erase(std::find(jobs_.begin(), jobs_.end(), &job));
    done_.wait(lock, [&] { return job.active == 0; });
  }

 private:
  struct Job {
    const std::function<void(int)>* body;
    int helpers;
    int joined = 0;  // helpers that took an index
    int active = 0;  // helpers still in body
  };

  Job* Open() {
    for (Job* j : jobs_) {
      if (j->joined < j->helpers) return j;
    }
    return nullptr;
  }

  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      work_.wait(lock, [&] { return stop_ || Open() != nullptr; });
      if (stop_) return;
      Job* job = Open();
      const int index = ++job->joined;
      ++job->active;
      lock.unlock();
      (*job->body)(index);
      lock.lock();
      if (--job->active == 0) done_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable work_, done_;
  std::vector<Job*> jobs_;  // calls in progress, oldest first
  std::vector<std::thread> threads_;
  bool stop_ = false;
};

}  // namespace

void RunOnPool(int helpers, const std::function<void(int)>& body) {
  static Pool pool;
  pool.Run(helpers, body);
}

}  // namespace qtool::detail
