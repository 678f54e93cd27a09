// The benchmark binary's entry point: the process set up as `qtool` sets itself up (freed large
// blocks kept for reuse, core/memory.hpp), then Google Benchmark's usual command line.
#include <benchmark/benchmark.h>

#include "qtool/core/memory.hpp"

int main(int argc, char** argv) {
  qtool::RetainFreedMemory();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
