// Formats as checkpoint records: the JSON object a quantised checkpoint stores per weight
// (docs/FORMAT.md) and a Format, in both directions. Reading is strict: a key the format's family
// does not have, a value of the wrong type and a value out of range are refused with an error
// naming the key and where the record came from.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "qtool/format/format.hpp"

namespace qtool {

/// {"codec": NAME, parameters...} of `f`: the keys docs/CODECS.md lists for its family, optional
/// ones only where they differ from their defaults.
nlohmann::json FormatToRecord(const Format& f);

/// The Format a record describes. `where` names the record in errors ("codec record",
/// "model/model.safetensors: tensor \"x\""). Throws OptionError for a missing or unknown codec
/// name, an unknown key, a value of the wrong type or out of range.
Format FormatFromRecord(const nlohmann::json& record, const std::string& where = "codec record");

}  // namespace qtool
