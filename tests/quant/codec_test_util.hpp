// Helpers for codec tests: encode a whole matrix the way QuantizeCheckpoint does (Observe, then
// EncodeRows in chunks), decode it back, and deterministic test data.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "qtool/quant/codec.hpp"

namespace qtool::testing {

struct Encoded {
  std::vector<std::vector<std::byte>> parts;  // stored tensors, in Layout order
  std::vector<float> dequant;                 // what EncodeRows reported
};

namespace detail {

inline int64_t RoundUpChunk(const WeightCodec& codec, int64_t chunk_rows) {
  const int64_t b = codec.row_block();
  return std::max<int64_t>(b, (chunk_rows + b - 1) / b * b);
}

}  // namespace detail

/// Encodes w [rows, cols] with chunks of `chunk_rows` (rounded up to the codec's row_block),
/// processed last chunk first so that no chunk relies on an earlier one.
inline Encoded EncodeMatrix(WeightCodec& codec, const std::vector<float>& w,
                            int64_t chunk_rows = 3) {
  const int64_t rows = codec.rows(), cols = codec.cols();
  const int64_t chunk = detail::RoundUpChunk(codec, chunk_rows);
  Encoded e;
  std::vector<std::byte*> ptrs;
  for (const TensorSpec& t : codec.Layout("w")) e.parts.emplace_back(t.nbytes());
  for (auto& p : e.parts) ptrs.push_back(p.data());
  if (codec.needs_observe()) {
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      codec.Observe(w.data() + r0 * cols, r0, std::min(chunk, rows - r0));
    }
  }
  e.dequant.assign(w.size(), 0.0f);
  const int64_t nchunks = (rows + chunk - 1) / chunk;
  for (int64_t k = nchunks - 1; k >= 0; --k) {
    const int64_t r0 = k * chunk;
    codec.EncodeRows(w.data() + r0 * cols, r0, std::min(chunk, rows - r0), ptrs.data(),
                     e.dequant.data() + r0 * cols);
  }
  return e;
}

/// Decodes all rows in chunks of `chunk_rows` (rounded up to the codec's row_block).
inline std::vector<float> DecodeMatrix(const WeightCodec& codec, const Encoded& e,
                                       int64_t chunk_rows = 5) {
  const int64_t rows = codec.rows(), cols = codec.cols();
  const int64_t chunk = detail::RoundUpChunk(codec, chunk_rows);
  std::vector<const std::byte*> ptrs;
  for (const auto& p : e.parts) ptrs.push_back(p.data());
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    codec.DecodeRows(ptrs.data(), r0, std::min(chunk, rows - r0), out.data() + r0 * cols);
  }
  return out;
}

/// Gaussian-like values from a fixed seed, identical on every platform: Irwin-Hall sums of four
/// 24-bit uniforms from splitmix64, in exact double arithmetic, times `scale`.
inline std::vector<float> SeededNormal(int64_t n, uint64_t seed, double scale) {
  uint64_t state = seed;
  auto next = [&state]() {
    state += 0x9E3779B97F4A7C15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  std::vector<float> out(static_cast<size_t>(n));
  for (auto& v : out) {
    double s = 0;
    for (int k = 0; k < 4; ++k) s += static_cast<double>(next() >> 40) * 0x1p-24;
    v = static_cast<float>((s - 2.0) * scale);
  }
  return out;
}

/// FNV-1a 64 of a byte range.
inline uint64_t Fnv1a(const void* data, size_t n) {
  uint64_t h = 0xCBF29CE484222325ull;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001B3ull;
  return h;
}

}  // namespace qtool::testing
