// Importance matrices: llama.cpp's imatrix files, which `llama-imatrix` and `qtool imatrix` write
// and `llama-quantize --imatrix` and `qtool quantize --output-format gguf --imatrix` read.
//
// GGUF format (current llama.cpp): `general.type` = "imatrix", `imatrix.datasets` (array of
// strings: the calibration files), `imatrix.chunk_count` (u32: chunks of `chunk_size` tokens
// seen), `imatrix.chunk_size` (u32); per weight tensor NAME (GGUF names: blk.N.attn_q.weight, ...)
// two F32 tensors:
//   NAME.in_sum2  ne = [ncols, nmat]: sum over every input row x of x[j]^2, per column j
//   NAME.counts   ne = [1, nmat]:     the number of rows summed
// (nmat > 1 for stacked expert matrices). The importance llama-quantize gives column j of matrix
// m is in_sum2[m][j] / counts[m] (1 where counts[m] is 0).
//
// Legacy `.dat` format (little-endian): i32 n_entries; per entry: i32 name length, the name bytes,
// i32 ncall, i32 nval, nval f32 values (the mean x^2 per column times ncall); then optionally i32
// chunk count, i32 dataset-name length and the dataset name. The importance is value / ncall.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace qtool::imatrix {

/// One weight tensor's statistics.
struct Entry {
  int64_t ncols = 0;
  int64_t nmat = 1;
  std::vector<float> in_sum2;  // [nmat][ncols]
  std::vector<float> counts;   // [nmat]

  /// llama-quantize's importances: in_sum2 / counts per matrix (1 where the count is 0), in float
  /// as llama.cpp divides.
  std::vector<float> Importance() const;
};

struct Matrix {
  std::map<std::string, Entry> entries;  // by GGUF tensor name
  std::vector<std::string> datasets;
  uint32_t chunk_count = 0;
  uint32_t chunk_size = 0;
  bool legacy = false;  // read from a .dat file (counts are then ncall, in_sum2 the importances
                        // times ncall)
};

/// Reads an imatrix file of either format (a GGUF file is recognised by its magic). Checks: the
/// GGUF metadata keys and types, every NAME.in_sum2 with its NAME.counts (F32, 2-D, the shapes
/// above), non-negative finite values, at least one entry; the .dat layout against the file's
/// size. Throws FormatError (NumericError for NaN, Inf or negative values) naming the file and the
/// tensor or byte offset.
Matrix Read(const std::filesystem::path& path);

/// Writes `m` in the GGUF format to `path` (through a temporary file renamed into place; an
/// existing file is replaced). Tensors are written in name order.
void WriteGguf(const Matrix& m, const std::filesystem::path& path);

/// Writes `m` in the legacy .dat format (entries in name order; single-matrix entries only, as
/// llama.cpp's legacy writer stores them).
void WriteDat(const Matrix& m, const std::filesystem::path& path);

}  // namespace qtool::imatrix
