#include "qtool/io/quantized.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <span>

#include "qtool/core/error.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/format/traits.hpp"
#include "qtool/io/format_record.hpp"
#include "qtool/io/import.hpp"
#include "qtool/kernels/convert.hpp"
#include "qtool/quant/codec.hpp"

namespace qtool {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Decodes a quantised weight's rows [r0, r0 + n) into `out`.
struct StoredWeight {
  std::unique_ptr<WeightCodec> codec;
  std::vector<const std::byte*> parts;
  std::vector<const CheckpointTensor*> sources;  // the parts' tensors
  DType dtype;
  std::vector<int64_t> shape;
};

// The stored parts in F32 (scales, absmax and their double-quantisation constants) and E8M0 (MX
// scales, whose byte 0xFF is NaN) must be finite: one NaN or Inf would decode into a row of them.
void CheckStoredScales(const CheckpointTensor& t) {
  const std::span<const std::byte> bytes = t.data();
  if (t.info->dtype == DType::kF32) {
    for (size_t i = 0; i < bytes.size() / 4; ++i) {
      float v;
      std::memcpy(&v, bytes.data() + 4 * i, 4);
      QTOOL_CHECK(std::isfinite(v), NumericError, "{}: tensor \"{}\" holds {} at index {}",
                  t.file->path().string(), t.info->name, v, i);
    }
  } else if (t.info->dtype == DType::kF8E8M0) {
    const auto it = std::find(bytes.begin(), bytes.end(), std::byte{0xff});
    QTOOL_CHECK(it == bytes.end(), NumericError, "{}: tensor \"{}\" holds NaN at index {}",
                t.file->path().string(), t.info->name, it - bytes.begin());
  }
}

StoredWeight OpenStored(const Checkpoint& ck, const std::string& name, const json& rec) {
  StoredWeight s;
  try {
    s.shape = rec.at("shape").get<std::vector<int64_t>>();
    const auto dt = ParseDType(rec.at("dtype").get<std::string>());
    QTOOL_CHECK(dt && IsFloatWeightType(*dt), FormatError, "bad dtype");
    s.dtype = *dt;
  } catch (const std::exception& e) {
    throw FormatError(fmt::format("{}: quantisation record of \"{}\" is invalid: {}",
                                  ck.dir().string(), name, e.what()));
  }
  QTOOL_CHECK(s.shape.size() == 2 && s.shape[0] >= 0 && s.shape[1] >= 0, FormatError,
              "{}: quantised tensor \"{}\" has shape {}, not a matrix", ck.dir().string(), name,
              json(s.shape).dump());
  s.codec = MakeCodec(TensorRecordFormat(ck, name, rec), s.shape[0], s.shape[1]);
  for (const TensorSpec& part : s.codec->Layout(name)) {
    const CheckpointTensor& t = ck.Get(part.name);
    QTOOL_CHECK(t.info->dtype == part.dtype && t.info->shape == part.shape, FormatError,
                "{}: \"{}\" is {} {} but its quantisation record needs {} {}",
                t.file->path().string(), part.name, DTypeName(t.info->dtype),
                json(t.info->shape).dump(), DTypeName(part.dtype), json(part.shape).dump());
    CheckStoredScales(t);
    s.parts.push_back(t.data().data());
    s.sources.push_back(&t);
  }
  return s;
}

json TensorsRecord(const Checkpoint& ck) {
  const auto rec = QuantizationRecord(ck);
  if (!rec) return json::object();
  const auto it = rec->find("tensors");
  QTOOL_CHECK(it != rec->end() && it->is_object(), FormatError,
              "{}: quantisation record has no \"tensors\" object", ck.dir().string());
  return *it;
}

void DecodeInto(const StoredWeight& s, int threads, float* out) {
  const int64_t cols = s.codec->cols();
  if (s.codec->rows() == 0 || cols == 0) return;  // nothing to decode (see QuantizeMatrixWith)
  const int64_t block = s.codec->row_block();
  const int64_t chunk =
      std::max<int64_t>(block, (int64_t{1} << 16) / std::max<int64_t>(1, cols) / block * block);
  ParallelFor(s.codec->rows(), chunk, threads, [&](int64_t r0, int64_t r1, int) {
    s.codec->DecodeRows(s.parts.data(), r0, r1 - r0, out + r0 * cols);
  });
}

}  // namespace

// The format of tensor `name`'s record (its codec record with the original "shape" and "dtype"):
// FormatError naming the checkpoint, the tensor and the key for a record FormatFromRecord refuses.
Format TensorRecordFormat(const Checkpoint& ck, const std::string& name, const json& rec) {
  const std::string where =
      fmt::format("{}: quantisation record of \"{}\"", ck.dir().string(), name);
  QTOOL_CHECK(rec.is_object(), FormatError, "{} is not an object", where);
  json codec = rec;
  codec.erase("shape");
  codec.erase("dtype");
  try {
    return FormatFromRecord(codec, where);
  } catch (const OptionError& e) {
    throw FormatError(e.what());
  }
}

json QuantizedTensorRecord(const WeightCodec& codec, const TensorSpec& original) {
  json rec = CodecRecord(codec);
  rec["shape"] = original.shape;
  rec["dtype"] = std::string(DTypeName(original.dtype));
  return rec;
}

CheckpointWriterOptions QuantizedWriterOptions(const QuantizedWriteOptions& options,
                                               const json& codec_record,
                                               const json& tensors_record) {
  CheckpointWriterOptions w;
  w.max_shard_bytes = options.max_shard_bytes;
  w.overwrite = options.overwrite;
  QTOOL_CHECK(
      options.activations.is_null() || options.activations == Int8TokenActivations() ||
          options.activations == Fp8StaticActivations(),
      OptionError, "activation quantisation {} is not one qtool implements (it has {} and {})",
      options.activations.dump(), Int8TokenActivations().dump(), Fp8StaticActivations().dump());
  QTOOL_CHECK(options.input_scales.empty() || options.activations == Fp8StaticActivations(),
              OptionError, "input scales are written with static FP8 activations only");
  json record = {{"format_version", kQtoolFormatVersion},
                 {"codec", codec_record},
                 {"tensors", tensors_record}};
  if (!options.activations.is_null()) record["activations"] = options.activations;
  w.metadata = {{"format", "pt"}, {kQtoolMetadataKey, record.dump()}};
  return w;
}

json QuantizationConfig(const json& codec_record, const QuantizedWriteOptions& options) {
  json qc = codec_record;
  qc["quant_method"] = "qtool";
  qc["format_version"] = kQtoolFormatVersion;
  if (!options.activations.is_null()) qc["activations"] = options.activations;
  return qc;
}

void CopyModelFiles(const Checkpoint& in, const json& qc, CheckpointWriter& writer) {
  for (const fs::path& f : in.other_files()) {
    if (f.filename() != "config.json") writer.CopyFile(f, f.filename().string());
  }
  if (!in.config()) return;
  json config = *in.config();
  if (qc.is_null()) {
    config.erase("quantization_config");
  } else {
    config["quantization_config"] = qc;
  }
  writer.WriteTextFile("config.json", config.dump(2) + "\n");
}

std::optional<json> QuantizationRecord(const Checkpoint& ck) {
  const auto& md = ck.metadata();
  const auto it = md.find(kQtoolMetadataKey);
  if (it == md.end()) return std::nullopt;
  json rec;
  try {
    rec = json::parse(it->second);
  } catch (const json::exception& e) {
    throw FormatError(fmt::format("{}: metadata \"{}\" is not valid JSON: {}", ck.dir().string(),
                                  kQtoolMetadataKey, e.what()));
  }
  QTOOL_CHECK(rec.is_object() && rec.value("format_version", 0) == kQtoolFormatVersion, FormatError,
              "{}: unsupported qtool format version (this build reads version {})",
              ck.dir().string(), kQtoolFormatVersion);
  return rec;
}

InputQuantization InputQuantizationOf(const Checkpoint& ck) {
  if (const auto imported = DetectImportScheme(ck)) {
    if (imported->int8_activations) return InputQuantization::kInt8Token;
    if (imported->format == ImportFormat::kBnb && imported->bits == 8) {
      return InputQuantization::kLlmInt8;
    }
    return imported->fp8_static_activations ? InputQuantization::kFp8Static
                                            : InputQuantization::kNone;
  }
  const auto rec = QuantizationRecord(ck);
  if (!rec || !rec->contains("activations")) return InputQuantization::kNone;
  const json& a = (*rec)["activations"];
  if (a == Int8TokenActivations()) return InputQuantization::kInt8Token;
  QTOOL_CHECK(a == Fp8StaticActivations(), FormatError,
              "{}: activation quantisation {} is not one this build runs (it runs {} and {})",
              ck.dir().string(), a.dump(), Int8TokenActivations().dump(),
              Fp8StaticActivations().dump());
  return InputQuantization::kFp8Static;
}

bool QuantizesActivations(const Checkpoint& ck) {
  return InputQuantizationOf(ck) != InputQuantization::kNone;
}

float LlmInt8Threshold(const Checkpoint& ck) {
  const auto imported = ImportedCheckpoint::Shared(ck);
  QTOOL_CHECK(
      imported && imported->scheme().format == ImportFormat::kBnb && imported->scheme().bits == 8,
      FormatError, "{}: not a bitsandbytes LLM.int8 checkpoint", ck.dir().string());
  return imported->scheme().llm_int8_threshold;
}

float StaticInputScale(const Checkpoint& ck, const std::string& module) {
  const std::string name = module + kInputScaleSuffix;
  const CheckpointTensor* t = ck.Find(name);
  QTOOL_CHECK(t != nullptr, FormatError,
              "{}: \"{}\" is missing: the checkpoint asks for static FP8 inputs, which need each "
              "quantised Linear's input scale",
              ck.dir().string(), name);
  const DType dt = t->info->dtype;
  QTOOL_CHECK(
      (dt == DType::kF32 || dt == DType::kF16 || dt == DType::kBF16) && t->info->numel() == 1,
      FormatError, "{}: \"{}\" is {} {}, not one F32, F16 or BF16 scale", t->file->path().string(),
      name, DTypeName(dt), json(t->info->shape).dump());
  float s = 0;
  ConvertToF32(t->data().data(), dt, 1, &s);
  QTOOL_CHECK(std::isfinite(s) && s > 0, NumericError,
              "{}: \"{}\" holds {}, not a positive finite input scale", t->file->path().string(),
              name, s);
  return s;
}

std::vector<std::string> LogicalTensorNames(const Checkpoint& ck) {
  if (const auto imported = ImportedCheckpoint::Shared(ck)) return imported->LogicalNames();
  const json tensors = TensorsRecord(ck);
  std::map<std::string, bool> names;
  std::map<std::string, bool> hidden;
  for (const auto& [name, rec] : tensors.items()) {
    names[name] = true;
    for (const StoredPart& part : Layout(TensorRecordFormat(ck, name, rec), 1, 1)) {
      hidden[name + part.suffix] = true;
    }
  }
  for (const CheckpointTensor& t : ck.tensors()) {
    if (!hidden.contains(t.info->name)) names[t.info->name] = true;
  }
  std::vector<std::string> out;
  for (const auto& [n, b] : names) out.push_back(n);
  return out;
}

std::vector<int64_t> LogicalShape(const Checkpoint& ck, const std::string& name) {
  if (const auto imported = ImportedCheckpoint::Shared(ck)) return imported->Shape(name);
  const json tensors = TensorsRecord(ck);
  if (tensors.contains(name)) return OpenStored(ck, name, tensors[name]).shape;
  return ck.Get(name).info->shape;
}

// The values are copied out, so the file's pages leave the process's memory map (they stay in the
// page cache): reading a checkpoint tensor by tensor keeps the resident set at what the caller
// holds, however large the file.
std::vector<float> ReadTensorF32(const Checkpoint& ck, const std::string& name, int threads) {
  if (const auto imported = ImportedCheckpoint::Shared(ck)) return imported->ReadF32(name, threads);
  const json tensors = TensorsRecord(ck);
  if (tensors.contains(name)) {
    const StoredWeight s = OpenStored(ck, name, tensors[name]);
    std::vector<float> out(static_cast<size_t>(s.shape[0] * s.shape[1]));
    DecodeInto(s, ResolveThreads(threads), out.data());
    for (const CheckpointTensor* t : s.sources) t->file->Release(*t->info);
    return out;
  }
  const CheckpointTensor& t = ck.Get(name);
  std::vector<float> out(static_cast<size_t>(t.info->numel()));
  ConvertToF32(t.data().data(), t.info->dtype, t.info->numel(), out.data());
  t.file->Release(*t.info);
  return out;
}

void DequantizeCheckpoint(const Checkpoint& in, const fs::path& out, bool overwrite, int threads,
                          const ProgressFn& progress) {
  threads = ResolveThreads(threads);
  const json tensors = TensorsRecord(in);
  const auto imported = ImportedCheckpoint::Open(in);
  QTOOL_CHECK(!tensors.empty() || imported, OptionError,
              "{}: not a quantised checkpoint (neither qtool's nor one of the formats "
              "docs/EXPORT.md lists)",
              in.dir().string());
  std::error_code ec;
  QTOOL_CHECK(!fs::exists(out) || !fs::equivalent(out, in.dir(), ec), OptionError,
              "{}: output is the input checkpoint's directory", out.string());
  CheckpointWriter::CheckOutputPath(out, overwrite);
  std::vector<std::string> names = LogicalTensorNames(in);
  // A float checkpoint runs its inputs in float: static input scales go with the quantisation.
  if (InputQuantizationOf(in) == InputQuantization::kFp8Static) {
    std::erase_if(names, [](const std::string& n) { return n.ends_with(kInputScaleSuffix); });
  }
  std::vector<TensorSpec> specs;
  std::map<std::string, StoredWeight> stored;
  for (const std::string& n : names) {
    if (imported && imported->IsQuantized(n)) {
      specs.push_back({n, imported->scheme().dtype, imported->Shape(n)});
    } else if (tensors.contains(n)) {
      StoredWeight s = OpenStored(in, n, tensors[n]);
      specs.push_back({n, s.dtype, s.shape});
      stored.emplace(n, std::move(s));
    } else {
      specs.push_back(*in.Get(n).info);
    }
  }
  CheckpointWriterOptions wopts;
  wopts.overwrite = overwrite;
  wopts.metadata = {{"format", "pt"}};
  CheckpointWriter writer(out, specs, wopts);
  BackgroundWriter background(writer, kMaxQueuedBytes);
  for (size_t i = 0; i < names.size(); ++i) {
    const auto it = stored.find(names[i]);
    if (imported && imported->IsQuantized(names[i])) {
      const std::vector<float> values = imported->ReadF32(names[i], threads);
      std::vector<std::byte> bytes(specs[i].nbytes());
      ConvertFromF32(values.data(), specs[i].dtype, static_cast<int64_t>(values.size()),
                     bytes.data());
      background.Enqueue(std::move(bytes));
    } else if (it == stored.end()) {
      background.Enqueue(in.Get(names[i]).data(), {});
    } else {
      const StoredWeight& s = it->second;
      std::vector<float> values(static_cast<size_t>(s.shape[0] * s.shape[1]));
      DecodeInto(s, threads, values.data());
      std::vector<std::byte> bytes(specs[i].nbytes());
      ConvertFromF32(values.data(), s.dtype, static_cast<int64_t>(values.size()), bytes.data());
      background.Enqueue(std::move(bytes));
    }
    if (progress) progress(i + 1, names.size(), names[i]);
  }
  background.Finish();
  CopyModelFiles(in, nullptr, writer);
  writer.Commit();
}

}  // namespace qtool
