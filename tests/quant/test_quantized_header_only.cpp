// The templates' header-only mode (the scalar references of quant/quantized.hpp) against the
// codecs, which run the kernels: the two modes write the same bytes. This unit is built on its
// own (not in a unity batch), as it selects the mode.
#define QTOOL_QUANT_HEADER_ONLY
#include "quant/quantized_cases.hpp"

namespace qtool {
namespace {

TEST(QuantizedHeaderOnly, ReferencesEqualCodecs) { CheckEveryFormat(/*special=*/false); }

TEST(QuantizedHeaderOnly, ReferencesEqualCodecsWithNanAndInf) {
  CheckEveryFormat(/*special=*/true);
}

TEST(QuantizedHeaderOnly, CompiledObserversAreRefused) {
  const std::vector<float> w(64, 0.5f);
  IntFormat f;
  f.observer = ObserverSpec::Parse("mse");
  EXPECT_THROW(Quantize(f, w, 1, 64), OptionError);
}

}  // namespace
}  // namespace qtool
