// ggml's block types as a GPTQ grid (BlockGrid): GPTQ's column sweep against the exact grid a
// tensor is stored in, in a GGUF file.
//
// A block is 32 columns (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) or a 256-column super-block
// (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS). When the sweep reaches a block's first column, Fit()
// runs the reference quantiser's search (ggml_quants.hpp, what the RTN writer runs) on every
// row's current, error-updated values of the block: the block's scales and mins (super-block d
// and dmin, the 4-, 6- or 8-bit sub-block scales and mins, the legacy d and m, the IQ4 scales)
// are stored in the output blocks at once and fixed from then on. Quantize() maps each column's
// value to the code the reference quantiser's final rounding gives it under those parameters
// (the same formula and float operations: for the k-quants the nearest code of the stored grid,
// for the legacy and IQ4 types the code of x / d with ggml's unrounded d), clamped to the code
// range, and returns the value the block decodes it to (bit-identical to ggml::Dequantize).
// Sub-blocks whose stored scale is 0 keep the search's codes (they decode to the same value
// whatever the code). Write() packs the codes into the blocks. So with no error feedback (an
// identity Hessian) the blocks are byte for byte the reference quantiser's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "qtool/format/ggml.hpp"
#include "qtool/solvers/gptq.hpp"

namespace qtool::solvers {

class GgmlGrid final : public BlockGrid {
 public:
  /// The blocks of a [rows, cols] weight of `type`. Throws OptionError for a type that is not
  /// one of the block types above (F32/F16/BF16, TQ1_0, TQ2_0 and MXFP4 are not swept), ShapeError
  /// when cols is not a whole number of blocks.
  GgmlGrid(ggml::Type type, int64_t rows, int64_t cols);

  /// True for the types GgmlGrid takes.
  static bool Supports(ggml::Type type);

  int64_t block() const override { return block_; }
  void Fit(int64_t b, const float* wt, int64_t ld, int64_t r0, int64_t n) override;
  void Quantize(int64_t col, const float* x, int64_t r0, int64_t n, uint8_t* codes,
                float* deq) const override;

  /// Packs codes [rows, cols] (row-major, one per byte, as GPTQ returns them) into the blocks
  /// and returns them: rows * RowBytes(type, cols) bytes, rows in order. Every block must have
  /// been fitted.
  std::vector<std::byte> Write(const std::vector<uint8_t>& codes);

 private:
  // The quantiser's float parameters of one row's current block, per sub-block (legacy and
  // IQ4_NL: one): Quantize's code is round(f(x)) with f as the reference quantiser's final loop.
  struct RowState {
    float scale[16];  // ggml's unrounded inverse scale (legacy, IQ4), or the stored d (k-quants)
    float min[16];    // legacy Q4_1/Q5_1: ggml's unrounded min; k-quants: the stored dmin * m
  };
  std::byte* BlockAt(int64_t row, int64_t b) {
    return out_.data() + static_cast<size_t>(row) * row_bytes_ +
           static_cast<size_t>(b) * type_size_;
  }
  const std::byte* BlockAt(int64_t row, int64_t b) const {
    return out_.data() + static_cast<size_t>(row) * row_bytes_ +
           static_cast<size_t>(b) * type_size_;
  }

  ggml::Type type_;
  int64_t rows_, cols_, block_;
  size_t type_size_, row_bytes_;
  std::vector<std::byte> out_;   // the blocks, rows x row_bytes
  std::vector<RowState> state_;  // per row: its current block
};

}  // namespace qtool::solvers
