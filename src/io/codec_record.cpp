#include "qtool/io/format_record.hpp"

namespace qtool {

QuantSpec IntSpecFromRecord(const nlohmann::json& record) {
  const Format f = FormatFromRecord(record);
  const auto* i = std::get_if<IntFormat>(&f);
  QTOOL_CHECK(i != nullptr, OptionError, "codec record {}: not an integer format", record.dump());
  return IntSpec(*i);
}

}  // namespace qtool
