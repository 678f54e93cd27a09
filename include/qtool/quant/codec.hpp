// Weight codecs: how a float matrix is turned into stored tensors and back.
//
// A codec object describes one quantised matrix [rows, cols] (rows = output channels). It writes a
// fixed set of stored tensors (Layout) whose bytes it fills a chunk of rows at a time, so that
// large matrices are processed in parallel and streamed without a full-precision copy. Everything
// needed to decode is its format(), which the checkpoint stores in its metadata as a record
// (io/format_record.hpp, docs/FORMAT.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "qtool/core/tensor_spec.hpp"
#include "qtool/format/format.hpp"
#include "qtool/format/metrics.hpp"

namespace qtool {

class WeightCodec {
 public:
  virtual ~WeightCodec() = default;

  /// The format this codec writes: what MakeCodec needs, with the matrix shape, to rebuild it.
  virtual Format format() const = 0;
  /// Stored tensors of weight `name` (FormatTraits' layout): their names, dtypes and shapes, in
  /// the order EncodeRows and DecodeRows take their buffers.
  std::vector<TensorSpec> Layout(const std::string& name) const;
  /// Chunks of rows passed to EncodeRows/DecodeRows start at multiples of this.
  virtual int64_t row_block() const { return 1; }
  /// True when Observe must see every row before the first EncodeRows (tensor-wide statistics).
  virtual bool needs_observe() const { return false; }
  /// Accumulates tensor-wide statistics over rows [r0, r0 + nrows); called in row order, from one
  /// thread, before any EncodeRows.
  virtual void Observe(const float* /*w*/, int64_t /*r0*/, int64_t /*nrows*/) {}
  /// Encodes rows [r0, r0 + nrows) of the matrix (`w` points at row r0) into the stored tensors,
  /// `out[k]` pointing at the start of stored tensor k, and writes the decoded values of those rows
  /// to `dequant`. Thread-safe for disjoint row ranges.
  virtual void EncodeRows(const float* w, int64_t r0, int64_t nrows, std::byte* const* out,
                          float* dequant) const = 0;
  /// EncodeRows straight from the rows as the checkpoint stores them (`x` at row r0, elements of
  /// `dtype`), adding the rows' error sums to *stats in place of writing their decoded values:
  /// the one-pass path of codecs that have one. Returns false, having done nothing, where the codec
  /// has none for `dtype` or for x's alignment; else sets *bad to the index into x of the first NaN
  /// or Inf (the outputs are then unspecified) or -1. *stats gets kernels::AccumulateErrors' sums
  /// of all the rows' values in one call.
  virtual bool EncodeStoredRows(const std::byte* /*x*/, DType /*dtype*/, int64_t /*r0*/,
                                int64_t /*nrows*/, std::byte* const* /*out*/, ErrorStats* /*stats*/,
                                int64_t* /*bad*/) const {
    return false;
  }
  /// Decodes rows [r0, r0 + nrows) from the stored tensors (`in[k]` at the start of tensor k).
  virtual void DecodeRows(const std::byte* const* in, int64_t r0, int64_t nrows,
                          float* out) const = 0;

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  /// Stored bits per weight, scales and zero-points included.
  double BitsPerWeight() const;

 protected:
  WeightCodec(int64_t rows, int64_t cols) : rows_(rows), cols_(cols) {}

 private:
  int64_t rows_, cols_;
};

/// Builds the codec of `format` for a [rows, cols] matrix. Throws OptionError for invalid
/// parameters (FormatTraits<F>::Validate).
std::unique_ptr<WeightCodec> MakeCodec(const Format& format, int64_t rows, int64_t cols);

/// Names of the registered codecs, for help texts and error messages.
std::vector<std::string> CodecNames();

}  // namespace qtool
