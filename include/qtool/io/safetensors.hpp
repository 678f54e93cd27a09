// safetensors reader and streaming writer.
//
// File layout (https://github.com/huggingface/safetensors): an 8-byte little-endian header length
// N, N bytes of UTF-8 JSON, then the data section. The JSON maps each tensor name to
// {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]} with offsets relative to the data
// section, and may hold "__metadata__": {string: string}. Tensors are stored row-major,
// little-endian, and must cover the data section without holes or overlaps.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "qtool/core/dtype.hpp"
#include "qtool/core/mapped_file.hpp"
#include "qtool/core/tensor_spec.hpp"

namespace qtool {

/// Largest header the reader accepts (the reference implementation's limit).
inline constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;

/// A tensor of a parsed file: its spec and where its bytes lie in the data section.
struct TensorInfo : TensorSpec {
  uint64_t begin = 0;  // offset of the first byte, relative to the data section
  uint64_t end = 0;    // one past the last byte
};

/// A parsed and fully validated header.
struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // sorted by begin offset
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;  // 8 + header length: where the data section starts in the file
};

/// Parses and validates a whole safetensors image held in memory; `label` names it in errors.
/// Checks: header length against the file size and kMaxSafetensorsHeader, well-formed JSON object,
/// unique names, known dtypes, shape x item size == byte span (without overflow), offsets inside
/// the data section, no overlaps and no holes. Throws FormatError naming the file and tensor.
SafetensorsHeader ParseSafetensors(std::span<const std::byte> file, std::string_view label);

/// A memory-mapped safetensors file. Tensor data is read straight from the map.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return map_.path(); }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }

  /// The tensor named `name`, or nullptr.
  const TensorInfo* Find(std::string_view name) const;
  /// The bytes of `t`, which must belong to this file.
  std::span<const std::byte> Data(const TensorInfo& t) const {
    return map_.bytes().subspan(header_.data_offset + t.begin, t.end - t.begin);
  }
  void Prefetch(const TensorInfo& t) const {
    map_.Prefetch(header_.data_offset + t.begin, t.nbytes());
  }
  void Release(const TensorInfo& t) const {
    map_.Release(header_.data_offset + t.begin, t.nbytes());
  }
  /// Reads bytes [offset, offset + dst.size()) of `t` with MappedFile::Read.
  void Read(const TensorInfo& t, size_t offset, std::span<std::byte> dst) const {
    map_.Read(header_.data_offset + t.begin + offset, dst);
  }

 private:
  MappedFile map_;
  SafetensorsHeader header_;
};

/// Writes a file whose header lists `tensors` (in the given order); tensor bytes are then
/// streamed in the same order through Write(). The header is padded with spaces so the data section
/// starts 8-byte aligned. Output goes to a temporary sibling of `path` and is renamed onto `path`
/// by Commit(); a writer destroyed before Commit() removes its temporary file. Where the file
/// system takes direct I/O the file is written with it (whole aligned blocks, the padding cut off
/// at Commit()), so a large output is not copied through the page cache.
///
///   SafetensorsWriter w("out.safetensors", {{"w", DType::kF32, {2, 2}}}, {});
///   w.Write(std::as_bytes(std::span(values)));
///   w.Commit();
/// Fills dst with bytes [offset, offset + dst.size()) of some source (see
/// SafetensorsWriter::Write).
using ByteSource = std::function<void(uint64_t offset, std::span<std::byte> dst)>;

class SafetensorsWriter {
 public:
  SafetensorsWriter(const std::filesystem::path& path, std::vector<TensorSpec> tensors,
                    const std::map<std::string, std::string>& metadata);
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  ~SafetensorsWriter();

  /// Appends bytes to the tensor being written, moving on to the next tensor when it is complete.
  /// Writing more bytes than the header announced throws.
  void Write(std::span<const std::byte> bytes);
  /// Appends n bytes that `read` puts straight into the writer's buffer, piece by piece:
  /// read(offset, dst) fills dst with bytes [offset, offset + dst.size()) of the n.
  void Write(uint64_t n, const ByteSource& read);
  /// Write(n, read) for bytes copied from elsewhere, such as a tensor kept from the input: the
  /// whole blocks among them go to the file from a thread of the writer, beside what the caller
  /// writes next, so that the copy's device time overlaps the work that produces the tensors after
  /// it. `read` is called from that thread until Commit or the destructor has waited for it; a
  /// failed copy is rethrown by a later WriteAside or by Commit.
  void WriteAside(uint64_t n, ByteSource read);
  /// Bytes still expected in total.
  uint64_t remaining() const { return total_ - written_; }
  /// Flushes, checks that every announced byte was written, and renames into place.
  void Commit();

  /// The header bytes (length prefix, JSON, padding) the writer emits for these tensors.
  static std::string EncodeHeader(const std::vector<TensorSpec>& tensors,
                                  const std::map<std::string, std::string>& metadata);

 private:
  // Starts writing the buffer's whole blocks on another thread and goes on filling the next
  // buffer (once its own write is done), which starts with the rest.
  void Flush();
  // Waits for the writes under way; with `rethrow`, throws what the first failed one threw.
  void WaitForWrites(bool rethrow);
  // Writes out everything buffered, the last block zero padded for direct I/O, and waits.
  void FlushAll();
  void WriteOut(std::span<const std::byte> bytes, uint64_t offset);

  struct FreeAligned {
    void operator()(std::byte* p) const;
  };
  class AsideCopies;

  std::filesystem::path path_;
  std::filesystem::path tmp_path_;
  int fd_ = -1;
  // Direct I/O (O_DIRECT: from the buffer straight to the device, no copy into the page cache)
  // where the file system has it; false: writes go through the page cache.
  std::atomic<bool> direct_ = false;
  uint64_t total_ = 0;
  uint64_t written_ = 0;
  uint64_t file_size_ = 0;  // header and tensor bytes
  // A ring of buffers: one fills while the others are written out (writes_[i] writes
  // buffers_[i] at its own offset), so that copying into a buffer (or reading a source file into
  // it) overlaps the device's writes, and the device has three writes queued: on a virtual disk
  // two are about a fifth faster than one, and three about 5% faster again.
  static constexpr int kBuffers = 4;
  std::unique_ptr<std::byte[], FreeAligned> buffers_[kBuffers];
  std::future<void> writes_[kBuffers];
  int current_ = 0;
  size_t buffered_ = 0;
  uint64_t flushed_ = 0;  // file bytes handed to writes so far
  bool committed_ = false;
  std::unique_ptr<AsideCopies> aside_;  // the copies of WriteAside, once there is one
};

}  // namespace qtool
