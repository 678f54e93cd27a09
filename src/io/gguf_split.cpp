#include "qtool/io/gguf_split.hpp"

#include <fmt/format.h>

#include <regex>

#include "qtool/core/error.hpp"

namespace qtool::gguf {

namespace fs = std::filesystem;

namespace {

constexpr const char* kSplitNo = "split.no";
constexpr const char* kSplitCount = "split.count";
constexpr const char* kSplitTensors = "split.tensors.count";
constexpr int kMaxSplits = 65535;  // split.count is a u16

uint64_t Padded(uint64_t n, uint64_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
}

int64_t SplitKey(const Header& h, const char* key, const fs::path& path) {
  const Value* v = h.Find(key);
  QTOOL_CHECK(v != nullptr && v->AsInt().has_value(), FormatError,
              "{}: a file of a split model without the integer key {}", path.string(), key);
  return *v->AsInt();
}

}  // namespace

fs::path SplitPath(const fs::path& path, int index, int count) {
  std::string prefix = path.string();
  if (prefix.ends_with(".gguf")) prefix.resize(prefix.size() - 5);
  return fmt::format("{}-{:05d}-of-{:05d}.gguf", prefix, index + 1, count);
}

SplitFile::SplitFile(const fs::path& path) {
  files_.push_back(std::make_unique<File>(path));
  const Value* count_v = files_.front()->header().Find(kSplitCount);
  int64_t count = 1;
  if (count_v != nullptr) {
    QTOOL_CHECK(
        count_v->AsInt().has_value() && *count_v->AsInt() >= 1 && *count_v->AsInt() <= kMaxSplits,
        FormatError, "{}: {} is not a count of files (1 to {})", path.string(), kSplitCount,
        kMaxSplits);
    count = *count_v->AsInt();
  }
  if (count > 1) {
    // Opened from any file of the split: its name gives the prefix, split.no which one it is.
    static const std::regex kName(R"((.*)-(\d{5})-of-(\d{5})\.gguf)");
    std::smatch m;
    const std::string name = path.string();
    QTOOL_CHECK(std::regex_match(name, m, kName) && std::stoll(m[3].str()) == count, FormatError,
                "{}: {} is {} but the name is not PREFIX-NNNNN-of-{:05d}.gguf", name, kSplitCount,
                count, count);
    const int64_t no = SplitKey(files_.front()->header(), kSplitNo, path);
    QTOOL_CHECK(no == std::stoll(m[2].str()) - 1, FormatError,
                "{}: {} is {}, not the file's number in its name minus one", name, kSplitNo, no);
    std::vector<std::unique_ptr<File>> files(static_cast<size_t>(count));
    files[static_cast<size_t>(no)] = std::move(files_.front());
    for (int64_t i = 0; i < count; ++i) {
      if (files[static_cast<size_t>(i)]) continue;
      const fs::path p = SplitPath(m[1].str(), static_cast<int>(i), static_cast<int>(count));
      QTOOL_CHECK(fs::exists(p), IoError, "{}: file {} of the split is missing: {}", name, i + 1,
                  p.string());
      files[static_cast<size_t>(i)] = std::make_unique<File>(p);
    }
    files_ = std::move(files);
  }
  header_ = files_.front()->header();
  header_.tensors.clear();
  int64_t total = -1;
  for (size_t i = 0; i < files_.size(); ++i) {
    const Header& h = files_[i]->header();
    const fs::path& p = files_[i]->path();
    if (count > 1) {
      QTOOL_CHECK(SplitKey(h, kSplitNo, p) == static_cast<int64_t>(i), FormatError,
                  "{}: {} is {}, expected {}", p.string(), kSplitNo, SplitKey(h, kSplitNo, p), i);
      QTOOL_CHECK(SplitKey(h, kSplitCount, p) == count, FormatError, "{}: {} is {}, expected {}",
                  p.string(), kSplitCount, SplitKey(h, kSplitCount, p), count);
      const int64_t n = SplitKey(h, kSplitTensors, p);
      QTOOL_CHECK(total < 0 || n == total, FormatError, "{}: {} is {}, the first file says {}",
                  p.string(), kSplitTensors, n, total);
      total = n;
    }
    for (const TensorInfo& t : h.tensors) {
      QTOOL_CHECK(split_of_.emplace(t.name, i).second, FormatError,
                  "{}: tensor '{}' is also in another file of the split", p.string(), t.name);
      header_.tensors.push_back(t);
    }
  }
  QTOOL_CHECK(total < 0 || static_cast<size_t>(total) == header_.tensors.size(), FormatError,
              "{}: {} is {}, but the {} files hold {} tensors", path.string(), kSplitTensors, total,
              files_.size(), header_.tensors.size());
}

size_t SplitFile::SplitOf(const TensorInfo& t) const {
  const auto it = split_of_.find(t.name);
  QTOOL_CHECK(it != split_of_.end(), OptionError, "{}: no tensor '{}'", path().string(), t.name);
  return it->second;
}

void SplitFile::Dequantize(const TensorInfo& t, std::span<float> out) const {
  files_[SplitOf(t)]->Dequantize(t, out);
}

SplitWriter::SplitWriter(const fs::path& path, std::vector<std::pair<std::string, Value>> kv,
                         std::vector<TensorSpec> tensors, uint64_t max_split_bytes, bool overwrite)
    : kv_(std::move(kv)), tensors_(std::move(tensors)), split_(max_split_bytes > 0) {
  uint64_t alignment = kDefaultAlignment;
  for (const auto& [key, v] : kv_) {
    if (key == "general.alignment" && v.AsInt()) alignment = static_cast<uint64_t>(*v.AsInt());
  }
  first_.push_back(0);
  bytes_.push_back(0);
  uint64_t in_file = 0;  // padded, as gguf-split counts
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const uint64_t n = tensors_[i].nbytes();
    const uint64_t padded = Padded(n, alignment);
    if (split_ && i > 0 && in_file + padded > max_split_bytes) {
      first_.push_back(i);
      bytes_.push_back(0);
      in_file = 0;
    }
    in_file += padded;
    bytes_.back() += n;
  }
  first_.push_back(tensors_.size());
  const size_t count = bytes_.size();
  QTOOL_CHECK(count <= static_cast<size_t>(kMaxSplits), OptionError,
              "{}: {} files of at most {} bytes each; a split has at most {}", path.string(), count,
              max_split_bytes, kMaxSplits);
  for (size_t i = 0; i < count; ++i) {
    paths_.push_back(split_ ? SplitPath(path, static_cast<int>(i), static_cast<int>(count)) : path);
    QTOOL_CHECK(overwrite || !fs::exists(paths_.back()), OutputExistsError,
                "{} exists (use --force to replace it)", paths_.back().string());
  }
  Open(0);
}

SplitWriter::~SplitWriter() = default;  // each Writer removes its temporary file

void SplitWriter::Open(size_t split) {
  std::vector<std::pair<std::string, Value>> kv;
  if (split == 0) kv = kv_;
  if (split_) {
    // After the model's metadata, as llama-gguf-split appends them.
    kv.emplace_back(kSplitNo, static_cast<uint16_t>(split));
    kv.emplace_back(kSplitCount, static_cast<uint16_t>(bytes_.size()));
    kv.emplace_back(kSplitTensors, static_cast<int32_t>(tensors_.size()));
    if (split > 0) {  // the alignment of the data sections stays the model's
      for (const auto& e : kv_) {
        if (e.first == "general.alignment") kv.push_back(e);
      }
    }
  }
  std::vector<TensorSpec> specs(tensors_.begin() + static_cast<std::ptrdiff_t>(first_[split]),
                                tensors_.begin() + static_cast<std::ptrdiff_t>(first_[split + 1]));
  writers_.push_back(std::make_unique<Writer>(paths_[split], std::move(kv), std::move(specs)));
  current_ = split;
  written_ = 0;
}

void SplitWriter::Write(std::span<const std::byte> bytes) {
  while (!bytes.empty()) {
    if (written_ == bytes_[current_]) {
      QTOOL_CHECK(current_ + 1 < bytes_.size(), OptionError,
                  "{}: more bytes written than the tensors hold", paths_.back().string());
      Open(current_ + 1);
      continue;
    }
    const uint64_t take = std::min<uint64_t>(bytes.size(), bytes_[current_] - written_);
    writers_.back()->Write(bytes.first(take));
    written_ += take;
    bytes = bytes.subspan(take);
  }
}

void SplitWriter::Commit() {
  // Files whose tensors are all empty are opened here.
  while (writers_.size() < bytes_.size()) Open(writers_.size());
  for (auto& w : writers_) w->Commit();
}

}  // namespace qtool::gguf
