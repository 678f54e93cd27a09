// Temporary names for atomic output: write under a sibling name, rename when complete.
#pragma once

#include <filesystem>

namespace qtool {

/// A name in the same directory as `path` that no other writer uses: ".NAME.qtool-tmp-PID-N".
/// Being a sibling keeps the final rename on one file system, so it is atomic.
std::filesystem::path TempSiblingPath(const std::filesystem::path& path);

}  // namespace qtool
