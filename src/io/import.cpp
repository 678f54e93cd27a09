// GPTQ / AWQ / compressed-tensors / bitsandbytes / FP8 block-scaled checkpoints read as qtool's
// quantised checkpoints (qtool/io/import.hpp). Layouts: docs/EXPORT.md and
// qtool/io/export_layouts.hpp, which writes the same tensors.
#include "qtool/io/import.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "qtool/core/checked.hpp"
#include "qtool/core/enum_names.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/half.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/format/pack.hpp"
#include "qtool/io/export_layouts.hpp"
#include "qtool/io/format_record.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/kernels/convert.hpp"
#include "qtool/quant/codec.hpp"
#include "qtool/quant/nf4_codec.hpp"

namespace qtool {
using json = nlohmann::json;

namespace {

// A key of quantization_config: FormatError naming config.json and the key when it is absent
// (without a default) or of another type.
class ConfigReader {
 public:
  ConfigReader(const json& qc, std::string where) : qc_(qc), where_(std::move(where)) {}

  template <typename T>
  T Get(const char* key, std::optional<T> fallback = std::nullopt) const {
    const auto it = qc_.find(key);
    if (it == qc_.end() || it->is_null()) {
      QTOOL_CHECK(fallback.has_value(), FormatError, "{}: quantization_config has no \"{}\"",
                  where_, key);
      return *fallback;
    }
    try {
      return it->get<T>();
    } catch (const json::exception&) {
      throw FormatError(fmt::format("{}: quantization_config \"{}\" is {}, of the wrong type",
                                    where_, key, it->dump()));
    }
  }
  void Require(bool ok, const char* key, const std::string& what) const {
    QTOOL_CHECK(ok, FormatError, "{}: quantization_config \"{}\" = {}: {}", where_, key,
                qc_.contains(key) ? qc_.at(key).dump() : "absent", what);
  }
  const std::string& where() const { return where_; }

 private:
  const json& qc_;
  std::string where_;
};

DType OriginalDType(const json& config) {
  for (const char* key : {"torch_dtype", "dtype"}) {
    const auto it = config.find(key);
    if (it == config.end() || !it->is_string()) continue;
    if (*it == "bfloat16") return DType::kBF16;
    if (*it == "float16") return DType::kF16;
  }
  return DType::kF32;
}

ImportScheme GptqScheme(const ConfigReader& in) {
  ImportScheme s;
  s.format = ImportFormat::kGptq;
  s.bits = in.Get<int>("bits");
  in.Require(s.bits == 2 || s.bits == 3 || s.bits == 4 || s.bits == 8, "bits",
             "GPTQ has 2, 3, 4 or 8 bits");
  const int64_t g = in.Get<int64_t>("group_size", -1);
  in.Require(g == -1 || (g > 0 && g <= (int64_t{1} << 30)), "group_size",
             "a positive group size or -1 (per channel)");
  s.group_size = g == -1 ? 0 : g;
  s.symmetric = in.Get<bool>("sym", true);
  const std::string fmt =
      in.Get<std::string>("checkpoint_format", in.Get<std::string>("format", "gptq"));
  in.Require(fmt == "gptq" || fmt == "gptq_v2", "checkpoint_format",
             "qtool reads the GPTQ formats gptq (v1) and gptq_v2");
  s.gptq_v2 = fmt == "gptq_v2";
  const std::string pack = in.Get<std::string>("pack_dtype", "int32");
  in.Require(pack == "int32", "pack_dtype", "qtool reads int32 packing");
  return s;
}

ImportScheme AwqScheme(const ConfigReader& in) {
  ImportScheme s;
  s.format = ImportFormat::kAwq;
  s.bits = in.Get<int>("bits", 4);
  in.Require(s.bits == 4, "bits", "AWQ GEMM has 4 bits");
  s.group_size = in.Get<int64_t>("group_size", 128);
  in.Require(s.group_size > 0 && s.group_size <= (int64_t{1} << 30), "group_size",
             "a positive group size");
  s.symmetric = false;
  std::string version = in.Get<std::string>("version", "gemm");
  std::transform(version.begin(), version.end(), version.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  in.Require(version == "gemm", "version", "qtool reads AWQ's GEMM layout");
  in.Require(in.Get<bool>("zero_point", true), "zero_point", "qtool reads AWQ with zero-points");
  return s;
}

ImportScheme CompressedTensorsScheme(const json& qc, const ConfigReader& in) {
  ImportScheme s;
  s.format = ImportFormat::kCompressedTensors;
  s.ct_format = in.Get<std::string>("format");
  const bool naive = s.ct_format == "naive-quantized";
  in.Require(naive || s.ct_format == "pack-quantized" || s.ct_format == "int-quantized" ||
                 s.ct_format == "float-quantized" || s.ct_format == "nvfp4-pack-quantized" ||
                 s.ct_format == "mxfp4-pack-quantized",
             "format",
             "qtool reads pack-quantized, int-quantized, float-quantized, naive-quantized (8 "
             "bits), nvfp4-pack-quantized and mxfp4-pack-quantized");
  const std::string status = in.Get<std::string>("quantization_status", "compressed");
  in.Require(status == "compressed", "quantization_status", "qtool reads compressed checkpoints");
  const auto groups = qc.find("config_groups");
  in.Require(groups != qc.end() && groups->is_object() && groups->size() == 1, "config_groups",
             "qtool reads one scheme per checkpoint (one config group)");
  const json& group = groups->begin().value();
  const std::string where = in.where() + " config_groups." + groups->begin().key();
  QTOOL_CHECK(group.is_object() && group.contains("weights") && group["weights"].is_object(),
              FormatError, "{}: no \"weights\" object", where);
  const ConfigReader w(group["weights"], where + ".weights");
  s.bits = w.Get<int>("num_bits");
  const std::string type = w.Get<std::string>("type");
  if (naive) {
    // llm-compressor writes 8-bit weights that need no packing as naive-quantized: the tensors
    // of float-quantized (F8_E4M3) or int-quantized (I8) under another name.
    w.Require(s.bits == 8, "num_bits", "naive-quantized is read for 8-bit weights");
    s.ct_format = type == "float" ? "float-quantized" : "int-quantized";
  }
  s.symmetric = w.Get<bool>("symmetric", true);
  s.strategy = w.Get<std::string>("strategy");
  const json actorder = group["weights"].value("actorder", json(nullptr));
  // "weight" (and its alias "static", llm-compressor's default) orders GPTQ's columns but keeps
  // the groups in place; "group" (alias "dynamic") needs a g_idx, which compressed-tensors does
  // not store here.
  w.Require(actorder.is_null() || actorder == false || actorder == "weight" || actorder == "static",
            "actorder",
            "compressed-tensors stores no g_idx here, so act-order \"group\" cannot be read");
  if (s.ct_format == "nvfp4-pack-quantized" || s.ct_format == "mxfp4-pack-quantized") {
    // E2M1 weights: NVFP4 (E4M3 scales per 16 and a global scale, strategy tensor_group) or
    // MXFP4 (E8M0 exponents per 32 stored as uint8, strategy group).
    const bool nv = s.ct_format == "nvfp4-pack-quantized";
    w.Require(type == "float" && s.bits == 4, "type", "FP4 (E2M1) weights");
    w.Require(s.symmetric, "symmetric", "qtool reads symmetric FP4 weights");
    w.Require(s.strategy == (nv ? "tensor_group" : "group"), "strategy",
              nv ? "nvfp4 has the strategy tensor_group" : "mxfp4 has the strategy group");
    s.group_size = w.Get<int64_t>("group_size");
    w.Require(s.group_size == (nv ? 16 : 32), "group_size",
              nv ? "nvfp4 has blocks of 16" : "mxfp4 has blocks of 32");
    const std::string scale_dtype =
        w.Get<std::string>("scale_dtype", nv ? "torch.float8_e4m3fn" : "torch.uint8");
    w.Require(scale_dtype == (nv ? "torch.float8_e4m3fn" : "torch.uint8"), "scale_dtype",
              nv ? "nvfp4's scales are torch.float8_e4m3fn" : "mxfp4's scales are torch.uint8");
  } else if (s.ct_format == "float-quantized") {
    w.Require(type == "float" && s.bits == 8, "type", "float-quantized holds FP8 (E4M3)");
    s.symmetric = true;
  } else {
    w.Require(type == "int", "type", "pack- and int-quantized hold integers");
    w.Require(s.bits >= 2 && s.bits <= 8, "num_bits", "qtool reads 2 to 8 bits");
  }
  if (s.bits == 4 && type == "float") {
    // (read above)
  } else if (s.strategy == "group") {
    s.group_size = w.Get<int64_t>("group_size");
    w.Require(s.group_size > 0 && s.group_size <= (int64_t{1} << 30), "group_size",
              "a positive group size");
  } else if (s.strategy == "block") {
    w.Require(s.ct_format == "float-quantized", "strategy", "blocks of integers are not read");
    s.block = w.Get<std::vector<int64_t>>("block_structure");
    w.Require(s.block.size() == 2 && s.block[0] > 0 && s.block[1] > 0 && s.block[0] <= 4096 &&
                  s.block[1] <= 4096,
              "block_structure", "two positive block sides up to 4096");
  } else {
    w.Require(s.strategy == "tensor" || s.strategy == "channel", "strategy",
              "qtool reads tensor, channel, group and block strategies");
  }
  const json inputs = group.value("input_activations", json(nullptr));
  if (!inputs.is_null()) {
    // The two input schemes qtool runs: W8A8 (dynamic per-token symmetric INT8, with INT8
    // weights) and W8A8-FP8 (static per-tensor symmetric FP8 E4M3, with FP8 weights). Anything
    // else (dynamic FP8, per-channel or asymmetric inputs, ...) is refused, naming it.
    const ConfigReader a(inputs, where + ".input_activations");
    const std::string type = a.Get<std::string>("type");
    const std::string strategy = a.Get<std::string>("strategy");
    const bool dynamic = a.Get<bool>("dynamic", false);
    const bool int8 =
        s.ct_format == "int-quantized" && type == "int" && strategy == "token" && dynamic;
    const bool fp8 =
        s.ct_format == "float-quantized" && type == "float" && strategy == "tensor" && !dynamic;
    QTOOL_CHECK(a.Get<int>("num_bits") == 8 && a.Get<bool>("symmetric", true) && (int8 || fp8),
                FormatError,
                "{}: quantization_config \"input_activations\" = {} with {} weights: qtool runs "
                "dynamic per-token symmetric INT8 inputs with int-quantized weights (W8A8) and "
                "static per-tensor symmetric FP8 inputs with float-quantized weights (W8A8-FP8)",
                where, inputs.dump(), s.ct_format);
    s.int8_activations = int8;
    s.fp8_static_activations = fp8;
  }
  return s;
}

ImportScheme BnbScheme(const ConfigReader& in) {
  ImportScheme s;
  s.format = ImportFormat::kBnb;
  if (in.Get<bool>("load_in_8bit", false)) {
    s.bits = 8;  // LLM.int8: int8 rows with their absmax SCB
    const double t = in.Get<double>("llm_int8_threshold", 6.0);
    in.Require(std::isfinite(t) && t >= 0 && t <= 65504, "llm_int8_threshold",
               "a threshold from 0 to 65504 (f16's largest value)");
    s.llm_int8_threshold = static_cast<float>(t);
    return s;
  }
  in.Require(in.Get<bool>("load_in_4bit", false), "load_in_4bit",
             "qtool reads bitsandbytes' 4-bit and LLM.int8 checkpoints");
  s.bits = 4;
  const std::string storage = in.Get<std::string>("bnb_4bit_quant_storage", "uint8");
  in.Require(storage == "uint8", "bnb_4bit_quant_storage", "qtool reads uint8 storage");
  return s;
}

ImportScheme Fp8Scheme(const ConfigReader& in) {
  ImportScheme s;
  s.format = ImportFormat::kFp8;
  s.bits = 8;
  const std::string f = in.Get<std::string>("fmt", "e4m3");
  in.Require(f == "e4m3", "fmt", "qtool reads FP8 E4M3 weights");
  s.block = in.Get<std::vector<int64_t>>("weight_block_size");
  in.Require(s.block.size() == 2 && s.block[0] > 0 && s.block[1] > 0 && s.block[0] <= 4096 &&
                 s.block[1] <= 4096,
             "weight_block_size", "two positive block sides up to 4096");
  return s;
}

constexpr EnumName<ImportFormat> kImportFormatNames[] = {
    {ImportFormat::kGptq, "gptq"},
    {ImportFormat::kAwq, "awq"},
    {ImportFormat::kCompressedTensors, "compressed-tensors"},
    {ImportFormat::kBnb, "bitsandbytes"},
    {ImportFormat::kFp8, "fp8"}};

const char* FormatName(ImportFormat f) { return NameOf(kImportFormatNames, f); }

// Little-endian element i of a tensor's bytes (which need not be aligned).
template <typename T>
T At(std::span<const std::byte> b, int64_t i) {
  T v;
  std::memcpy(&v, b.data() + i * static_cast<int64_t>(sizeof(T)), sizeof(T));
  return v;
}

std::vector<uint32_t> WordsOf(const CheckpointTensor& t) {
  const std::span<const std::byte> b = t.data();
  std::vector<uint32_t> w(b.size() / 4);
  std::memcpy(w.data(), b.data(), w.size() * 4);
  return w;
}

// Scales widened to f32 (exact from F16 and BF16), each checked finite.
std::vector<float> ScalesF32(const CheckpointTensor& t, const std::string& where) {
  std::vector<float> v(static_cast<size_t>(t.info->numel()));
  ConvertToF32(t.data().data(), t.info->dtype, t.info->numel(), v.data());
  for (size_t i = 0; i < v.size(); ++i) {
    QTOOL_CHECK(std::isfinite(v[i]), NumericError, "{} holds {} at index {}", where, v[i], i);
  }
  return v;
}

bool IsScaleType(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

// One integer weight in qtool's terms: codes, per-group scales and zero-points [rows, groups]
// and the group of each column.
struct IntGrid {
  int64_t rows = 0, cols = 0, groups = 1;
  int bits = 4;
  std::vector<uint8_t> codes;     // [rows, cols], one per byte; or
  std::vector<std::byte> packed;  // the codes packed as qtool's codec stores them (pack.hpp)
  std::vector<float> scales;
  std::vector<uint8_t> zeros;
  std::vector<int32_t> g_idx;  // empty: c / group_size
};

}  // namespace

std::string ImportScheme::Describe() const {
  std::string s = FormatName(format);
  switch (format) {
    case ImportFormat::kGptq:
      s += fmt::format(" ({}), int{} {}, {}", gptq_v2 ? "gptq_v2" : "gptq v1", bits,
                       symmetric ? "sym" : "asym",
                       group_size ? fmt::format("group {}", group_size) : "per channel");
      break;
    case ImportFormat::kAwq:
      s += fmt::format(" gemm, int4 asym, group {}", group_size);
      break;
    case ImportFormat::kCompressedTensors:
      if (ct_format == "nvfp4-pack-quantized" || ct_format == "mxfp4-pack-quantized") {
        s += fmt::format(" {}, e2m1, group {}", ct_format, group_size);
        break;
      }
      s += fmt::format(" {}, {}{} {}, {}", ct_format, ct_format == "float-quantized" ? "fp" : "int",
                       bits, symmetric ? "sym" : "asym",
                       strategy == "group"   ? fmt::format("group {}", group_size)
                       : strategy == "block" ? fmt::format("block {}x{}", block[0], block[1])
                                             : strategy);
      if (int8_activations) s += ", int8 per-token activations";
      if (fp8_static_activations) s += ", static fp8 per-tensor activations";
      break;
    case ImportFormat::kBnb:
      if (bits != 8) {
        s += " 4-bit";
      } else if (llm_int8_threshold > 0) {
        s += fmt::format(" LLM.int8 (SCB), input columns with a value of {:g} or more in float",
                         llm_int8_threshold);
      } else {
        s += " LLM.int8 (SCB), every input column as INT8";
      }
      break;
    case ImportFormat::kFp8:
      s += fmt::format(" e4m3, {}x{} block scales (weight_scale_inv)", block[0], block[1]);
      break;
  }
  return s;
}

std::optional<ImportScheme> DetectImportScheme(const Checkpoint& ck) {
  if (!ck.config()) return std::nullopt;
  const json& config = *ck.config();
  const auto it = config.find("quantization_config");
  if (it == config.end() || it->is_null()) return std::nullopt;
  const std::string where = (ck.dir() / "config.json").string();
  QTOOL_CHECK(it->is_object(), FormatError, "{}: \"quantization_config\" is not an object", where);
  const json& qc = *it;
  const ConfigReader in(qc, where);
  const std::string method = in.Get<std::string>("quant_method");
  if (method == "qtool") return std::nullopt;
  ImportScheme s;
  if (method == "gptq") {
    s = GptqScheme(in);
  } else if (method == "awq") {
    s = AwqScheme(in);
  } else if (method == "compressed-tensors") {
    s = CompressedTensorsScheme(qc, in);
  } else if (method == "bitsandbytes") {
    s = BnbScheme(in);
  } else if (method == "fp8") {
    s = Fp8Scheme(in);
  } else {
    throw FormatError(fmt::format(
        "{}: quant_method \"{}\" is none that qtool reads (gptq, awq, compressed-tensors, "
        "bitsandbytes, fp8, qtool)",
        where, method));
  }
  s.dtype = OriginalDType(config);
  return s;
}

std::optional<ImportedCheckpoint> ImportedCheckpoint::Open(const Checkpoint& ck) {
  auto scheme = DetectImportScheme(ck);
  if (!scheme) return std::nullopt;
  return ImportedCheckpoint(ck, *scheme);
}

std::shared_ptr<const ImportedCheckpoint> ImportedCheckpoint::Shared(const Checkpoint& ck) {
  return std::static_pointer_cast<const ImportedCheckpoint>(
      ck.Derived("qtool.import", [&ck]() -> std::shared_ptr<const void> {
        auto opened = Open(ck);
        if (!opened) return nullptr;
        return std::make_shared<const ImportedCheckpoint>(std::move(*opened));
      }));
}

std::string ImportedCheckpoint::Where(const CheckpointTensor& t) const {
  return fmt::format("{}: tensor \"{}\"", t.file->path().string(), t.info->name);
}

ImportedCheckpoint::ImportedCheckpoint(const Checkpoint& ck, ImportScheme scheme)
    : ck_(&ck), scheme_(std::move(scheme)) {
  // A quantised module is found by the tensor only its format's layout has.
  for (const CheckpointTensor& t : ck.tensors()) {
    const std::string& n = t.info->name;
    auto strip = [&](const char* suffix) -> std::optional<std::string> {
      const std::string s = suffix;
      if (n.size() > s.size() && n.ends_with(s)) return n.substr(0, n.size() - s.size());
      return std::nullopt;
    };
    std::optional<std::string> module;
    switch (scheme_.format) {
      case ImportFormat::kGptq:
      case ImportFormat::kAwq:
        module = strip(".qweight");
        break;
      case ImportFormat::kCompressedTensors:
        module = scheme_.ct_format.ends_with("pack-quantized") ? strip(".weight_packed")
                                                               : strip(".weight_scale");
        break;
      case ImportFormat::kBnb:
        module = scheme_.bits == 8 ? strip(".SCB") : strip(".weight.absmax");
        break;
      case ImportFormat::kFp8:
        module = strip(".weight_scale_inv");
        break;
    }
    if (module) AddWeight(*module);
  }
  QTOOL_CHECK(!weights_.empty(), FormatError,
              "{}: config.json describes a {} checkpoint, but no tensor is stored in its layout",
              ck.dir().string(), FormatName(scheme_.format));
}

void ImportedCheckpoint::AddWeight(const std::string& module) {
  const Checkpoint& ck = *ck_;
  Weight w;
  w.module = module;
  const std::string name = module + ".weight";
  auto get = [&](const std::string& suffix) -> const CheckpointTensor& {
    const CheckpointTensor* t = ck.Find(module + suffix);
    QTOOL_CHECK(t != nullptr, FormatError, "{}: quantised weight \"{}\" has no tensor \"{}{}\"",
                ck.dir().string(), name, module, suffix);
    w.parts.push_back(t);
    hidden_[t->info->name] = true;
    return *t;
  };
  auto find = [&](const std::string& suffix) -> const CheckpointTensor* {
    const CheckpointTensor* t = ck.Find(module + suffix);
    if (t) {
      w.parts.push_back(t);
      hidden_[t->info->name] = true;
    }
    return t;
  };
  auto expect = [&](const CheckpointTensor& t, std::initializer_list<DType> dtypes,
                    const std::vector<int64_t>& shape) {
    const bool type_ok = std::find(dtypes.begin(), dtypes.end(), t.info->dtype) != dtypes.end();
    QTOOL_CHECK(type_ok && t.info->shape == shape, FormatError,
                "{} is {} {}, but {} with weight [{}, {}] needs {} {}", Where(t),
                DTypeName(t.info->dtype), json(t.info->shape).dump(), scheme_.Describe(), w.rows,
                w.cols, DTypeName(*dtypes.begin()), json(shape).dump());
  };
  auto rank2 = [&](const CheckpointTensor& t, DType dtype) {
    QTOOL_CHECK(t.info->dtype == dtype && t.info->shape.size() == 2 && t.info->shape[0] > 0 &&
                    t.info->shape[1] > 0,
                FormatError, "{} is {} {}, but {} stores a non-empty {} matrix there", Where(t),
                DTypeName(t.info->dtype), json(t.info->shape).dump(), scheme_.Describe(),
                DTypeName(dtype));
  };
  const int b = scheme_.bits;
  auto groups_of = [&](int64_t g) { return g ? (w.cols + g - 1) / g : 1; };
  json codec;
  switch (scheme_.format) {
    case ImportFormat::kGptq: {
      const CheckpointTensor& qw = get(".qweight");
      rank2(qw, DType::kI32);
      w.rows = qw.info->shape[1];
      w.cols = qw.info->shape[0] * 32 / b;
      QTOOL_CHECK(w.rows * b % 32 == 0, FormatError,
                  "{}: {} output rows of {}-bit zero-points do not fill whole 32-bit words",
                  Where(qw), w.rows, b);
      const int64_t groups = groups_of(scheme_.group_size);
      expect(get(".qzeros"), {DType::kI32}, {groups, w.rows * b / 32});
      expect(get(".scales"), {DType::kF16, DType::kBF16, DType::kF32}, {groups, w.rows});
      if (const CheckpointTensor* gi = find(".g_idx")) {
        expect(*gi, {DType::kI32}, {w.cols});
        const int64_t g = scheme_.group_size ? scheme_.group_size : w.cols;
        for (int64_t c = 0; c < w.cols; ++c) {
          const int32_t v = At<int32_t>(gi->data(), c);
          QTOOL_CHECK(v >= 0 && v < groups, FormatError,
                      "{} holds group {} at column {}, outside 0..{}", Where(*gi), v, c,
                      groups - 1);
          w.act_order |= v != c / g;
        }
      }
      break;
    }
    case ImportFormat::kAwq: {
      const CheckpointTensor& qw = get(".qweight");
      rank2(qw, DType::kI32);
      w.cols = qw.info->shape[0];
      w.rows = qw.info->shape[1] * 8;
      const int64_t groups = groups_of(scheme_.group_size);
      expect(get(".qzeros"), {DType::kI32}, {groups, w.rows / 8});
      expect(get(".scales"), {DType::kF16, DType::kBF16, DType::kF32}, {groups, w.rows});
      break;
    }
    case ImportFormat::kCompressedTensors: {
      const bool packed = scheme_.ct_format == "pack-quantized";
      if (scheme_.ct_format != "pack-quantized" && scheme_.ct_format.ends_with("pack-quantized")) {
        // nvfp4/mxfp4: weight_packed U8 [rows, cols / 2], weight_scale [rows, cols / block]
        // (E4M3 or U8 E8M0), nvfp4's weight_global_scale [1].
        const bool nv = scheme_.ct_format == "nvfp4-pack-quantized";
        const CheckpointTensor& q = get(".weight_packed");
        rank2(q, DType::kU8);
        w.rows = q.info->shape[0];
        w.cols = q.info->shape[1] * 2;
        QTOOL_CHECK(w.cols % scheme_.group_size == 0, FormatError,
                    "{} is U8 {}: its {} columns are not whole blocks of {}", Where(q),
                    json(q.info->shape).dump(), w.cols, scheme_.group_size);
        expect(get(".weight_scale"), {nv ? DType::kF8E4M3 : DType::kU8},
               {w.rows, w.cols / scheme_.group_size});
        if (nv) expect(get(".weight_global_scale"), {DType::kF32, DType::kBF16, DType::kF16}, {1});
        QTOOL_CHECK(!ck.Find(module + ".input_global_scale"), FormatError,
                    "{}: \"{}.input_global_scale\": FP4 input activations are not run by qtool",
                    ck.dir().string(), module);
        codec = nv ? json{{"codec", "nvfp4"}}
                   : json{{"codec", "mx"}, {"element", "e2m1"}, {"block", scheme_.group_size}};
        break;
      }
      if (packed) {
        const CheckpointTensor& q = get(".weight_packed");
        rank2(q, DType::kI32);
        const CheckpointTensor& shape = get(".weight_shape");
        QTOOL_CHECK((shape.info->dtype == DType::kI64 || shape.info->dtype == DType::kI32) &&
                        shape.info->numel() == 2,
                    FormatError, "{} is {} {}, not the I64 [2] of the weight's shape", Where(shape),
                    DTypeName(shape.info->dtype), json(shape.info->shape).dump());
        const bool i64 = shape.info->dtype == DType::kI64;
        w.rows = i64 ? At<int64_t>(shape.data(), 0) : At<int32_t>(shape.data(), 0);
        w.cols = i64 ? At<int64_t>(shape.data(), 1) : At<int32_t>(shape.data(), 1);
        QTOOL_CHECK(w.rows > 0 && w.cols > 0 && w.rows <= (int64_t{1} << 32) &&
                        w.cols <= (int64_t{1} << 32),
                    FormatError, "{} holds the shape [{}, {}]", Where(shape), w.rows, w.cols);
        expect(q, {DType::kI32}, {w.rows, (w.cols * b + 31) / 32});
      } else {
        const CheckpointTensor& q = get(".weight");
        const DType dt = scheme_.ct_format == "int-quantized" ? DType::kI8 : DType::kF8E4M3;
        rank2(q, dt);
        w.rows = q.info->shape[0];
        w.cols = q.info->shape[1];
      }
      const CheckpointTensor& s = get(".weight_scale");
      std::vector<int64_t> sshape;
      if (scheme_.strategy == "tensor") {
        QTOOL_CHECK(IsScaleType(s.info->dtype) && s.info->numel() == 1, FormatError,
                    "{} is {} {}, but a tensor strategy stores one scale", Where(s),
                    DTypeName(s.info->dtype), json(s.info->shape).dump());
        sshape = s.info->shape;
      } else if (scheme_.strategy == "block") {
        sshape = {(w.rows + scheme_.block[0] - 1) / scheme_.block[0],
                  (w.cols + scheme_.block[1] - 1) / scheme_.block[1]};
      } else {
        sshape = {w.rows, groups_of(scheme_.strategy == "group" ? scheme_.group_size : 0)};
      }
      expect(s, {DType::kF32, DType::kF16, DType::kBF16}, sshape);
      if (!scheme_.symmetric) {
        const CheckpointTensor& z = get(".weight_zero_point");
        if (packed && z.info->dtype == DType::kI32) {
          expect(z, {DType::kI32}, {(w.rows * b + 31) / 32, sshape.back()});
        } else {
          expect(z, {DType::kI8}, sshape);
        }
      }
      if (packed) {
        // The part order: packed, scale, [zero-point], shape.
        const CheckpointTensor* shape = w.parts[1];
        w.parts.erase(w.parts.begin() + 1);
        w.parts.push_back(shape);
      }
      // Static FP8 inputs need each module's scale (checked on opening); any other scheme's
      // inputs are computed at run time or not quantised, so a static scale would be ignored.
      if (scheme_.fp8_static_activations) {
        StaticInputScale(ck, module);
      } else {
        QTOOL_CHECK(!ck.Find(module + ".input_scale"), FormatError,
                    "{}: \"{}.input_scale\": static input scales are read with a config whose "
                    "input_activations are static FP8 per tensor, and this one's are {}",
                    ck.dir().string(), module,
                    scheme_.int8_activations ? "dynamic INT8 per token" : "absent");
      }
      break;
    }
    case ImportFormat::kBnb: {
      if (b == 8) {
        // LLM.int8: weight I8 [out, in], SCB F32 [out] (each row's absmax); transformers also
        // saves a weight_format tensor, which says nothing here.
        const CheckpointTensor& q = get(".weight");
        rank2(q, DType::kI8);
        w.rows = q.info->shape[0];
        w.cols = q.info->shape[1];
        expect(get(".SCB"), {DType::kF32}, {w.rows});
        find(".weight_format");
        break;
      }
      const CheckpointTensor& q = get(".weight");
      const CheckpointTensor& absmax = get(".weight.absmax");
      const CheckpointTensor& map = get(".weight.quant_map");
      const CheckpointTensor* state = find(".weight.quant_state.bitsandbytes__nf4");
      if (!state) state = find(".weight.quant_state.bitsandbytes__fp4");
      QTOOL_CHECK(state && state->info->dtype == DType::kU8 && state->info->shape.size() == 1,
                  FormatError,
                  "{}: quantised weight \"{}\" has no U8 quant_state.bitsandbytes__nf4 or __fp4",
                  ck.dir().string(), name);
      json js;
      const std::span<const std::byte> sb = state->data();
      try {
        js = json::parse(std::string(reinterpret_cast<const char*>(sb.data()), sb.size()));
      } catch (const json::exception& e) {
        throw FormatError(fmt::format("{} is not JSON: {}", Where(*state), e.what()));
      }
      const ConfigReader st(js, Where(*state));
      const std::string type = st.Get<std::string>("quant_type");
      st.Require(type == "nf4" || type == "fp4", "quant_type", "nf4 or fp4");
      QTOOL_CHECK(state->info->name.ends_with(type), FormatError, "{} says quant_type \"{}\"",
                  Where(*state), type);
      const auto shape = st.Get<std::vector<int64_t>>("shape");
      st.Require(shape.size() == 2 && shape[0] > 0 && shape[1] > 0 &&
                     shape[0] <= (int64_t{1} << 32) && shape[1] <= (int64_t{1} << 32),
                 "shape", "a matrix");
      w.rows = shape[0];
      w.cols = shape[1];
      const int64_t block = st.Get<int64_t>("blocksize");
      st.Require(block >= 64 && block <= 4096 && (block & (block - 1)) == 0, "blocksize",
                 "a power of two from 64 to 4096");
      const int64_t n = w.rows * w.cols, nb = (n + block - 1) / block;
      expect(q, {DType::kU8}, {(n + 1) / 2, 1});
      expect(map, {DType::kF32}, {16});
      const bool nested = js.contains("nested_blocksize");
      if (nested) {
        const int64_t nblock = st.Get<int64_t>("nested_blocksize");
        st.Require(nblock > 0 && nblock <= 4096, "nested_blocksize", "a positive block");
        st.Require(st.Get<std::string>("nested_dtype", "float32") == "float32", "nested_dtype",
                   "float32");
        const float offset = st.Get<float>("nested_offset");
        st.Require(std::isfinite(offset), "nested_offset", "a finite number");
        expect(absmax, {DType::kU8}, {nb});
        expect(get(".weight.nested_absmax"), {DType::kF32}, {(nb + nblock - 1) / nblock});
        expect(get(".weight.nested_quant_map"), {DType::kF32}, {256});
      } else {
        expect(absmax, {DType::kF32}, {nb});
      }
      // The part order: weight, absmax, quant_map, [nested_absmax, nested_quant_map], state.
      w.parts.erase(std::find(w.parts.begin(), w.parts.end(), state));
      w.parts.push_back(state);
      // qtool's NF4 codec holds the grid when the maps are bitsandbytes' own NF4 or FP4 ones
      // (bitsandbytes writes them so).
      const Bnb4Map bnb_map = type == "fp4" ? Bnb4Map::kFp4 : Bnb4Map::kNf4;
      bool own = std::memcmp(map.data().data(), BnbQuantMap(bnb_map).data(), 64) == 0;
      if (nested) {
        own = own && js.at("nested_blocksize") == kNf4DoubleQuantBlock &&
              std::memcmp(w.parts[4]->data().data(), DynamicMap8().data(), 1024) == 0;
      }
      if (own) {
        codec = CodecRecord(
            *MakeCodec(Nf4Format{.block = block, .double_quant = nested, .map = bnb_map}, 1, 1));
      }
      // The state names the weight's original type.
      const std::string dtype = st.Get<std::string>("dtype", "float32");
      scheme_.dtype = dtype == "bfloat16"  ? DType::kBF16
                      : dtype == "float16" ? DType::kF16
                                           : DType::kF32;
      break;
    }
    case ImportFormat::kFp8: {
      const CheckpointTensor& q = get(".weight");
      rank2(q, DType::kF8E4M3);
      w.rows = q.info->shape[0];
      w.cols = q.info->shape[1];
      expect(get(".weight_scale_inv"), {DType::kF32, DType::kBF16, DType::kF16},
             {(w.rows + scheme_.block[0] - 1) / scheme_.block[0],
              (w.cols + scheme_.block[1] - 1) / scheme_.block[1]});
      break;
    }
  }
  // Sizes the packed layouts imply must be ones qtool can hold (rows * cols within int64 bytes).
  QTOOL_CHECK(CheckedMul<int64_t>(w.rows, w.cols).has_value(), FormatError,
              "{}: weight \"{}\" [{}, {}] is too large", ck.dir().string(), name, w.rows, w.cols);
  if (scheme_.format == ImportFormat::kBnb || !codec.is_null()) {
    // codec set above (bitsandbytes' null: decoded through the stored map)
  } else if (scheme_.format == ImportFormat::kFp8 || scheme_.ct_format == "float-quantized") {
    codec = {{"codec", "fp"}, {"format", "e4m3"}, {"saturate", true}};
    if (scheme_.format == ImportFormat::kFp8 || scheme_.strategy == "block") {
      codec["scale"] = "block";
      codec["block"] = scheme_.block;
    } else if (scheme_.strategy == "group") {
      codec["scale"] = "block";
      codec["block"] = {1, scheme_.group_size};
    } else {
      codec["scale"] = scheme_.strategy;
    }
  } else {
    codec = {{"codec", "int"}, {"bits", b}, {"symmetric", scheme_.symmetric}};
    const bool tensor =
        scheme_.format == ImportFormat::kCompressedTensors && scheme_.strategy == "tensor";
    const bool channel = scheme_.group_size == 0 && !tensor;
    codec["granularity"] = tensor ? "tensor" : channel ? "channel" : "group";
    if (!tensor && !channel) codec["group_size"] = scheme_.group_size;
    if (w.act_order) codec["g_idx"] = true;
  }
  if (!codec.is_null()) {
    try {
      codec = CodecRecord(*MakeCodec(codec, w.rows, w.cols));
      if (w.act_order) codec["g_idx"] = true;
    } catch (const OptionError& e) {
      throw FormatError(fmt::format("{}: weight \"{}\": {}", ck.dir().string(), name, e.what()));
    }
  }
  w.codec = std::move(codec);
  hidden_.erase(name);
  weights_.emplace(name, std::move(w));
}

std::vector<std::string> ImportedCheckpoint::LogicalNames() const {
  std::vector<std::string> out;
  for (const CheckpointTensor& t : ck_->tensors()) {
    if (!hidden_.contains(t.info->name) && !weights_.contains(t.info->name))
      out.push_back(t.info->name);
  }
  for (const auto& [name, w] : weights_) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> ImportedCheckpoint::QuantizedNames() const {
  std::vector<std::string> out;
  for (const auto& [name, w] : weights_) out.push_back(name);
  return out;
}

std::vector<int64_t> ImportedCheckpoint::Shape(const std::string& name) const {
  const auto it = weights_.find(name);
  if (it != weights_.end()) return {it->second.rows, it->second.cols};
  return ck_->Get(name).info->shape;
}

json ImportedCheckpoint::Record(const std::string& name) const {
  const Weight& w = weights_.at(name);
  if (w.codec.is_null()) return nullptr;
  json rec = w.codec;
  rec["shape"] = {w.rows, w.cols};
  rec["dtype"] = std::string(DTypeName(scheme_.dtype));
  return rec;
}

uint64_t ImportedCheckpoint::StoredBytes(const std::string& name) const {
  const auto it = weights_.find(name);
  if (it == weights_.end()) return ck_->Get(name).info->nbytes();
  uint64_t n = 0;
  for (const CheckpointTensor* t : it->second.parts) n += t->info->nbytes();
  return n;
}

namespace {

// The qtool int codec's stored tensors of a grid (int_codec.hpp): packed codes per row, f32
// scales and u8 zero-points [rows, groups] ([1, 1] per tensor), g_idx with act-order.
std::vector<std::vector<std::byte>> IntParts(const IntGrid& g, bool symmetric, bool per_tensor,
                                             bool act_order) {
  std::vector<std::vector<std::byte>> out;
  if (g.packed.empty()) {
    const int64_t row_bytes = PackedBytes(g.cols, g.bits);
    std::vector<std::byte> packed(static_cast<size_t>(g.rows * row_bytes));
    for (int64_t r = 0; r < g.rows; ++r) {
      PackCodes(g.codes.data() + r * g.cols, g.cols, g.bits,
                reinterpret_cast<uint8_t*>(packed.data()) + r * row_bytes);
    }
    out.push_back(std::move(packed));
  } else {
    out.push_back(g.packed);
  }
  const size_t n = per_tensor ? 1 : g.scales.size();
  std::vector<std::byte> scales(n * 4);
  std::memcpy(scales.data(), g.scales.data(), n * 4);
  out.push_back(std::move(scales));
  if (!symmetric) {
    std::vector<std::byte> zeros(n);
    std::memcpy(zeros.data(), g.zeros.data(), n);
    out.push_back(std::move(zeros));
  }
  if (act_order) {
    std::vector<std::byte> gi(g.g_idx.size() * 4);
    std::memcpy(gi.data(), g.g_idx.data(), gi.size());
    out.push_back(std::move(gi));
  }
  return out;
}

}  // namespace

std::vector<std::vector<std::byte>> ImportedCheckpoint::Stored(const std::string& name) const {
  const Weight& w = weights_.at(name);
  QTOOL_CHECK(!w.codec.is_null(), FormatError,
              "{}: weight \"{}\" is on a bitsandbytes grid that no qtool codec holds (a 4-bit map "
              "other than its NF4 and FP4 ones, or LLM.int8); it can only be decoded",
              ck_->dir().string(), name);
  const int b = scheme_.bits;
  const std::string codec = w.codec.at("codec").get<std::string>();
  if (codec == "fp") {
    // FP8 codes as they are; the scales widened to f32 in qtool's [BR, BC] ([1, 1] per tensor).
    std::vector<std::vector<std::byte>> out;
    const std::span<const std::byte> q = w.parts[0]->data();
    out.emplace_back(q.begin(), q.end());
    const std::vector<float> s = ScalesF32(*w.parts[1], Where(*w.parts[1]));
    out.emplace_back(s.size() * 4);
    std::memcpy(out.back().data(), s.data(), s.size() * 4);
    return out;
  }
  if (codec == "nvfp4" || codec == "mx") {
    // compressed-tensors' FP4 bytes are qtool's: codes, block scales (E4M3, or E8M0 as U8) and
    // NVFP4's global scale, widened to f32. A NaN scale (E4M3 0x7f/0xff, E8M0 0xff), or a global
    // scale that is not positive and finite, is refused: the reader would decode it otherwise.
    std::vector<std::vector<std::byte>> out;
    for (size_t k = 0; k < 2; ++k) {
      const std::span<const std::byte> b = w.parts[k]->data();
      out.emplace_back(b.begin(), b.end());
    }
    const bool nv = codec == "nvfp4";
    for (size_t i = 0; i < out[1].size(); ++i) {
      const auto s = static_cast<uint8_t>(out[1][i]);
      QTOOL_CHECK(nv ? (s & 0x7f) != 0x7f : s != 0xff, NumericError,
                  "{} holds a NaN scale (0x{:02x}) at index {}", Where(*w.parts[1]), s, i);
    }
    if (nv) {
      const std::vector<float> g = ScalesF32(*w.parts[2], Where(*w.parts[2]));
      QTOOL_CHECK(g[0] > 0.0f, NumericError, "{} holds the global scale {}, not a positive number",
                  Where(*w.parts[2]), g[0]);
      out.emplace_back(4);
      std::memcpy(out.back().data(), g.data(), 4);
    }
    return out;
  }
  if (codec == "nf4") {
    // bitsandbytes packs the flattened tensor (element 2i in the high nibble); qtool packs each
    // row the same way, an odd row ending in a padded byte, and stores FP4's codes as indices
    // into the ascending values.
    std::vector<std::vector<std::byte>> out;
    const auto* src = reinterpret_cast<const uint8_t*>(w.parts[0]->data().data());
    const int64_t row_bytes = (w.cols + 1) / 2;
    const Bnb4Map map = std::get<Nf4Format>(FormatFromRecord(w.codec)).map;
    const std::array<uint8_t, 256> index = BnbCodeBytes(map, false);
    std::vector<std::byte> q(static_cast<size_t>(w.rows * row_bytes));
    auto* dst = reinterpret_cast<uint8_t*>(q.data());
    if (w.cols % 2 == 0 && map == Bnb4Map::kNf4) {  // bitsandbytes' NF4 codes are qtool's
      std::memcpy(dst, src, q.size());
    } else if (w.cols % 2 == 0) {
      for (size_t i = 0; i < q.size(); ++i) dst[i] = index[src[i]];
    } else {
      for (int64_t r = 0; r < w.rows; ++r) {
        for (int64_t c = 0; c < w.cols; ++c) {
          const int64_t i = r * w.cols + c;
          const uint8_t code = index[(src[i / 2] >> (i % 2 ? 0 : 4)) & 0xf] & 0xf;
          dst[r * row_bytes + c / 2] |= static_cast<uint8_t>(code << (c % 2 ? 0 : 4));
        }
      }
    }
    out.push_back(std::move(q));
    const bool nested = w.codec.at("double_quant").get<bool>();
    if (!nested) {
      const std::vector<float> a = ScalesF32(*w.parts[1], Where(*w.parts[1]));
      out.emplace_back(a.size() * 4);
      std::memcpy(out.back().data(), a.data(), a.size() * 4);
      return out;
    }
    const std::span<const std::byte> a = w.parts[1]->data();
    out.emplace_back(a.begin(), a.end());
    const std::vector<float> a2 = ScalesF32(*w.parts[3], Where(*w.parts[3]));
    out.emplace_back(a2.size() * 4);
    std::memcpy(out.back().data(), a2.data(), a2.size() * 4);
    const std::span<const std::byte> sb = w.parts.back()->data();
    const float offset =
        json::parse(std::string(reinterpret_cast<const char*>(sb.data()), sb.size()))
            .at("nested_offset")
            .get<float>();
    out.emplace_back(4);
    std::memcpy(out.back().data(), &offset, 4);
    return out;
  }

  // Integer grids.
  IntGrid g;
  g.rows = w.rows;
  g.cols = w.cols;
  g.bits = b;
  const std::string gran = w.codec.at("granularity").get<std::string>();
  const int64_t gs = gran == "group" ? w.codec.at("group_size").get<int64_t>() : w.cols;
  g.groups = (w.cols + gs - 1) / gs;
  const size_t n = static_cast<size_t>(w.rows * w.cols),
               ng = static_cast<size_t>(w.rows * g.groups);
  g.zeros.assign(ng, static_cast<uint8_t>(1u << (b - 1)));
  const uint32_t top = (1u << b) - 1;
  // Zero-point z of (row, group) read from the file: checked inside the grid.
  auto set_zero = [&](int64_t r, int64_t grp, int64_t z, const CheckpointTensor& t) {
    QTOOL_CHECK(z >= 0 && z <= top, FormatError,
                "{}: the zero-point of row {} group {} is {}, outside the {}-bit grid{}", Where(t),
                r, grp, z, b,
                scheme_.format == ImportFormat::kGptq && !scheme_.gptq_v2
                    ? " (GPTQ v1 stores zero - 1)"
                    : "");
    g.zeros[static_cast<size_t>(r * g.groups + grp)] = static_cast<uint8_t>(z);
  };
  auto transposed_f16 = [&](const CheckpointTensor& t) {
    const std::vector<float> s = ScalesF32(t, Where(t));  // [groups, rows]
    g.scales.resize(ng);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      for (int64_t r = 0; r < w.rows; ++r)
        g.scales[static_cast<size_t>(r * g.groups + grp)] =
            s[static_cast<size_t>(grp * w.rows + r)];
    }
  };
  const bool per_tensor = gran == "tensor";
  switch (scheme_.format) {
    case ImportFormat::kGptq: {
      // qweight [cols * b / 32, rows]: column r's stream is qtool's row r, word by word.
      const std::vector<uint32_t> qz = WordsOf(*w.parts[1]);
      const int64_t words = w.cols * b / 32;
      g.packed.resize(static_cast<size_t>(w.rows * words * 4));
      TransposeWords(w.parts[0]->data().data(), words, w.rows, w.rows * 4,
                     reinterpret_cast<uint32_t*>(g.packed.data()));
      const int64_t zrow = w.rows * b / 32;
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        for (int64_t r = 0; r < w.rows; ++r) {
          const int64_t z = GetBits32(qz.data() + grp * zrow, 1, r * b, b);
          set_zero(r, grp, scheme_.gptq_v2 ? z : z + 1, *w.parts[1]);
        }
      }
      transposed_f16(*w.parts[2]);
      if (w.act_order) {
        g.g_idx.resize(static_cast<size_t>(w.cols));
        std::memcpy(g.g_idx.data(), w.parts[3]->data().data(), g.g_idx.size() * 4);
      }
      break;
    }
    case ImportFormat::kAwq: {
      g.codes.resize(n);
      const std::vector<uint32_t> qw = WordsOf(*w.parts[0]), qz = WordsOf(*w.parts[1]);
      const int64_t words = w.rows / 8;
      for (int64_t c = 0; c < w.cols; ++c) {
        for (int64_t j = 0; j < words; ++j) {
          const uint32_t word = qw[static_cast<size_t>(c * words + j)];
          for (int k = 0; k < 8; ++k)
            g.codes[static_cast<size_t>((8 * j + kAwqOrder[k]) * w.cols + c)] =
                (word >> (4 * k)) & 0xf;
        }
      }
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        for (int64_t j = 0; j < words; ++j) {
          const uint32_t word = qz[static_cast<size_t>(grp * words + j)];
          for (int k = 0; k < 8; ++k)
            set_zero(8 * j + kAwqOrder[k], grp, (word >> (4 * k)) & 0xf, *w.parts[1]);
        }
      }
      transposed_f16(*w.parts[2]);
      break;
    }
    case ImportFormat::kCompressedTensors: {
      const bool packed = scheme_.ct_format == "pack-quantized";
      const CheckpointTensor& q = *w.parts[0];
      if (packed) {
        // Each row the same little-endian stream as qtool's: its bytes, without the last word's
        // padding (bits past the last code cleared).
        const std::byte* qb = q.data().data();
        const int64_t words = (w.cols * b + 31) / 32, row_bytes = PackedBytes(w.cols, b);
        const auto tail =
            static_cast<uint8_t>((w.cols * b) % 8 ? (1u << (w.cols * b % 8)) - 1 : 0xff);
        g.packed.resize(static_cast<size_t>(w.rows * row_bytes));
        for (int64_t r = 0; r < w.rows; ++r) {
          std::memcpy(g.packed.data() + r * row_bytes, qb + r * words * 4, row_bytes);
          g.packed[static_cast<size_t>((r + 1) * row_bytes - 1)] &= std::byte{tail};
        }
      } else {
        g.codes.resize(n);
        const std::span<const std::byte> qb = q.data();
        const int half = 1 << (b - 1);
        for (size_t i = 0; i < n; ++i) {
          const int u = static_cast<int8_t>(qb[i]) + half;
          QTOOL_CHECK(u >= 0 && u <= static_cast<int>(top), FormatError,
                      "{} holds {} at index {}, outside the signed {}-bit range", Where(q),
                      u - half, i, b);
          g.codes[i] = static_cast<uint8_t>(u);
        }
      }
      std::vector<float> s = ScalesF32(*w.parts[1], Where(*w.parts[1]));
      g.scales.assign(ng, s[0]);
      if (!per_tensor) g.scales = std::move(s);
      if (!scheme_.symmetric) {
        const CheckpointTensor& z = *w.parts[2];
        const int64_t zg = per_tensor ? 1 : g.groups;
        if (z.info->dtype == DType::kI32) {
          const std::vector<uint32_t> zw = WordsOf(z);
          for (int64_t r = 0; r < (per_tensor ? 1 : w.rows); ++r) {
            for (int64_t grp = 0; grp < zg; ++grp)
              set_zero(r, grp, GetBits32(zw.data() + grp, zg, r * b, b), z);
          }
        } else {
          const std::span<const std::byte> zb = z.data();
          for (int64_t i = 0; i < z.info->numel(); ++i)
            set_zero(i / zg, i % zg,
                     static_cast<int8_t>(zb[static_cast<size_t>(i)]) + (1 << (b - 1)), z);
        }
      }
      break;
    }
    case ImportFormat::kBnb:
    case ImportFormat::kFp8:
      break;
  }
  if (scheme_.symmetric) {
    // The config says symmetric: every zero-point must be the grid's middle, as qtool's
    // symmetric codec decodes.
    for (size_t i = 0; i < g.zeros.size(); ++i) {
      QTOOL_CHECK(g.zeros[i] == (1u << (b - 1)), FormatError,
                  "{}: weight \"{}\" is symmetric by config.json, but the zero-point of row {} "
                  "group {} is {}, not {}",
                  ck_->dir().string(), name, i / static_cast<size_t>(g.groups),
                  i % static_cast<size_t>(g.groups), g.zeros[i], 1u << (b - 1));
    }
  }
  return IntParts(g, scheme_.symmetric, per_tensor, w.act_order);
}

std::vector<float> ImportedCheckpoint::ReadF32(const std::string& name, int threads) const {
  const auto it = weights_.find(name);
  if (it == weights_.end()) {
    const CheckpointTensor& t = ck_->Get(name);
    std::vector<float> out(static_cast<size_t>(t.info->numel()));
    ConvertToF32(t.data().data(), t.info->dtype, t.info->numel(), out.data());
    t.file->Release(*t.info);
    return out;
  }
  const Weight& w = it->second;
  std::vector<float> out(static_cast<size_t>(w.rows * w.cols));
  threads = ResolveThreads(threads);
  if (!w.codec.is_null()) {
    const std::vector<std::vector<std::byte>> stored = Stored(name);
    std::vector<const std::byte*> parts;
    for (const auto& p : stored) parts.push_back(p.data());
    const auto codec = MakeCodec(w.codec, w.rows, w.cols);
    const int64_t block = codec->row_block();
    const int64_t chunk =
        std::max<int64_t>(block, (int64_t{1} << 16) / std::max<int64_t>(1, w.cols) / block * block);
    ParallelFor(w.rows, chunk, threads, [&](int64_t r0, int64_t r1, int) {
      codec->DecodeRows(parts.data(), r0, r1 - r0, out.data() + r0 * w.cols);
    });
  } else if (scheme_.bits == 8) {
    // LLM.int8 as bitsandbytes dequantises it (BnbInt8Value): two f32 roundings, which no qtool
    // codec's single product reproduces, so the weight is only decoded.
    const std::vector<float> scb = ScalesF32(*w.parts[1], Where(*w.parts[1]));
    const std::span<const std::byte> q = w.parts[0]->data();
    ParallelFor(w.rows, 64, threads, [&](int64_t r0, int64_t r1, int) {
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = 0; c < w.cols; ++c) {
          const size_t i = static_cast<size_t>(r * w.cols + c);
          out[i] = BnbInt8Value(static_cast<int8_t>(q[i]), scb[static_cast<size_t>(r)]);
        }
      }
    });
  } else {
    // bitsandbytes 4-bit through its stored maps: quant_map[code] * absmax of the element's
    // block, absmax = nested_quant_map[q] * nested_absmax[b / nested_block] + nested_offset
    // when nested (bitsandbytes' dequantize_4bit and dequantize_blockwise).
    const std::span<const std::byte> sb = w.parts.back()->data();
    const json st = json::parse(std::string(reinterpret_cast<const char*>(sb.data()), sb.size()));
    const int64_t block = st.at("blocksize").get<int64_t>();
    const bool nested = st.contains("nested_blocksize");
    const std::vector<float> map = ScalesF32(*w.parts[2], Where(*w.parts[2]));
    const int64_t nb = (w.rows * w.cols + block - 1) / block;
    std::vector<float> absmax(static_cast<size_t>(nb));
    if (nested) {
      const int64_t nblock = st.at("nested_blocksize").get<int64_t>();
      const float offset = st.at("nested_offset").get<float>();
      const std::vector<float> a2 = ScalesF32(*w.parts[3], Where(*w.parts[3]));
      const std::vector<float> map2 = ScalesF32(*w.parts[4], Where(*w.parts[4]));
      const std::span<const std::byte> q = w.parts[1]->data();
      for (int64_t i = 0; i < nb; ++i) {
        const float v = map2[static_cast<uint8_t>(q[static_cast<size_t>(i)])] *
                        a2[static_cast<size_t>(i / nblock)];
        absmax[static_cast<size_t>(i)] = v + offset;
      }
    } else {
      absmax = ScalesF32(*w.parts[1], Where(*w.parts[1]));
    }
    const auto* packed = reinterpret_cast<const uint8_t*>(w.parts[0]->data().data());
    for (int64_t i = 0; i < w.rows * w.cols; ++i) {
      const int code = (packed[i / 2] >> (i % 2 ? 0 : 4)) & 0xf;
      out[static_cast<size_t>(i)] =
          map[static_cast<size_t>(code)] * absmax[static_cast<size_t>(i / block)];
    }
  }
  for (const CheckpointTensor* t : w.parts) t->file->Release(*t->info);
  return out;
}

}  // namespace qtool
