#include "qtool/io/gguf.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <string_view>
#include <unordered_set>

#include "qtool/core/error.hpp"
#include "qtool/format/ggml_quants.hpp"
#include "qtool/io/temp_path.hpp"

namespace qtool::gguf {

namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};

// Bytes of a fixed-size scalar type; 0 for strings and arrays.
size_t FixedSize(ValueType t) {
  switch (t) {
    case ValueType::kU8:
    case ValueType::kI8:
    case ValueType::kBool:
      return 1;
    case ValueType::kU16:
    case ValueType::kI16:
      return 2;
    case ValueType::kU32:
    case ValueType::kI32:
    case ValueType::kF32:
      return 4;
    case ValueType::kU64:
    case ValueType::kI64:
    case ValueType::kF64:
      return 8;
    case ValueType::kString:
    case ValueType::kArray:
      return 0;
  }
  return 0;
}

bool KnownValueType(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::kF64); }

// A bounds-checked cursor over the file image; every failure names the file and what was read.
class Cursor {
 public:
  Cursor(std::span<const std::byte> file, std::string_view label) : file_(file), label_(label) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return file_.size() - pos_; }
  const std::string& label() const { return label_; }

  const std::byte* Take(uint64_t n, std::string_view what) {
    QTOOL_CHECK(n <= left(), FormatError, "{}: truncated at byte {}: {} needs {} bytes, {} left",
                label_, pos_, what, n, left());
    const std::byte* p = file_.data() + pos_;
    pos_ += n;
    return p;
  }
  template <typename T>
  T Read(std::string_view what) {
    T v;
    std::memcpy(&v, Take(sizeof(T), what), sizeof(T));
    return v;
  }
  std::string String(std::string_view what) {
    const auto n = Read<uint64_t>(what);
    const std::byte* p = Take(n, what);
    return std::string(reinterpret_cast<const char*>(p), n);
  }

 private:
  std::span<const std::byte> file_;
  std::string label_;
  uint64_t pos_ = 0;
};

Scalar ReadScalar(Cursor& c, ValueType t, const std::string& key) {
  const std::string what = fmt::format("value of key '{}'", key);
  switch (t) {
    case ValueType::kU8:
      return c.Read<uint8_t>(what);
    case ValueType::kI8:
      return c.Read<int8_t>(what);
    case ValueType::kU16:
      return c.Read<uint16_t>(what);
    case ValueType::kI16:
      return c.Read<int16_t>(what);
    case ValueType::kU32:
      return c.Read<uint32_t>(what);
    case ValueType::kI32:
      return c.Read<int32_t>(what);
    case ValueType::kF32:
      return c.Read<float>(what);
    case ValueType::kBool: {
      const auto b = c.Read<uint8_t>(what);
      QTOOL_CHECK(b <= 1, FormatError, "{}: key '{}': bool value {} is neither 0 nor 1", c.label(),
                  key, b);
      return b == 1;
    }
    case ValueType::kString:
      return c.String(what);
    case ValueType::kU64:
      return c.Read<uint64_t>(what);
    case ValueType::kI64:
      return c.Read<int64_t>(what);
    case ValueType::kF64:
      return c.Read<double>(what);
    case ValueType::kArray:
      break;
  }
  throw FormatError(fmt::format("{}: key '{}': nested arrays are not supported", c.label(), key));
}

Value ReadValue(Cursor& c, const std::string& key) {
  const auto raw = c.Read<uint32_t>(fmt::format("type of key '{}'", key));
  QTOOL_CHECK(KnownValueType(raw), FormatError, "{}: key '{}': unknown value type {}", c.label(),
              key, raw);
  const auto type = static_cast<ValueType>(raw);
  if (type != ValueType::kArray) return Value(ReadScalar(c, type, key));
  const auto elem_raw = c.Read<uint32_t>(fmt::format("array type of key '{}'", key));
  QTOOL_CHECK(KnownValueType(elem_raw), FormatError, "{}: key '{}': unknown array element type {}",
              c.label(), key, elem_raw);
  const auto elem = static_cast<ValueType>(elem_raw);
  QTOOL_CHECK(elem != ValueType::kArray, FormatError,
              "{}: key '{}': nested arrays are not supported", c.label(), key);
  const auto count = c.Read<uint64_t>(fmt::format("length of array '{}'", key));
  // Each element takes at least its fixed size (a string at least its 8-byte length), so the
  // count is checked against the bytes left before anything is reserved.
  const uint64_t min_size = elem == ValueType::kString ? 8 : FixedSize(elem);
  QTOOL_CHECK(count <= c.left() / min_size, FormatError,
              "{}: key '{}': array of {} {} values does not fit in the {} bytes left", c.label(),
              key, count, ValueTypeName(elem), c.left());
  Value v;
  v.is_array = true;
  v.elem_type = elem;
  v.items.reserve(count);
  for (uint64_t i = 0; i < count; ++i) v.items.push_back(ReadScalar(c, elem, key));
  return v;
}

void PutScalar(std::string& out, const Scalar& s) {
  std::visit(
      [&out](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) {
          const uint64_t n = v.size();
          out.append(reinterpret_cast<const char*>(&n), 8);
          out.append(v);
        } else if constexpr (std::is_same_v<T, bool>) {
          out.push_back(v ? 1 : 0);
        } else {
          out.append(reinterpret_cast<const char*>(&v), sizeof(T));
        }
      },
      s);
}

template <typename T>
void PutPod(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

uint64_t AlignUp(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace

std::string_view ValueTypeName(ValueType t) {
  static constexpr std::string_view kNames[] = {"u8",  "i8",  "u16",  "i16",    "u32",
                                                "i32", "f32", "bool", "string", "array",
                                                "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(t);
  return i < std::size(kNames) ? kNames[i] : "unknown";
}

ValueType ScalarType(const Scalar& s) {
  static constexpr ValueType kTypes[] = {ValueType::kU8,  ValueType::kI8,   ValueType::kU16,
                                         ValueType::kI16, ValueType::kU32,  ValueType::kI32,
                                         ValueType::kF32, ValueType::kBool, ValueType::kString,
                                         ValueType::kU64, ValueType::kI64,  ValueType::kF64};
  return kTypes[s.index()];
}

Value Value::Array(ValueType elem, std::vector<Scalar> items) {
  QTOOL_CHECK(elem != ValueType::kArray, OptionError, "GGUF arrays of arrays are not supported");
  for (const Scalar& s : items) {
    QTOOL_CHECK(ScalarType(s) == elem, OptionError, "GGUF array of {} holds a {} value",
                ValueTypeName(elem), ValueTypeName(ScalarType(s)));
  }
  Value v;
  v.is_array = true;
  v.elem_type = elem;
  v.items = std::move(items);
  return v;
}

std::optional<int64_t> Value::AsInt() const {
  if (is_array) return std::nullopt;
  return std::visit(
      [](const auto& v) -> std::optional<int64_t> {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_integral_v<T>) {
          if constexpr (std::is_same_v<T, uint64_t>) {
            if (v > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
          }
          return static_cast<int64_t>(v);
        } else {
          return std::nullopt;
        }
      },
      scalar);
}

std::optional<double> Value::AsFloat() const {
  if (is_array) return std::nullopt;
  return std::visit(
      [](const auto& v) -> std::optional<double> {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_arithmetic_v<T>) {
          return static_cast<double>(v);
        } else {
          return std::nullopt;
        }
      },
      scalar);
}

const std::string* Value::AsString() const {
  return is_array ? nullptr : std::get_if<std::string>(&scalar);
}

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (uint64_t d : ne) n *= d;
  return n;
}

const Value* Header::Find(std::string_view key) const {
  for (const auto& [k, v] : kv) {
    if (k == key) return &v;
  }
  return nullptr;
}

const TensorInfo* Header::FindTensor(std::string_view name) const {
  for (const TensorInfo& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

Header Parse(std::span<const std::byte> file, std::string_view label) {
  Cursor c(file, label);
  Header h;
  const std::byte* magic = c.Take(4, "magic");
  QTOOL_CHECK(std::memcmp(magic, kMagic, 4) == 0, FormatError,
              "{}: not a GGUF file (the first four bytes are not \"GGUF\")", label);
  h.version = c.Read<uint32_t>("version");
  QTOOL_CHECK(h.version != 0x03000000u && h.version != 0x02000000u, FormatError,
              "{}: big-endian GGUF files are not supported", label);
  QTOOL_CHECK(h.version == 2 || h.version == 3, FormatError,
              "{}: GGUF version {} is not supported (2 and 3 are)", label, h.version);
  const auto n_tensors = c.Read<uint64_t>("tensor count");
  const auto n_kv = c.Read<uint64_t>("key-value count");
  // A key-value pair takes at least 8 + 4 + 1 bytes, a tensor info 8 + 4 + 4 + 8.
  QTOOL_CHECK(n_kv <= c.left() / 13, FormatError,
              "{}: {} key-value pairs cannot fit in the {} bytes left", label, n_kv, c.left());
  h.kv.reserve(n_kv);
  std::unordered_set<std::string> keys;
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.String(fmt::format("key {}", i));
    QTOOL_CHECK(keys.insert(key).second, FormatError, "{}: key '{}' appears twice", label, key);
    Value v = ReadValue(c, key);
    if (key == "general.alignment") {
      const auto* a = std::get_if<uint32_t>(&v.scalar);
      QTOOL_CHECK(!v.is_array && a != nullptr && *a != 0 && (*a & (*a - 1)) == 0, FormatError,
                  "{}: general.alignment must be a u32 power of two", label);
      h.alignment = *a;
    }
    h.kv.emplace_back(std::move(key), std::move(v));
  }
  QTOOL_CHECK(n_tensors <= c.left() / 24, FormatError,
              "{}: {} tensor infos cannot fit in the {} bytes left", label, n_tensors, c.left());
  h.tensors.reserve(n_tensors);
  std::unordered_set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    t.name = c.String(fmt::format("name of tensor {}", i));
    QTOOL_CHECK(names.insert(t.name).second, FormatError, "{}: tensor '{}' appears twice", label,
                t.name);
    const auto n_dims = c.Read<uint32_t>(fmt::format("dimensions of tensor '{}'", t.name));
    QTOOL_CHECK(n_dims >= 1 && n_dims <= kMaxDims, FormatError,
                "{}: tensor '{}' has {} dimensions (1 to {} allowed)", label, t.name, n_dims,
                kMaxDims);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const auto ne = c.Read<uint64_t>(fmt::format("shape of tensor '{}'", t.name));
      QTOOL_CHECK(ne <= static_cast<uint64_t>(INT64_MAX) && (ne == 0 || numel <= INT64_MAX / ne),
                  FormatError, "{}: tensor '{}': the element count overflows", label, t.name);
      numel *= ne;
      t.ne.push_back(ne);
    }
    const auto type = c.Read<uint32_t>(fmt::format("type of tensor '{}'", t.name));
    const ggml::TypeTraits* traits = ggml::FindType(type);
    QTOOL_CHECK(traits != nullptr, FormatError, "{}: tensor '{}' has unsupported ggml type {}",
                label, t.name, type);
    t.type = traits->type;
    QTOOL_CHECK(t.ne[0] % static_cast<uint64_t>(traits->block_size) == 0, FormatError,
                "{}: tensor '{}': row length {} is not a multiple of the {} block size {}", label,
                t.name, t.ne[0], traits->name, traits->block_size);
    // numel < 2^63, type_size <= 210 and block_size >= 1: rows * row bytes stays below 2^71 /
    // block_size only when checked; divide first, the row length being a whole number of blocks.
    const uint64_t blocks = numel / static_cast<uint64_t>(traits->block_size);
    QTOOL_CHECK(blocks <= UINT64_MAX / static_cast<uint64_t>(traits->type_size), FormatError,
                "{}: tensor '{}': the byte size overflows", label, t.name);
    t.nbytes = blocks * static_cast<uint64_t>(traits->type_size);
    t.offset = c.Read<uint64_t>(fmt::format("offset of tensor '{}'", t.name));
    h.tensors.push_back(std::move(t));
  }
  h.data_offset = AlignUp(c.pos(), h.alignment);
  QTOOL_CHECK(h.data_offset <= file.size(), FormatError,
              "{}: the data section would start at byte {}, past the end of the file ({} bytes)",
              label, h.data_offset, file.size());
  const uint64_t data_size = file.size() - h.data_offset;
  std::vector<const TensorInfo*> by_offset;
  by_offset.reserve(h.tensors.size());
  for (const TensorInfo& t : h.tensors) {
    QTOOL_CHECK(t.offset % h.alignment == 0, FormatError,
                "{}: tensor '{}': offset {} is not a multiple of the alignment {}", label, t.name,
                t.offset, h.alignment);
    QTOOL_CHECK(t.offset <= data_size && t.nbytes <= data_size - t.offset, FormatError,
                "{}: tensor '{}': bytes [{}, +{}) lie outside the {}-byte data section", label,
                t.name, t.offset, t.nbytes, data_size);
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& a = *by_offset[i - 1];
    const TensorInfo& b = *by_offset[i];
    QTOOL_CHECK(a.offset + a.nbytes <= b.offset, FormatError, "{}: tensors '{}' and '{}' overlap",
                label, a.name, b.name);
  }
  return h;
}

File::File(const std::filesystem::path& path) : map_(path) {
  header_ = Parse(map_.bytes(), path.string());
}

void File::Dequantize(const TensorInfo& t, std::span<float> out) const {
  QTOOL_CHECK(out.size() == t.numel(), ShapeError, "{}: tensor '{}': {} values, output holds {}",
              path().string(), t.name, t.numel(), out.size());
  ggml::Dequantize(t.type, Data(t).data(), out.data(), static_cast<int64_t>(out.size()));
}

uint64_t TensorSpec::nbytes() const {
  const ggml::TypeTraits& tr = ggml::Traits(type);
  uint64_t numel = 1;
  for (uint64_t d : ne) {
    QTOOL_CHECK(d == 0 || numel <= INT64_MAX / d, ShapeError,
                "tensor '{}': the element count overflows", name);
    numel *= d;
  }
  return numel / static_cast<uint64_t>(tr.block_size) * static_cast<uint64_t>(tr.type_size);
}

uint32_t AlignmentOf(const std::vector<std::pair<std::string, Value>>& kv) {
  for (const auto& [k, v] : kv) {
    if (k != "general.alignment") continue;
    const auto* a = std::get_if<uint32_t>(&v.scalar);
    QTOOL_CHECK(!v.is_array && a != nullptr && *a != 0 && (*a & (*a - 1)) == 0, OptionError,
                "general.alignment must be a u32 power of two");
    return *a;
  }
  return kDefaultAlignment;
}

std::string Writer::EncodeHeader(const std::vector<std::pair<std::string, Value>>& kv,
                                 const std::vector<TensorSpec>& tensors) {
  const uint32_t alignment = AlignmentOf(kv);
  std::string out(kMagic, 4);
  PutPod(out, kVersion);
  PutPod(out, static_cast<uint64_t>(tensors.size()));
  PutPod(out, static_cast<uint64_t>(kv.size()));
  std::set<std::string_view> keys;
  for (const auto& [key, v] : kv) {
    QTOOL_CHECK(keys.insert(key).second, OptionError, "GGUF key '{}' given twice", key);
    PutScalar(out, key);
    PutPod(out, static_cast<uint32_t>(v.type()));
    if (!v.is_array) {
      PutScalar(out, v.scalar);
      continue;
    }
    PutPod(out, static_cast<uint32_t>(v.elem_type));
    PutPod(out, static_cast<uint64_t>(v.items.size()));
    for (const Scalar& s : v.items) PutScalar(out, s);
  }
  std::set<std::string_view> names;
  uint64_t offset = 0;
  for (const TensorSpec& t : tensors) {
    QTOOL_CHECK(names.insert(t.name).second, OptionError, "GGUF tensor '{}' given twice", t.name);
    QTOOL_CHECK(!t.ne.empty() && t.ne.size() <= kMaxDims, ShapeError,
                "tensor '{}': GGUF takes 1 to {} dimensions, not {}", t.name, kMaxDims,
                t.ne.size());
    const ggml::TypeTraits& tr = ggml::Traits(t.type);
    QTOOL_CHECK(t.ne[0] % static_cast<uint64_t>(tr.block_size) == 0, ShapeError,
                "tensor '{}': row length {} is not a multiple of the {} block size {}", t.name,
                t.ne[0], tr.name, tr.block_size);
    PutScalar(out, t.name);
    PutPod(out, static_cast<uint32_t>(t.ne.size()));
    for (uint64_t d : t.ne) PutPod(out, d);
    PutPod(out, static_cast<uint32_t>(t.type));
    PutPod(out, offset);
    offset = AlignUp(offset + t.nbytes(), alignment);
  }
  out.resize(AlignUp(out.size(), alignment), '\0');
  return out;
}

Writer::Writer(const std::filesystem::path& path, std::vector<std::pair<std::string, Value>> kv,
               std::vector<TensorSpec> tensors)
    : path_(path), tmp_path_(TempSiblingPath(path)), tensors_(std::move(tensors)) {
  alignment_ = AlignmentOf(kv);
  const std::string header = EncodeHeader(kv, tensors_);
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  QTOOL_CHECK(fd_ >= 0, IoError, "{}: cannot create: {}", tmp_path_.string(), std::strerror(errno));
  RegisterTemp(tmp_path_);
  buffer_.reserve(kBufferBytes);
  try {
    Put(header.data(), header.size());
  } catch (...) {  // the destructor does not run for a constructor that throws
    ::close(fd_);
    RemoveTemp(tmp_path_);
    throw;
  }
  while (current_ < tensors_.size() && tensors_[current_].nbytes() == 0) ++current_;
}

Writer::~Writer() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) RemoveTemp(tmp_path_);
}

void Writer::Put(const void* data, size_t n) {
  const auto* p = static_cast<const std::byte*>(data);
  while (n > 0) {
    const size_t take = std::min(n, kBufferBytes - buffer_.size());
    buffer_.insert(buffer_.end(), p, p + take);
    p += take;
    n -= take;
    if (buffer_.size() == kBufferBytes) Flush();
  }
}

void Writer::Flush() {
  size_t done = 0;
  while (done < buffer_.size()) {
    const ssize_t w = ::write(fd_, buffer_.data() + done, buffer_.size() - done);
    if (w < 0 && errno == EINTR) continue;
    QTOOL_CHECK(w > 0, IoError, "{}: write failed: {}", tmp_path_.string(),
                w < 0 ? std::strerror(errno) : "no progress");
    done += static_cast<size_t>(w);
  }
  buffer_.clear();
}

void Writer::Write(std::span<const std::byte> bytes) {
  while (!bytes.empty()) {
    QTOOL_CHECK(current_ < tensors_.size(), OptionError,
                "{}: {} bytes written past the last tensor", path_.string(), bytes.size());
    const TensorSpec& t = tensors_[current_];
    const uint64_t need = t.nbytes() - written_in_tensor_;
    const size_t take = static_cast<size_t>(std::min<uint64_t>(need, bytes.size()));
    Put(bytes.data(), take);
    bytes = bytes.subspan(take);
    written_in_tensor_ += take;
    if (written_in_tensor_ == t.nbytes()) {
      // Pad to the alignment so the next tensor starts at the offset the header gave it.
      const uint64_t pad = AlignUp(t.nbytes(), alignment_) - t.nbytes();
      static constexpr std::byte kZeros[256] = {};
      for (uint64_t left = pad; left > 0;) {
        const size_t z = static_cast<size_t>(std::min<uint64_t>(left, sizeof(kZeros)));
        Put(kZeros, z);
        left -= z;
      }
      written_in_tensor_ = 0;
      ++current_;
      while (current_ < tensors_.size() && tensors_[current_].nbytes() == 0) ++current_;
    }
  }
}

void Writer::Commit() {
  QTOOL_CHECK(current_ == tensors_.size(), OptionError,
              "{}: tensor '{}' was not written completely", path_.string(),
              current_ < tensors_.size() ? tensors_[current_].name : "");
  Flush();
  const int fd = fd_;
  fd_ = -1;
  CloseIntoPlace(fd, tmp_path_, path_);
  committed_ = true;
}

}  // namespace qtool::gguf
