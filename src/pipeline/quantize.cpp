#include "qtool/pipeline/quantize.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "qtool/core/error.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/kernels.hpp"
#include "qtool/kernels/convert.hpp"
#include "qtool/pipeline/writer.hpp"

namespace qtool {
namespace fs = std::filesystem;

namespace {

// Rows per work item: about 64K elements, so a chunk's f32 copy and its decoded copy stay in L2.
int64_t ChunkRows(const WeightCodec& codec) {
  const int64_t block = codec.row_block();
  const int64_t rows =
      std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, codec.cols()));
  return (rows + block - 1) / block * block;
}

// QuantizeMatrix over rows that fetch(r0, r1, raw) gives: a pointer to their stored bytes, in
// memory or read into the caller's `raw` buffer.
template <typename Fetch>
ErrorStats QuantizeMatrixWith(const Fetch& fetch, DType dtype, WeightCodec& codec,
                              std::byte* const* parts, int threads, const std::string& label) {
  const int64_t cols = codec.cols();
  if (codec.rows() == 0 || cols == 0) {
    // An empty matrix: nothing to encode (the kernels take rows of at least one element). Its
    // stored parts, such as a per-tensor scale, are zero-filled.
    const std::vector<TensorSpec> layout = codec.Layout("");
    for (size_t k = 0; k < layout.size(); ++k) std::memset(parts[k], 0, layout[k].nbytes());
    return {};
  }
  // Element `bad` of the rows from r0 on is not finite.
  auto fail = [&](int64_t r0, int64_t bad, float value) {
    const int64_t idx = r0 * cols + bad;
    throw NumericError(fmt::format("{} has a non-finite value ({}) at [{}, {}]", label, value,
                                   idx / cols, idx % cols));
  };
  auto convert = [&](int64_t r0, int64_t r1, const std::byte* src, float* dst) {
    const int64_t bad = ConvertToF32(src, dtype, (r1 - r0) * cols, dst);
    if (bad >= 0) fail(r0, bad, dst[bad]);
  };
  const int64_t chunk = ChunkRows(codec);
  if (codec.needs_observe()) {
    std::vector<std::byte> raw;
    std::vector<float> buf(static_cast<size_t>(chunk * cols));
    for (int64_t r0 = 0; r0 < codec.rows(); r0 += chunk) {
      const int64_t r1 = std::min(codec.rows(), r0 + chunk);
      convert(r0, r1, fetch(r0, r1, raw), buf.data());
      codec.Observe(buf.data(), r0, r1 - r0);
    }
  }
  threads = ResolveThreads(threads);
  struct Worker {
    ErrorStats stats;
    std::vector<std::byte> raw;
    std::vector<float> buf;
  };
  std::vector<Worker> workers(static_cast<size_t>(threads));
  ParallelFor(codec.rows(), chunk, threads, [&](int64_t r0, int64_t r1, int index) {
    Worker& wk = workers[static_cast<size_t>(index)];
    const std::byte* src = fetch(r0, r1, wk.raw);
    int64_t bad;
    if (codec.EncodeStoredRows(src, dtype, r0, r1 - r0, parts, &wk.stats, &bad)) {
      if (bad >= 0) {
        float value;
        ConvertToF32(src + bad * (BitsOf(dtype) / 8), dtype, 1, &value);
        fail(r0, bad, value);
      }
      return;
    }
    wk.buf.resize(static_cast<size_t>(2 * chunk * cols));
    float* w = wk.buf.data();
    float* deq = wk.buf.data() + chunk * cols;
    convert(r0, r1, src, w);
    codec.EncodeRows(w, r0, r1 - r0, parts, deq);
    kernels::AccumulateErrors(w, deq, (r1 - r0) * cols, &wk.stats);
  });
  ErrorStats total;
  for (const Worker& wk : workers) total += wk.stats;
  return total;
}

}  // namespace

ErrorStats QuantizeMatrix(const ByteSource& read, DType dtype, WeightCodec& codec,
                          std::byte* const* parts, int threads, const std::string& label) {
  const uint64_t row_bytes = static_cast<uint64_t>(codec.cols()) * (BitsOf(dtype) / 8);
  return QuantizeMatrixWith(
      [&](int64_t r0, int64_t r1, std::vector<std::byte>& raw) {
        raw.resize(static_cast<size_t>(static_cast<uint64_t>(r1 - r0) * row_bytes));
        read(static_cast<uint64_t>(r0) * row_bytes, raw);
        return static_cast<const std::byte*>(raw.data());
      },
      dtype, codec, parts, threads, label);
}

ErrorStats QuantizeMatrix(const std::byte* data, DType dtype, WeightCodec& codec,
                          std::byte* const* parts, int threads, const std::string& label) {
  const uint64_t row_bytes = static_cast<uint64_t>(codec.cols()) * (BitsOf(dtype) / 8);
  return QuantizeMatrixWith(
      [&](int64_t r0, int64_t, std::vector<std::byte>&) {
        return data + static_cast<uint64_t>(r0) * row_bytes;
      },
      dtype, codec, parts, threads, label);
}

QuantizeReport QuantizeCheckpoint(const Checkpoint& in, const fs::path& out,
                                  const QuantizeOptions& options, const ProgressFn& progress) {
  const auto start = std::chrono::steady_clock::now();
  QuantizedCheckpointWriter writer(in, out, options, WriteOrder::kCheckpoint, progress);
  return writer.Finish(start);
}

}  // namespace qtool
