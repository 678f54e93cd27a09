#include "qtool/kernels/convert.hpp"

#include <cstring>

#include "qtool/core/error.hpp"
#include "qtool/core/half.hpp"
#include "qtool/kernels.hpp"

namespace qtool {
namespace {

// 16-bit elements go through the vector kernels when the buffer is 2-byte aligned (always the case
// for safetensors data, whose offsets are multiples of the element size); the element-wise
// reference handles any other address.
bool Aligned2(const void* p) { return reinterpret_cast<uintptr_t>(p) % 2 == 0; }

template <typename T>
T LoadUnaligned(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// 16-bit values to f32: the vector kernel on a 2-byte aligned buffer, `one` per element otherwise.
template <typename Kernel, typename One>
void Widen16(const std::byte* src, int64_t n, float* dst, Kernel kernel, One one) {
  if (Aligned2(src)) return kernel(reinterpret_cast<const uint16_t*>(src), n, dst);
  for (int64_t i = 0; i < n; ++i) dst[i] = one(LoadUnaligned<uint16_t>(src + 2 * i));
}

// f32 to 16-bit values, likewise.
template <typename Kernel, typename One>
void Narrow16(const float* src, int64_t n, std::byte* dst, Kernel kernel, One one) {
  if (Aligned2(dst)) return kernel(src, n, reinterpret_cast<uint16_t*>(dst));
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = one(src[i]);
    std::memcpy(dst + 2 * i, &h, 2);
  }
}

}  // namespace

int64_t ConvertToF32(const std::byte* src, DType type, int64_t n, float* dst) {
  switch (type) {
    case DType::kF32:
      if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * 4);  // an empty one may be null
      break;
    case DType::kBF16:
      Widen16(src, n, dst, kernels::Bf16ToF32, [](uint16_t h) { return Bf16ToF32(h); });
      break;
    case DType::kF16:
      Widen16(src, n, dst, kernels::F16ToF32, [](uint16_t h) { return F16ToF32(h); });
      break;
    case DType::kF64:
      for (int64_t i = 0; i < n; ++i)
        dst[i] = static_cast<float>(LoadUnaligned<double>(src + 8 * i));
      break;
    default:
      throw ShapeError(fmt::format("cannot read {} as floating point", DTypeName(type)));
  }
  return kernels::FirstNonFinite(dst, n);
}

void ConvertFromF32(const float* src, DType type, int64_t n, std::byte* dst) {
  switch (type) {
    case DType::kF32:
      if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * 4);  // an empty one may be null
      return;
    case DType::kBF16:
      return Narrow16(src, n, dst, kernels::F32ToBf16, [](float f) { return F32ToBf16(f); });
    case DType::kF16:
      return Narrow16(src, n, dst, kernels::F32ToF16, [](float f) { return F32ToF16(f); });
    case DType::kF64:
      for (int64_t i = 0; i < n; ++i) {
        const double d = src[i];
        std::memcpy(dst + 8 * i, &d, 8);
      }
      return;
    default:
      throw ShapeError(fmt::format("cannot write {} from floating point", DTypeName(type)));
  }
}

}  // namespace qtool
