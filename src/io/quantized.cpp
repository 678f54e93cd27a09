#include "qtool/io/quantized.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <span>

#include "qtool/core/convert.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/name_pattern.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/format/traits.hpp"
#include "qtool/io/format_record.hpp"
#include "qtool/io/import.hpp"
#include "qtool/quant/codec.hpp"

namespace qtool {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Output waiting to be written: enough to overlap a tensor's writing with the next one's
// quantisation, small enough to keep memory bounded (and fresh pages are slow to get). Tensors
// copied from the input do not wait here: they are written beside the quantised ones.
constexpr uint64_t kMaxQueuedBytes = 32ull << 20;

// Output buffers of quantised tensors, reused once the background writer has written them, so that
// the steady state neither zero-fills nor page-faults fresh memory. A model's tensors come in a
// few repeating shapes, so a handful of buffers serve all of them; they live as long as the pool.
class BufferPool {
 public:
  struct Buffer {
    std::unique_ptr<std::byte[]> data;
    size_t capacity = 0;
    bool busy = false;
  };

  /// A buffer of at least n bytes (contents unspecified) until Release.
  Buffer* Take(size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    Buffer* best = nullptr;
    for (const auto& b : buffers_) {
      if (!b->busy && b->capacity >= n && (!best || b->capacity < best->capacity)) best = b.get();
    }
    if (!best) {
      buffers_.push_back(std::make_unique<Buffer>());
      best = buffers_.back().get();
      best->data = std::make_unique_for_overwrite<std::byte[]>(n);
      best->capacity = n;
    }
    best->busy = true;
    return best;
  }

  void Release(Buffer* b) {
    std::lock_guard<std::mutex> lock(mu_);
    b->busy = false;
  }

 private:
  std::mutex mu_;
  std::vector<std::unique_ptr<Buffer>> buffers_;
};

// Rows per work item: about 64K elements, so a chunk's f32 copy and its decoded copy stay in L2.
int64_t ChunkRows(const WeightCodec& codec) {
  const int64_t block = codec.row_block();
  const int64_t rows =
      std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, codec.cols()));
  return (rows + block - 1) / block * block;
}

std::vector<NamePattern> CompileRules(const std::vector<std::string>& rules, const char* option) {
  std::vector<NamePattern> out;
  for (const std::string& r : rules) out.emplace_back(r, option);
  return out;
}

bool AnyMatch(std::span<const NamePattern> rules, const std::string& name) {
  return std::any_of(rules.begin(), rules.end(),
                     [&](const NamePattern& r) { return r.Search(name); });
}

struct Rules {
  std::vector<NamePattern> include, exclude;
  bool explicit_include;
  explicit Rules(const QuantizeOptions& o)
      : include(CompileRules(o.include, "--include")),
        exclude(CompileRules(o.exclude, "--exclude")),
        explicit_include(!o.include.empty()) {
    include.emplace_back(kDefaultInclude, "the default include rule");
  }
  // 0: keep, 1: quantise, 2: named by an --include rule but not a 2-D float matrix.
  NamePattern default_exclude{kDefaultExclude, "the default exclude rule"};
  int Decide(const TensorSpec& t) const {
    if (AnyMatch(exclude, t.name) || !AnyMatch(include, t.name)) return 0;
    const bool by_user =
        explicit_include && AnyMatch(std::span(include).first(include.size() - 1), t.name);
    if (!by_user && default_exclude.Search(t.name)) return 0;
    const bool matrix = t.shape.size() == 2 && IsFloatWeightType(t.dtype);
    if (matrix) return 1;
    return by_user ? 2 : 0;
  }
};

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
  json rec = codec.Record();
  rec["shape"] = original.shape;
  rec["dtype"] = std::string(DTypeName(original.dtype));
  return rec;
}

CheckpointWriterOptions QuantizedWriterOptions(const QuantizeOptions& options,
                                               const json& codec_record,
                                               const json& tensors_record) {
  CheckpointWriterOptions w;
  w.max_shard_bytes = options.max_shard_bytes;
  w.overwrite = options.overwrite;
  QTOOL_CHECK(options.activations.is_null() || options.activations == Int8TokenActivations(),
              OptionError, "activation quantisation {} is not one qtool implements (it has {})",
              options.activations.dump(), Int8TokenActivations().dump());
  json record = {{"format_version", kQtoolFormatVersion},
                 {"codec", codec_record},
                 {"tensors", tensors_record}};
  if (!options.activations.is_null()) record["activations"] = options.activations;
  w.metadata = {{"format", "pt"}, {kQtoolMetadataKey, record.dump()}};
  return w;
}

json QuantizationConfig(const json& codec_record, const QuantizeOptions& options) {
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

namespace {

// QuantizeMatrix over rows that fetch(r0, r1, raw) gives: a pointer to their stored bytes, in
// memory or read into the caller's `raw` buffer.
template <typename Fetch>
ErrorStats QuantizeMatrixWith(const Fetch& fetch, DType dtype, WeightCodec& codec,
                              std::byte* const* parts, int threads, const std::string& label) {
  const int64_t cols = codec.cols();
  if (codec.rows() == 0 || cols == 0) {
    // An empty matrix: nothing to encode (the kernels take rows of at least one element). Its
    // stored parts, such as a per-tensor scale, are zero-filled.
    const std::vector<TensorSpec> layout = codec.Layout("");
    for (size_t k = 0; k < layout.size(); ++k) std::memset(parts[k], 0, layout[k].nbytes());
    return {};
  }
  // Element `bad` of the rows from r0 on is not finite.
  auto fail = [&](int64_t r0, int64_t bad, float value) {
    const int64_t idx = r0 * cols + bad;
    throw NumericError(fmt::format("{} has a non-finite value ({}) at [{}, {}]", label, value,
                                   idx / cols, idx % cols));
  };
  auto convert = [&](int64_t r0, int64_t r1, const std::byte* src, float* dst) {
    const int64_t bad = ConvertToF32(src, dtype, (r1 - r0) * cols, dst);
    if (bad >= 0) fail(r0, bad, dst[bad]);
  };
  const int64_t chunk = ChunkRows(codec);
  if (codec.needs_observe()) {
    std::vector<std::byte> raw;
    std::vector<float> buf(static_cast<size_t>(chunk * cols));
    for (int64_t r0 = 0; r0 < codec.rows(); r0 += chunk) {
      const int64_t r1 = std::min(codec.rows(), r0 + chunk);
      convert(r0, r1, fetch(r0, r1, raw), buf.data());
      codec.Observe(buf.data(), r0, r1 - r0);
    }
  }
  threads = ResolveThreads(threads);
  struct Worker {
    ErrorStats stats;
    std::vector<std::byte> raw;
    std::vector<float> buf;
  };
  std::vector<Worker> workers(static_cast<size_t>(threads));
  ParallelFor(codec.rows(), chunk, threads, [&](int64_t r0, int64_t r1, int index) {
    Worker& wk = workers[static_cast<size_t>(index)];
    const std::byte* src = fetch(r0, r1, wk.raw);
    int64_t bad;
    if (codec.EncodeStoredRows(src, dtype, r0, r1 - r0, parts, &wk.stats, &bad)) {
      if (bad >= 0) {
        float value;
        ConvertToF32(src + bad * (BitsOf(dtype) / 8), dtype, 1, &value);
        fail(r0, bad, value);
      }
      return;
    }
    wk.buf.resize(static_cast<size_t>(2 * chunk * cols));
    float* w = wk.buf.data();
    float* deq = wk.buf.data() + chunk * cols;
    convert(r0, r1, src, w);
    codec.EncodeRows(w, r0, r1 - r0, parts, deq);
    wk.stats.Add(w, deq, (r1 - r0) * cols);
  });
  ErrorStats total;
  for (const Worker& wk : workers) total += wk.stats;
  return total;
}

}  // namespace

ErrorStats QuantizeMatrix(const ByteSource& read, DType dtype, WeightCodec& codec,
                          std::byte* const* parts, int threads, const std::string& label) {
  const uint64_t row_bytes = static_cast<uint64_t>(codec.cols()) * (BitsOf(dtype) / 8);
  return QuantizeMatrixWith(
      [&](int64_t r0, int64_t r1, std::vector<std::byte>& raw) {
        raw.resize(static_cast<size_t>(static_cast<uint64_t>(r1 - r0) * row_bytes));
        read(static_cast<uint64_t>(r0) * row_bytes, raw);
        return static_cast<const std::byte*>(raw.data());
      },
      dtype, codec, parts, threads, label);
}

ErrorStats QuantizeMatrix(const std::byte* data, DType dtype, WeightCodec& codec,
                          std::byte* const* parts, int threads, const std::string& label) {
  const uint64_t row_bytes = static_cast<uint64_t>(codec.cols()) * (BitsOf(dtype) / 8);
  return QuantizeMatrixWith(
      [&](int64_t r0, int64_t, std::vector<std::byte>&) {
        return data + static_cast<uint64_t>(r0) * row_bytes;
      },
      dtype, codec, parts, threads, label);
}

TensorReport TensorReport::Begin(const TensorInfo& t) {
  TensorReport tr;
  tr.name = t.name;
  tr.shape = t.shape;
  tr.dtype = std::string(DTypeName(t.dtype));
  tr.bytes_in = t.nbytes();
  tr.numel_ = t.numel();
  tr.start_ = std::chrono::steady_clock::now();
  return tr;
}

void QuantizeReport::Add(TensorReport tr) {
  tr.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - tr.start_).count();
  params_total += tr.numel_;
  bytes_in += tr.bytes_in;
  bytes_out += tr.bytes_out;
  if (tr.quantized) {
    params_quantized += tr.numel_;
    quantized_bytes_out += tr.bytes_out;
  }
  tensors.push_back(std::move(tr));
}

double QuantizeReport::bits_per_weight() const {
  return params_quantized ? 8.0 * static_cast<double>(quantized_bytes_out) /
                                static_cast<double>(params_quantized)
                          : 0.0;
}

json QuantizeReport::ToJson() const {
  json t = json::array();
  for (const TensorReport& r : tensors) {
    json e = {{"name", r.name},           {"shape", r.shape},       {"dtype", r.dtype},
              {"quantized", r.quantized}, {"bytes_in", r.bytes_in}, {"bytes_out", r.bytes_out},
              {"seconds", r.seconds}};
    if (r.quantized) {
      e["bits_per_weight"] = r.bits_per_weight;
      const double sqnr = r.stats.sqnr_db();
      e["metrics"] = {{"mse", r.stats.mse()},
                      {"rmse", r.stats.rmse()},
                      {"max_abs_error", r.stats.max_abs_err},
                      {"sqnr_db", std::isfinite(sqnr) ? json(sqnr) : json(nullptr)},
                      {"cosine", r.stats.cosine()},
                      {"rel_frobenius", r.stats.rel_frobenius()}};
    }
    t.push_back(std::move(e));
  }
  uint64_t largest = 0;
  for (const TensorReport& r : tensors) largest = std::max(largest, r.bytes_in);
  return {{"codec", codec},
          {"tensors", std::move(t)},
          {"summary",
           {{"bytes_in", bytes_in},
            {"bytes_out", bytes_out},
            {"largest_tensor_bytes", largest},
            {"params_total", params_total},
            {"params_quantized", params_quantized},
            {"bits_per_weight", bits_per_weight()},
            {"compression_ratio",
             bytes_out ? static_cast<double>(bytes_in) / static_cast<double>(bytes_out) : 0.0},
            {"seconds", seconds},
            {"input_gb_per_s", seconds > 0 ? static_cast<double>(bytes_in) / seconds / 1e9 : 0.0},
            {"threads", threads}}}};
}

bool SelectedForQuantization(const TensorSpec& t, const QuantizeOptions& options) {
  return Rules(options).Decide(t) == 1;
}

QuantizeReport QuantizeCheckpoint(const Checkpoint& in, const fs::path& out,
                                  const QuantizeOptions& options, const ProgressFn& progress) {
  const auto start = std::chrono::steady_clock::now();
  const Rules rules(options);
  const int threads = ResolveThreads(options.threads);
  QTOOL_CHECK(!QuantizationRecord(in).has_value(), OptionError,
              "{}: already quantised by qtool; dequantize it first", in.dir().string());
  if (const auto imported = DetectImportScheme(in)) {
    throw OptionError(fmt::format("{}: quantised as {}; dequantize it first", in.dir().string(),
                                  imported->Describe()));
  }
  std::error_code ec;
  QTOOL_CHECK(!fs::exists(out) || !fs::equivalent(out, in.dir(), ec), OptionError,
              "{}: output is the input checkpoint's directory", out.string());
  CheckpointWriter::CheckOutputPath(out, options.overwrite);

  // Plan: a codec per selected tensor, and the output's tensor list in file order.
  std::vector<std::unique_ptr<WeightCodec>> codecs(in.tensors().size());
  std::vector<TensorSpec> out_specs;
  json tensors_record = json::object();
  for (size_t i = 0; i < in.tensors().size(); ++i) {
    const TensorInfo& t = *in.tensors()[i].info;
    const int decision = rules.Decide(t);
    QTOOL_CHECK(decision != 2, ShapeError,
                "{}: tensor \"{}\" ({} {}) is named by --include but is not a 2-D float matrix",
                in.tensors()[i].file->path().string(), t.name, DTypeName(t.dtype),
                json(t.shape).dump());
    if (decision == 0) {
      out_specs.push_back(t);
      continue;
    }
    codecs[i] = MakeCodec(options.codec, t.shape[0], t.shape[1]);
    for (TensorSpec& part : codecs[i]->Layout(t.name)) out_specs.push_back(std::move(part));
    tensors_record[t.name] = QuantizedTensorRecord(*codecs[i], t);
  }
  const json codec_record = MakeCodec(options.codec, 1, 1)->Record();
  CheckpointWriter writer(out, out_specs,
                          QuantizedWriterOptions(options, codec_record, tensors_record));
  BufferPool pool;  // outlives the writer thread, which releases its buffers
  BackgroundWriter background(writer, kMaxQueuedBytes);

  QuantizeReport report;
  report.codec = codec_record;
  report.threads = threads;
  for (size_t i = 0; i < in.tensors().size(); ++i) {
    const CheckpointTensor& src = in.tensors()[i];
    const TensorInfo& t = *src.info;
    TensorReport tr = TensorReport::Begin(t);
    src.file->Prefetch(t);
    if (!codecs[i]) {
      // Copied as it is: read from the file straight into the writer's buffer when its turn comes.
      background.EnqueueRead(t.nbytes(), [&src](uint64_t offset, std::span<std::byte> dst) {
        src.file->Read(*src.info, offset, dst);
      });
      tr.bytes_out = t.nbytes();
    } else {
      WeightCodec& codec = *codecs[i];
      const std::vector<TensorSpec> layout = codec.Layout(t.name);
      std::vector<BufferPool::Buffer*> parts;
      std::vector<std::byte*> part_ptrs;
      for (const TensorSpec& p : layout) {
        parts.push_back(pool.Take(p.nbytes()));
        part_ptrs.push_back(parts.back()->data.get());
      }
      tr.stats = QuantizeMatrix(
          // From the file with pread rather than through the memory map: the page faults and
          // the unmapping afterwards cost more than the copy.
          [&src](uint64_t offset, std::span<std::byte> dst) {
            src.file->Read(*src.info, offset, dst);
          },
          t.dtype, codec, part_ptrs.data(), threads,
          fmt::format("{}: tensor \"{}\"", src.file->path().string(), t.name));
      for (size_t k = 0; k < parts.size(); ++k) {
        const size_t n = layout[k].nbytes();
        tr.bytes_out += n;
        BufferPool::Buffer* b = parts[k];
        background.Enqueue({b->data.get(), n}, [&pool, b] { pool.Release(b); });
      }
      tr.MarkQuantized(codec.BitsPerWeight());
    }
    report.Add(std::move(tr));
    if (progress) progress(i + 1, in.tensors().size(), t.name);
  }

  background.Finish();
  CopyModelFiles(in, QuantizationConfig(codec_record, options), writer);
  writer.Commit();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
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

bool QuantizesActivations(const Checkpoint& ck) {
  if (const auto imported = DetectImportScheme(ck)) return imported->int8_activations;
  const auto rec = QuantizationRecord(ck);
  if (!rec || !rec->contains("activations")) return false;
  const json& a = (*rec)["activations"];
  QTOOL_CHECK(a == Int8TokenActivations(), FormatError,
              "{}: activation quantisation {} is not one this build runs (it runs {})",
              ck.dir().string(), a.dump(), Int8TokenActivations().dump());
  return true;
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
  const std::vector<std::string> names = LogicalTensorNames(in);
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
