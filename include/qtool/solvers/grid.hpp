// Quantisation grids for the solvers: how one group of weights is mapped to codes and back.
//
// A grid has 2^bits levels and per-group parameters GridParams. Two kinds:
// - IntGrid: the uniform affine grid of format/spec.hpp, x^ = (u - zero) * scale with an integer
//   zero. Symmetric: zero = 2^(b-1), scale = 2 max|x| / (2^b - 1) (every one of the 2^b levels
//   in use, as in the GPTQ reference); asymmetric: the min-max range widened to include 0, as the
//   codec. Codes and parameters are stored as they are by the "int" codec.
// - TableGrid: a non-uniform grid of 2^bits values v[u] (NF4 of QLoRA, FP4 E2M1), x^ = v[u] * scale
//   with scale = max|x| / max|v| (absmax); a value maps to the nearest level.
// Solvers (GPTQ, RTN) work column by column over all output rows at once: Quantize() takes one
// value per row with that row's parameters.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "qtool/solvers/linalg.hpp"

namespace qtool::solvers {

/// Parameters of one group. IntGrid: x^ = (u - zero) * scale. TableGrid: x^ = v[u] * scale.
struct GridParams {
  float scale = 1.0f;
  float zero = 0.0f;
};

class Grid {
 public:
  virtual ~Grid() = default;
  virtual int bits() const = 0;
  /// "int4 sym", "nf4", ...
  virtual std::string Name() const = 0;
  /// Parameters for a group whose values span [lo, hi].
  virtual GridParams FromRange(float lo, float hi) const = 0;
  /// Codes and decoded values of x[0..n), value i under parameters p[i].
  virtual void Quantize(const float* x, int64_t n, const GridParams* p, uint8_t* codes,
                        float* deq) const = 0;
  /// Decoded value of code u.
  virtual float Decode(uint8_t u, GridParams p) const = 0;
};

class IntGrid final : public Grid {
 public:
  /// Throws OptionError for bits outside 2..8. With `codec_range`, symmetric groups take the int
  /// codec's own scale max|x| / (2^(b-1) - 1) (for solvers whose float output the codec rounds).
  IntGrid(int bits, bool symmetric, bool codec_range = false);
  int bits() const override { return bits_; }
  bool symmetric() const { return symmetric_; }
  std::string Name() const override;
  GridParams FromRange(float lo, float hi) const override;
  void Quantize(const float* x, int64_t n, const GridParams* p, uint8_t* codes,
                float* deq) const override;
  float Decode(uint8_t u, GridParams p) const override {
    return (static_cast<float>(u) - p.zero) * p.scale;
  }

 private:
  int bits_;
  bool symmetric_;
  bool codec_range_;
};

class TableGrid final : public Grid {
 public:
  /// `values[u]` is the level of code u (any order, 2^k entries, not all zero).
  TableGrid(std::string name, std::vector<float> values);
  /// The NF4 levels of QLoRA (Dettmers et al. 2023), codes 0..15 in increasing order.
  static TableGrid Nf4();
  /// FP4 E2M1 (OCP MX): code = sign << 3 | exponent << 1 | mantissa, levels 0, 0.5, ..., 6.
  static TableGrid Fp4();
  int bits() const override { return bits_; }
  std::string Name() const override { return name_; }
  GridParams FromRange(float lo, float hi) const override;
  void Quantize(const float* x, int64_t n, const GridParams* p, uint8_t* codes,
                float* deq) const override;
  float Decode(uint8_t u, GridParams p) const override { return values_[u] * p.scale; }

 private:
  std::string name_;
  int bits_;
  std::vector<float> values_;   // by code
  std::vector<float> mids_;     // midpoints between consecutive sorted levels
  std::vector<uint8_t> order_;  // code of the i-th smallest level
  float absmax_;
};

/// "int" (with bits and symmetric), "nf4" or "fp4". Throws OptionError for another name.
std::unique_ptr<Grid> MakeGrid(const std::string& name, int bits, bool symmetric);

/// Parameters of one group for each of `rows` rows, the group's value c of row r being
/// wt[c * ld + r] (c < len): min-max, or with `mse` the shrunk range p * [lo, hi], p in
/// {1, 0.99, ..., 0.21}, minimising sum |x^ - x|^2.4 (the MSE grid of the GPTQ reference).
void FitGroups(const Grid& grid, const float* wt, int64_t ld, int64_t len, int64_t rows, bool mse,
               GridParams* out);

/// A quantised matrix [rows, cols]: codes, parameters per (row, group), and the decoded values.
struct QuantizedMatrix {
  RowMatrixXf dequant;             // rows x cols
  std::vector<uint8_t> codes;      // rows x cols, row-major, one code per byte
  std::vector<GridParams> params;  // rows x groups, row-major
  std::vector<int32_t> g_idx;      // per column: its group (col / group size without act-order)
  int64_t groups = 1;
};

/// Round-to-nearest with per-group parameters (group_size <= 0 or >= cols: one per row).
QuantizedMatrix QuantizeRtn(const Eigen::Ref<const RowMatrixXf>& w, const Grid& grid,
                            int64_t group_size, bool mse = false);

}  // namespace qtool::solvers
