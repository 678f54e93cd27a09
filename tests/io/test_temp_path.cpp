// Temporary names, their exclusive creation, staged commits, and the safe small-file readers.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <set>

#include "qtool/core/checked.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/input_file.hpp"
#include "qtool/core/mapped_file.hpp"
#include "qtool/io/temp_path.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

TEST(TempPath, NamesAreFreshAndDirectoriesNeverReused) {
  ScratchDir dir;
  std::set<fs::path> names;
  for (int i = 0; i < 200; ++i) names.insert(TempSiblingPath(dir / "out"));
  EXPECT_EQ(names.size(), 200u);
  for (const fs::path& n : names) {
    EXPECT_EQ(n.parent_path(), dir.path());
    EXPECT_TRUE(n.filename().string().starts_with(".out.qtool-tmp-")) << n;
  }
  const fs::path a = CreateTempSiblingDir(dir / "out");
  const fs::path b = CreateTempSiblingDir(dir / "out");
  EXPECT_NE(a, b);
  EXPECT_TRUE(fs::is_directory(a) && fs::is_empty(a));
  RemoveTemp(a);
  RemoveTemp(b);
  EXPECT_FALSE(fs::exists(a) || fs::exists(b));
}

TEST(TempPath, CommitStagedMovesAllOrNothing) {
  ScratchDir dir;
  const fs::path t1 = CreateTempSiblingDir(dir / "out");
  testing::WriteFile(t1 / "new", "new");
  const fs::path t2 = dir / "report.tmp";
  testing::WriteFile(t2, "report");
  fs::create_directory(dir / "out");
  testing::WriteFile(dir / "out" / "old", "old");
  // Not allowed to replace "out": nothing moves.
  EXPECT_THROW(CommitStaged({{t2, dir / "report"}, {t1, dir / "out", false}}), OutputExistsError);
  EXPECT_FALSE(fs::exists(dir / "report"));
  EXPECT_EQ(testing::ReadFile(dir / "out" / "old"), "old");
  EXPECT_TRUE(fs::exists(t1 / "new") && fs::exists(t2));
  // The second rename fails (its temporary is gone): the first is undone, "out" is as it was.
  EXPECT_THROW(CommitStaged({{t1, dir / "out", true}, {dir / "missing", dir / "report", true}}),
               IoError);
  EXPECT_EQ(testing::ReadFile(dir / "out" / "old"), "old");
  EXPECT_TRUE(fs::exists(t1 / "new"));
  CommitStaged({{t1, dir / "out", true}, {t2, dir / "report", true}});
  EXPECT_EQ(testing::ReadFile(dir / "out" / "new"), "new");
  EXPECT_FALSE(fs::exists(dir / "out" / "old"));
  EXPECT_EQ(testing::ReadFile(dir / "report"), "report");
  for (const auto& e : fs::directory_iterator(dir.path())) {
    EXPECT_EQ(e.path().filename().string().find("qtool-tmp"), std::string::npos) << e.path();
  }
}

// A memory-mapped input truncated under the process: the SIGBUS is reported as an i/o error naming
// the file and the offset, the temporaries are removed, and the exit code is IoError's.
TEST(TempPathDeathTest, BusErrorInAMappedFileIsAnIoErrorNamingIt) {
  ScratchDir dir;
  const fs::path in = dir / "input.safetensors";
  testing::WriteFile(in, std::string(1 << 16, 'x'));
  EXPECT_EXIT(
      {
        CleanUpTempsOnSignals();
        CreateTempSiblingDir(dir / "out");
        const MappedFile f(in);
        fs::resize_file(in, 0);
        const volatile std::byte b = f.bytes()[1 << 15];
        std::_Exit(static_cast<int>(b));
      },
      ::testing::ExitedWithCode(7),
      "input.safetensors: cannot read the memory-mapped file at offset 32768");
  for (const auto& e : fs::directory_iterator(dir.path())) {
    EXPECT_EQ(e.path().filename().string().find("qtool-tmp"), std::string::npos) << e.path();
  }
}

TEST(InputFile, OnlyRegularFilesAreRead) {
  ScratchDir dir;
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0644), 0);
  EXPECT_THROW(ReadRegularFile(dir / "fifo"), IoError);  // refused, not waited on
  EXPECT_THROW(ReadRegularFile(dir.path()), IoError);
  EXPECT_THROW(ReadRegularFile(dir / "missing"), IoError);
  testing::WriteFile(dir / "f", "12345");
  EXPECT_EQ(ReadRegularFile(dir / "f"), "12345");
  EXPECT_THROW(ReadRegularFile(dir / "f", 4), IoError);
}

TEST(InputFile, JsonDepthIsBoundedBeforeAnythingDeepIsBuilt) {
  const std::string ok = std::string(kMaxJsonDepth - 1, '[') + std::string(kMaxJsonDepth - 1, ']');
  EXPECT_NO_THROW(ParseJsonBounded(ok, "ok"));
  const std::string deep = std::string(1000000, '[') + std::string(1000000, ']');
  try {
    ParseJsonBounded(deep, "deep.json");
    ADD_FAILURE() << "a million levels were accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("deep.json: JSON nests deeper"), std::string::npos);
  }
  EXPECT_THROW(ParseJsonBounded("{\"a\": ", "bad.json"), FormatError);
}

TEST(Checked, ArithmeticReportsOverflow) {
  EXPECT_EQ(CheckedMul<int64_t>(3, 4), 12);
  EXPECT_FALSE(CheckedMul<int64_t>(INT64_MAX, 2));
  EXPECT_FALSE(CheckedMul<int64_t>(INT64_MIN, -1));
  EXPECT_EQ(CheckedAdd<uint64_t>(1, 2), 3u);
  EXPECT_FALSE(CheckedAdd<uint64_t>(UINT64_MAX, 1));
  EXPECT_EQ(CheckedProduct<int64_t>({2, 3, 5}), 30);
  EXPECT_FALSE(CheckedProduct<int64_t>({1 << 30, 1 << 30, 1 << 30}));
  EXPECT_TRUE((FitsIn<int32_t>(int64_t{INT32_MAX})));
  EXPECT_FALSE((FitsIn<int32_t>(int64_t{INT32_MAX} + 1)));
}

}  // namespace
}  // namespace qtool
