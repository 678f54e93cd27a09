// Hugging Face checkpoints: one safetensors file, or a model directory holding `model.safetensors`
// or shards `model-0000i-of-0000n.safetensors` listed by `model.safetensors.index.json`, beside
// `config.json`, tokenizer files and the like.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "qtool/core/job_thread.hpp"
#include "qtool/io/safetensors.hpp"

namespace qtool {

/// A tensor of a checkpoint: which file it is in and where.
struct CheckpointTensor {
  const SafetensorsFile* file;
  const TensorInfo* info;
  std::span<const std::byte> data() const { return file->Data(*info); }
};

/// Read-only view of a checkpoint. Every safetensors file is memory-mapped and validated on open;
/// an index that names a missing file or a tensor absent from its shard, or no tensor at all, is
/// refused. Only regular files are read; a non-weight file of a model directory that is a symlink
/// to outside it (outside the repository folder, in a Hugging Face hub cache) is refused.
class Checkpoint {
 public:
  /// Opens a .safetensors file or a model directory. Throws IoError or FormatError.
  static Checkpoint Open(const std::filesystem::path& path);

  /// The directory holding the checkpoint (the file's directory for a single file).
  const std::filesystem::path& dir() const { return dir_; }
  /// `config.json`, when the checkpoint has one.
  const std::optional<nlohmann::json>& config() const { return config_; }
  /// All tensors, ordered by name.
  const std::vector<CheckpointTensor>& tensors() const { return tensors_; }
  const CheckpointTensor* Find(std::string_view name) const;
  const CheckpointTensor& Get(std::string_view name) const;  // throws FormatError if absent
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  /// The safetensors metadata of the first file (quantised checkpoints record their spec there).
  const std::map<std::string, std::string>& metadata() const;
  /// Files of the model directory that are not weights (config, tokenizer, ...), by file name.
  const std::vector<std::filesystem::path>& other_files() const { return other_files_; }
  /// Whether the checkpoint was opened as a model directory (not as a single file).
  bool is_directory() const { return is_directory_; }
  /// Every file the checkpoint reads: weights, index, config.json and the other files.
  const std::vector<std::filesystem::path>& source_files() const { return source_files_; }
  uint64_t total_bytes() const;
  /// A view of this checkpoint that `make` derives from it (null allowed), made on the first call
  /// with `key` and kept with the checkpoint (made again once the checkpoint has been moved):
  /// parsing and validating it once for all the reads of its tensors. Thread-safe.
  std::shared_ptr<const void> Derived(
      const std::string& key, const std::function<std::shared_ptr<const void>()>& make) const;

 private:
  struct DerivedViews {
    std::mutex mu;
    // key -> (the checkpoint's address when made, the view)
    std::map<std::string, std::pair<const Checkpoint*, std::shared_ptr<const void>>> views;
  };

  std::filesystem::path dir_;
  std::optional<nlohmann::json> config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<CheckpointTensor> tensors_;
  std::vector<std::filesystem::path> other_files_;
  std::vector<std::filesystem::path> source_files_;
  bool is_directory_ = false;
  std::shared_ptr<DerivedViews> derived_ = std::make_shared<DerivedViews>();
};

/// The weight_map of a sharded checkpoint's index (`model.safetensors.index.json`): tensor name ->
/// shard file name. Throws FormatError naming `label` for JSON that is not an object with a
/// non-empty "weight_map" object of file names (plain names: no directory part).
std::map<std::string, std::string> ParseShardIndex(std::string_view text, const std::string& label);

/// Refuses (OptionError) an output directory that would destroy or mix with the input: `out` is,
/// holds or lies inside the model directory (or holds a file of the checkpoint, for a single-file
/// input). Paths are compared after resolving symlinks and "..".
void CheckOutputSeparate(const Checkpoint& in, const std::filesystem::path& out);

/// Refuses (OptionError) a report path that names a file of the checkpoint (by path, through a
/// symlink, or as a hard link of it), lies inside the model directory or inside the output `out`
/// (when not empty), or is a directory.
void CheckReportPath(const Checkpoint& in, const std::filesystem::path& out,
                     const std::filesystem::path& report);

struct CheckpointWriterOptions {
  /// Largest shard in bytes of tensor data; 0 writes one `model.safetensors`. A tensor larger than
  /// the limit gets a shard of its own.
  uint64_t max_shard_bytes = 0;
  /// Stored as the `__metadata__` of every shard.
  std::map<std::string, std::string> metadata;
  /// Replace an existing output directory (only once the new one is complete).
  bool overwrite = false;
};

/// Writes a model directory atomically: everything goes into a temporary sibling directory, which
/// replaces `dir` in Commit(). Tensors are announced up front (their order is the file order) and
/// their bytes streamed through Write(), so memory use does not depend on the model's size.
class CheckpointWriter {
 public:
  CheckpointWriter(const std::filesystem::path& dir, std::vector<TensorSpec> tensors,
                   CheckpointWriterOptions options);
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;
  ~CheckpointWriter();

  /// Appends bytes of the current tensor; see SafetensorsWriter::Write.
  void Write(std::span<const std::byte> bytes);
  /// Appends n bytes from `read`; see SafetensorsWriter::Write.
  void Write(uint64_t n, const ByteSource& read);
  /// Appends n bytes copied from `read`; see SafetensorsWriter::WriteAside.
  void WriteAside(uint64_t n, const ByteSource& read);
  /// Copies a file into the output directory under `name`.
  void CopyFile(const std::filesystem::path& src, const std::string& name);
  /// Writes a text file into the output directory.
  void WriteTextFile(const std::string& name, std::string_view text);
  /// Completes the last shard, writes the index when sharded, and moves the directory into place.
  void Commit();

  /// Throws OutputExistsError if `dir` exists and `overwrite` is false, IoError if its parent
  /// directory is missing or not writable. Call before any long work.
  static void CheckOutputPath(const std::filesystem::path& dir, bool overwrite);

 private:
  void OpenShard(size_t shard);
  // Calls part(done, take) for consecutive pieces of n bytes, each inside one shard, moving on to
  // the next shard where one is full.
  void InShards(uint64_t n, const std::function<void(uint64_t done, uint64_t take)>& part);

  std::filesystem::path dir_;
  std::filesystem::path tmp_dir_;
  std::vector<TensorSpec> tensors_;
  CheckpointWriterOptions options_;
  std::vector<size_t> shard_of_;     // shard index of each tensor
  std::vector<size_t> shard_first_;  // first tensor of each shard, plus one past the end
  size_t shard_ = 0;
  std::unique_ptr<SafetensorsWriter> writer_;
  bool committed_ = false;
};

/// Feeds a CheckpointWriter from a background thread, so that writing one tensor overlaps computing
/// the next. Bytes queued but not yet written are bounded: Enqueue blocks while more than
/// `max_queued_bytes` wait. A write error is rethrown by the next Enqueue or by Finish.
class BackgroundWriter {
 public:
  BackgroundWriter(CheckpointWriter& writer, uint64_t max_queued_bytes);
  /// Stops the thread; anything still queued is dropped (the output is then never committed).
  ~BackgroundWriter() = default;

  /// Queues a buffer the writer owns from now on.
  void Enqueue(std::vector<std::byte> owned);
  /// Queues bytes that stay valid until `done` runs, right after they are written.
  void Enqueue(std::span<const std::byte> borrowed, std::function<void()> done);
  /// Queues n bytes copied from `read` when their turn comes (SafetensorsWriter::WriteAside: the
  /// copy is written beside what is queued after it), such as a file's: they take no memory
  /// until then, so they do not count against the bound. `read` must stay valid until Finish.
  void EnqueueRead(uint64_t n, ByteSource read);
  /// Waits until every queued byte is written.
  void Finish();

 private:
  struct Job {
    std::vector<std::byte> owned;
    std::span<const std::byte> bytes;
    std::function<void()> done;
    uint64_t read_bytes = 0;  // with `read`, which takes the place of `bytes`
    ByteSource read;
  };
  void Write(const Job& job);

  CheckpointWriter& writer_;
  JobThread<Job> thread_;  // last: stopped and joined before the rest goes
};

}  // namespace qtool
