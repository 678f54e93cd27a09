#include "qtool/pipeline/writer.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <regex>
#include <utility>

#include "qtool/core/error.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/io/format_record.hpp"
#include "qtool/io/import.hpp"
#include "qtool/kernels.hpp"
#include "qtool/kernels/convert.hpp"
#include "qtool/pipeline/quantize.hpp"
#include "qtool/quant/activation.hpp"

namespace qtool {
namespace fs = std::filesystem;
using json = nlohmann::json;

// Output buffers of quantised tensors, reused once the background writer has written them, so that
// the steady state neither zero-fills nor page-faults fresh memory. A model's tensors come in a
// few repeating shapes, so a handful of buffers serve all of them; they live as long as the pool.
class QuantizedCheckpointWriter::BufferPool {
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

QuantizedCheckpointWriter::QuantizedCheckpointWriter(const Checkpoint& in, const fs::path& out,
                                                     const QuantizeOptions& options,
                                                     WriteOrder order, ProgressFn progress)
    : in_(in),
      options_(options),
      threads_(ResolveThreads(options.threads)),
      progress_(std::move(progress)) {
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

  // Plan: a codec per selected tensor, and the output's tensor list in the order written.
  const TensorSelection selection(options);
  for (size_t i = 0; i < in.tensors().size(); ++i) {
    const CheckpointTensor& src = in.tensors()[i];
    const TensorInfo& t = *src.info;
    const TensorSelection::Decision decision = selection.Decide(t);
    QTOOL_CHECK(decision != TensorSelection::Decision::kNotMatrix, ShapeError,
                "{}: tensor \"{}\" ({} {}) is named by --include but is not a 2-D float matrix",
                src.file->path().string(), t.name, DTypeName(t.dtype),
                fmt::format("[{}]", fmt::join(t.shape, ",")));
    int64_t block = -1;
    if (order == WriteOrder::kBlocks) {
      static const std::regex block_re(R"(^model\.layers\.(\d+)\.)");
      std::smatch m;
      if (std::regex_search(t.name, m, block_re)) block = std::stoll(m[1].str());
    }
    order_.push_back({i, block,
                      decision == TensorSelection::Decision::kQuantize
                          ? MakeCodec(options.format, t.shape[0], t.shape[1])
                          : nullptr});
  }
  if (order == WriteOrder::kBlocks) {
    std::stable_sort(order_.begin(), order_.end(), [&](const Entry& a, const Entry& b) {
      if (a.block != b.block) return a.block < b.block;
      return in.tensors()[a.index].info->name < in.tensors()[b.index].info->name;
    });
  }
  std::vector<TensorSpec> specs;
  json tensors_record = json::object();
  for (const Entry& e : order_) {
    const TensorInfo& t = *in.tensors()[e.index].info;
    if (!e.codec) {
      specs.push_back(t);
      continue;
    }
    for (TensorSpec& part : e.codec->Layout(t.name)) specs.push_back(std::move(part));
    tensors_record[t.name] = QuantizedTensorRecord(*e.codec, t);
  }
  codec_record_ = CodecRecord(*MakeCodec(options.format, 1, 1));
  PlanInputScales(specs, tensors_record);
  writer_ = std::make_unique<CheckpointWriter>(
      out, std::move(specs), QuantizedWriterOptions(options, codec_record_, tensors_record));
  pool_ = std::make_unique<BufferPool>();
  // Tensors copied from the input do not count against the queue's bound: they are read from the
  // file when their turn comes and written beside the quantised ones.
  background_ = std::make_unique<BackgroundWriter>(*writer_, kMaxQueuedBytes);
  report_.codec = codec_record_;
  report_.threads = threads_;
}

QuantizedCheckpointWriter::~QuantizedCheckpointWriter() = default;

void QuantizedCheckpointWriter::PlanInputScales(std::vector<TensorSpec>& specs,
                                                const json& tensors_record) {
  const bool fp8_static = options_.activations == Fp8StaticActivations();
  if (!fp8_static) return;  // QuantizedWriterOptions refuses input scales without it
  CheckFp8StaticWeights(options_.format);
  for (const auto& [name, rec] : tensors_record.items()) {
    QTOOL_CHECK(name.ends_with(".weight"), OptionError,
                "static FP8 inputs: quantised tensor \"{}\" is not a Linear's weight", name);
    const std::string module = name.substr(0, name.size() - 7);
    const auto it = options_.input_scales.find(module);
    QTOOL_CHECK(it != options_.input_scales.end(), OptionError,
                "static FP8 inputs: no input scale was measured for \"{}\"", module);
    QTOOL_CHECK(std::isfinite(it->second) && it->second > 0, NumericError,
                "static FP8 inputs: the input scale of \"{}\" is {}, not positive and finite",
                module, it->second);
    input_scales_.push_back(it->second);
    specs.push_back({module + kInputScaleSuffix, DType::kF32, {1}});
  }
  for (const auto& [module, s] : options_.input_scales) {
    QTOOL_CHECK(tensors_record.contains(module + ".weight"), OptionError,
                "input scale for \"{}\", which is not a quantised Linear", module);
  }
}

void QuantizedCheckpointWriter::WriteThrough(int64_t block, const SolvedTensors& solved) {
  for (; next_ < order_.size() && order_[next_].block <= block; ++next_) {
    Entry& e = order_[next_];
    const std::string& name = in_.tensors()[e.index].info->name;
    const auto it = solved.find(name);
    WriteEntry(e, it != solved.end() ? &it->second : nullptr);
    if (progress_) progress_(next_ + 1, order_.size(), name);
  }
}

QuantizeReport QuantizedCheckpointWriter::Finish(std::chrono::steady_clock::time_point start) {
  WriteThrough(INT64_MAX);
  for (const float scale : input_scales_) {  // planned last, in PlanInputScales
    std::vector<std::byte> bytes(sizeof(float));
    std::memcpy(bytes.data(), &scale, sizeof(float));
    background_->Enqueue(std::move(bytes));
  }
  background_->Finish();
  CopyModelFiles(in_, QuantizationConfig(codec_record_, options_), *writer_);
  writer_->Commit();
  report_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return std::move(report_);
}

void QuantizedCheckpointWriter::WriteEntry(Entry& e, const SolvedTensor* solved) {
  const CheckpointTensor& src = in_.tensors()[e.index];
  const TensorInfo& t = *src.info;
  TensorReport tr = TensorReport::Begin(t);
  src.file->Prefetch(t);
  // Bytes read from the file with pread rather than through the memory map: the page faults and
  // the unmapping afterwards cost more than the copy.
  const ByteSource read = [&src](uint64_t offset, std::span<std::byte> dst) {
    src.file->Read(*src.info, offset, dst);
  };
  const std::string label = fmt::format("{}: tensor \"{}\"", src.file->path().string(), t.name);
  if (!e.codec) {
    tr.bytes_out = t.nbytes();
    if (solved == nullptr) {
      // Copied as it is, straight into the writer's buffer when its turn comes.
      background_->EnqueueRead(t.nbytes(), read);
    } else {
      QTOOL_CHECK(static_cast<int64_t>(solved->values.size()) == t.numel(), Error,
                  "internal: {} has {} solved values, not {}", label, solved->values.size(),
                  t.numel());
      std::vector<std::byte> bytes(t.nbytes());
      ConvertFromF32(solved->values.data(), t.dtype, t.numel(), bytes.data());
      background_->Enqueue(std::move(bytes));
    }
    report_.Add(std::move(tr));
    return;
  }
  WeightCodec& codec = *e.codec;
  const std::vector<TensorSpec> layout = codec.Layout(t.name);
  std::vector<BufferPool::Buffer*> parts;
  std::vector<std::byte*> ptrs;
  for (const TensorSpec& p : layout) {
    parts.push_back(pool_->Take(p.nbytes()));
    ptrs.push_back(parts.back()->data.get());
  }
  if (solved == nullptr) {
    tr.stats = QuantizeMatrix(read, t.dtype, codec, ptrs.data(), threads_, label);
  } else {
    if (!solved->stored.empty()) {
      QTOOL_CHECK(solved->stored.size() == layout.size(), Error,
                  "internal: {} has {} solved parts, its codec stores {}", label,
                  solved->stored.size(), layout.size());
      for (size_t k = 0; k < layout.size(); ++k) {
        QTOOL_CHECK(solved->stored[k].size() == layout[k].nbytes(), Error,
                    "internal: solved part \"{}\" has {} bytes, not {}", layout[k].name,
                    solved->stored[k].size(), layout[k].nbytes());
        std::memcpy(ptrs[k], solved->stored[k].data(), layout[k].nbytes());
      }
    } else {
      QTOOL_CHECK(static_cast<int64_t>(solved->values.size()) == t.numel(), Error,
                  "internal: {} has {} solved values, not {}", label, solved->values.size(),
                  t.numel());
      QuantizeMatrix(reinterpret_cast<const std::byte*>(solved->values.data()), DType::kF32, codec,
                     ptrs.data(), threads_, label);
    }
    // The report compares the stored (decoded) weights with the checkpoint's, in the checkpoint's
    // basis: a solver's rescaling is undone first.
    const int64_t rows = codec.rows(), cols = codec.cols();
    std::vector<float> original(static_cast<size_t>(t.numel()));
    const int64_t bad = ConvertToF32(src.data().data(), t.dtype, t.numel(), original.data());
    QTOOL_CHECK(bad < 0, NumericError, "{} has a non-finite value at element {}", label, bad);
    std::vector<float> decoded(static_cast<size_t>(rows * cols));
    const std::vector<const std::byte*> cptrs(ptrs.begin(), ptrs.end());
    codec.DecodeRows(cptrs.data(), 0, rows, decoded.data());
    if (!solved->row_scale.empty()) {
      for (int64_t r = 0; r < rows; ++r) {
        float* row = decoded.data() + r * cols;
        for (int64_t c = 0; c < cols; ++c) {
          row[c] = row[c] / solved->row_scale[static_cast<size_t>(r)] /
                   solved->col_scale[static_cast<size_t>(c)];
        }
      }
    }
    kernels::AccumulateErrors(original.data(), decoded.data(), rows * cols, &tr.stats);
    src.file->Release(t);  // its pages leave the memory map (they stay in the page cache)
  }
  for (size_t k = 0; k < parts.size(); ++k) {
    const size_t n = layout[k].nbytes();
    tr.bytes_out += n;
    BufferPool::Buffer* b = parts[k];
    background_->Enqueue({b->data.get(), n}, [pool = pool_.get(), b] { pool->Release(b); });
  }
  tr.MarkQuantized(codec.BitsPerWeight());
  report_.Add(std::move(tr));
}

}  // namespace qtool
