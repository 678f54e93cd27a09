// GGUF reader and streaming writer (the file format of llama.cpp and ggml).
//
// Layout (version 3; https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), little-endian:
//   "GGUF" | u32 version | u64 tensor count | u64 key-value count
//   key-value pairs: string key | u32 value type | value
//   tensor infos:    string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset
//   zero padding to the alignment, then the data section; each tensor's offset is relative to it
//   and a multiple of the alignment (key `general.alignment`, u32, default 32).
// A string is a u64 byte length and the UTF-8 bytes (no terminator). A value is one of the scalar
// types below, a string, or an array: u32 element type | u64 count | the elements. ne[0] is the
// length of a row (the innermost dimension): a PyTorch [out, in] weight has ne = {in, out}.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "qtool/core/mapped_file.hpp"
#include "qtool/format/ggml.hpp"

namespace qtool::gguf {

inline constexpr uint32_t kVersion = 3;
inline constexpr uint32_t kDefaultAlignment = 32;
inline constexpr int kMaxDims = 4;  // GGML_MAX_DIMS

/// `enum gguf_type`: the type of a metadata value.
enum class ValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

/// The name of a value type ("u32", "string", ...).
std::string_view ValueTypeName(ValueType t);

/// One scalar value; the alternative's index is its ValueType except for kString and beyond
/// (see Value::ScalarType).
using Scalar = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool,
                            std::string, uint64_t, int64_t, double>;

/// The ValueType of a scalar alternative.
ValueType ScalarType(const Scalar& s);

/// A metadata value: a scalar, or an array of scalars of one type (arrays of arrays, which the
/// format allows but llama.cpp never writes, are refused by the reader and cannot be built).
struct Value {
  Scalar scalar;  // when !is_array
  bool is_array = false;
  ValueType elem_type = ValueType::kU8;  // when is_array
  std::vector<Scalar> items;             // when is_array; every item of elem_type

  Value() = default;
  /// A scalar value from anything a Scalar holds: Value(uint32_t{2}), Value(std::string("x")).
  template <typename T>
  requires(std::is_constructible_v<Scalar, T> && !std::is_same_v<std::decay_t<T>, Value>)
      Value(T&& v)
      : scalar(std::forward<T>(v)) {}  // NOLINT: implicit, as a variant is
  /// An array of `elem` values; throws OptionError when an item has another type.
  static Value Array(ValueType elem, std::vector<Scalar> items);

  ValueType type() const { return is_array ? ValueType::kArray : ScalarType(scalar); }
  /// The value as an integer when it is an integer scalar of any width (or bool).
  std::optional<int64_t> AsInt() const;
  /// The value as a double when it is a numeric scalar.
  std::optional<double> AsFloat() const;
  /// The string when it is a string scalar, else nullptr.
  const std::string* AsString() const;
};

/// A tensor as the header describes it.
struct TensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  // ne[0] = row length
  ggml::Type type = ggml::Type::kF32;
  uint64_t offset = 0;  // relative to the data section
  uint64_t nbytes = 0;  // rows * RowBytes(type, ne[0])

  uint64_t numel() const;
};

/// A parsed and fully validated header.
struct Header {
  uint32_t version = kVersion;
  std::vector<std::pair<std::string, Value>> kv;  // in file order
  std::vector<TensorInfo> tensors;                // in file order
  uint32_t alignment = kDefaultAlignment;
  uint64_t data_offset = 0;  // where the data section starts in the file

  /// The value of `key`, or nullptr.
  const Value* Find(std::string_view key) const;
  /// The tensor named `name`, or nullptr.
  const TensorInfo* FindTensor(std::string_view name) const;
};

/// Parses and validates a whole GGUF image held in memory; `label` names it in errors. Checks:
/// magic and version (2 or 3), every count, length and offset against the bytes left (no
/// allocation before the check, no overflow), known value and tensor types, no nested arrays,
/// unique keys and tensor names, `general.alignment` a u32 power of two, 1-4 dimensions whose
/// product does not overflow, rows a whole number of blocks, offsets aligned, inside the data
/// section and not overlapping. Throws FormatError naming the file and the key or tensor.
Header Parse(std::span<const std::byte> file, std::string_view label);

/// A memory-mapped GGUF file; tensor data is read straight from the map.
class File {
 public:
  explicit File(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return map_.path(); }
  const Header& header() const { return header_; }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  /// The bytes of `t`, which must belong to this file.
  std::span<const std::byte> Data(const TensorInfo& t) const {
    return map_.bytes().subspan(header_.data_offset + t.offset, t.nbytes);
  }
  /// Decodes tensor `t` (any type) into `out` (t.numel() values).
  void Dequantize(const TensorInfo& t, std::span<float> out) const;

 private:
  MappedFile map_;
  Header header_;
};

/// Name, shape and type of a tensor to write.
struct TensorSpec {
  std::string name;
  std::vector<uint64_t> ne;  // ne[0] = row length, a multiple of the type's block size
  ggml::Type type = ggml::Type::kF32;

  uint64_t nbytes() const;
};

/// Streams a GGUF v3 file: the header (metadata and tensor infos, whose offsets follow from the
/// specs) is written at once, then each tensor's bytes through Write() in the order given, each
/// padded to the alignment (`general.alignment` in `kv` when present, else 32). Nothing but the
/// current buffer is held. Output goes to a temporary sibling of `path`, renamed onto it by
/// Commit(); a writer destroyed before Commit() removes its temporary file.
///
///   gguf::Writer w("out.gguf", {{"general.architecture", std::string("llama")}},
///                  {{"w", {4, 2}, ggml::Type::kF32}});
///   w.Write(std::as_bytes(std::span(values)));
///   w.Commit();
class Writer {
 public:
  Writer(const std::filesystem::path& path, std::vector<std::pair<std::string, Value>> kv,
         std::vector<TensorSpec> tensors);
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;
  ~Writer();

  /// Appends bytes to the tensor being written, moving to the next one when it is complete.
  /// Writing more than the specs announced throws OptionError.
  void Write(std::span<const std::byte> bytes);
  /// The tensor the next Write() goes to (index into the specs), or the count when done.
  size_t current_tensor() const { return current_; }
  /// Flushes, checks that every tensor was written completely, and renames into place.
  void Commit();

  /// The header bytes (through the padding before the data section) for these specs.
  static std::string EncodeHeader(const std::vector<std::pair<std::string, Value>>& kv,
                                  const std::vector<TensorSpec>& tensors);

 private:
  static constexpr size_t kBufferBytes = size_t{8} << 20;

  void Put(const void* data, size_t n);
  void Flush();

  std::filesystem::path path_;
  std::filesystem::path tmp_path_;
  int fd_ = -1;
  std::vector<TensorSpec> tensors_;
  uint32_t alignment_ = kDefaultAlignment;
  size_t current_ = 0;
  uint64_t written_in_tensor_ = 0;
  std::vector<std::byte> buffer_;
  bool committed_ = false;
};

/// The alignment a key-value list asks for: `general.alignment` when present (a u32 power of
/// two, else OptionError), 32 otherwise.
uint32_t AlignmentOf(const std::vector<std::pair<std::string, Value>>& kv);

}  // namespace qtool::gguf
