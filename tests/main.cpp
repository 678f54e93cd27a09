// The test binary's entry point: the process set up as `qtool` sets itself up (freed large blocks
// kept for reuse, core/memory.hpp), so that the library runs under the test as it runs in the CLI,
// then GoogleTest's usual command line. Without it the model and solver tests spend a third of
// their time refaulting the memory that each block's forward pass frees and allocates again.
#include <gtest/gtest.h>

#include "qtool/core/memory.hpp"

int main(int argc, char** argv) {
  qtool::RetainFreedMemory();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
