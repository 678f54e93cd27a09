#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <numeric>

#include "qtool/core/error.hpp"
#include "qtool/core/mapped_file.hpp"
#include "qtool/io/checkpoint.hpp"
#include "qtool/io/safetensors.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;
using testing::WriteFile;

using testing::SafetensorsImage;

std::string ParseError(const std::string& image) {
  try {
    ParseSafetensors(std::as_bytes(std::span(image.data(), image.size())), "t.safetensors");
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, WriteReadRoundTripEveryDtype) {
  ScratchDir dir;
  std::vector<TensorSpec> specs;
  std::vector<std::string> payloads;
  int i = 0;
  for (int t = 0; t <= static_cast<int>(DType::kF6E3M2); ++t) {
    const auto dt = static_cast<DType>(t);
    TensorSpec s{"t" + std::to_string(i++), dt, {3, 8}};
    specs.push_back(s);
    std::string bytes(s.nbytes(), '\0');
    for (size_t k = 0; k < bytes.size(); ++k) bytes[k] = static_cast<char>(k * 7 + t);
    payloads.push_back(bytes);
  }
  specs.push_back({"scalar", DType::kF32, {}});
  payloads.push_back(std::string("\x00\x00\x80\x3f", 4));
  specs.push_back({"empty", DType::kF16, {0, 5}});
  payloads.push_back("");
  {
    SafetensorsWriter w(dir / "a.safetensors", specs, {{"format", "pt"}, {"note", "x\"y"}});
    for (const auto& p : payloads) w.Write(std::as_bytes(std::span(p.data(), p.size())));
    w.Commit();
  }
  const SafetensorsFile f(dir / "a.safetensors");
  EXPECT_EQ(f.metadata().at("note"), "x\"y");
  ASSERT_EQ(f.tensors().size(), specs.size());
  for (size_t k = 0; k < specs.size(); ++k) {
    const TensorInfo* t = f.Find(specs[k].name);
    ASSERT_NE(t, nullptr) << specs[k].name;
    EXPECT_EQ(t->dtype, specs[k].dtype);
    EXPECT_EQ(t->shape, specs[k].shape);
    const auto d = f.Data(*t);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(d.data()), d.size()), payloads[k]);
  }
  // The data section starts 8-byte aligned.
  const std::string raw = testing::ReadFile(dir / "a.safetensors");
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);
}

// Tensors of odd sizes written in pieces of odd sizes, more than the 8 MiB buffer in all: the file
// holds exactly the header and the bytes, whether the file system takes direct I/O or the writer
// goes through the page cache (/dev/shm, where it exists, is tmpfs).
TEST(Safetensors, LargeWritesInOddPiecesAreExact) {
  const std::vector<TensorSpec> specs = {
      {"a", DType::kU8, {3, 1234567}}, {"b", DType::kU8, {4099}}, {"c", DType::kU8, {7, 1000003}}};
  std::vector<std::string> payloads;
  for (const TensorSpec& t : specs) {
    std::string bytes(t.nbytes(), '\0');
    for (size_t k = 0; k < bytes.size(); ++k)
      bytes[k] = static_cast<char>((k * 131 + t.nbytes()) >> 3);
    payloads.push_back(bytes);
  }
  auto write = [&](const fs::path& path) {
    SafetensorsWriter w(path, specs, {{"format", "pt"}});
    for (const std::string& p : payloads) {
      for (size_t k = 0; k < p.size();) {
        const size_t n = std::min<size_t>(p.size() - k, 1 + (k * 7919) % 3000017);
        w.Write(std::as_bytes(std::span(p.data() + k, n)));
        k += n;
      }
    }
    w.Commit();
  };
  ScratchDir dir;
  write(dir / "a.safetensors");
  const std::string header = SafetensorsWriter::EncodeHeader(specs, {{"format", "pt"}});
  std::string want = header;
  for (const std::string& p : payloads) want += p;
  EXPECT_EQ(testing::ReadFile(dir / "a.safetensors"), want);
  if (fs::is_directory("/dev/shm")) {
    const fs::path shm = fs::path("/dev/shm") / fmt::format("qtool-test-{}", ::getpid());
    write(shm);
    EXPECT_EQ(testing::ReadFile(shm), want);
    fs::remove(shm);
  }
}

// Write(n, read) fills the writer's buffer straight from the source, in pieces that together
// cover [0, n) in order; the file is the same as with Write(span).
TEST(Safetensors, WritesFromAByteSourceAreExact) {
  const std::vector<TensorSpec> specs = {{"a", DType::kU8, {9, 1000003}}, {"b", DType::kU8, {77}}};
  std::string payload(specs[0].nbytes() + specs[1].nbytes(), '\0');
  for (size_t k = 0; k < payload.size(); ++k) payload[k] = static_cast<char>((k * 131) >> 3);
  ScratchDir dir;
  uint64_t next = 0;
  {
    SafetensorsWriter w(dir / "a.safetensors", specs, {});
    w.Write(5, [&](uint64_t offset, std::span<std::byte> dst) {
      std::memcpy(dst.data(), payload.data() + offset, dst.size());
    });
    w.Write(payload.size() - 5, [&](uint64_t offset, std::span<std::byte> dst) {
      EXPECT_EQ(offset, next);
      next += dst.size();
      std::memcpy(dst.data(), payload.data() + 5 + offset, dst.size());
    });
    w.Commit();
  }
  EXPECT_EQ(next, payload.size() - 5);
  EXPECT_EQ(testing::ReadFile(dir / "a.safetensors"),
            SafetensorsWriter::EncodeHeader(specs, {}) + payload);
}

// A tensor read with pread gives the mapped bytes; a file cut short after it was opened is an
// IoError naming the file, not a crash.
TEST(Safetensors, ReadCopiesATensorsBytesAndReportsATruncatedFile) {
  const std::vector<TensorSpec> specs = {{"a", DType::kU8, {3}}, {"b", DType::kU8, {5000}}};
  ScratchDir dir;
  const fs::path path = dir / "m.safetensors";
  {
    SafetensorsWriter w(path, specs, {});
    std::vector<std::byte> bytes(5003);
    for (size_t k = 0; k < bytes.size(); ++k) bytes[k] = static_cast<std::byte>(k * 7);
    w.Write(bytes);
    w.Commit();
  }
  const SafetensorsFile f(path);
  const TensorInfo& b = *f.Find("b");
  std::vector<std::byte> got(1000);
  f.Read(b, 4000, got);
  EXPECT_TRUE(std::equal(got.begin(), got.end(), f.Data(b).begin() + 4000));
  fs::resize_file(path, fs::file_size(path) - 10);
  try {
    f.Read(b, 4000, got);
    ADD_FAILURE() << "no error";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("ends there"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, SameInputGivesSameBytes) {
  const std::vector<TensorSpec> specs = {{"b", DType::kF32, {2}}, {"a", DType::kU8, {3}}};
  EXPECT_EQ(SafetensorsWriter::EncodeHeader(specs, {{"k", "v"}}),
            SafetensorsWriter::EncodeHeader(specs, {{"k", "v"}}));
}

TEST(Safetensors, WriterLeavesNothingWithoutCommit) {
  ScratchDir dir;
  {
    SafetensorsWriter w(dir / "a.safetensors", {{"x", DType::kF32, {4}}}, {});
    const float v[2] = {1, 2};
    w.Write(std::as_bytes(std::span(v)));
  }
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

// A write the device refuses (here: past the process's file size limit, EFBIG) is an IoError naming
// the file, from Write or from Commit, whichever of the writes in flight it comes back to; the
// partial temporary file is removed and nothing appears under the output name.
TEST(Safetensors, FailedWriteIsAnErrorAndLeavesNothing) {
  ScratchDir dir;
  const fs::path path = dir / "a.safetensors";
  const std::vector<TensorSpec> specs = {{"x", DType::kU8, {48 << 20}}};
  const std::string chunk(1 << 20, 'q');
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit low = old;
  low.rlim_cur = 20 << 20;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &low), 0);
  std::string error;
  try {
    SafetensorsWriter w(path, specs, {});
    for (int k = 0; k < 48; ++k) w.Write(std::as_bytes(std::span(chunk.data(), chunk.size())));
    w.Commit();
  } catch (const IoError& e) {
    error = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_NE(error.find("write failed"), std::string::npos) << error;
  EXPECT_NE(error.find(dir.path().string()), std::string::npos) << error;
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

// Bytes n of a seeded pattern, the same for any piece asked.
void Pattern(uint64_t offset, std::span<std::byte> dst) {
  for (size_t k = 0; k < dst.size(); ++k) {
    const uint64_t i = offset + k;
    dst[k] = static_cast<std::byte>((i * 2654435761u) >> 13);
  }
}

// A copy written aside (its whole blocks from the writer's own thread, while the tensors after it
// go through the buffers) gives the same file as writing everything in order: between unaligned
// small tensors, two copies in a row, and copies too short to go aside.
TEST(Safetensors, CopiesWrittenAsideGiveTheSameFile) {
  const std::vector<TensorSpec> specs = {{"a", DType::kU8, {777}},
                                         {"big", DType::kU8, {(40 << 20) + 123}},
                                         {"big2", DType::kU8, {(17 << 20) + 5}},
                                         {"b", DType::kU8, {4096 * 3 + 1}},
                                         {"small", DType::kU8, {(15 << 20) + 9}},
                                         {"c", DType::kU8, {3}}};
  ScratchDir dir;
  auto write = [&](const fs::path& path, bool aside) {
    SafetensorsWriter w(path, specs, {{"format", "pt"}});
    uint64_t start = 0;
    for (const TensorSpec& t : specs) {
      const ByteSource read = [start](uint64_t offset, std::span<std::byte> dst) {
        Pattern(start + offset, dst);
      };
      if (aside && t.nbytes() > 1000) {
        w.WriteAside(t.nbytes(), read);
      } else {
        w.Write(t.nbytes(), read);
      }
      start += t.nbytes();
    }
    w.Commit();
  };
  write(dir / "plain.safetensors", false);
  write(dir / "aside.safetensors", true);
  const MappedFile plain(dir / "plain.safetensors"), aside(dir / "aside.safetensors");
  ASSERT_EQ(plain.bytes().size(), aside.bytes().size());
  EXPECT_TRUE(std::equal(plain.bytes().begin(), plain.bytes().end(), aside.bytes().begin()));
}

// A copy that fails (its source cannot be read) is an error from Commit, and leaves no file.
TEST(Safetensors, FailedCopyAsideIsAnErrorAndLeavesNothing) {
  ScratchDir dir;
  const std::vector<TensorSpec> specs = {{"big", DType::kU8, {40 << 20}}, {"c", DType::kU8, {100}}};
  std::string error;
  try {
    SafetensorsWriter w(dir / "a.safetensors", specs, {});
    w.WriteAside(40 << 20, [](uint64_t offset, std::span<std::byte> dst) {
      if (offset + dst.size() > (30 << 20)) throw IoError("source.safetensors: cannot read");
      Pattern(offset, dst);
    });
    w.Write(100, Pattern);
    w.Commit();
  } catch (const IoError& e) {
    error = e.what();
  }
  EXPECT_EQ(error, "source.safetensors: cannot read");
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(Safetensors, WriterRejectsTooManyAndTooFewBytes) {
  ScratchDir dir;
  SafetensorsWriter w(dir / "a.safetensors", {{"x", DType::kF32, {1}}}, {});
  const float v[2] = {1, 2};
  EXPECT_THROW(w.Write(std::as_bytes(std::span(v))), ShapeError);
  EXPECT_THROW(w.Commit(), ShapeError);
}

struct BadCase {
  const char* what;
  std::string image;
  const char* message;  // a part of the expected error
};

TEST(Safetensors, RejectsMalformedFiles) {
  const std::string ok_data(8, '\0');
  const std::vector<BadCase> cases = {
      {"empty file", "", "truncated"},
      {"short length", std::string(5, '\0'), "truncated"},
      {"header past end", SafetensorsImage("{}", "").substr(0, 9), "runs past the end"},
      {"header too large", std::string("\xff\xff\xff\xff\xff\x00\x00\x00", 8) + "{}",
       "exceeds the limit"},
      {"not json", SafetensorsImage("{nope", ""), "not valid JSON"},
      {"not an object", SafetensorsImage("[1,2]   ", ""), "does not start with"},
      {"unknown dtype",
       SafetensorsImage(R"({"a":{"dtype":"F13","shape":[2],"data_offsets":[0,8]}})", ok_data),
       "unknown dtype \"F13\""},
      {"shape vs span",
       SafetensorsImage(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", ok_data),
       "needs 12 bytes but data_offsets span 8"},
      {"negative dim",
       SafetensorsImage(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", ok_data),
       "not a non-negative integer"},
      {"overflowing shape",
       SafetensorsImage(
           R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})",
           ok_data),
       "overflows"},
      {"offset past data",
       SafetensorsImage(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}})", ok_data),
       "run past the data section"},
      {"reversed offsets",
       SafetensorsImage(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", ok_data),
       "reversed"},
      {"overlap",
       SafetensorsImage(
           R"({"a":{"dtype":"U8","shape":[6],"data_offsets":[0,6]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
           ok_data),
       "overlap"},
      {"hole",
       SafetensorsImage(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", ok_data),
       "belong to no tensor"},
      {"trailing bytes",
       SafetensorsImage(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", ok_data),
       "cover 4"},
      {"duplicate name",
       SafetensorsImage(
           R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
           ok_data),
       "names \"a\" twice"},
      {"bad metadata", SafetensorsImage(R"({"__metadata__":{"k":1}})", ""), "is not a string"},
      {"unknown field",
       SafetensorsImage(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8],"x":1}})", ok_data),
       "unknown field"},
      {"sub-byte remainder",
       SafetensorsImage(R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,8]}})", ok_data),
       "do not fill whole bytes"},
  };
  for (const BadCase& c : cases) {
    const std::string msg = ParseError(c.image);
    EXPECT_NE(msg.find(c.message), std::string::npos)
        << c.what << ": got \"" << msg << "\", expected it to contain \"" << c.message << "\"";
    EXPECT_NE(msg.find("t.safetensors"), std::string::npos) << c.what << ": " << msg;
  }
}

TEST(Safetensors, OpeningMissingFileIsAnIoError) {
  ScratchDir dir;
  EXPECT_THROW(SafetensorsFile(dir / "missing.safetensors"), IoError);
}

std::vector<TensorSpec> SampleSpecs() {
  return {{"a", DType::kF32, {100}},
          {"b", DType::kF32, {50}},
          {"c", DType::kBF16, {300}},
          {"d", DType::kU8, {10}}};
}

void WriteSample(const fs::path& out, uint64_t max_shard, bool overwrite = false) {
  const auto specs = SampleSpecs();
  CheckpointWriterOptions o;
  o.max_shard_bytes = max_shard;
  o.overwrite = overwrite;
  CheckpointWriter w(out, specs, o);
  for (const TensorSpec& s : specs) {
    std::vector<std::byte> bytes(s.nbytes());
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::byte>(i + s.name[0]);
    w.Write(bytes);
  }
  w.WriteTextFile("config.json", R"({"model_type": "llama"})");
  w.Commit();
}

TEST(Checkpoint, ShardedWriteAndRead) {
  ScratchDir dir;
  WriteSample(dir / "m", 500);
  EXPECT_TRUE(fs::exists(dir / "m" / "model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(dir / "m" / "model-00001-of-00004.safetensors"));
  EXPECT_TRUE(fs::exists(dir / "m" / "model-00004-of-00004.safetensors"));
  const Checkpoint ck = Checkpoint::Open(dir / "m");
  EXPECT_EQ(ck.files().size(), 4u);  // [a] [b] [c, over the limit alone] [d]
  ASSERT_EQ(ck.tensors().size(), 4u);
  for (const CheckpointTensor& t : ck.tensors()) {
    const auto d = t.data();
    for (size_t i = 0; i < d.size(); ++i) {
      ASSERT_EQ(d[i], static_cast<std::byte>(i + t.info->name[0])) << t.info->name;
    }
  }
  ASSERT_TRUE(ck.config().has_value());
  EXPECT_EQ((*ck.config())["model_type"], "llama");
}

// Copies queued with EnqueueRead are written aside, in every shard, while the tensors queued after
// them are written: a shard is complete (its copy included) before the next one opens.
TEST(Checkpoint, BackgroundCopiesInShards) {
  const std::vector<TensorSpec> specs = {{"a", DType::kF32, {100}},
                                         {"big", DType::kU8, {(20 << 20) + 7}},
                                         {"b", DType::kU8, {5000}},
                                         {"big2", DType::kU8, {(18 << 20) + 3}},
                                         {"c", DType::kU8, {10}}};
  ScratchDir dir;
  {
    CheckpointWriterOptions o;
    o.max_shard_bytes = 21'000'000;  // [a, big, b] [big2, c]
    CheckpointWriter w(dir / "m", specs, o);
    BackgroundWriter background(w, 1 << 20);
    for (const TensorSpec& t : specs) {
      const uint64_t seed = std::hash<std::string>{}(t.name) % 1000003;
      if (t.nbytes() > (1 << 20)) {
        background.EnqueueRead(t.nbytes(), [seed](uint64_t offset, std::span<std::byte> dst) {
          Pattern(seed + offset, dst);
        });
      } else {
        std::vector<std::byte> bytes(t.nbytes());
        Pattern(seed, bytes);
        background.Enqueue(std::move(bytes));
      }
    }
    background.Finish();
    w.Commit();
  }
  const Checkpoint ck = Checkpoint::Open(dir / "m");
  EXPECT_EQ(ck.files().size(), 2u);
  for (const TensorSpec& t : specs) {
    std::vector<std::byte> want(t.nbytes());
    Pattern(std::hash<std::string>{}(t.name) % 1000003, want);
    const auto got = ck.Get(t.name).data();
    ASSERT_EQ(got.size(), want.size()) << t.name;
    EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin())) << t.name;
  }
}

TEST(Checkpoint, SingleFileWhenUnsharded) {
  ScratchDir dir;
  WriteSample(dir / "m", 0);
  EXPECT_TRUE(fs::exists(dir / "m" / "model.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "m" / "model.safetensors.index.json"));
  EXPECT_EQ(Checkpoint::Open(dir / "m").tensors().size(), 4u);
  EXPECT_EQ(Checkpoint::Open(dir / "m" / "model.safetensors").tensors().size(), 4u);
}

TEST(Checkpoint, RefusesToOverwriteUnlessAsked) {
  ScratchDir dir;
  WriteSample(dir / "m", 0);
  EXPECT_THROW(WriteSample(dir / "m", 0), OutputExistsError);
  WriteSample(dir / "m", 500, /*overwrite=*/true);
  EXPECT_EQ(Checkpoint::Open(dir / "m").files().size(), 4u);
  EXPECT_FALSE(fs::exists(dir / "m" / "model.safetensors"));  // the old output is gone whole
}

TEST(Checkpoint, IndexNamingMissingTensorIsRejected) {
  ScratchDir dir;
  WriteSample(dir / "m", 500);
  const auto index = dir / "m" / "model.safetensors.index.json";
  std::string text = testing::ReadFile(index);
  text.replace(text.find("\"weight_map\": {"), 15,
               "\"weight_map\": {\"ghost\": \"model-00001-of-00004.safetensors\",");
  WriteFile(index, text);
  try {
    Checkpoint::Open(dir / "m");
    FAIL() << "expected a FormatError";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("\"ghost\""), std::string::npos) << e.what();
  }
}

TEST(Checkpoint, IndexEscapingTheDirectoryIsRejected) {
  ScratchDir dir;
  fs::create_directories(dir / "m");
  WriteFile(dir / "m" / "model.safetensors.index.json",
            R"({"weight_map": {"a": "../../etc/passwd"}})");
  EXPECT_THROW(Checkpoint::Open(dir / "m"), FormatError);
}

}  // namespace
}  // namespace qtool
