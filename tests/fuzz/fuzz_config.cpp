// libFuzzer target: config.json. Any byte string must parse into a LlamaConfig or be refused with
// a qtool::Error (FormatError, or OptionError for an architecture the runtime lacks), never crash,
// hang, or throw anything else (a JSON type error would reach the user as an internal error).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "qtool/core/error.hpp"
#include "qtool/core/input_file.hpp"
#include "qtool/model/model.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const nlohmann::json j = qtool::ParseJsonBounded(
        std::string_view(reinterpret_cast<const char*>(data), size), "config.json");
    const qtool::LlamaConfig c = qtool::LlamaConfig::FromJson(j);
    // Sizes derived from a config the parser accepted must be computable.
    return static_cast<int>(c.FlopsPerToken(0) < 0);
  } catch (const qtool::Error&) {
    return 0;
  }
}
