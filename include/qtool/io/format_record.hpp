// Formats as checkpoint records: the JSON object a quantised checkpoint stores per weight
// (docs/FORMAT.md) and a Format, in both directions. Reading is strict: a key the format's family
// does not have, a value of the wrong type and a value out of range are refused with an error
// naming the key and where the record came from.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "qtool/format/format.hpp"
#include "qtool/quant/codec.hpp"

namespace qtool {

/// {"codec": NAME, parameters...} of `f`: the keys docs/CODECS.md lists for its family, optional
/// ones only where they differ from their defaults.
nlohmann::json FormatToRecord(const Format& f);

/// The Format a record describes. `where` names the record in errors ("codec record",
/// "model/model.safetensors: tensor \"x\""). Throws OptionError for a missing or unknown codec
/// name, an unknown key, a value of the wrong type or out of range.
Format FormatFromRecord(const nlohmann::json& record, const std::string& where = "codec record");

/// FormatToRecord(codec.format()): the record a checkpoint stores for the codec's weights.
inline nlohmann::json CodecRecord(const WeightCodec& codec) {
  return FormatToRecord(codec.format());
}

/// MakeCodec(FormatFromRecord(record), rows, cols).
inline std::unique_ptr<WeightCodec> MakeCodec(const nlohmann::json& record, int64_t rows,
                                              int64_t cols) {
  return MakeCodec(FormatFromRecord(record), rows, cols);
}

}  // namespace qtool
