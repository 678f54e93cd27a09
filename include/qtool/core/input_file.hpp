// Reading small input files (JSON, token ids, text) safely: only regular files are opened, without
// blocking on a FIFO or device; sizes are bounded; JSON nesting is bounded before it is built.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace qtool {

/// Deepest JSON nesting accepted (a Hugging Face config nests a few levels).
inline constexpr int kMaxJsonDepth = 128;
/// Largest small input file read whole into memory (configs, indexes, token files).
inline constexpr uint64_t kMaxSmallFileBytes = uint64_t{1} << 30;

/// Opens `path` read-only with O_NONBLOCK and returns the descriptor once fstat shows a regular
/// file. A FIFO, socket, device or directory is refused with IoError (never waited on), as is a
/// file that cannot be opened. The caller closes the descriptor.
int OpenRegularFile(const std::filesystem::path& path);

/// Throws IoError unless `path` (followed through symlinks) is a regular file: for a file that a
/// reader outside this library will open, which must not block on a FIFO.
void CheckRegularFile(const std::filesystem::path& path);

/// Every file opened or checked by the two functions above is remembered for the life of the
/// process, so that no output of the run can replace what the run read (--calib, --text, --tokens,
/// a tokenizer, a shard). True when `path` names one of those files (the same file, through any
/// link), or, with `or_within`, when one of them lies inside the directory `path`.
bool NamesReadInput(const std::filesystem::path& path, bool or_within = false);

/// The whole content of the regular file `path`. Throws IoError as OpenRegularFile does, or when
/// the file is larger than `max_bytes` or cannot be read.
std::string ReadRegularFile(const std::filesystem::path& path,
                            uint64_t max_bytes = kMaxSmallFileBytes);

/// Parses `text` as JSON. Throws FormatError naming `label` when it is not JSON or nests deeper
/// than kMaxJsonDepth (refused while parsing, before any deep value is built).
nlohmann::json ParseJsonBounded(std::string_view text, std::string_view label);

/// ParseJsonBounded of the file at `path` (read with ReadRegularFile), labelled with its path.
nlohmann::json ReadJsonFile(const std::filesystem::path& path);

}  // namespace qtool
