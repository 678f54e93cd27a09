// qtool checkpoint -> GPTQ / AWQ / compressed-tensors / bitsandbytes (qtool/io/export.hpp).
#include "qtool/io/export.hpp"

#include <chrono>
#include <cmath>
#include <cstring>
#include <regex>

#include "qtool/core/enum_names.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/half.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/format/pack.hpp"
#include "qtool/format/traits.hpp"
#include "qtool/io/export_layouts.hpp"
#include "qtool/io/format_record.hpp"
#include "qtool/io/import.hpp"

namespace qtool {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The parts of a weight's record that say how it is quantised (not its shape, dtype, observer or
// whether it carries g_idx): what a target's one quantization_config must describe.
json Scheme(json rec) {
  for (const char* k : {"shape", "dtype", "observer", "g_idx"}) rec.erase(k);
  return rec;
}

// An MX record that compressed-tensors' mxfp4-pack-quantized holds: E2M1 in blocks of 32.
bool IsMxfp4(const json& rec) {
  return rec.at("codec") == "mx" && rec.value("element", "") == "e2m1" &&
         rec.value("block", int64_t{0}) == 32;
}

std::string TorchDType(const std::string& safetensors_dtype) {
  if (safetensors_dtype == "BF16") return "bfloat16";
  if (safetensors_dtype == "F16") return "float16";
  return "float32";
}

// A quantised weight of the input: its name, record, shape and stored tensors.
struct Source {
  std::string name, module;  // module: the name without ".weight"
  json rec;
  int64_t rows = 0, cols = 0;
  std::vector<const std::byte*> parts;
  std::vector<TensorSpec> stored;  // qtool's stored tensors of the weight
};

// One target format: the tensors of a weight (layout, then bytes) and config.json's
// quantization_config.
class Target {
 public:
  Target(ExportFormat f, const ExportOptions& o, const json& scheme, const json& activations)
      : format_(f), scheme_(scheme), activations_(activations) {
    v2_ = o.gptq_checkpoint_format == "gptq_v2";
    QTOOL_CHECK(v2_ || o.gptq_checkpoint_format == "gptq", OptionError,
                "GPTQ checkpoint format is gptq or gptq_v2, not \"{}\"", o.gptq_checkpoint_format);
    const std::string codec = scheme.at("codec").get<std::string>();
    // The NF4 codec's format (NF4 or bitsandbytes' FP4), the same for every weight.
    if (codec == "nf4") nf4_ = std::get<Nf4Format>(FormatFromRecord(scheme));
    const char* name = ExportFormatName(f);
    const bool ok =
        f == ExportFormat::kQtool || codec == "int" ||
        (codec == "nf4" && f == ExportFormat::kBnb) ||
        (codec == "fp" && f == ExportFormat::kCompressedTensors && scheme.at("format") == "e4m3") ||
        (f == ExportFormat::kCompressedTensors && (codec == "nvfp4" || IsMxfp4(scheme)));
    QTOOL_CHECK(ok, OptionError, "{} cannot hold qtool's {} weights ({}); {}", name, codec,
                scheme.dump(), Holds(f));
    QTOOL_CHECK(
        activations.is_null() || f == ExportFormat::kCompressedTensors || f == ExportFormat::kQtool,
        OptionError,
        "{} has no activation quantisation; the checkpoint asks for {} ({}): use "
        "compressed-tensors",
        name, activations.dump(), activations == Fp8StaticActivations() ? "W8A8-FP8" : "W8A8");
    // compressed-tensors pairs dynamic INT8 inputs with int-quantized weights and static FP8
    // inputs with float-quantized ones (qtool's record allows nothing else either).
    QTOOL_CHECK(f != ExportFormat::kCompressedTensors || activations.is_null() ||
                    (activations == Int8TokenActivations() && codec == "int") ||
                    (activations == Fp8StaticActivations() && codec == "fp"),
                OptionError, "compressed-tensors holds {} inputs with {} weights in no format",
                activations.dump(), codec);
  }

  static const char* Holds(ExportFormat f) {
    switch (f) {
      case ExportFormat::kGptq:
        return "GPTQ holds int with 2, 3, 4 or 8 bits";
      case ExportFormat::kAwq:
        return "AWQ holds int with 4 bits and whole groups";
      case ExportFormat::kCompressedTensors:
        return "compressed-tensors holds int (2 to 8 bits), fp8-e4m3, nvfp4 and mxfp4 (blocks of "
               "32)";
      case ExportFormat::kBnb:
        return "bitsandbytes holds nf4, bnb-fp4 (its FP4, another grid than fp4's E2M1) and int8 "
               "symmetric with one scale per row (LLM.int8)";
      case ExportFormat::kQtool:
        break;
    }
    return "";
  }

  std::vector<TensorSpec> Layout(const Source& s) const {
    const std::string& codec = s.rec.at("codec").get_ref<const std::string&>();
    if (format_ == ExportFormat::kQtool) return s.stored;
    if (codec == "int") {
      const IntWeight w = IntWeightFromQtool(s.name, s.rec, s.rows, s.cols, nullptr, false);
      if (format_ == ExportFormat::kGptq) return GptqLayout(w, s.module);
      if (format_ == ExportFormat::kBnb) return BnbInt8Layout(w, s.module);
      if (format_ == ExportFormat::kAwq) {
        QTOOL_CHECK(!w.act_order, OptionError,
                    "weight \"{}\": AWQ has no g_idx, so it cannot hold act-order groups", s.name);
        return AwqLayout(w, s.module);
      }
      return CompressedTensorsIntLayout(w, s.module, !activations_.is_null());
    }
    if (codec == "nf4") {
      return BnbNf4Layout(s.name, s.rows, s.cols, nf4_, s.module,
                          TorchDType(s.rec.at("dtype").get<std::string>()));
    }
    if (codec == "nvfp4" || codec == "mx") {
      // nvfp4-/mxfp4-pack-quantized: qtool's bytes under compressed-tensors' names, which need
      // whole blocks (the E2M1 codes of a row two to a byte, the even column in the low nibble).
      const int64_t block =
          codec == "nvfp4" ? FormatTraits<Nvfp4Format>::kBlock : s.rec.at("block").get<int64_t>();
      QTOOL_CHECK(s.cols % block == 0, OptionError,
                  "weight \"{}\" [{}, {}]: compressed-tensors' {} needs whole blocks of {} along "
                  "each row",
                  s.name, s.rows, s.cols, codec == "nvfp4" ? "nvfp4" : "mxfp4", block);
      std::vector<TensorSpec> out = {
          {s.module + ".weight_packed", DType::kU8, {s.rows, s.cols / 2}},
          {s.module + ".weight_scale",
           codec == "nvfp4" ? DType::kF8E4M3 : DType::kU8,
           {s.rows, s.cols / block}}};
      if (codec == "nvfp4") out.push_back({s.module + ".weight_global_scale", DType::kF32, {1}});
      return out;
    }
    return {{s.module + ".weight", DType::kF8E4M3, {s.rows, s.cols}},
            {s.module + ".weight_scale", DType::kF32, Fp8ScaleShape(s)}};
  }

  std::vector<ExportTensor> Pack(const Source& s, double* max_change) const {
    const std::string& codec = s.rec.at("codec").get_ref<const std::string&>();
    if (format_ == ExportFormat::kQtool) return Copied(s);
    if (codec == "int") {
      // GPTQ and compressed-tensors' pack-quantized hold qtool's packed rows as they are (GPTQ
      // transposed word by word), LLM.int8 its bytes; AWQ interleaves codes and W8A8 stores them
      // a byte each.
      const bool packed = format_ == ExportFormat::kGptq || format_ == ExportFormat::kBnb ||
                          (format_ == ExportFormat::kCompressedTensors && activations_.is_null());
      const IntWeight w =
          IntWeightFromQtool(s.name, s.rec, s.rows, s.cols, s.parts.data(), true, !packed);
      if (format_ == ExportFormat::kBnb) return PackBnbInt8(w, s.module, max_change);
      if (format_ == ExportFormat::kGptq || format_ == ExportFormat::kAwq) {
        for (const float x : w.scales) {
          if (x != 0) {
            const double d = std::abs(F16ToF32(F32ToF16(x)) - x) / std::abs(x);
            *max_change = std::max(*max_change, d);
          }
        }
      }
      if (format_ == ExportFormat::kGptq) return PackGptq(w, s.module, v2_);
      if (format_ == ExportFormat::kAwq) return PackAwq(w, s.module);
      return PackCompressedTensorsInt(w, s.module, !activations_.is_null());
    }
    if (codec == "nf4") {
      return PackBnbNf4(s.name, s.rows, s.cols, nf4_, s.parts.data(), s.module,
                        TorchDType(s.rec.at("dtype").get<std::string>()));
    }
    // FP8 E4M3: the codes as they are, the f32 scales in compressed-tensors' shape; NVFP4 and
    // MXFP4: codes, scales (and the global scale) as they are.
    return Copied(s);
  }

  // The weight's stored tensors as they are, under the names and shapes of Layout(s).
  std::vector<ExportTensor> Copied(const Source& s) const {
    std::vector<ExportTensor> out;
    for (const TensorSpec& spec : Layout(s)) {
      out.push_back(ExportTensor::CopyOf(spec, s.parts[out.size()]));
    }
    return out;
  }

  json QuantizationConfig(const std::vector<std::string>& kept,
                          const std::vector<std::string>& quantised,
                          const std::string& dtype) const {
    const std::string codec = scheme_.at("codec").get<std::string>();
    switch (format_) {
      case ExportFormat::kGptq: {
        json dynamic = json::object();
        // GPTQModel's per-module overrides: a "-:" rule leaves the matching modules unquantised.
        for (const std::string& m : kept) dynamic["-:^" + EscapeRegex(m) + "$"] = json::object();
        json qc = {
            {"quant_method", "gptq"},         {"bits", scheme_.at("bits")},
            {"group_size", GroupSize()},      {"desc_act", desc_act_},
            {"sym", scheme_.at("symmetric")}, {"checkpoint_format", v2_ ? "gptq_v2" : "gptq"},
            {"pack_dtype", "int32"},          {"true_sequential", true},
            {"static_groups", false},         {"lm_head", false}};
        if (!kept.empty()) {
          // transformers (through optimum) replaces only the modules listed here when the list
          // is given (a module is matched by the end of its name); gptqmodel's own loader reads
          // the dynamic rules.
          qc["dynamic"] = dynamic;
          qc["modules_in_block_to_quantize"] = json::array({quantised});
        }
        return qc;
      }
      case ExportFormat::kAwq:
        return {{"quant_method", "awq"},
                {"bits", 4},
                {"group_size", GroupSize()},
                {"zero_point", true},
                {"version", "gemm"},
                {"modules_to_not_convert", kept.empty() ? json(nullptr) : json(kept)}};
      case ExportFormat::kBnb: {
        json skip = kept;
        skip.push_back("lm_head");
        json qc = {{"quant_method", "bitsandbytes"},
                   {"llm_int8_skip_modules", skip},
                   {"llm_int8_threshold", 6.0},
                   {"llm_int8_has_fp16_weight", false},
                   {"llm_int8_enable_fp32_cpu_offload", false}};
        if (codec == "int") {
          qc.update({{"load_in_8bit", true}, {"load_in_4bit", false}});
        } else {
          qc.update({{"load_in_4bit", true},
                     {"load_in_8bit", false},
                     {"bnb_4bit_quant_type", NameOf(kBnb4MapNames, nf4_.map)},
                     {"bnb_4bit_use_double_quant", scheme_.at("double_quant")},
                     {"bnb_4bit_compute_dtype", dtype},
                     {"bnb_4bit_quant_storage", "uint8"}});
        }
        return qc;
      }
      case ExportFormat::kCompressedTensors:
      case ExportFormat::kQtool:
        break;
    }
    json weights;
    std::string fmt;
    if (codec == "int") {
      const int bits = scheme_.at("bits").get<int>();
      const std::string gran = scheme_.at("granularity").get<std::string>();
      weights = {{"num_bits", bits},
                 {"type", "int"},
                 {"symmetric", scheme_.at("symmetric")},
                 {"strategy", gran},
                 {"dynamic", false},
                 {"actorder", desc_act_ ? json("group") : json(nullptr)},
                 {"observer", "minmax"}};
      if (gran == "group") weights["group_size"] = scheme_.at("group_size");
      // Weight-only checkpoints pack every width (as llm-compressor writes W8A16); W8A8 keeps
      // its INT8 weights unpacked, the layout of compressed-tensors' INT8 kernels.
      fmt = activations_.is_null() ? "pack-quantized" : "int-quantized";
    } else if (codec == "nvfp4" || codec == "mx") {
      // compressed-tensors' NVFP4A16 and MXFP4A16 presets: E4M3 scales per 16 divided by a
      // global scale (tensor_group), or E8M0 exponents per 32 stored as uint8 (group).
      const bool nv = codec == "nvfp4";
      const char* scale_dtype = nv ? "torch.float8_e4m3fn" : "torch.uint8";
      weights = {{"num_bits", 4},
                 {"type", "float"},
                 {"symmetric", true},
                 {"strategy", nv ? "tensor_group" : "group"},
                 {"group_size", nv ? 16 : 32},
                 {"dynamic", false},
                 {"actorder", nullptr},
                 {"observer", "minmax"},
                 {"scale_dtype", scale_dtype},
                 {"zp_dtype", scale_dtype}};
      fmt = nv ? "nvfp4-pack-quantized" : "mxfp4-pack-quantized";
    } else {
      const std::string scale = scheme_.at("scale").get<std::string>();
      weights = {{"num_bits", 8},
                 {"type", "float"},
                 {"symmetric", true},
                 {"dynamic", false},
                 {"observer", "minmax"}};
      const auto block = scheme_.value("block", json::array({1, 1}));
      if (scale != "block") {
        weights["strategy"] = scale;
      } else if (block[0] == 1) {
        weights["strategy"] = "group";
        weights["group_size"] = block[1];
      } else {
        weights["strategy"] = "block";
        weights["block_structure"] = block;
      }
      fmt = "float-quantized";
    }
    json group = {{"targets", {"Linear"}},
                  {"weights", weights},
                  {"input_activations", nullptr},
                  {"output_activations", nullptr}};
    if (activations_ == Int8TokenActivations()) {
      group["input_activations"] = {{"num_bits", 8},     {"type", "int"},
                                    {"symmetric", true}, {"strategy", "token"},
                                    {"dynamic", true},   {"observer", nullptr}};
    } else if (activations_ == Fp8StaticActivations()) {
      // As llm-compressor's FP8 preset writes static inputs: the scales are the modules'
      // "input_scale" tensors, copied from qtool's checkpoint as they are.
      group["input_activations"] = {{"num_bits", 8},     {"type", "float"},
                                    {"symmetric", true}, {"strategy", "tensor"},
                                    {"dynamic", false},  {"observer", "minmax"}};
    }
    json ignore = kept;
    ignore.push_back("lm_head");
    return {{"quant_method", "compressed-tensors"},
            {"format", fmt},
            {"quantization_status", "compressed"},
            {"config_groups", {{"group_0", group}}},
            {"ignore", ignore},
            {"kv_cache_scheme", nullptr},
            {"global_compression_ratio", nullptr}};
  }

  void NoteActOrder(const json& rec) { desc_act_ = desc_act_ || rec.value("g_idx", false); }

 private:
  json GroupSize() const {
    return scheme_.at("granularity") == "group" ? scheme_.at("group_size") : json(-1);
  }

  static std::string EscapeRegex(const std::string& s) {
    static const std::regex special(R"([.^$|()\[\]{}*+?\\])");
    return std::regex_replace(s, special, R"(\$&)");
  }

  std::vector<int64_t> Fp8ScaleShape(const Source& s) const {
    const std::string scale = s.rec.at("scale").get<std::string>();
    if (scale == "tensor") return {1};
    if (scale == "channel") return {s.rows, 1};
    const auto block = s.rec.at("block").get<std::vector<int64_t>>();
    QTOOL_CHECK(block[0] == 1 || (s.rows % block[0] == 0 && s.cols % block[1] == 0), OptionError,
                "weight \"{}\" [{}, {}]: compressed-tensors needs whole {}x{} scale blocks", s.name,
                s.rows, s.cols, block[0], block[1]);
    return {(s.rows + block[0] - 1) / block[0], (s.cols + block[1] - 1) / block[1]};
  }

  ExportFormat format_;
  json scheme_, activations_;
  Nf4Format nf4_;
  bool v2_ = false;
  bool desc_act_ = false;
};

// Copies `in` as it is (the qtool output format of a qtool checkpoint).
void CopyCheckpoint(const Checkpoint& in, const fs::path& out, const ExportOptions& options,
                    ExportReport& report) {
  std::vector<TensorSpec> specs;
  for (const CheckpointTensor& t : in.tensors()) specs.push_back(*t.info);
  CheckpointWriterOptions wo{options.max_shard_bytes, in.metadata(), options.overwrite};
  CheckpointWriter writer(out, specs, wo);
  for (const CheckpointTensor& t : in.tensors()) {
    writer.Write(t.info->nbytes(), [&t](uint64_t offset, std::span<std::byte> dst) {
      t.file->Read(*t.info, offset, dst);
    });
    report.bytes_in += t.info->nbytes();
    report.bytes_out += t.info->nbytes();
    ++report.tensors_copied;
  }
  const json& cfg = *in.config();
  CopyModelFiles(in, cfg.value("quantization_config", json(nullptr)), writer);
  writer.Commit();
}

constexpr EnumName<ExportFormat> kExportFormatNames[] = {
    {ExportFormat::kQtool, "qtool"},
    {ExportFormat::kGptq, "gptq"},
    {ExportFormat::kAwq, "awq"},
    {ExportFormat::kCompressedTensors, "compressed-tensors"},
    {ExportFormat::kBnb, "bnb"}};

}  // namespace

ExportFormat ParseExportFormat(const std::string& name) {
  const std::optional<ExportFormat> f = ValueOf(kExportFormatNames, name);
  QTOOL_CHECK(f.has_value(), OptionError, "output format \"{}\" is none of {}", name,
              JoinNames(kExportFormatNames));
  return *f;
}

const char* ExportFormatName(ExportFormat f) { return NameOf(kExportFormatNames, f); }

IntWeight IntWeightFromQtool(const std::string& name, const json& r, int64_t rows, int64_t cols,
                             const std::byte* const* parts, bool with_data, bool unpack) {
  QTOOL_CHECK(!r.value("flat_groups", false), OptionError,
              "weight \"{}\": its groups run over the flattened matrix (--flat-groups), which no "
              "serving format holds",
              name);
  IntWeight w;
  w.name = name;
  w.rows = rows;
  w.cols = cols;
  w.bits = r.at("bits").get<int>();
  w.symmetric = r.at("symmetric").get<bool>();
  const std::string gran = r.at("granularity").get<std::string>();
  w.group_size = gran == "group" ? r.at("group_size").get<int64_t>() : cols;
  w.groups = (cols + w.group_size - 1) / w.group_size;
  w.act_order = r.value("g_idx", false);
  if (!with_data) return w;
  const size_t n = static_cast<size_t>(rows * cols), ng = static_cast<size_t>(rows * w.groups);
  const auto* packed = reinterpret_cast<const uint8_t*>(parts[0]);
  const int64_t row_bytes = PackedBytes(cols, w.bits);
  if (unpack) {
    w.codes.resize(n);
    for (int64_t row = 0; row < rows; ++row)
      UnpackCodes(packed + row * row_bytes, cols, w.bits, w.codes.data() + row * cols);
  } else {
    w.packed = parts[0];
  }
  w.scales.resize(ng);
  w.zeros.assign(ng, static_cast<uint8_t>(1u << (w.bits - 1)));
  const auto* zeros = w.symmetric ? nullptr : reinterpret_cast<const uint8_t*>(parts[2]);
  for (size_t i = 0; i < ng; ++i) {
    const size_t from = gran == "tensor" ? 0 : i;  // a per-tensor scale serves every row
    std::memcpy(&w.scales[i], parts[1] + from * 4, 4);
    if (zeros) w.zeros[i] = zeros[from];
  }
  w.g_idx.resize(static_cast<size_t>(cols));
  if (w.act_order) {
    std::memcpy(w.g_idx.data(), parts[w.symmetric ? 2 : 3], w.g_idx.size() * 4);
  } else {
    for (int64_t c = 0; c < cols; ++c) w.g_idx[static_cast<size_t>(c)] = c / w.group_size;
  }
  return w;
}

std::vector<float> IntWeight::Decode() const {
  std::vector<float> out(codes.size());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const size_t g = static_cast<size_t>(r * groups + g_idx[static_cast<size_t>(c)]);
      const size_t i = static_cast<size_t>(r * cols + c);
      out[i] =
          static_cast<float>(static_cast<int>(codes[i]) - static_cast<int>(zeros[g])) * scales[g];
    }
  }
  return out;
}

ExportReport ConvertCheckpoint(const Checkpoint& in, const fs::path& out,
                               const ExportOptions& options, const ProgressFn& progress) {
  const auto start = std::chrono::steady_clock::now();
  // Another tool's checkpoint is read through the qtool codecs that hold its grids.
  const auto imported = ImportedCheckpoint::Open(in);
  const auto record = QuantizationRecord(in);
  QTOOL_CHECK(record.has_value() || imported.has_value(), FormatError,
              "{}: not a quantised checkpoint (no \"{}\" metadata, no quantization_config of a "
              "format qtool reads); convert reads quantised checkpoints",
              in.dir().string(), kQtoolMetadataKey);
  QTOOL_CHECK(in.config().has_value(), FormatError, "{}: has no config.json", in.dir().string());
  std::error_code ec;
  QTOOL_CHECK(!fs::exists(out) || !fs::equivalent(out, in.dir(), ec), OptionError,
              "{}: output is the input checkpoint's directory", out.string());
  CheckpointWriter::CheckOutputPath(out, options.overwrite);
  ExportReport report;
  if (options.format == ExportFormat::kQtool && !imported) {
    CopyCheckpoint(in, out, options, report);
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return report;
  }

  json tensors = json::object();
  json activations;
  if (imported) {
    for (const std::string& name : imported->QuantizedNames()) {
      json rec = imported->Record(name);
      QTOOL_CHECK(!rec.is_null(), OptionError,
                  "weight \"{}\" is on a bitsandbytes grid that no qtool codec holds (a 4-bit "
                  "map other than its NF4 and FP4 ones, or LLM.int8), so {} cannot hold it "
                  "without going through float; dequantize it and quantise again",
                  name, ExportFormatName(options.format));
      tensors[name] = std::move(rec);
    }
    if (imported->scheme().int8_activations) activations = Int8TokenActivations();
    if (imported->scheme().fp8_static_activations) activations = Fp8StaticActivations();
  } else {
    tensors = record->at("tensors");
    activations = record->value("activations", json(nullptr));
  }
  QTOOL_CHECK(!tensors.empty(), FormatError, "{}: the quantisation record lists no tensor",
              in.dir().string());
  const std::string first = tensors.begin().key();
  const json scheme = Scheme(tensors.begin().value());
  Target target(options.format, options, scheme, activations);

  // Plan: the output's tensors in the input's logical name order.
  const std::regex in_block(kDefaultInclude, std::regex::ECMAScript);
  std::vector<Source> sources;
  std::vector<const CheckpointTensor*> copies;  // per logical name: the tensor, or null
  std::vector<TensorSpec> specs;
  std::vector<std::string> kept;
  std::string dtype = "float32";
  const std::vector<std::string> names =
      imported ? imported->LogicalNames() : LogicalTensorNames(in);
  for (const std::string& name : names) {
    const auto it = tensors.find(name);
    if (it == tensors.end()) {
      const CheckpointTensor& t = in.Get(name);
      copies.push_back(&t);
      specs.push_back(*t.info);
      if (t.info->shape.size() == 2 && std::regex_search(name, in_block))
        kept.push_back(name.substr(0, name.size() - 7));  // a Linear left in float
      continue;
    }
    QTOOL_CHECK(Scheme(*it) == scheme, OptionError,
                "weight \"{}\" is quantised as {} but \"{}\" as {}: {} holds one scheme per "
                "checkpoint",
                name, Scheme(*it).dump(), first, scheme.dump(), ExportFormatName(options.format));
    QTOOL_CHECK(options.format == ExportFormat::kQtool ||
                    (name.ends_with(".weight") && std::regex_search(name, in_block)),
                OptionError,
                "weight \"{}\" is quantised but is not a Linear weight inside the decoder blocks, "
                "the only ones {} readers replace",
                name, ExportFormatName(options.format));
    Source s;
    s.name = name;
    s.module = name.substr(0, name.size() - 7);
    s.rec = *it;
    const auto shape = it->at("shape").get<std::vector<int64_t>>();
    s.rows = shape.at(0);
    s.cols = shape.at(1);
    dtype = TorchDType(it->at("dtype").get<std::string>());
    target.NoteActOrder(*it);
    s.stored = MakeCodec(TensorRecordFormat(in, name, *it), s.rows, s.cols)->Layout(name);
    if (imported) {
      report.bytes_in += imported->StoredBytes(name);
    } else {
      for (const TensorSpec& part : s.stored) {
        const CheckpointTensor& t = in.Get(part.name);
        QTOOL_CHECK(t.info->dtype == part.dtype && t.info->shape == part.shape, FormatError,
                    "{}: \"{}\" is {} {} but its quantisation record needs {} {}",
                    t.file->path().string(), part.name, DTypeName(t.info->dtype),
                    json(t.info->shape).dump(), DTypeName(part.dtype), json(part.shape).dump());
        s.parts.push_back(t.data().data());
        report.bytes_in += t.info->nbytes();
      }
    }
    for (TensorSpec& spec : target.Layout(s)) specs.push_back(std::move(spec));
    sources.push_back(std::move(s));
    copies.push_back(nullptr);
  }

  // A qtool output records its codec as QuantizeCheckpoint does.
  QuantizedWriteOptions qtool_options;
  qtool_options.activations = activations;
  qtool_options.max_shard_bytes = options.max_shard_bytes;
  qtool_options.overwrite = options.overwrite;
  const json codec_record =
      options.format == ExportFormat::kQtool ? CodecRecord(*MakeCodec(scheme, 1, 1)) : json();
  CheckpointWriterOptions wo{options.max_shard_bytes, {{"format", "pt"}}, options.overwrite};
  if (options.format == ExportFormat::kQtool)
    wo = QuantizedWriterOptions(qtool_options, codec_record, tensors);
  CheckpointWriter writer(out, specs, wo);
  // Weights are packed in parallel, a window of them at a time (each by one thread: packing is
  // a pass over memory), and written in file order; memory holds one window's tensors.
  const int threads = ResolveThreads(0);
  const size_t window = static_cast<size_t>(2 * threads);
  std::vector<std::vector<ExportTensor>> packed(sources.size());
  std::vector<double> change(sources.size(), 0.0);
  const auto pack = [&](size_t i) {
    Source& s = sources[i];
    std::vector<std::vector<std::byte>> owned;
    if (imported) {
      owned = imported->Stored(s.name);
      s.parts.clear();
      for (const auto& p : owned) s.parts.push_back(p.data());
    }
    packed[i] = target.Pack(s, &change[i]);
    s.parts.clear();
  };
  size_t next_source = 0, next_spec = 0, done = 0, packed_until = 0;
  for (const CheckpointTensor* copy : copies) {
    std::string name;
    if (copy) {
      writer.Write(copy->info->nbytes(), [copy](uint64_t offset, std::span<std::byte> dst) {
        copy->file->Read(*copy->info, offset, dst);
      });
      report.bytes_in += copy->info->nbytes();
      report.bytes_out += copy->info->nbytes();
      ++report.tensors_copied;
      ++next_spec;
      name = copy->info->name;
    } else {
      const size_t i = next_source++;
      if (i == packed_until) {
        packed_until = std::min(sources.size(), i + window);
        ParallelFor(static_cast<int64_t>(packed_until - i), 1, threads,
                    [&](int64_t b, int64_t e, int) {
                      for (int64_t k = b; k < e; ++k) pack(i + static_cast<size_t>(k));
                    });
      }
      for (const ExportTensor& t : packed[i]) {
        const TensorSpec& planned = specs[next_spec++];
        QTOOL_CHECK(t.spec.name == planned.name && t.spec.dtype == planned.dtype &&
                        t.spec.shape == planned.shape && t.data.size() == planned.nbytes(),
                    Error, "internal: {} tensor \"{}\" does not match its layout",
                    ExportFormatName(options.format), t.spec.name);
        writer.Write(t.data);
        report.bytes_out += t.data.size();
      }
      packed[i].clear();
      report.max_weight_change = std::max(report.max_weight_change, change[i]);
      ++report.weights_converted;
      name = sources[i].name;
    }
    if (progress) progress(++done, copies.size(), name);
  }
  std::vector<std::string> quantised;
  for (const Source& s : sources) quantised.push_back(s.module);
  CopyModelFiles(in,
                 options.format == ExportFormat::kQtool
                     ? QuantizationConfig(codec_record, qtool_options)
                     : target.QuantizationConfig(kept, quantised, dtype),
                 writer);
  writer.Commit();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace qtool
