#include "qtool/quant/minifloat.hpp"

namespace qtool {

const MinifloatFormat* FindMinifloat(std::string_view name) {
  for (const MinifloatFormat* f : {&kE4M3, &kE5M2, &kE3M2, &kE2M3, &kE2M1}) {
    if (f->name == name) return f;
  }
  return nullptr;
}

}  // namespace qtool
