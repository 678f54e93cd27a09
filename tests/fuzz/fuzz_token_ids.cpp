// libFuzzer target: token-id files (eval --tokens). Any byte string must give ids or be refused
// with a qtool::Error naming the file, never crash or hang.
#include <cstddef>
#include <cstdint>

#include "fuzz_support.hpp"
#include "qtool/core/error.hpp"
#include "qtool/model/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const qtool::fuzz::MemoryFile file(data, size);
  if (!file.ok()) return 0;
  try {
    const std::vector<int32_t> ids = qtool::ReadTokenIds(file.path());
    return static_cast<int>(ids.size() > size);  // each id takes at least one byte
  } catch (const qtool::Error&) {
    return 0;
  }
}
