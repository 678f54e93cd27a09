// GGUF models split over several files, as llama.cpp's gguf-split writes and llama.cpp loads them.
//
// A model split N ways is N GGUF files named PREFIX-00001-of-0000N.gguf ... (five digits each).
// The first holds all the metadata; every file holds `split.no` (u16, its index from 0),
// `split.count` (u16, N) and `split.tensors.count` (i32, the tensors of all files), and its own
// tensors with offsets into its own data section. A new file starts before the tensor that would
// take the tensor bytes of the current one (each tensor padded to the alignment; the header is not
// counted) past the maximum size, as `llama-gguf-split --split-max-size` does; a tensor larger
// than the maximum gets a file of its own.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "qtool/io/gguf.hpp"

namespace qtool::gguf {

/// PREFIX-0000i-of-0000N.gguf for split `index` (from 0) of `count`, where `path` is the
/// unsplit output name (PREFIX.gguf or PREFIX).
std::filesystem::path SplitPath(const std::filesystem::path& path, int index, int count);

/// A GGUF model in one file, or in the files of a split: opened from any of them (the others are
/// found by the split naming, beside it). The header is the first file's metadata with the
/// tensors of every file (each TensorInfo's offset into its own file's data section). Throws
/// IoError for a missing split file and FormatError, naming the file, when the splits disagree
/// (split.count, split.no out of order, split.tensors.count not the tensors found, a tensor
/// name in two files) or a file of a split lacks its split keys.
class SplitFile {
 public:
  explicit SplitFile(const std::filesystem::path& path);

  /// The first file (the path llama.cpp is given).
  const std::filesystem::path& path() const { return files_.front()->path(); }
  const Header& header() const { return header_; }
  size_t split_count() const { return files_.size(); }
  /// Index of the file that holds tensor `t` of header().
  size_t SplitOf(const TensorInfo& t) const;
  const File& split(size_t i) const { return *files_[i]; }
  /// Decodes tensor `t` of header() (any type) into `out` (t.numel() values).
  void Dequantize(const TensorInfo& t, std::span<float> out) const;

 private:
  std::vector<std::unique_ptr<File>> files_;
  Header header_;
  std::unordered_map<std::string, size_t> split_of_;
};

/// Writes a model as one GGUF file (max_split_bytes == 0: exactly as Writer) or as a split with
/// files of at most `max_split_bytes` of tensor data. Tensors are streamed through Write() in the
/// order given; every file is written under a temporary name and all are renamed into place by
/// Commit() (a writer destroyed before that removes them). Throws OutputExistsError when a file it
/// would write exists and `overwrite` is false, OptionError for more than 65535 files.
class SplitWriter {
 public:
  SplitWriter(const std::filesystem::path& path, std::vector<std::pair<std::string, Value>> kv,
              std::vector<TensorSpec> tensors, uint64_t max_split_bytes, bool overwrite);
  ~SplitWriter();
  SplitWriter(const SplitWriter&) = delete;
  SplitWriter& operator=(const SplitWriter&) = delete;

  /// Appends bytes to the tensors in order (a call may span tensors and files).
  void Write(std::span<const std::byte> bytes);
  void Commit();
  /// The files this writer writes, in order.
  const std::vector<std::filesystem::path>& paths() const { return paths_; }

 private:
  void Open(size_t split);

  std::vector<std::pair<std::string, Value>> kv_;
  std::vector<TensorSpec> tensors_;
  std::vector<size_t> first_;    // first tensor of each file, and tensors_.size()
  std::vector<uint64_t> bytes_;  // tensor bytes of each file
  std::vector<std::filesystem::path> paths_;
  std::vector<std::unique_ptr<Writer>> writers_;
  size_t current_ = 0;    // file being written
  uint64_t written_ = 0;  // bytes written to it
  bool split_ = false;
};

}  // namespace qtool::gguf
