// libFuzzer target: the sharded checkpoint index (model.safetensors.index.json). Any byte string
// must give a weight map of plain file names or be refused with a FormatError.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string_view>

#include "qtool/core/error.hpp"
#include "qtool/io/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto map = qtool::ParseShardIndex(
        std::string_view(reinterpret_cast<const char*>(data), size), "index.json");
    for (const auto& [tensor, file] : map) {
      // A shard name may never lead out of the model directory.
      const std::filesystem::path p(file);
      if (p.has_parent_path() || file == "." || file == ".." || file.empty()) std::abort();
    }
    return 0;
  } catch (const qtool::FormatError&) {
    return 0;
  }
}
