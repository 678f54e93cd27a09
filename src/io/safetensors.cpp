#include "qtool/io/safetensors.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "qtool/core/error.hpp"
#include "qtool/core/input_file.hpp"
#include "qtool/core/job_thread.hpp"
#include "qtool/io/temp_path.hpp"

namespace qtool {
namespace {

using json = nlohmann::json;

constexpr size_t kWriteBuffer = 8u << 20;
// Direct I/O transfers whole, aligned blocks from an aligned buffer.
constexpr size_t kDirectBlock = 4096;

uint64_t ReadLe64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

// Parses the header JSON, rejecting duplicate keys at any level (the format has one entry per
// name).
json ParseHeaderJson(std::string_view text, std::string_view label) {
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    QTOOL_CHECK(depth < kMaxJsonDepth, FormatError, "{}: header nests deeper than {} levels", label,
                kMaxJsonDepth);
    if (event == json::parse_event_t::object_start) {
      keys.resize(static_cast<size_t>(depth) + 1);
      keys[static_cast<size_t>(depth)].clear();
    } else if (event == json::parse_event_t::key) {
      auto& seen = keys[static_cast<size_t>(depth) - 1];
      if (!seen.insert(parsed.get<std::string>()).second && duplicate.empty()) {
        duplicate = parsed.get<std::string>();
      }
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text.begin(), text.end(), cb);
  } catch (const json::exception& e) {
    throw FormatError(fmt::format("{}: header is not valid JSON: {}", label, e.what()));
  }
  QTOOL_CHECK(duplicate.empty(), FormatError, "{}: header names \"{}\" twice", label, duplicate);
  QTOOL_CHECK(j.is_object(), FormatError, "{}: header is not a JSON object", label);
  return j;
}

TensorInfo ParseEntry(const std::string& name, const json& e, uint64_t data_size,
                      std::string_view label) {
  QTOOL_CHECK(e.is_object(), FormatError, "{}: tensor \"{}\": entry is not an object", label, name);
  for (const auto& [key, value] : e.items()) {
    QTOOL_CHECK(key == "dtype" || key == "shape" || key == "data_offsets", FormatError,
                "{}: tensor \"{}\": unknown field \"{}\"", label, name, key);
  }
  TensorInfo t;
  t.name = name;
  const auto dt = e.find("dtype");
  QTOOL_CHECK(dt != e.end() && dt->is_string(), FormatError,
              "{}: tensor \"{}\": missing or non-string dtype", label, name);
  const auto parsed = ParseDType(dt->get<std::string>());
  QTOOL_CHECK(parsed.has_value(), FormatError, "{}: tensor \"{}\": unknown dtype \"{}\"", label,
              name, dt->get<std::string>());
  t.dtype = *parsed;

  const auto sh = e.find("shape");
  QTOOL_CHECK(sh != e.end() && sh->is_array(), FormatError,
              "{}: tensor \"{}\": missing or non-array shape", label, name);
  uint64_t numel = 1;
  for (const auto& d : *sh) {
    QTOOL_CHECK(d.is_number_unsigned(), FormatError,
                "{}: tensor \"{}\": shape entry {} is not a non-negative integer", label, name,
                d.dump());
    const uint64_t dim = d.get<uint64_t>();
    QTOOL_CHECK(
        dim <= static_cast<uint64_t>(INT64_MAX) && !__builtin_mul_overflow(numel, dim, &numel),
        FormatError, "{}: tensor \"{}\": shape {} overflows", label, name, sh->dump());
    t.shape.push_back(static_cast<int64_t>(dim));
  }
  uint64_t bits = 0;
  QTOOL_CHECK(!__builtin_mul_overflow(numel, static_cast<uint64_t>(BitsOf(t.dtype)), &bits) &&
                  numel <= static_cast<uint64_t>(INT64_MAX),
              FormatError, "{}: tensor \"{}\": shape {} overflows", label, name, sh->dump());
  QTOOL_CHECK(bits % 8 == 0, FormatError,
              "{}: tensor \"{}\": {} elements of {} do not fill whole bytes", label, name, numel,
              DTypeName(t.dtype));

  const auto off = e.find("data_offsets");
  QTOOL_CHECK(off != e.end() && off->is_array() && off->size() == 2 &&
                  (*off)[0].is_number_unsigned() && (*off)[1].is_number_unsigned(),
              FormatError, "{}: tensor \"{}\": data_offsets must be two non-negative integers",
              label, name);
  t.begin = (*off)[0].get<uint64_t>();
  t.end = (*off)[1].get<uint64_t>();
  QTOOL_CHECK(t.begin <= t.end, FormatError,
              "{}: tensor \"{}\": data_offsets [{}, {}] are reversed", label, name, t.begin, t.end);
  QTOOL_CHECK(t.end <= data_size, FormatError,
              "{}: tensor \"{}\": data_offsets [{}, {}] run past the data section ({} bytes): "
              "the file is truncated or its offsets are wrong",
              label, name, t.begin, t.end, data_size);
  QTOOL_CHECK(t.end - t.begin == bits / 8, FormatError,
              "{}: tensor \"{}\": shape {} of {} needs {} bytes but data_offsets span {}", label,
              name, sh->dump(), DTypeName(t.dtype), bits / 8, t.end - t.begin);
  return t;
}

}  // namespace

SafetensorsHeader ParseSafetensors(std::span<const std::byte> file, std::string_view label) {
  QTOOL_CHECK(file.size() >= 8, FormatError,
              "{}: truncated: {} bytes, fewer than the 8-byte header length", label, file.size());
  const uint64_t n = ReadLe64(file.data());
  QTOOL_CHECK(n <= kMaxSafetensorsHeader, FormatError,
              "{}: header length {} exceeds the limit of {} bytes", label, n,
              kMaxSafetensorsHeader);
  QTOOL_CHECK(n <= file.size() - 8, FormatError,
              "{}: truncated: header length {} runs past the end of the file ({} bytes)", label, n,
              file.size());
  QTOOL_CHECK(n >= 2 && static_cast<char>(file[8]) == '{', FormatError,
              "{}: header does not start with '{{'", label);

  SafetensorsHeader h;
  h.data_offset = 8 + n;
  const uint64_t data_size = file.size() - h.data_offset;
  const std::string_view text(reinterpret_cast<const char*>(file.data() + 8), n);
  const json j = ParseHeaderJson(text, label);

  for (const auto& [name, entry] : j.items()) {
    if (name == "__metadata__") {
      QTOOL_CHECK(entry.is_object(), FormatError, "{}: __metadata__ is not an object", label);
      for (const auto& [k, v] : entry.items()) {
        QTOOL_CHECK(v.is_string(), FormatError, "{}: __metadata__ value of \"{}\" is not a string",
                    label, k);
        h.metadata.emplace(k, v.get<std::string>());
      }
      continue;
    }
    h.tensors.push_back(ParseEntry(name, entry, data_size, label));
  }

  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : h.tensors) {
    if (t.begin < cursor) {
      throw FormatError(fmt::format("{}: tensors \"{}\" [{}, {}] and \"{}\" [{}, {}] overlap",
                                    label, prev->name, prev->begin, prev->end, t.name, t.begin,
                                    t.end));
    }
    QTOOL_CHECK(t.begin == cursor, FormatError,
                "{}: bytes [{}, {}) of the data section belong to no tensor (before \"{}\")", label,
                cursor, t.begin, t.name);
    cursor = t.end;
    prev = &t;
  }
  QTOOL_CHECK(cursor == data_size, FormatError,
              "{}: data section has {} bytes but its tensors cover {} (truncated or trailing data)",
              label, data_size, cursor);
  return h;
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path)
    : map_(path), header_(ParseSafetensors(map_.bytes(), path.string())) {}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  for (const TensorInfo& t : header_.tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::string SafetensorsWriter::EncodeHeader(const std::vector<TensorSpec>& tensors,
                                            const std::map<std::string, std::string>& metadata) {
  // Keys are written in the given order (ordered_json), so the same input gives the same bytes.
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& m = j["__metadata__"];
    for (const auto& [k, v] : metadata) m[k] = v;
  }
  uint64_t offset = 0;
  for (const TensorSpec& t : tensors) {
    QTOOL_CHECK(t.name != "__metadata__" && !j.contains(t.name), FormatError,
                "cannot write tensor name \"{}\" twice or as a reserved name", t.name);
    const uint64_t bytes = t.nbytes();
    j[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                 {"shape", t.shape},
                 {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = j.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');
  std::string out(8, '\0');
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i)
    out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text;
}

SafetensorsWriter::SafetensorsWriter(const std::filesystem::path& path,
                                     std::vector<TensorSpec> tensors,
                                     const std::map<std::string, std::string>& metadata)
    : path_(path), tmp_path_(TempSiblingPath(path)) {
  for (const TensorSpec& t : tensors) {
    QTOOL_CHECK(BitsOf(t.dtype) * t.numel() % 8 == 0, ShapeError,
                "tensor \"{}\": {} elements of {} do not fill whole bytes", t.name, t.numel(),
                DTypeName(t.dtype));
    total_ += t.nbytes();
  }
  const std::string header = EncodeHeader(tensors, metadata);
  file_size_ = header.size() + total_;
  // Direct I/O where the file system has it: the output goes to the device without a copy into
  // the page cache (and without evicting the input from it).
  constexpr int kFlags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC;
#ifdef O_DIRECT
  fd_ = ::open(tmp_path_.c_str(), kFlags | O_DIRECT, 0644);
  direct_ = fd_ >= 0;
  if (fd_ < 0 && errno == EINVAL) fd_ = ::open(tmp_path_.c_str(), kFlags, 0644);
#else
  fd_ = ::open(tmp_path_.c_str(), kFlags, 0644);
#endif
  QTOOL_CHECK(fd_ >= 0, IoError, "{}: cannot create: {}", tmp_path_.string(), std::strerror(errno));
  RegisterTemp(tmp_path_);
  try {
    for (auto& b : buffers_) {
      b.reset(static_cast<std::byte*>(std::aligned_alloc(kDirectBlock, kWriteBuffer)));
      QTOOL_CHECK(b != nullptr, IoError, "{}: no memory for the write buffers", path_.string());
    }
    const auto* h = reinterpret_cast<const std::byte*>(header.data());
    for (size_t done = 0; done < header.size();) {
      const size_t n = std::min(header.size() - done, kWriteBuffer - buffered_);
      std::memcpy(buffers_[current_].get() + buffered_, h + done, n);
      buffered_ += n;
      done += n;
      if (buffered_ == kWriteBuffer) Flush();
    }
  } catch (...) {  // the destructor does not run for a constructor that throws
    WaitForWrites(/*rethrow=*/false);
    ::close(fd_);
    fd_ = -1;
    RemoveTemp(tmp_path_);
    throw;
  }
}

void SafetensorsWriter::FreeAligned::operator()(std::byte* p) const { std::free(p); }

// The copies of WriteAside: a thread of their own takes them in order, each in pieces of
// kWriteBuffer through two buffers, so that one piece is read while the other is written.
class SafetensorsWriter::AsideCopies {
 public:
  explicit AsideCopies(SafetensorsWriter& writer)
      : writer_(writer), thread_([this](const Job& job) { Copy(job); }) {}

  // Queues file bytes [begin, end), whole blocks, given by read(first + (offset - begin), ...).
  void Add(ByteSource read, uint64_t first, uint64_t begin, uint64_t end) {
    thread_.Add({std::move(read), first, begin, end});
  }
  // Waits until every queued copy is written; rethrows the first failure.
  void Wait() { thread_.Wait(); }

 private:
  struct Job {
    ByteSource read;
    uint64_t first = 0, begin = 0, end = 0;
  };

  void Copy(const Job& job) {
    std::future<void> writes[2];
    int k = 0;
    for (uint64_t at = job.begin; at < job.end && !thread_.stopping(); at += kWriteBuffer, k ^= 1) {
      if (writes[k].valid()) writes[k].get();
      if (!buffers_[k]) {
        buffers_[k].reset(static_cast<std::byte*>(std::aligned_alloc(kDirectBlock, kWriteBuffer)));
        QTOOL_CHECK(buffers_[k] != nullptr, IoError, "{}: no memory for the write buffers",
                    writer_.path_.string());
      }
      const std::span<std::byte> piece(
          buffers_[k].get(), static_cast<size_t>(std::min<uint64_t>(kWriteBuffer, job.end - at)));
      job.read(job.first + (at - job.begin), piece);
      writes[k] =
          std::async(std::launch::async, [this, piece, at] { writer_.WriteOut(piece, at); });
    }
    for (auto& w : writes) {
      if (w.valid()) w.get();
    }
  }

  SafetensorsWriter& writer_;
  std::unique_ptr<std::byte[], FreeAligned> buffers_[2];
  JobThread<Job> thread_;  // last: stopped and joined before the rest goes
};

SafetensorsWriter::~SafetensorsWriter() {
  aside_.reset();                    // no copy may run on a closed descriptor,
  WaitForWrites(/*rethrow=*/false);  // nor a write
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) RemoveTemp(tmp_path_);
}

void SafetensorsWriter::Write(std::span<const std::byte> bytes) {
  Write(bytes.size(), [bytes](uint64_t offset, std::span<std::byte> dst) {
    std::memcpy(dst.data(), bytes.data() + offset, dst.size());
  });
}

void SafetensorsWriter::Write(uint64_t n, const ByteSource& read) {
  QTOOL_CHECK(n <= total_ - written_, ShapeError,
              "{}: {} more bytes written than the header announced", path_.string(),
              n - (total_ - written_));
  written_ += n;
  for (uint64_t done = 0; done < n;) {
    const size_t take = static_cast<size_t>(std::min<uint64_t>(n - done, kWriteBuffer - buffered_));
    read(done, {buffers_[current_].get() + buffered_, take});
    buffered_ += take;
    done += take;
    if (buffered_ == kWriteBuffer) Flush();
  }
}

void SafetensorsWriter::WriteAside(uint64_t n, ByteSource read) {
  const uint64_t at = flushed_ + buffered_;  // file offset of the first of the n bytes
  const uint64_t begin = (at + kDirectBlock - 1) / kDirectBlock * kDirectBlock;
  const uint64_t end = (at + n) / kDirectBlock * kDirectBlock;
  // A copy shorter than two pieces is not worth the thread's turn: it goes through the buffer.
  if (end < begin + 2 * kWriteBuffer || n > remaining()) {
    Write(n, read);
    return;
  }
  Write(begin - at, read);  // the bytes before the first whole block, which the buffer ends with
  if (buffered_ > 0) Flush();
  if (!aside_) aside_ = std::make_unique<AsideCopies>(*this);
  aside_->Add(read, begin - at, begin, end);
  written_ += end - begin;
  flushed_ = end;
  Write(at + n - end, [&read, skip = end - at](uint64_t offset, std::span<std::byte> dst) {
    read(skip + offset, dst);
  });
}

void SafetensorsWriter::Flush() {
  const size_t whole = buffered_ / kDirectBlock * kDirectBlock;
  const int next = (current_ + 1) % kBuffers;
  if (writes_[next].valid()) writes_[next].get();  // the next buffer is written out and free
  std::byte* full = buffers_[current_].get();
  std::memcpy(buffers_[next].get(), full + whole, buffered_ - whole);
  const std::span<const std::byte> bytes(full, whole);
  const uint64_t offset = flushed_;
  writes_[current_] =
      std::async(std::launch::async, [this, bytes, offset] { WriteOut(bytes, offset); });
  flushed_ += whole;
  buffered_ -= whole;
  current_ = next;
}

void SafetensorsWriter::WaitForWrites(bool rethrow) {
  for (auto& w : writes_) {
    if (w.valid()) w.wait();
  }
  if (!rethrow) return;
  for (auto& w : writes_) {
    if (w.valid()) w.get();
  }
}

void SafetensorsWriter::FlushAll() {
  WaitForWrites(/*rethrow=*/true);
  std::byte* b = buffers_[current_].get();
  const size_t padded = (buffered_ + kDirectBlock - 1) / kDirectBlock * kDirectBlock;
  std::memset(b + buffered_, 0, padded - buffered_);
  WriteOut({b, direct_ ? padded : buffered_}, flushed_);
  flushed_ += buffered_;
  buffered_ = 0;
}

void SafetensorsWriter::WriteOut(std::span<const std::byte> bytes, uint64_t offset) {
  while (!bytes.empty()) {
    const ssize_t r = ::pwrite(fd_, bytes.data(), bytes.size(), static_cast<off_t>(offset));
    if (r > 0) {
      bytes = bytes.subspan(static_cast<size_t>(r));
      offset += static_cast<uint64_t>(r);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
#ifdef O_DIRECT
    // A file system that took O_DIRECT at open but refuses this write (or an unaligned rest after
    // a short write): go on through the page cache. Each write in flight may get here.
    if (r < 0 && errno == EINVAL && direct_ &&
        ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) & ~O_DIRECT) == 0) {
      direct_ = false;
      continue;
    }
#endif
    throw IoError(fmt::format("{}: write failed: {}", tmp_path_.string(), std::strerror(errno)));
  }
}

void SafetensorsWriter::Commit() {
  QTOOL_CHECK(written_ == total_, ShapeError, "{}: {} of {} tensor bytes were written",
              path_.string(), written_, total_);
  if (aside_) aside_->Wait();
  FlushAll();
  // Direct writes end on a block boundary: cut the padding off.
  QTOOL_CHECK(::ftruncate(fd_, static_cast<off_t>(file_size_)) == 0, IoError,
              "{}: cannot set the file size: {}", tmp_path_.string(), std::strerror(errno));
  const int fd = fd_;
  fd_ = -1;
  CloseIntoPlace(fd, tmp_path_, path_);
  committed_ = true;
}

}  // namespace qtool
