#include "qtool/io/checkpoint.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "qtool/core/error.hpp"
#include "qtool/io/temp_path.hpp"

namespace qtool {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

json ReadJsonFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  QTOOL_CHECK(in, IoError, "{}: cannot open", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    throw FormatError(fmt::format("{}: not valid JSON: {}", path.string(), e.what()));
  }
}

std::string ShardName(size_t i, size_t n) {
  return fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, n);
}

}  // namespace

Checkpoint Checkpoint::Open(const fs::path& path) {
  Checkpoint ck;
  std::error_code ec;
  QTOOL_CHECK(fs::exists(path, ec), IoError, "{}: no such file or directory", path.string());
  std::vector<fs::path> weight_files;
  std::map<std::string, std::string> index_map;
  if (fs::is_directory(path)) {
    ck.dir_ = path;
    if (fs::exists(path / kIndexFile)) {
      const json index = ReadJsonFile(path / kIndexFile);
      const auto wm = index.find("weight_map");
      QTOOL_CHECK(index.is_object() && wm != index.end() && wm->is_object(), FormatError,
                  "{}: no \"weight_map\" object", (path / kIndexFile).string());
      std::set<std::string> names;
      for (const auto& [tensor, file] : wm->items()) {
        QTOOL_CHECK(file.is_string(), FormatError, "{}: weight_map entry \"{}\" is not a string",
                    (path / kIndexFile).string(), tensor);
        const std::string f = file.get<std::string>();
        QTOOL_CHECK(fs::path(f).filename() == fs::path(f) && f != "." && f != "..", FormatError,
                    "{}: weight_map entry \"{}\" names \"{}\", not a file in the directory",
                    (path / kIndexFile).string(), tensor, f);
        index_map.emplace(tensor, f);
        if (names.insert(f).second) weight_files.push_back(path / f);
      }
    } else if (fs::exists(path / kSingleFile)) {
      weight_files.push_back(path / kSingleFile);
    } else {
      for (const auto& e : fs::directory_iterator(path)) {
        if (e.is_regular_file() && e.path().extension() == ".safetensors") {
          weight_files.push_back(e.path());
        }
      }
      QTOOL_CHECK(weight_files.size() == 1, FormatError,
                  "{}: expected {} or {} ({} other .safetensors files found)", path.string(),
                  kSingleFile, kIndexFile, weight_files.size());
    }
    for (const auto& e : fs::directory_iterator(path)) {
      const fs::path name = e.path().filename();
      if (!e.is_regular_file() || name.extension() == ".safetensors" || name == kIndexFile ||
          name.string().starts_with(".")) {
        continue;
      }
      ck.other_files_.push_back(e.path());
    }
    std::sort(ck.other_files_.begin(), ck.other_files_.end());
    if (fs::exists(path / "config.json")) ck.config_ = ReadJsonFile(path / "config.json");
  } else {
    ck.dir_ = path.parent_path().empty() ? fs::path(".") : path.parent_path();
    weight_files.push_back(path);
  }
  std::sort(weight_files.begin(), weight_files.end());

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
    : dir_(dir),
      tmp_dir_(TempSiblingPath(dir)),
      tensors_(std::move(tensors)),
      options_(std::move(options)) {
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
  std::error_code ec;
  fs::create_directory(tmp_dir_, ec);
  QTOOL_CHECK(!ec, IoError, "{}: cannot create: {}", tmp_dir_.string(), ec.message());
  OpenShard(0);
}

CheckpointWriter::~CheckpointWriter() {
  writer_.reset();
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(tmp_dir_, ec);
  }
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
  std::error_code ec;
  if (fs::exists(fs::symlink_status(dir_))) {
    QTOOL_CHECK(options_.overwrite, OutputExistsError,
                "{}: output appeared while writing; refusing to replace it", dir_.string());
    const fs::path old = TempSiblingPath(dir_);
    fs::rename(dir_, old, ec);
    QTOOL_CHECK(!ec, IoError, "{}: cannot move the old output aside: {}", dir_.string(),
                ec.message());
    fs::rename(tmp_dir_, dir_, ec);
    if (ec) {
      std::error_code restore;
      fs::rename(old, dir_, restore);
      throw IoError(fmt::format("{}: cannot rename into place: {}", dir_.string(), ec.message()));
    }
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp_dir_, dir_, ec);
    QTOOL_CHECK(!ec, IoError, "{}: cannot rename into place: {}", dir_.string(), ec.message());
  }
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
