// libFuzzer target: the safetensors parser must accept or reject any byte string with a
// FormatError, never crash, hang or read outside the input.
#include <cstddef>
#include <cstdint>
#include <span>

#include "qtool/core/error.hpp"
#include "qtool/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  try {
    const qtool::SafetensorsHeader h = qtool::ParseSafetensors(file, "fuzz");
    // Every tensor's bytes must lie inside the input: touch the first and last byte.
    unsigned sum = 0;
    for (const qtool::TensorInfo& t : h.tensors) {
      const auto bytes = file.subspan(h.data_offset + t.begin, t.end - t.begin);
      if (!bytes.empty())
        sum += static_cast<unsigned>(bytes.front()) + static_cast<unsigned>(bytes.back());
    }
    return static_cast<int>(sum & 0);
  } catch (const qtool::FormatError&) {
    return 0;
  }
}
