#include "qtool/quant/codec.hpp"

#include <fmt/ranges.h>

#include <functional>
#include <map>

#include "qtool/core/error.hpp"
#include "qtool/quant/fp_codec.hpp"
#include "qtool/quant/int_codec.hpp"
#include "qtool/quant/mx_codec.hpp"
#include "qtool/quant/nf4_codec.hpp"
#include "qtool/quant/ternary_codec.hpp"

namespace qtool {
namespace {

using Factory =
    std::function<std::unique_ptr<WeightCodec>(const nlohmann::json&, int64_t, int64_t)>;

// Every codec, by the name its records carry (docs/CODECS.md describes each).
const std::map<std::string, Factory>& Registry() {
  static const std::map<std::string, Factory> registry = {
      {"int",
       [](const nlohmann::json& r, int64_t rows, int64_t cols) -> std::unique_ptr<WeightCodec> {
         return std::make_unique<IntCodec>(IntCodec::SpecFromRecord(r), rows, cols,
                                           IntCodec::ObserverFromRecord(r),
                                           r.value("g_idx", false));
       }},
      {"fp",
       [](const nlohmann::json& r, int64_t rows, int64_t cols) -> std::unique_ptr<WeightCodec> {
         return std::make_unique<FpCodec>(FpSpec::FromRecord(r), rows, cols);
       }},
      {"mx", &MxCodec::FromRecord},
      {"nf4", &Nf4Codec::FromRecord},
      {"ternary", &TernaryCodec::FromRecord},
  };
  return registry;
}

}  // namespace

double WeightCodec::BitsPerWeight() const {
  uint64_t bytes = 0;
  for (const TensorSpec& t : Layout("w")) bytes += t.nbytes();
  const double n = static_cast<double>(rows_) * static_cast<double>(cols_);
  return n > 0 ? 8.0 * static_cast<double>(bytes) / n : 0.0;
}

std::unique_ptr<WeightCodec> MakeCodec(const nlohmann::json& record, int64_t rows, int64_t cols) {
  QTOOL_CHECK(record.is_object() && record.contains("codec") && record["codec"].is_string(),
              OptionError, "codec record {} has no \"codec\" name", record.dump());
  const std::string name = record["codec"].get<std::string>();
  const auto it = Registry().find(name);
  QTOOL_CHECK(it != Registry().end(), OptionError, "unknown codec \"{}\" (known: {})", name,
              fmt::join(CodecNames(), ", "));
  return it->second(record, rows, cols);
}

std::vector<std::string> CodecNames() {
  std::vector<std::string> names;
  for (const auto& [name, f] : Registry()) names.push_back(name);
  return names;
}

}  // namespace qtool
