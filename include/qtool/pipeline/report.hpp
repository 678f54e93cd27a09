// The report of a quantisation run: per tensor what was stored and how close it is, and the
// totals. Built alike by every run that writes a quantised checkpoint (pipeline/writer.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "qtool/format/metrics.hpp"
#include "qtool/io/safetensors.hpp"

namespace qtool {

struct TensorReport {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;       // input dtype
  bool quantized = false;  // false: copied unchanged
  double bits_per_weight = 0;
  uint64_t bytes_in = 0, bytes_out = 0;
  double seconds = 0;
  ErrorStats stats;

  /// The report of input tensor t before it is written (name, shape, dtype, bytes in), its clock
  /// started. The writer then sets bytes_out, and for a quantised tensor `stats` and MarkQuantized.
  static TensorReport Begin(const TensorInfo& t);
  /// A quantised tensor, stored at the codec's bits per weight.
  void MarkQuantized(double codec_bits_per_weight) {
    quantized = true;
    bits_per_weight = codec_bits_per_weight;
  }

 private:
  friend struct QuantizeReport;
  int64_t numel_ = 0;
  std::chrono::steady_clock::time_point start_;
};

struct QuantizeReport {
  std::vector<TensorReport> tensors;
  nlohmann::json codec;
  uint64_t bytes_in = 0, bytes_out = 0;
  int64_t params_total = 0, params_quantized = 0;
  uint64_t quantized_bytes_out = 0;  // stored bytes of the quantised tensors (scales included)
  double seconds = 0;
  int threads = 1;

  /// Adds a written tensor (begun by TensorReport::Begin) to the list and the totals, its time
  /// taken until now.
  void Add(TensorReport tr);
  /// Bits per quantised weight, scales and zero-points included.
  double bits_per_weight() const;
  nlohmann::json ToJson() const;
};

}  // namespace qtool
