#include "qtool/quant/spec.hpp"

#include "params_inl.hpp"
#include "qtool/core/error.hpp"

namespace qtool {

void QuantSpec::Validate() const {
  QTOOL_CHECK(bits >= 2 && bits <= 8, OptionError, "bits must be in 2..8, got {}", bits);
  QTOOL_CHECK(granularity != Granularity::kGroup || group_size >= 1, OptionError,
              "group size must be at least 1, got {}", group_size);
  QTOOL_CHECK(!flat_groups || granularity == Granularity::kGroup, OptionError,
              "flat groups need per-group granularity");
}

std::string QuantSpec::ToString() const {
  std::string g = granularity == Granularity::kTensor ? "per-tensor"
                  : granularity == Granularity::kChannel
                      ? "per-channel"
                      : fmt::format("g{}{}", group_size, flat_groups ? " flat" : "");
  return fmt::format("int{} {} {}", bits, symmetric ? "sym" : "asym", g);
}

GroupParams ParamsFromRange(float lo, float hi, const QuantSpec& spec) {
  return detail::GroupParamsFromRange(lo, hi, spec);
}

}  // namespace qtool
