#include "qtool/io/checkpoint.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "qtool/core/error.hpp"
#include "qtool/core/input_file.hpp"
#include "qtool/io/temp_path.hpp"

namespace qtool {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

// Whether `path` is `root` or lies below it (both absolute and free of symlinks and "..").
bool IsWithin(const fs::path& path, const fs::path& root) {
  auto p = path.begin();
  for (auto r = root.begin(); r != root.end(); ++r, ++p) {
    if (r->empty() && std::next(r) == root.end()) break;  // a trailing "/"
    if (p == path.end() || *p != *r) return false;
  }
  return true;
}

// `path` with every symlink and ".." resolved (as far as it exists).
fs::path Resolved(const fs::path& path) {
  std::error_code ec;
  fs::path r = fs::weakly_canonical(fs::absolute(path), ec);
  return ec ? fs::absolute(path).lexically_normal() : r;
}

// The directory a model directory's files may resolve into: the directory itself or, in a Hugging
// Face hub cache (REPO/snapshots/REVISION/FILE -> ../../blobs/HASH), the repository's folder.
fs::path AllowedRoot(const fs::path& dir) {
  const fs::path d = Resolved(dir);
  return d.parent_path().filename() == "snapshots" ? d.parent_path().parent_path() : d;
}

// Refuses a file of the model directory that resolves (through symlinks) to outside `root`: it
// would be read, and copied into the output, from somewhere the model does not own.
void CheckInsideModel(const fs::path& file, const fs::path& root) {
  std::error_code ec;
  if (!fs::is_symlink(fs::symlink_status(file, ec))) return;
  const fs::path target = Resolved(file);
  QTOOL_CHECK(IsWithin(target, root), IoError,
              "{}: a symlink to {}, outside the model directory; refusing to read it",
              file.string(), target.string());
}

json ReadModelJson(const fs::path& file, const fs::path& root) {
  CheckInsideModel(file, root);
  return ReadJsonFile(file);
}

// (device, inode) of `path` following symlinks, or nullopt when it cannot be stat'ed.
std::optional<std::pair<dev_t, ino_t>> FileId(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return std::make_pair(st.st_dev, st.st_ino);
}

std::string ShardName(size_t i, size_t n) {
  return fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, n);
}

}  // namespace

std::map<std::string, std::string> ParseShardIndex(std::string_view text,
                                                   const std::string& label) {
  const json index = ParseJsonBounded(text, label);
  const auto wm = index.is_object() ? index.find("weight_map") : index.end();
  QTOOL_CHECK(wm != index.end() && wm->is_object(), FormatError, "{}: no \"weight_map\" object",
              label);
  QTOOL_CHECK(!wm->empty(), FormatError, "{}: \"weight_map\" lists no tensors", label);
  std::map<std::string, std::string> out;
  for (const auto& [tensor, file] : wm->items()) {
    QTOOL_CHECK(file.is_string(), FormatError, "{}: weight_map entry \"{}\" is not a string", label,
                tensor);
    const std::string& f = file.get_ref<const std::string&>();
    QTOOL_CHECK(
        !f.empty() && fs::path(f).filename() == fs::path(f) && f != "." && f != "..", FormatError,
        "{}: weight_map entry \"{}\" names \"{}\", not a file in the directory", label, tensor, f);
    out.emplace(tensor, f);
  }
  return out;
}

Checkpoint Checkpoint::Open(const fs::path& path) {
  Checkpoint ck;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  QTOOL_CHECK(fs::exists(st), IoError, "{}: no such file or directory", path.string());
  std::vector<fs::path> weight_files;
  std::map<std::string, std::string> index_map;
  if (fs::is_directory(st)) {
    ck.dir_ = path;
    ck.is_directory_ = true;
    const fs::path root = AllowedRoot(path);
    const fs::path index_path = path / kIndexFile;
    if (fs::exists(fs::symlink_status(index_path, ec))) {
      CheckInsideModel(index_path, root);
      index_map = ParseShardIndex(ReadRegularFile(index_path), index_path.string());
      ck.source_files_.push_back(index_path);
      std::set<std::string> names;
      for (const auto& [tensor, file] : index_map) {
        if (names.insert(file).second) weight_files.push_back(path / file);
      }
    } else if (fs::exists(path / kSingleFile, ec)) {
      weight_files.push_back(path / kSingleFile);
    } else {
      for (const auto& e : fs::directory_iterator(path)) {
        if (e.is_regular_file(ec) && e.path().extension() == ".safetensors") {
          weight_files.push_back(e.path());
        }
      }
      QTOOL_CHECK(weight_files.size() == 1, FormatError,
                  "{}: expected {} or {} ({} other .safetensors files found)", path.string(),
                  kSingleFile, kIndexFile, weight_files.size());
    }
    for (const auto& e : fs::directory_iterator(path)) {
      const fs::path name = e.path().filename();
      // Only regular files (a FIFO or device is never opened) that are not weights.
      if (!e.is_regular_file(ec) || name.extension() == ".safetensors" || name == kIndexFile ||
          name.string().starts_with(".")) {
        continue;
      }
      CheckInsideModel(e.path(), root);
      ck.other_files_.push_back(e.path());
    }
    std::sort(ck.other_files_.begin(), ck.other_files_.end());
    ck.source_files_.insert(ck.source_files_.end(), ck.other_files_.begin(), ck.other_files_.end());
    if (fs::exists(fs::symlink_status(path / "config.json", ec))) {
      ck.config_ = ReadModelJson(path / "config.json", root);
    }
  } else {
    ck.dir_ = path.parent_path().empty() ? fs::path(".") : path.parent_path();
    weight_files.push_back(path);
  }
  std::sort(weight_files.begin(), weight_files.end());
  ck.source_files_.insert(ck.source_files_.end(), weight_files.begin(), weight_files.end());

  std::map<std::string, CheckpointTensor> by_name;
  for (const fs::path& f : weight_files) {
    ck.files_.push_back(std::make_unique<SafetensorsFile>(f));
    const SafetensorsFile& file = *ck.files_.back();
    for (const TensorInfo& t : file.tensors()) {
      const auto [it, inserted] = by_name.emplace(t.name, CheckpointTensor{&file, &t});
      QTOOL_CHECK(inserted, FormatError, "{}: tensor \"{}\" is also in {}", f.string(), t.name,
                  it->second.file->path().string());
      if (!index_map.empty()) {
        const auto listed = index_map.find(t.name);
        QTOOL_CHECK(listed != index_map.end() && listed->second == f.filename().string(),
                    FormatError, "{}: tensor \"{}\" is not listed for this file in {}", f.string(),
                    t.name, kIndexFile);
      }
    }
  }
  for (const auto& [tensor, file] : index_map) {
    QTOOL_CHECK(by_name.contains(tensor), FormatError,
                "{}: tensor \"{}\" is listed in {} but absent", (ck.dir_ / file).string(), tensor,
                kIndexFile);
  }
  for (auto& [name, t] : by_name) ck.tensors_.push_back(t);
  return ck;
}

const std::map<std::string, std::string>& Checkpoint::metadata() const {
  static const std::map<std::string, std::string> kNone;
  return files_.empty() ? kNone : files_.front()->metadata();
}

void CheckOutputSeparate(const Checkpoint& in, const fs::path& out) {
  const fs::path o = Resolved(out);
  const auto refuse = [&](const fs::path& what) {
    const fs::path w = Resolved(what);
    const char* how = o == w ? "is" : IsWithin(o, w) ? "would lie inside" : "would hold";
    throw OptionError(fmt::format("{}: the output {} the input {}; choose another output",
                                  out.string(), how, what.string()));
  };
  if (in.is_directory()) {
    const fs::path d = Resolved(in.dir());
    if (IsWithin(o, d) || IsWithin(d, o)) refuse(in.dir());
  }
  for (const fs::path& f : in.source_files()) {
    if (IsWithin(Resolved(f), o)) refuse(f);
  }
}

void CheckReportPath(const Checkpoint& in, const fs::path& out, const fs::path& report) {
  const fs::path r = Resolved(report);
  QTOOL_CHECK(out.empty() || !IsWithin(r, Resolved(out)), OptionError,
              "--json {}: the report may not be written inside the output {}", report.string(),
              out.string());
  QTOOL_CHECK(!in.is_directory() || !IsWithin(r, Resolved(in.dir())), OptionError,
              "--json {}: the report may not be written inside the model directory {}",
              report.string(), in.dir().string());
  const auto id = FileId(report);
  for (const fs::path& f : in.source_files()) {
    QTOOL_CHECK(r != Resolved(f) && (!id || id != FileId(f)), OptionError,
                "--json {}: names the input file {}; refusing to overwrite it", report.string(),
                f.string());
  }
  std::error_code ec;
  QTOOL_CHECK(!fs::is_directory(report, ec), OptionError, "--json {}: is a directory",
              report.string());
}

std::shared_ptr<const void> Checkpoint::Derived(
    const std::string& key, const std::function<std::shared_ptr<const void>()>& make) const {
  const std::lock_guard<std::mutex> lock(derived_->mu);
  const auto it = derived_->views.find(key);
  if (it != derived_->views.end() && it->second.first == this) return it->second.second;
  std::shared_ptr<const void> view = make();
  derived_->views[key] = {this, view};
  return view;
}

const CheckpointTensor* Checkpoint::Find(std::string_view name) const {
  const auto it = std::lower_bound(
      tensors_.begin(), tensors_.end(), name,
      [](const CheckpointTensor& t, std::string_view n) { return t.info->name < n; });
  return it != tensors_.end() && it->info->name == name ? &*it : nullptr;
}

const CheckpointTensor& Checkpoint::Get(std::string_view name) const {
  const CheckpointTensor* t = Find(name);
  QTOOL_CHECK(t != nullptr, FormatError, "{}: no tensor \"{}\"", dir_.string(), name);
  return *t;
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t n = 0;
  for (const auto& t : tensors_) n += t.info->nbytes();
  return n;
}

void CheckpointWriter::CheckOutputPath(const fs::path& dir, bool overwrite) {
  std::error_code ec;
  const auto st = fs::symlink_status(dir, ec);
  if (fs::exists(st)) {
    QTOOL_CHECK(overwrite, OutputExistsError, "{}: output exists (use --force to replace it)",
                dir.string());
    QTOOL_CHECK(fs::is_directory(st), OutputExistsError,
                "{}: output exists and is not a directory; refusing to replace it", dir.string());
  }
  fs::path parent = fs::absolute(dir).lexically_normal().parent_path();
  QTOOL_CHECK(fs::is_directory(parent), IoError, "{}: parent directory {} does not exist",
              dir.string(), parent.string());
  QTOOL_CHECK(::access(parent.c_str(), W_OK) == 0, IoError,
              "{}: parent directory {} is not writable", dir.string(), parent.string());
}

CheckpointWriter::CheckpointWriter(const fs::path& dir, std::vector<TensorSpec> tensors,
                                   CheckpointWriterOptions options)
    : dir_(dir), tensors_(std::move(tensors)), options_(std::move(options)) {
  CheckOutputPath(dir_, options_.overwrite);
  // Shards are filled in tensor order; a new shard starts when the next tensor would overflow.
  uint64_t in_shard = 0;
  shard_first_.push_back(0);
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const uint64_t b = tensors_[i].nbytes();
    if (options_.max_shard_bytes > 0 && in_shard > 0 && in_shard + b > options_.max_shard_bytes) {
      shard_first_.push_back(i);
      in_shard = 0;
    }
    in_shard += b;
    shard_of_.push_back(shard_first_.size() - 1);
  }
  shard_first_.push_back(tensors_.size());
  tmp_dir_ = CreateTempSiblingDir(dir_);
  try {
    OpenShard(0);
  } catch (...) {
    RemoveTemp(tmp_dir_);
    throw;
  }
}

CheckpointWriter::~CheckpointWriter() {
  writer_.reset();
  if (!committed_ && !tmp_dir_.empty()) RemoveTemp(tmp_dir_);
}

void CheckpointWriter::OpenShard(size_t shard) {
  const size_t nshards = shard_first_.size() - 1;
  const std::string name = nshards == 1 ? kSingleFile : ShardName(shard, nshards);
  std::vector<TensorSpec> specs(tensors_.begin() + static_cast<ptrdiff_t>(shard_first_[shard]),
                                tensors_.begin() + static_cast<ptrdiff_t>(shard_first_[shard + 1]));
  writer_ =
      std::make_unique<SafetensorsWriter>(tmp_dir_ / name, std::move(specs), options_.metadata);
  shard_ = shard;
}

void CheckpointWriter::Write(std::span<const std::byte> bytes) {
  Write(bytes.size(), [bytes](uint64_t offset, std::span<std::byte> dst) {
    std::memcpy(dst.data(), bytes.data() + offset, dst.size());
  });
}

void CheckpointWriter::InShards(uint64_t n,
                                const std::function<void(uint64_t done, uint64_t take)>& part) {
  for (uint64_t done = 0; done < n;) {
    const uint64_t take = std::min(n - done, writer_->remaining());
    if (take == 0) {
      QTOOL_CHECK(shard_ + 2 < shard_first_.size(), ShapeError,
                  "{}: more tensor bytes written than announced", dir_.string());
      writer_->Commit();
      OpenShard(shard_ + 1);
      continue;
    }
    part(done, take);
    done += take;
  }
}

void CheckpointWriter::Write(uint64_t n, const ByteSource& read) {
  InShards(n, [&](uint64_t done, uint64_t take) {
    writer_->Write(take, [&read, done](uint64_t offset, std::span<std::byte> dst) {
      read(done + offset, dst);
    });
  });
}

void CheckpointWriter::WriteAside(uint64_t n, const ByteSource& read) {
  InShards(n, [&](uint64_t done, uint64_t take) {
    writer_->WriteAside(take, [read, done](uint64_t offset, std::span<std::byte> dst) {
      read(done + offset, dst);
    });
  });
}

void CheckpointWriter::CopyFile(const fs::path& src, const std::string& name) {
  std::error_code ec;
  fs::copy_file(src, tmp_dir_ / name, fs::copy_options::overwrite_existing, ec);
  QTOOL_CHECK(!ec, IoError, "{}: cannot copy to {}: {}", src.string(), (tmp_dir_ / name).string(),
              ec.message());
}

void CheckpointWriter::WriteTextFile(const std::string& name, std::string_view text) {
  std::ofstream out(tmp_dir_ / name, std::ios::binary | std::ios::trunc);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  out.close();
  QTOOL_CHECK(out, IoError, "{}: cannot write", (tmp_dir_ / name).string());
}

void CheckpointWriter::Commit() {
  writer_->Commit();
  while (shard_ + 2 < shard_first_.size()) {  // trailing shards of empty tensors
    OpenShard(shard_ + 1);
    writer_->Commit();
  }
  writer_.reset();
  const size_t nshards = shard_first_.size() - 1;
  if (nshards > 1) {
    nlohmann::ordered_json index;
    uint64_t total = 0;
    for (const TensorSpec& t : tensors_) total += t.nbytes();
    index["metadata"] = {{"total_size", total}};
    auto& wm = index["weight_map"];
    for (size_t i = 0; i < tensors_.size(); ++i) {
      wm[tensors_[i].name] = ShardName(shard_of_[i], nshards);
    }
    WriteTextFile(kIndexFile, index.dump(2) + "\n");
  }
  CommitStaged({{tmp_dir_, dir_, options_.overwrite}});
  committed_ = true;
}

BackgroundWriter::BackgroundWriter(CheckpointWriter& writer, uint64_t max_queued_bytes)
    : writer_(writer), thread_([this](const Job& job) { Write(job); }, max_queued_bytes) {}

void BackgroundWriter::Enqueue(std::vector<std::byte> owned) {
  Job job;
  job.owned = std::move(owned);
  job.bytes = job.owned;
  const size_t n = job.bytes.size();
  thread_.Add(std::move(job), n);
}

void BackgroundWriter::Enqueue(std::span<const std::byte> borrowed, std::function<void()> done) {
  Job job;
  job.bytes = borrowed;
  job.done = std::move(done);
  thread_.Add(std::move(job), borrowed.size());
}

void BackgroundWriter::EnqueueRead(uint64_t n, ByteSource read) {
  Job job;
  job.read_bytes = n;
  job.read = std::move(read);
  thread_.Add(std::move(job));
}

void BackgroundWriter::Finish() { thread_.Wait(); }

void BackgroundWriter::Write(const Job& job) {
  if (job.read) {
    writer_.WriteAside(job.read_bytes, job.read);
  } else {
    writer_.Write(job.bytes);
  }
  if (job.done) job.done();
}

}  // namespace qtool
