// Quantize / Dequantize linked with the kernels (the dispatched mode) against the codecs, and the
// typed storage's views.
#include "qtool/kernels.hpp"
#include "qtool/quant.hpp"
#include "quant/quantized_cases.hpp"

namespace qtool {
namespace {

TEST(Quantized, DispatchedEqualsCodecsOnEveryIsa) {
  const kernels::Isa active = kernels::ActiveIsa();
  for (const kernels::Isa isa : kernels::SupportedIsas()) {
    SCOPED_TRACE(kernels::IsaName(isa));
    kernels::SelectIsa(isa);
    CheckEveryFormat(/*special=*/false);
  }
  kernels::SelectIsa(active);
}

TEST(Quantized, DispatchedEqualsCodecsWithNanAndInf) { CheckEveryFormat(/*special=*/true); }

TEST(Quantized, ViewsSpanTheLayout) {
  const std::vector<float> w = QuantizedCaseData(6 * 40, 3, false);
  const auto q =
      Quantize(IntFormat{.bits = 3, .symmetric = false, .group = 16, .g_idx = true}, w, 6, 40);
  const IntView v = View(q);
  EXPECT_EQ(v.qweight.size(), 6u * PackedBytes(40, 3));
  EXPECT_EQ(v.scales.size(), 6u * 3);
  EXPECT_EQ(v.zeros.size(), 6u * 3);
  ASSERT_EQ(v.g_idx.size(), 40u);
  EXPECT_EQ(v.g_idx[39], 2);
  const auto nf4 = Quantize(Nf4Format{.block = 64, .double_quant = true}, w, 6, 40);
  const Nf4View n = View(nf4);
  EXPECT_EQ(n.qabsmax.size(), 4u);
  EXPECT_EQ(n.absmax_scale.size(), 1u);
  EXPECT_TRUE(n.absmax.empty());
  const auto mx = Quantize(MxFormat{}, w, 6, 40);
  EXPECT_EQ(View(mx).scales.size(), 6u * 2);
}

TEST(Quantized, RefusesBadShapesAndFormats) {
  const std::vector<float> w(12, 1.0f);
  EXPECT_THROW(Quantize(IntFormat{}, w, 5, 3), ShapeError);
  EXPECT_THROW(Quantize(IntFormat{.bits = 9}, w, 3, 4), OptionError);
  EXPECT_THROW(Quantize(Nf4Format{.block = 8}, w, 3, 4), OptionError);
  std::vector<float> deq(5);
  EXPECT_THROW(Quantize(MxFormat{}, w, 3, 4, deq), ShapeError);
}

TEST(Quantized, AnyFormatThroughTheVariant) {
  const std::vector<float> w = QuantizedCaseData(4 * 64, 11, false);
  const AnyQuantized q = Quantize(ParseFormat("fp8-e4m3:g32"), w, 4, 64);
  ASSERT_TRUE(std::holds_alternative<Quantized<FloatFormat>>(q));
  const std::vector<float> back = Dequantize(q);
  EXPECT_GT(MeasureError(w, back).sqnr_db(), 25.0);
}

}  // namespace
}  // namespace qtool
