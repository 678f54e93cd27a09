// The compiled part of qtool/quant/quantized.hpp: the templates' dispatched mode runs the codecs.
#include "qtool/quant/quantized.hpp"

#include "qtool/kernels.hpp"
#include "qtool/quant/codec.hpp"

namespace qtool::detail {

void EncodeDispatched(const Format& format, int64_t rows, int64_t cols, const float* w,
                      std::byte* const* out, float* deq) {
  const std::unique_ptr<WeightCodec> codec = MakeCodec(format, rows, cols);
  if (codec->needs_observe()) codec->Observe(w, 0, rows);
  codec->EncodeRows(w, 0, rows, out, deq);
}

void DecodeDispatched(const Format& format, int64_t rows, int64_t cols, const std::byte* const* in,
                      float* out) {
  MakeCodec(format, rows, cols)->DecodeRows(in, 0, rows, out);
}

void AccumulateErrorsDispatched(const float* x, const float* y, int64_t n, ErrorStats* s) {
  kernels::AccumulateErrors(x, y, n, s);
}

}  // namespace qtool::detail
