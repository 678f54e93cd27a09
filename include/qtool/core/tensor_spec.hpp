// TensorSpec: a stored tensor's name, element type and shape, as a checkpoint header lists it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "qtool/core/dtype.hpp"

namespace qtool {

/// Name, type and shape of a tensor, as written in a header.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;

  int64_t numel() const {
    int64_t n = 1;
    for (const int64_t d : shape) n *= d;
    return n;
  }
  uint64_t nbytes() const {
    return static_cast<uint64_t>(numel()) * static_cast<uint64_t>(BitsOf(dtype)) / 8;
  }
};

}  // namespace qtool
