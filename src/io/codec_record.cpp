// The codecs' record functions (declared in quant/), defined here because records are the
// checkpoint's JSON: the quant layer compiles without nlohmann/json's parser or io/.
#include "qtool/io/format_record.hpp"
#include "qtool/quant/codec.hpp"
#include "qtool/quant/int_codec.hpp"

namespace qtool {

nlohmann::json WeightCodec::Record() const { return FormatToRecord(format()); }

std::unique_ptr<WeightCodec> MakeCodec(const nlohmann::json& record, int64_t rows, int64_t cols) {
  return MakeCodec(FormatFromRecord(record), rows, cols);
}

QuantSpec IntCodec::SpecFromRecord(const nlohmann::json& record) {
  const Format f = FormatFromRecord(record);
  const auto* i = std::get_if<IntFormat>(&f);
  QTOOL_CHECK(i != nullptr, OptionError, "codec record {}: not an integer format", record.dump());
  return IntSpec(*i);
}

}  // namespace qtool
