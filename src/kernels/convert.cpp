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

}  // namespace

int64_t ConvertToF32(const std::byte* src, DType type, int64_t n, float* dst) {
  switch (type) {
    case DType::kF32:
      if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * 4);  // an empty one may be null
      break;
    case DType::kBF16:
      if (Aligned2(src)) {
        kernels::Bf16ToF32(reinterpret_cast<const uint16_t*>(src), n, dst);
      } else {
        for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(LoadUnaligned<uint16_t>(src + 2 * i));
      }
      break;
    case DType::kF16:
      if (Aligned2(src)) {
        kernels::F16ToF32(reinterpret_cast<const uint16_t*>(src), n, dst);
      } else {
        for (int64_t i = 0; i < n; ++i) dst[i] = F16ToF32(LoadUnaligned<uint16_t>(src + 2 * i));
      }
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
      if (Aligned2(dst)) return kernels::F32ToBf16(src, n, reinterpret_cast<uint16_t*>(dst));
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = F32ToBf16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case DType::kF16:
      if (Aligned2(dst)) return kernels::F32ToF16(src, n, reinterpret_cast<uint16_t*>(dst));
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = F32ToF16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
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
