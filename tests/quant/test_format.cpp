// Typed formats: the text form (parse, print, errors naming the part), checkpoint records (round
// trip, and refusal of unknown keys, wrong types and out-of-range values naming the key, for every
// family), the stored layouts against the codecs, and the CLI's --format text against its flags.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "qtool/core/error.hpp"
#include "qtool/format/text.hpp"
#include "qtool/format/traits.hpp"
#include "qtool/io/checkpoint.hpp"
#include "qtool/io/format_record.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/quant/codec.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

using json = nlohmann::json;

// Runs `f`, expecting an error of class E whose message contains every one of `parts`.
template <class E, class F>
void ExpectErrorNaming(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one naming " << parts.front();
  } catch (const E& e) {
    for (const std::string& p : parts) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "\"" << e.what() << "\" does not name " << p;
    }
  }
}

// Every family, with non-default parameters where the family has them.
std::vector<Format> SampleFormats() {
  std::vector<Format> out;
  for (int bits = 2; bits <= 8; ++bits) {
    out.push_back(IntFormat{.bits = bits});
    out.push_back(IntFormat{.bits = bits, .symmetric = false, .group = 32});
  }
  out.push_back(IntFormat{.bits = 4, .granularity = Granularity::kChannel});
  out.push_back(IntFormat{.bits = 8, .symmetric = false, .granularity = Granularity::kTensor});
  out.push_back(IntFormat{.bits = 3, .group = 48, .flat = true});
  out.push_back(IntFormat{.bits = 4, .group = 64, .g_idx = true});
  for (const char* o : {"percentile:99.5", "mse", "mse:2.4", "kl"}) {
    out.push_back(IntFormat{.bits = 4, .group = 32, .observer = ObserverSpec::Parse(o)});
  }
  out.push_back(TernaryFormat{});
  out.push_back(TernaryFormat{.granularity = Granularity::kChannel});
  out.push_back(TernaryFormat{.granularity = Granularity::kGroup, .group = 64});
  out.push_back(Nf4Format{});
  out.push_back(Nf4Format{.block = 128, .double_quant = true});
  out.push_back(Nf4Format{.block = 256, .map = Bnb4Map::kFp4});
  for (const Element e :
       {Element::kE4M3, Element::kE5M2, Element::kE2M3, Element::kE3M2, Element::kE2M1}) {
    out.push_back(FloatFormat{.element = e, .granularity = Granularity::kChannel});
    out.push_back(FloatFormat{.element = e, .granularity = Granularity::kTensor});
    out.push_back(FloatFormat{
        .element = e, .granularity = Granularity::kGroup, .block_rows = 1, .block_cols = 16});
    out.push_back(FloatFormat{.element = e,
                              .granularity = Granularity::kGroup,
                              .block_rows = 128,
                              .block_cols = 128,
                              .saturate = false});
  }
  for (const Element e : {Element::kE4M3, Element::kE5M2, Element::kE2M3, Element::kE3M2,
                          Element::kE2M1, Element::kInt8}) {
    out.push_back(MxFormat{.element = e});
    out.push_back(MxFormat{.element = e, .block = 16});
  }
  out.push_back(Nvfp4Format{});
  return out;
}

TEST(FormatText, ExamplesParseToTheirFormats) {
  EXPECT_EQ(ParseFormat("int4"), Format(IntFormat{.bits = 4, .group = 128}));
  EXPECT_EQ(ParseFormat("int4:g128:asym"), Format(IntFormat{.bits = 4, .symmetric = false}));
  EXPECT_EQ(ParseFormat("int8:channel"),
            Format(IntFormat{.bits = 8, .granularity = Granularity::kChannel}));
  EXPECT_EQ(ParseFormat("int3:g48:flat:mse=3"),
            Format(IntFormat{
                .bits = 3, .group = 48, .flat = true, .observer = ObserverSpec::Parse("mse:3")}));
  EXPECT_EQ(ParseFormat("nf4:b64:dq"), Format(Nf4Format{.block = 64, .double_quant = true}));
  EXPECT_EQ(ParseFormat("bnb-fp4:b128"), Format(Nf4Format{.block = 128, .map = Bnb4Map::kFp4}));
  EXPECT_EQ(ParseFormat("fp8-e4m3:128x128"), Format(FloatFormat{.element = Element::kE4M3,
                                                                .granularity = Granularity::kGroup,
                                                                .block_rows = 128,
                                                                .block_cols = 128}));
  EXPECT_EQ(ParseFormat("fp8-e5m2"), Format(FloatFormat{.element = Element::kE5M2}));
  EXPECT_EQ(ParseFormat("fp4"), Format(FloatFormat{.element = Element::kE2M1,
                                                   .granularity = Granularity::kGroup,
                                                   .block_rows = 1,
                                                   .block_cols = 32}));
  EXPECT_EQ(ParseFormat("mxfp4"), Format(MxFormat{.element = Element::kE2M1, .block = 32}));
  EXPECT_EQ(ParseFormat("mxint8:b16"), Format(MxFormat{.element = Element::kInt8, .block = 16}));
  EXPECT_EQ(ParseFormat("nvfp4"), Format(Nvfp4Format{}));
  EXPECT_THROW(ParseFormat("nvfp4:b32"), OptionError);
  EXPECT_EQ(ParseFormat("ternary"), Format(TernaryFormat{.granularity = Granularity::kTensor}));
}

TEST(FormatText, PrintsTheShortestTextAndReadsItBack) {
  EXPECT_EQ(FormatToString(IntFormat{.bits = 4}), "int4");
  EXPECT_EQ(FormatToString(IntFormat{.bits = 4, .symmetric = false, .group = 64}), "int4:g64:asym");
  EXPECT_EQ(FormatToString(Nf4Format{.block = 64, .double_quant = true}), "nf4:dq");
  EXPECT_EQ(FormatToString(Nf4Format{.double_quant = true, .map = Bnb4Map::kFp4}), "bnb-fp4:dq");
  EXPECT_EQ(FormatToString(ParseFormat("fp8-e4m3:1x32")), "fp8-e4m3:g32");
  EXPECT_EQ(FormatToString(ParseFormat("fp4:channel")), "fp4:channel");
  EXPECT_EQ(FormatToString(ParseFormat("int4:percentile=99.5")), "int4:percentile=99.5");
  for (const Format& f : SampleFormats()) {
    SCOPED_TRACE(FormatToString(f));
    EXPECT_EQ(ParseFormat(FormatToString(f)), f);
  }
}

TEST(FormatText, ErrorsNameTheText) {
  const auto parse = [](const char* t) { return [t] { ParseFormat(t); }; };
  ExpectErrorNaming<OptionError>(parse("int9"), {"\"int9\"", "unknown format"});
  ExpectErrorNaming<OptionError>(parse("int4:g0"), {"\"int4:g0\"", "\"g0\""});
  ExpectErrorNaming<OptionError>(parse("int4:gx"), {"\"gx\""});
  ExpectErrorNaming<OptionError>(parse("int4:g99999999999"), {"\"g99999999999\""});
  ExpectErrorNaming<OptionError>(parse("int4:foo"), {"\"foo\"", "int4"});
  ExpectErrorNaming<OptionError>(parse("int4:sym:asym"), {"\"asym\"", "\"sym\""});
  ExpectErrorNaming<OptionError>(parse("int4:g32:channel"), {"\"channel\"", "\"g32\""});
  ExpectErrorNaming<OptionError>(parse("int4:"), {"empty option"});
  ExpectErrorNaming<OptionError>(parse("int4:percentile=200"), {"\"percentile=200\""});
  ExpectErrorNaming<OptionError>(parse("int4:channel:flat"), {"flat groups"});
  ExpectErrorNaming<OptionError>(parse("ternary:asym"), {"\"asym\"", "ternary"});
  ExpectErrorNaming<OptionError>(parse("nf4:b16"), {"\"nf4:b16\"", "block", "16"});
  ExpectErrorNaming<OptionError>(parse("nf4:g64"), {"\"g64\"", "nf4"});
  ExpectErrorNaming<OptionError>(parse("fp8-e4m3:0x4"), {"\"0x4\""});
  ExpectErrorNaming<OptionError>(parse("fp8-e4m3:dq"), {"\"dq\"", "fp8-e4m3"});
  ExpectErrorNaming<OptionError>(parse("mxfp4:b0"), {"\"b0\""});
  ExpectErrorNaming<OptionError>(parse("mxfp4:b8192"), {"\"mxfp4:b8192\"", "block"});
  ExpectErrorNaming<OptionError>(parse("mxfp4:asym"), {"\"asym\"", "mxfp4"});
}

TEST(FormatRecord, RoundTripsEveryFamily) {
  for (const Format& f : SampleFormats()) {
    SCOPED_TRACE(FormatToString(f));
    const json r = FormatToRecord(f);
    EXPECT_EQ(FormatFromRecord(r), f);
    // The codec writes the record it was made from.
    EXPECT_EQ(CodecRecord(*MakeCodec(f, 8, 64)), r);
  }
}

TEST(FormatRecord, KeepsTheRecordsCheckpointsHold) {
  EXPECT_EQ(FormatToRecord(IntFormat{.bits = 4, .group = 32}),
            json::parse(R"({"codec":"int","bits":4,"symmetric":true,"granularity":"group",
                            "group_size":32})"));
  EXPECT_EQ(FormatToRecord(ParseFormat("fp8-e4m3:128x128")),
            json::parse(R"({"codec":"fp","format":"e4m3","scale":"block","block":[128,128],
                            "saturate":true})"));
  EXPECT_EQ(FormatToRecord(ParseFormat("ternary")),
            json::parse(R"({"codec":"ternary","granularity":"tensor"})"));
  // Optional keys take their defaults.
  EXPECT_EQ(FormatFromRecord(json::parse(R"({"codec":"int","bits":3,"group_size":128})")),
            Format(IntFormat{.bits = 3}));
  EXPECT_EQ(FormatFromRecord(json::parse(R"({"codec":"nf4"})")), Format(Nf4Format{}));
  EXPECT_EQ(FormatFromRecord(json::parse(R"({"codec":"mx","element":"e2m1"})")),
            Format(MxFormat{}));
}

struct BadRecord {
  const char* record;
  const char* key;  // the key the error must name
};

TEST(FormatRecord, RefusesUnknownKeysWrongTypesAndOutOfRangeValues) {
  const BadRecord cases[] = {
      // int
      {R"({"codec":"int","bits":4,"symetric":false,"group_size":32})", "\"symetric\""},
      {R"({"codec":"int","bits":"4","group_size":32})", "\"bits\""},
      {R"({"codec":"int","bits":4.0,"group_size":32})", "\"bits\""},
      {R"({"codec":"int","bits":9,"group_size":32})", "\"bits\""},
      {R"({"codec":"int","bits":4,"group_size":0})", "\"group_size\""},
      {R"({"codec":"int","bits":4,"group_size":-5})", "\"group_size\""},
      {R"({"codec":"int","bits":4,"group_size":18446744073709551615})", "\"group_size\""},
      {R"({"codec":"int","bits":4,"symmetric":1,"group_size":32})", "\"symmetric\""},
      {R"({"codec":"int","bits":4,"granularity":"row"})", "\"granularity\""},
      {R"({"codec":"int","bits":4,"granularity":"channel","group_size":32})", "\"group_size\""},
      {R"({"codec":"int","bits":4})", "\"group_size\""},
      {R"({"codec":"int","group_size":32})", "\"bits\""},
      {R"({"codec":"int","bits":4,"group_size":32,"observer":"median"})", "\"observer\""},
      {R"({"codec":"int","bits":4,"group_size":32,"observer":3})", "\"observer\""},
      {R"({"codec":"int","bits":4,"group_size":32,"flat_groups":"yes"})", "\"flat_groups\""},
      // ternary
      {R"({"codec":"ternary","granularity":"tensor","bits":2})", "\"bits\""},
      {R"({"codec":"ternary","granularity":7})", "\"granularity\""},
      {R"({"codec":"ternary","granularity":"group","group_size":0})", "\"group_size\""},
      // nf4
      {R"({"codec":"nf4","block":64,"double_quantize":true})", "\"double_quantize\""},
      {R"({"codec":"nf4","block":"64"})", "\"block\""},
      {R"({"codec":"nf4","block":16})", "\"block\""},
      {R"({"codec":"nf4","double_quant":"true"})", "\"double_quant\""},
      // fp
      {R"({"codec":"fp","format":"e4m3","scales":"channel"})", "\"scales\""},
      {R"({"codec":"fp","format":"e9m9"})", "\"format\""},
      {R"({"codec":"fp","format":"int8"})", "\"format\""},
      {R"({"codec":"fp","format":4})", "\"format\""},
      {R"({"codec":"fp","format":"e4m3","scale":"block","block":[0,32]})", "\"block\""},
      {R"({"codec":"fp","format":"e4m3","scale":"block","block":32})", "\"block\""},
      {R"({"codec":"fp","format":"e4m3","scale":"block"})", "\"block\""},
      {R"({"codec":"fp","format":"e4m3","scale":"channel","block":[1,32]})", "\"block\""},
      {R"({"codec":"fp","format":"e4m3","saturate":0})", "\"saturate\""},
      // mx
      {R"({"codec":"mx","element":"e2m1","blocks":32})", "\"blocks\""},
      {R"({"codec":"mx","element":"int4"})", "\"element\""},
      {R"({"codec":"mx","element":"e2m1","block":0})", "\"block\""},
      {R"({"codec":"mx","element":"e2m1","block":true})", "\"block\""},
      // the envelope
      {R"({"codec":"int4","bits":4})", "\"int4\""},
      {R"({"bits":4})", "\"codec\""},
  };
  for (const BadRecord& c : cases) {
    SCOPED_TRACE(c.record);
    ExpectErrorNaming<OptionError>([&] { FormatFromRecord(json::parse(c.record), "test.json"); },
                                   {"test.json", c.key});
    EXPECT_THROW(MakeCodec(json::parse(c.record), 4, 64), OptionError);
  }
}

TEST(FormatRecord, CheckpointErrorsNameFileTensorAndKey) {
  testing::ScratchDir dir;
  const json record = {{"format_version", kQtoolFormatVersion},
                       {"codec", {{"codec", "int"}, {"bits", 4}, {"group_size", 32}}},
                       {"tensors",
                        {{"w",
                          {{"codec", "int"},
                           {"bits", 4},
                           {"symetric", false},
                           {"group_size", 32},
                           {"shape", {2, 32}},
                           {"dtype", "F32"}}}}}};
  const json header = {
      {"__metadata__", {{"format", "pt"}, {kQtoolMetadataKey, record.dump()}}},
      {"w.qweight", {{"dtype", "U8"}, {"shape", {2, 16}}, {"data_offsets", {0, 32}}}}};
  testing::WriteFile(dir / "model.safetensors",
                     testing::SafetensorsImage(header.dump(), std::string(32, '\0')));
  const Checkpoint ck = Checkpoint::Open(dir.path());
  ExpectErrorNaming<FormatError>([&] { ReadTensorF32(ck, "w", 1); },
                                 {ck.dir().string(), "\"w\"", "\"symetric\""});
}

struct LayoutCase {
  const char* format;
  std::vector<StoredPart> parts;  // of a 7 x 33 matrix
};

TEST(FormatTraits, StoredLayoutsOfEveryFamily) {
  const LayoutCase cases[] = {
      {"int4:g32:asym",
       {{".qweight", DType::kU8, {7, 17}},
        {".scales", DType::kF32, {7, 2}},
        {".zeros", DType::kU8, {7, 2}}}},
      {"int3:g48:flat", {{".qweight", DType::kU8, {7, 13}}, {".scales", DType::kF32, {5, 1}}}},
      {"int8:tensor", {{".qweight", DType::kU8, {7, 33}}, {".scales", DType::kF32, {1, 1}}}},
      {"int4:g16:gidx",
       {{".qweight", DType::kU8, {7, 17}},
        {".scales", DType::kF32, {7, 3}},
        {".g_idx", DType::kI32, {33}}}},
      {"ternary:g16", {{".qweight", DType::kU8, {7, 9}}, {".scales", DType::kF32, {7, 3}}}},
      {"nf4", {{".qweight", DType::kU8, {7, 17}}, {".absmax", DType::kF32, {4}}}},
      {"nf4:dq",
       {{".qweight", DType::kU8, {7, 17}},
        {".absmax", DType::kU8, {4}},
        {".absmax_scale", DType::kF32, {1}},
        {".absmax_offset", DType::kF32, {1}}}},
      {"fp8-e4m3:2x16", {{".qweight", DType::kF8E4M3, {7, 33}}, {".scales", DType::kF32, {4, 3}}}},
      {"fp8-e5m2", {{".qweight", DType::kF8E5M2, {7, 33}}, {".scales", DType::kF32, {7, 1}}}},
      {"fp4", {{".qweight", DType::kU8, {7, 17}}, {".scales", DType::kF32, {7, 2}}}},
      {"mxfp6-e2m3", {{".qweight", DType::kU8, {7, 25}}, {".scales", DType::kF8E8M0, {7, 2}}}},
      {"mxint8:b16", {{".qweight", DType::kU8, {7, 33}}, {".scales", DType::kF8E8M0, {7, 3}}}},
      {"nvfp4",
       {{".qweight", DType::kU8, {7, 17}},
        {".scales", DType::kF8E4M3, {7, 3}},
        {".global_scale", DType::kF32, {1}}}},
  };
  for (const LayoutCase& c : cases) {
    SCOPED_TRACE(c.format);
    const auto parts = Layout(ParseFormat(c.format), 7, 33);
    ASSERT_EQ(parts.size(), c.parts.size());
    for (size_t i = 0; i < parts.size(); ++i) {
      EXPECT_EQ(parts[i].suffix, c.parts[i].suffix);
      EXPECT_EQ(parts[i].dtype, c.parts[i].dtype) << parts[i].suffix;
      EXPECT_EQ(parts[i].shape, c.parts[i].shape) << parts[i].suffix;
    }
  }
  // Large matrices: INT4 g128 is 4 bits + one f32 scale per 128, MXFP4 4 bits + 8 per 32.
  EXPECT_DOUBLE_EQ(BitsPerWeight(IntFormat{.bits = 4}, 4096, 4096), 4.25);
  EXPECT_DOUBLE_EQ(BitsPerWeight(MxFormat{}, 4096, 4096), 4.25);
  EXPECT_DOUBLE_EQ(BitsPerWeight(Nf4Format{}, 4096, 4096), 4.5);
  EXPECT_DOUBLE_EQ(BitsPerWeight(Nvfp4Format{}, 4096, 4096), 4.5 + 32.0 / (4096.0 * 4096.0));
}

TEST(FormatCli, TextFormEqualsTheFlags) {
  QTOOL_REQUIRE_SHARED();
  const auto model = *testing::SharedDir() / "models" / "stories260K" / "hf";
  struct Pair {
    std::vector<std::string> text, flags;
  };
  const Pair pairs[] = {
      {{"--format", "int4:g32:asym"}, {"--format", "int4", "--group", "32", "--asym"}},
      {{"--format", "int3:g48:flat:mse"},
       {"--bits", "3", "--group", "48", "--flat-groups", "--observer", "mse"}},
      {{"--format", "nf4:b128:dq"}, {"--format", "nf4", "--block", "128", "--double-quant"}},
      {{"--format", "fp8-e4m3:16x32:nosat"},
       {"--format", "fp8-e4m3", "--block", "16x32", "--no-saturate"}},
      {{"--format", "ternary:channel"}, {"--format", "ternary", "--granularity", "channel"}},
      {{"--format", "mxfp6-e2m3:b16"}, {"--format", "mxfp6-e2m3", "--block", "16"}},
  };
  for (const Pair& p : pairs) {
    SCOPED_TRACE(p.text[1]);
    testing::ScratchDir dir;
    std::vector<std::string> a = {"quantize", model.string(), "-o", (dir / "a").string(), "-q"};
    std::vector<std::string> b = {"quantize", model.string(), "-o", (dir / "b").string(), "-q"};
    a.insert(a.end(), p.text.begin(), p.text.end());
    b.insert(b.end(), p.flags.begin(), p.flags.end());
    const auto ra = testing::RunCli(a), rb = testing::RunCli(b);
    ASSERT_EQ(ra.exit_code, 0) << ra.err;
    ASSERT_EQ(rb.exit_code, 0) << rb.err;
    EXPECT_EQ(testing::ReadFile(dir / "a" / "model.safetensors"),
              testing::ReadFile(dir / "b" / "model.safetensors"));
  }
  testing::ScratchDir dir;
  const auto conflict = testing::RunCli({"quantize", model.string(), "-o", (dir / "c").string(),
                                         "--format", "int4:g32", "--group", "64"});
  EXPECT_EQ(conflict.exit_code, 3);
  EXPECT_NE(conflict.err.find("--group"), std::string::npos) << conflict.err;
  const auto bad = testing::RunCli(
      {"quantize", model.string(), "-o", (dir / "d").string(), "--format", "nf4:b16"});
  EXPECT_EQ(bad.exit_code, 3);
  EXPECT_NE(bad.err.find("nf4:b16"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace qtool
