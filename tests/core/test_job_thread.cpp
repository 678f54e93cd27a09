#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

#include "qtool/core/job_thread.hpp"

namespace qtool {
namespace {

using namespace std::chrono_literals;

TEST(JobThread, RunsJobsInOrderOffTheCallersThread) {
  std::vector<int> seen;
  std::thread::id runner;
  JobThread<int> jobs([&](int& j) {
    seen.push_back(j);
    runner = std::this_thread::get_id();
  });
  for (int j = 0; j < 100; ++j) jobs.Add(j);
  jobs.Wait();
  ASSERT_EQ(seen.size(), 100u);
  for (int j = 0; j < 100; ++j) EXPECT_EQ(seen[static_cast<size_t>(j)], j);
  EXPECT_NE(runner, std::this_thread::get_id());
}

// Add waits while the jobs queued and under way hold more than the bound; one larger than the
// bound goes in alone.
TEST(JobThread, AddWaitsForRoomUnderTheBound) {
  std::atomic<bool> release = false;
  std::atomic<int> started = 0;
  JobThread<int> jobs(
      [&](int&) {
        ++started;
        while (!release) std::this_thread::sleep_for(1ms);
      },
      10);
  jobs.Add(0, 6);
  jobs.Add(1, 4);  // 10 units: at the bound
  std::atomic<bool> added = false;
  std::thread producer([&] {
    jobs.Add(2, 1);
    added = true;
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(added);  // 11 would be over the bound
  release = true;
  producer.join();
  EXPECT_TRUE(added);
  jobs.Add(3, 25);  // larger than the bound: waits for an empty queue, then goes in
  jobs.Wait();
  EXPECT_EQ(started, 4);
}

// A job that throws drops the jobs after it; Wait and the next Add rethrow its exception.
TEST(JobThread, AFailedJobEndsTheQueue) {
  std::atomic<bool> release = false;
  std::vector<int> seen;
  JobThread<int> jobs([&](int& j) {
    while (!release) std::this_thread::sleep_for(1ms);
    if (j == 1) throw std::runtime_error("job 1 failed");
    seen.push_back(j);
  });
  for (int j = 0; j < 4; ++j) jobs.Add(j);
  release = true;
  EXPECT_THROW(jobs.Wait(), std::runtime_error);
  EXPECT_THROW(jobs.Add(9), std::runtime_error);
  EXPECT_EQ(seen, std::vector<int>{0});
}

// The destructor drops the jobs not started and lets the one under way see stopping().
TEST(JobThread, DestructorStopsTheJobUnderWay) {
  std::atomic<int> started = 0;
  bool stopped_early = false;
  {
    JobThread<int>* self = nullptr;
    JobThread<int> jobs([&](int&) {
      ++started;
      while (!self->stopping()) std::this_thread::sleep_for(1ms);
      stopped_early = true;
    });
    self = &jobs;
    jobs.Add(0);
    jobs.Add(1);
    while (started == 0) std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(started, 1);
  EXPECT_TRUE(stopped_early);
}

}  // namespace
}  // namespace qtool
