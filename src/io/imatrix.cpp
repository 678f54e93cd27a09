#include "qtool/io/imatrix.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <span>
#include <string_view>

#include "qtool/core/error.hpp"
#include "qtool/core/mapped_file.hpp"
#include "qtool/io/gguf.hpp"
#include "qtool/io/temp_path.hpp"

namespace qtool::imatrix {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kSums = ".in_sum2";
constexpr std::string_view kCounts = ".counts";

void CheckValues(std::span<const float> v, const fs::path& path, const std::string& what) {
  for (size_t i = 0; i < v.size(); ++i) {
    QTOOL_CHECK(std::isfinite(v[i]) && v[i] >= 0, NumericError,
                "{}: {}: value {} at index {} (must be finite and non-negative)", path.string(),
                what, v[i], i);
  }
}

uint32_t U32Key(const gguf::Header& h, const char* key, const fs::path& path) {
  const gguf::Value* v = h.Find(key);
  QTOOL_CHECK(v != nullptr, FormatError, "{}: missing key {}", path.string(), key);
  QTOOL_CHECK(!v->is_array && v->type() == gguf::ValueType::kU32, FormatError,
              "{}: key {} is a {}, expected u32", path.string(), key,
              gguf::ValueTypeName(v->type()));
  return std::get<uint32_t>(v->scalar);
}

Matrix ReadGguf(const fs::path& path) {
  const gguf::File f(path);
  const gguf::Header& h = f.header();
  Matrix m;
  if (const gguf::Value* t = h.Find("general.type")) {
    QTOOL_CHECK(t->AsString() != nullptr && *t->AsString() == "imatrix", FormatError,
                "{}: general.type is not \"imatrix\": not an importance matrix", path.string());
  }
  const gguf::Value* ds = h.Find("imatrix.datasets");
  QTOOL_CHECK(ds != nullptr, FormatError, "{}: missing key imatrix.datasets", path.string());
  QTOOL_CHECK(ds->is_array && ds->elem_type == gguf::ValueType::kString, FormatError,
              "{}: key imatrix.datasets is not an array of strings", path.string());
  for (const gguf::Scalar& s : ds->items) m.datasets.push_back(std::get<std::string>(s));
  m.chunk_count = U32Key(h, "imatrix.chunk_count", path);
  m.chunk_size = U32Key(h, "imatrix.chunk_size", path);

  for (const gguf::TensorInfo& t : h.tensors) {
    const bool is_sums = t.name.ends_with(kSums);
    const bool is_counts = t.name.ends_with(kCounts);
    QTOOL_CHECK(is_sums || is_counts, FormatError,
                "{}: tensor '{}' is neither NAME.in_sum2 nor NAME.counts", path.string(), t.name);
    QTOOL_CHECK(t.type == ggml::Type::kF32, FormatError, "{}: tensor '{}' is {}, expected F32",
                path.string(), t.name, ggml::Traits(t.type).name);
    QTOOL_CHECK(t.ne.size() <= 2, ShapeError, "{}: tensor '{}' has {} dimensions, expected 2",
                path.string(), t.name, t.ne.size());
    const std::string name =
        t.name.substr(0, t.name.size() - (is_sums ? kSums.size() : kCounts.size()));
    QTOOL_CHECK(!name.empty(), FormatError, "{}: tensor '{}' has an empty weight name",
                path.string(), t.name);
    const uint64_t ne0 = t.ne[0];
    const uint64_t ne1 = t.ne.size() > 1 ? t.ne[1] : 1;
    std::vector<float> values(t.numel());
    f.Dequantize(t, values);
    CheckValues(values, path, fmt::format("tensor '{}'", t.name));
    Entry& e = m.entries[name];
    if (is_sums) {
      QTOOL_CHECK(ne0 > 0 && ne1 > 0, ShapeError, "{}: tensor '{}' is empty", path.string(),
                  t.name);
      e.ncols = static_cast<int64_t>(ne0);
      e.in_sum2 = std::move(values);
    } else {
      QTOOL_CHECK(ne0 == 1 && ne1 > 0, ShapeError,
                  "{}: tensor '{}' has shape [{}, {}], expected [1, nmat]", path.string(), t.name,
                  ne0, ne1);
      e.counts = std::move(values);
    }
  }
  QTOOL_CHECK(!m.entries.empty(), FormatError, "{}: no importance data (no tensors)",
              path.string());
  for (auto& [name, e] : m.entries) {
    QTOOL_CHECK(!e.in_sum2.empty(), FormatError, "{}: {}{} has no {}{}", path.string(), name,
                kCounts, name, kSums);
    QTOOL_CHECK(!e.counts.empty(), FormatError, "{}: {}{} has no {}{}", path.string(), name, kSums,
                name, kCounts);
    e.nmat = static_cast<int64_t>(e.counts.size());
    QTOOL_CHECK(e.in_sum2.size() == static_cast<size_t>(e.ncols * e.nmat), ShapeError,
                "{}: {}{} holds {} matrices, {}{} {}", path.string(), name, kSums,
                e.in_sum2.size() / static_cast<size_t>(e.ncols), name, kCounts, e.nmat);
  }
  return m;
}

// Reads the legacy .dat format from the bytes of the whole file.
Matrix ReadDat(const fs::path& path) {
  const MappedFile map(path);
  const std::span<const std::byte> b = map.bytes();
  size_t pos = 0;
  auto i32 = [&](const char* what) {
    QTOOL_CHECK(b.size() - pos >= 4, FormatError, "{}: truncated at byte {} (reading {})",
                path.string(), pos, what);
    int32_t v;
    std::memcpy(&v, b.data() + pos, 4);
    pos += 4;
    return v;
  };
  auto text = [&](int32_t len, const char* what) {
    QTOOL_CHECK(len >= 0 && static_cast<uint64_t>(len) <= b.size() - pos, FormatError,
                "{}: {} of {} bytes at byte {} runs past the end of the file", path.string(), what,
                len, pos);
    std::string s(reinterpret_cast<const char*>(b.data() + pos), static_cast<size_t>(len));
    pos += static_cast<size_t>(len);
    return s;
  };
  Matrix m;
  m.legacy = true;
  const int32_t n = i32("the entry count");
  QTOOL_CHECK(n >= 1, FormatError, "{}: {} entries: not an importance matrix", path.string(), n);
  for (int32_t i = 0; i < n; ++i) {
    const std::string name = text(i32("a name length"), "a tensor name");
    QTOOL_CHECK(!name.empty(), FormatError, "{}: entry {} has an empty name", path.string(), i);
    const int32_t ncall = i32("ncall");
    const int32_t nval = i32("nval");
    QTOOL_CHECK(ncall >= 0, FormatError, "{}: entry '{}' has ncall {}", path.string(), name, ncall);
    QTOOL_CHECK(nval >= 1, FormatError, "{}: entry '{}' has {} values", path.string(), name, nval);
    QTOOL_CHECK(static_cast<uint64_t>(nval) * 4 <= b.size() - pos, FormatError,
                "{}: entry '{}': {} values at byte {} run past the end of the file", path.string(),
                name, nval, pos);
    QTOOL_CHECK(!m.entries.contains(name), FormatError, "{}: entry '{}' appears twice",
                path.string(), name);
    Entry& e = m.entries[name];
    e.ncols = nval;
    e.in_sum2.resize(static_cast<size_t>(nval));
    std::memcpy(e.in_sum2.data(), b.data() + pos, static_cast<size_t>(nval) * 4);
    pos += static_cast<size_t>(nval) * 4;
    CheckValues(e.in_sum2, path, fmt::format("entry '{}'", name));
    e.counts = {static_cast<float>(ncall)};
  }
  if (pos < b.size()) {  // optional: chunk count and the dataset's name
    m.chunk_count = static_cast<uint32_t>(std::max(0, i32("the chunk count")));
    if (pos < b.size()) {
      const std::string ds = text(i32("the dataset name length"), "the dataset name");
      if (!ds.empty()) m.datasets.push_back(ds);
    }
    QTOOL_CHECK(pos == b.size(), FormatError, "{}: {} unexpected bytes after byte {}",
                path.string(), b.size() - pos, pos);
  }
  return m;
}

}  // namespace

std::vector<float> Entry::Importance() const {
  std::vector<float> out(in_sum2.size());
  const size_t n = static_cast<size_t>(ncols);
  for (size_t m = 0; m < counts.size(); ++m) {
    const float c = counts[m];
    for (size_t j = 0; j < n; ++j) {
      out[m * n + j] = c > 0 ? in_sum2[m * n + j] / c : 1.0f;
    }
  }
  return out;
}

Matrix Read(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  QTOOL_CHECK(f.good(), IoError, "{}: cannot open", path.string());
  char magic[4] = {};
  const bool gguf = f.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
  return gguf ? ReadGguf(path) : ReadDat(path);
}

void WriteGguf(const Matrix& m, const fs::path& path) {
  std::vector<std::pair<std::string, gguf::Value>> kv;
  kv.emplace_back("general.type", std::string("imatrix"));
  std::vector<gguf::Scalar> ds(m.datasets.begin(), m.datasets.end());
  kv.emplace_back("imatrix.datasets", gguf::Value::Array(gguf::ValueType::kString, std::move(ds)));
  kv.emplace_back("imatrix.chunk_count", m.chunk_count);
  kv.emplace_back("imatrix.chunk_size", m.chunk_size);
  std::vector<gguf::TensorSpec> specs;
  for (const auto& [name, e] : m.entries) {
    QTOOL_CHECK(e.ncols > 0 && e.nmat > 0 &&
                    e.in_sum2.size() == static_cast<size_t>(e.ncols * e.nmat) &&
                    e.counts.size() == static_cast<size_t>(e.nmat),
                ShapeError, "importance matrix entry '{}' has inconsistent sizes", name);
    specs.push_back({name + std::string(kSums),
                     {static_cast<uint64_t>(e.ncols), static_cast<uint64_t>(e.nmat)},
                     ggml::Type::kF32});
    specs.push_back(
        {name + std::string(kCounts), {1, static_cast<uint64_t>(e.nmat)}, ggml::Type::kF32});
  }
  gguf::Writer w(path, std::move(kv), std::move(specs));
  for (const auto& [name, e] : m.entries) {
    w.Write(std::as_bytes(std::span(e.in_sum2)));
    w.Write(std::as_bytes(std::span(e.counts)));
  }
  w.Commit();
}

void WriteDat(const Matrix& m, const fs::path& path) {
  std::string out;
  auto put = [&out](const void* p, size_t n) { out.append(static_cast<const char*>(p), n); };
  auto put_i32 = [&put](int64_t v) {
    const auto x = static_cast<int32_t>(v);
    put(&x, 4);
  };
  put_i32(static_cast<int64_t>(m.entries.size()));
  for (const auto& [name, e] : m.entries) {
    QTOOL_CHECK(e.nmat == 1 && e.counts.size() == 1, ShapeError,
                "importance matrix entry '{}' holds {} matrices; the .dat format holds one", name,
                e.nmat);
    put_i32(static_cast<int64_t>(name.size()));
    put(name.data(), name.size());
    // llama.cpp's legacy writer: ncall = the chunks the rows make (at least 1), values = the
    // mean x^2 times ncall.
    const int64_t rows = std::llround(e.counts[0]);
    const int64_t chunk = std::max<int64_t>(1, m.chunk_size);
    const int64_t ncall = m.legacy ? rows : std::max<int64_t>(1, (rows + chunk - 1) / chunk);
    put_i32(ncall);
    put_i32(e.ncols);
    for (const float v : e.Importance()) {
      const float s = v * static_cast<float>(ncall);
      put(&s, 4);
    }
  }
  put_i32(m.chunk_count);
  const std::string ds = m.datasets.empty() ? std::string() : m.datasets.back();
  put_i32(static_cast<int64_t>(ds.size()));
  put(ds.data(), ds.size());
  const fs::path tmp = TempSiblingPath(path);
  RegisterTemp(tmp);
  try {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    QTOOL_CHECK(f.good(), IoError, "{}: cannot create", tmp.string());
    f.write(out.data(), static_cast<std::streamsize>(out.size()));
    f.close();
    QTOOL_CHECK(f.good(), IoError, "{}: write failed", tmp.string());
    fs::rename(tmp, path);
  } catch (...) {
    RemoveTemp(tmp);
    throw;
  }
  UnregisterTemp(tmp);
}

}  // namespace qtool::imatrix
