// libFuzzer target: a quantised checkpoint's records. The input is a safetensors file whose
// metadata holds "qtool.quantization" (the seeds are small checkpoints written by qtool); it is
// opened as a checkpoint and every weight is decoded through the record, as eval and dequantize
// do. Anything must decode or be refused with a qtool::Error, never crash or read out of bounds.
#include <cstddef>
#include <cstdint>

#include "fuzz_support.hpp"
#include "qtool/core/error.hpp"
#include "qtool/io/quantized.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const qtool::fuzz::MemoryFile file(data, size);
  if (!file.ok()) return 0;
  try {
    const qtool::Checkpoint ck = qtool::Checkpoint::Open(file.path());
    (void)qtool::QuantizesActivations(ck);
    float sum = 0;
    for (const std::string& name : qtool::LogicalTensorNames(ck)) {
      (void)qtool::LogicalShape(ck, name);
      const std::vector<float> w = qtool::ReadTensorF32(ck, name);
      if (!w.empty()) sum += w.front() + w.back();
    }
    return static_cast<int>(sum != sum) & 0;
  } catch (const qtool::Error&) {
    return 0;
  }
}
