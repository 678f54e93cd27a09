// <qtool/quant.hpp> in header-only mode, built with the standard library and fmt alone (no qtool
// library on the link line): quantises a matrix in every format family and checks the round trip
// (tests/CMakeLists.txt builds and runs it, and checks what the header pulls in).
#define QTOOL_QUANT_HEADER_ONLY
#include <cstdio>
#include <qtool/quant.hpp>
#include <random>
#include <vector>

int main() {
  const int64_t rows = 8, cols = 96;
  std::vector<float> w(static_cast<size_t>(rows * cols));
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : w) v = normal(rng);
  // Each family with the SQNR (dB) it reaches at least on Gaussian data.
  const std::pair<const char*, double> cases[] = {
      {"int8:channel", 35}, {"int4:g32:asym", 15}, {"ternary:g16", 3}, {"nf4:b64:dq", 15},
      {"fp8-e4m3", 25},     {"mxfp4", 10},         {"mxint8", 30}};
  int failures = 0;
  for (const auto& [text, min_db] : cases) {
    const qtool::Format f = qtool::ParseFormat(text);
    const qtool::ErrorStats e =
        qtool::MeasureError(w, qtool::Dequantize(qtool::Quantize(f, w, rows, cols)));
    std::printf("%-14s SQNR %.2f dB\n", text, e.sqnr_db());
    if (!(e.sqnr_db() >= min_db)) {
      std::printf("  below %.0f dB\n", min_db);
      ++failures;
    }
  }
  return failures == 0 ? 0 : 1;
}
