#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <utility>

#include "qtool/core/memory.hpp"

namespace qtool {
namespace {

TEST(ScratchBuffer, ReusesAReleasedBufferOfAFittingSize) {
  void* first = nullptr;
  {
    ScratchBuffer a(1 << 20);
    first = a.as<void>();
    ASSERT_NE(first, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % 64, 0u);
    std::memset(a.as<void>(), 7, 1 << 20);  // the whole size asked for is usable
  }
  ScratchBuffer b((1 << 20) - 100);  // fits the idle buffer (at most twice as large)
  EXPECT_EQ(b.as<void>(), first);
  ScratchBuffer c(1 << 20);  // the idle one is taken: a new buffer
  EXPECT_NE(c.as<void>(), first);
}

TEST(ScratchBuffer, MovesOwnership) {
  ScratchBuffer a(4096);
  void* p = a.as<void>();
  ScratchBuffer b(std::move(a));
  EXPECT_EQ(b.as<void>(), p);
  EXPECT_EQ(a.as<void>(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
  ScratchBuffer c;
  c = std::move(b);
  EXPECT_EQ(c.as<void>(), p);
  EXPECT_EQ(ScratchBuffer(0).as<void>(), nullptr);
}

}  // namespace
}  // namespace qtool
