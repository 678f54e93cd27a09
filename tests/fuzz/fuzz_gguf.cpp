// libFuzzer target: the GGUF parser must accept or reject any byte string with a FormatError,
// never crash, hang or read outside the input; accepted tensors are decoded in full.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "qtool/core/error.hpp"
#include "qtool/format/ggml_quants.hpp"
#include "qtool/io/gguf.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  try {
    const qtool::gguf::Header h = qtool::gguf::Parse(file, "fuzz");
    std::vector<float> out;
    for (const qtool::gguf::TensorInfo& t : h.tensors) {
      // Every tensor's bytes lie inside the input: decode them all (bounded by the input size).
      out.resize(t.numel());
      qtool::ggml::Dequantize(t.type, file.data() + h.data_offset + t.offset, out.data(),
                              static_cast<int64_t>(out.size()));
    }
    return 0;
  } catch (const qtool::FormatError&) {
    return 0;
  }
}
