// compressed-tensors layouts of an integer weight: pack-quantized (2..7 bits) and int-quantized
// (8 bits) (qtool/io/export_layouts.hpp).
#include <cstring>

#include "qtool/core/error.hpp"
#include "qtool/format/traits.hpp"
#include "qtool/io/export_layouts.hpp"

namespace qtool {
namespace {

ExportTensor F32Tensor(std::string name, const std::vector<float>& v, std::vector<int64_t> shape) {
  return ExportTensor::CopyOf({std::move(name), DType::kF32, std::move(shape)}, v.data());
}

}  // namespace

std::vector<TensorSpec> CompressedTensorsIntLayout(const IntWeight& w, const std::string& prefix,
                                                   bool int_quantized) {
  const int b = w.bits;
  QTOOL_CHECK(b >= 2 && b <= 8, OptionError,
              "weight \"{}\": compressed-tensors holds 2 to 8 bits, not {}", w.name, b);
  QTOOL_CHECK(!w.act_order, OptionError,
              "weight \"{}\": compressed-tensors 0.20 has no g_idx, so it cannot hold act-order "
              "groups; use GPTQ",
              w.name);
  QTOOL_CHECK(w.cols % w.group_size == 0, OptionError,
              "weight \"{}\": compressed-tensors needs whole groups, and group size {} does not "
              "divide {} columns",
              w.name, w.group_size, w.cols);
  QTOOL_CHECK(!int_quantized || b == 8, OptionError,
              "weight \"{}\": compressed-tensors' int-quantized (W8A8) layout holds 8 bits, not {}",
              w.name, b);
  std::vector<TensorSpec> out;
  if (int_quantized) {
    out.push_back({prefix + ".weight", DType::kI8, {w.rows, w.cols}});
    out.push_back({prefix + ".weight_scale", DType::kF32, {w.rows, w.groups}});
    if (!w.symmetric)
      out.push_back({prefix + ".weight_zero_point", DType::kI8, {w.rows, w.groups}});
  } else {
    out.push_back({prefix + ".weight_packed", DType::kI32, {w.rows, (w.cols * b + 31) / 32}});
    out.push_back({prefix + ".weight_scale", DType::kF32, {w.rows, w.groups}});
    if (!w.symmetric) {
      out.push_back(
          {prefix + ".weight_zero_point", DType::kI32, {(w.rows * b + 31) / 32, w.groups}});
    }
  }
  if (!int_quantized) out.push_back({prefix + ".weight_shape", DType::kI64, {2}});
  return out;
}

std::vector<ExportTensor> PackCompressedTensorsInt(const IntWeight& w, const std::string& prefix,
                                                   bool int_quantized) {
  const std::vector<TensorSpec> layout = CompressedTensorsIntLayout(w, prefix, int_quantized);
  const int b = w.bits;
  std::vector<ExportTensor> out;
  if (int_quantized) {
    ExportTensor q = ExportTensor::Zeros(layout[0]);
    auto* qi = reinterpret_cast<int8_t*>(q.data.data());
    for (size_t i = 0; i < w.codes.size(); ++i) qi[i] = static_cast<int8_t>(w.codes[i] - 128);
    out.push_back(std::move(q));
    out.push_back(F32Tensor(prefix + ".weight_scale", w.scales, {w.rows, w.groups}));
    if (!w.symmetric) {
      ExportTensor z = ExportTensor::Zeros(layout[2]);
      auto* zi = reinterpret_cast<int8_t*>(z.data.data());
      for (size_t i = 0; i < w.zeros.size(); ++i) zi[i] = static_cast<int8_t>(w.zeros[i] - 128);
      out.push_back(std::move(z));
    }
  } else {
    ExportTensor q = ExportTensor::Zeros(layout[0]);
    const int64_t words = layout[0].shape[1];
    auto* qw = reinterpret_cast<uint32_t*>(q.data.data());
    if (w.packed) {
      // The same little-endian stream per row: qtool's bytes, the last word zero padded.
      const int64_t row_bytes = PackedBytes(w.cols, b);
      for (int64_t r = 0; r < w.rows; ++r)
        std::memcpy(q.data.data() + r * words * 4, w.packed + r * row_bytes, row_bytes);
    } else {
      for (int64_t r = 0; r < w.rows; ++r) {
        for (int64_t c = 0; c < w.cols; ++c)
          PutBits32(qw + r * words, 1, c * b, b, w.codes[static_cast<size_t>(r * w.cols + c)]);
      }
    }
    out.push_back(std::move(q));
    out.push_back(F32Tensor(prefix + ".weight_scale", w.scales, {w.rows, w.groups}));
    if (!w.symmetric) {
      // Packed along the output dimension (compressed-tensors' packed_dim 0).
      ExportTensor z = ExportTensor::Zeros(layout[2]);
      auto* zw = reinterpret_cast<uint32_t*>(z.data.data());
      for (int64_t r = 0; r < w.rows; ++r) {
        for (int64_t g = 0; g < w.groups; ++g)
          PutBits32(zw + g, w.groups, r * b, b, w.zeros[static_cast<size_t>(r * w.groups + g)]);
      }
      out.push_back(std::move(z));
    }
  }
  if (!int_quantized) {
    const int64_t shape[2] = {w.rows, w.cols};
    out.push_back(ExportTensor::CopyOf(layout.back(), shape));
  }
  return out;
}

IntWeight UnpackCompressedTensorsInt(const std::vector<ExportTensor>& t, int bits, bool symmetric,
                                     int64_t group_size, bool int_quantized) {
  IntWeight w;
  w.bits = bits;
  w.symmetric = symmetric;
  w.group_size = group_size;
  size_t next = 0;
  const ExportTensor& q = t[next++];
  const ExportTensor& s = t[next++];
  w.groups = s.spec.shape[1];
  w.rows = s.spec.shape[0];
  w.scales.resize(static_cast<size_t>(w.rows * w.groups));
  std::memcpy(w.scales.data(), s.data.data(), s.data.size());
  const ExportTensor* z = symmetric ? nullptr : &t[next++];
  w.zeros.assign(static_cast<size_t>(w.rows * w.groups), static_cast<uint8_t>(1u << (bits - 1)));
  if (int_quantized) {
    w.cols = q.spec.shape[1];
    const auto* qi = reinterpret_cast<const int8_t*>(q.data.data());
    w.codes.resize(static_cast<size_t>(w.rows * w.cols));
    for (size_t i = 0; i < w.codes.size(); ++i) w.codes[i] = static_cast<uint8_t>(qi[i] + 128);
    if (z) {
      const auto* zi = reinterpret_cast<const int8_t*>(z->data.data());
      for (size_t i = 0; i < w.zeros.size(); ++i) w.zeros[i] = static_cast<uint8_t>(zi[i] + 128);
    }
  } else {
    int64_t shape[2];
    std::memcpy(shape, t.back().data.data(), sizeof(shape));
    w.cols = shape[1];
    const int64_t words = q.spec.shape[1];
    const std::vector<uint32_t> qw = Words(q);
    w.codes.resize(static_cast<size_t>(w.rows * w.cols));
    for (int64_t r = 0; r < w.rows; ++r) {
      for (int64_t c = 0; c < w.cols; ++c)
        w.codes[static_cast<size_t>(r * w.cols + c)] =
            static_cast<uint8_t>(GetBits32(qw.data() + r * words, 1, c * bits, bits));
    }
    if (z) {
      const std::vector<uint32_t> zw = Words(*z);
      for (int64_t r = 0; r < w.rows; ++r) {
        for (int64_t g = 0; g < w.groups; ++g)
          w.zeros[static_cast<size_t>(r * w.groups + g)] =
              static_cast<uint8_t>(GetBits32(zw.data() + g, w.groups, r * bits, bits));
      }
    }
  }
  w.g_idx.resize(static_cast<size_t>(w.cols));
  for (int64_t c = 0; c < w.cols; ++c) w.g_idx[static_cast<size_t>(c)] = c / group_size;
  return w;
}

}  // namespace qtool
