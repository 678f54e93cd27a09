// Quantises a matrix with the quantiser core alone (CMake target qtool::quant, header
// <qtool/quant.hpp>): no checkpoint reader, no JSON. Prints each format's size and error:
//   quantize_core [FORMAT...]     e.g. quantize_core int4:g128:asym nf4:b64:dq mxfp4
#include <cmath>
#include <cstdio>
#include <qtool/quant.hpp>
#include <random>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  // A seeded stand-in for a weight matrix [rows, cols] (rows = output channels).
  const int64_t rows = 256, cols = 1024;
  std::vector<float> w(static_cast<size_t>(rows * cols));
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (float& v : w) v = normal(rng);

  try {
    // Typed: int4, groups of 128, with a zero-point.
    const qtool::IntFormat int4{.bits = 4, .symmetric = false, .group = 128};
    const qtool::Quantized<qtool::IntFormat> q = qtool::Quantize(int4, w, rows, cols);
    const qtool::IntView v = qtool::View(q);  // v.qweight, v.scales, v.zeros
    const qtool::ErrorStats e = qtool::MeasureError(w, qtool::Dequantize(q));
    std::printf("%-18s %6.3f bits/weight, %zu scales, SQNR %.2f dB\n",
                qtool::FormatToString(int4).c_str(), qtool::BitsPerWeight(int4, rows, cols),
                v.scales.size(), e.sqnr_db());

    // Formats named on the command line, parsed from their text form.
    for (int i = 1; i < argc; ++i) {
      const qtool::Format f = qtool::ParseFormat(argv[i]);
      const qtool::AnyQuantized any = qtool::Quantize(f, w, rows, cols);
      const qtool::ErrorStats err = qtool::MeasureError(w, qtool::Dequantize(any));
      std::printf("%-18s %6.3f bits/weight, SQNR %.2f dB\n", qtool::FormatToString(f).c_str(),
                  qtool::BitsPerWeight(f, rows, cols), err.sqnr_db());
    }
  } catch (const qtool::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return static_cast<int>(e.exit_code());
  }
  return 0;
}
