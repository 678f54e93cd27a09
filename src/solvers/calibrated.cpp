#include "qtool/solvers/calibrated.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>

#include "blocks.hpp"
#include "qtool/core/enum_names.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/format/ggml_quants.hpp"
#include "qtool/format/pack.hpp"
#include "qtool/format/text.hpp"
#include "qtool/model/tokenizer.hpp"
#include "qtool/pipeline/writer.hpp"
#include "qtool/quant/activation.hpp"
#include "qtool/quant/int_codec.hpp"
#include "qtool/solvers/ggml_grid.hpp"
#include "qtool/solvers/gguf_calibrated.hpp"
#include "qtool/solvers/hessian.hpp"

namespace qtool::solvers {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using detail::AwqBlock;
using detail::BlockSolution;
using detail::Context;
using detail::GptqBlock;
using detail::GptqLayers;
using detail::HessianConsumer;
using detail::HqqBlock;
using detail::Since;
using detail::SmoothBlock;
using detail::WeightName;

// Calibration sample length when none is asked for (seq_len 0), or the model's context when that is
// shorter.
constexpr int64_t kDefaultSeqLen = 512;

// Codes and group parameters in the "int" codec's layout: qweight, scales, [zeros], [g_idx].
std::vector<std::vector<std::byte>> StoreExact(const Context& ctx, const QuantizedMatrix& q) {
  const auto cols = static_cast<int64_t>(q.g_idx.size());
  const int64_t rows = cols ? static_cast<int64_t>(q.codes.size()) / cols : 0;
  const QuantSpec& spec = ctx.spec;
  const int64_t glen = spec.GroupLen(cols), groups = spec.GroupsPerRow(cols);
  QTOOL_CHECK(q.groups == groups, OptionError,
              "solver produced {} groups per row, the codec stores {}", q.groups, groups);
  std::vector<std::vector<std::byte>> parts;
  for (const TensorSpec& p : MakeCodec(ctx.options.format, rows, cols)->Layout("")) {
    parts.emplace_back(p.nbytes());
  }
  if (std::get<IntFormat>(ctx.options.format).g_idx) {
    std::memcpy(parts.back().data(), q.g_idx.data(), q.g_idx.size() * 4);  // g_idx: the last part
  } else {
    for (int64_t c = 0; c < cols; ++c) {
      QTOOL_CHECK(q.g_idx[static_cast<size_t>(c)] == c / glen, OptionError,
                  "the codec record has no g_idx: groups must be in column order");
    }
  }
  const int64_t row_bytes = PackedBytes(cols, spec.bits);
  auto* qweight = reinterpret_cast<uint8_t*>(parts[0].data());
  auto* scales = reinterpret_cast<float*>(parts[1].data());
  for (int64_t r = 0; r < rows; ++r) {
    PackCodes(&q.codes[static_cast<size_t>(r * cols)], cols, spec.bits, qweight + r * row_bytes);
    for (int64_t g = 0; g < groups; ++g) {
      const GridParams& p = q.params[static_cast<size_t>(r * groups + g)];
      scales[r * groups + g] = p.scale;
      if (!spec.symmetric) {
        reinterpret_cast<uint8_t*>(parts[2].data())[r * groups + g] = static_cast<uint8_t>(p.zero);
      } else {
        QTOOL_DASSERT(p.zero == static_cast<float>(spec.code_offset()));
      }
    }
  }
  return parts;
}

// What the writer takes of a block's solution: the exact codes in the codec's layout, the values
// and rescalings viewed in `sol`.
SolvedTensors Solved(const Context& ctx, const BlockSolution& sol) {
  SolvedTensors out;
  for (const auto& [name, q] : sol.exact) out[name].stored = StoreExact(ctx, q);
  for (const auto& [name, v] : sol.values) {
    out[name].values = {v.data(), static_cast<size_t>(v.size())};
  }
  for (const auto& [name, r] : sol.rescaled) {
    out[name].row_scale = {r.rows.data(), static_cast<size_t>(r.rows.size())};
    out[name].col_scale = {r.cols.data(), static_cast<size_t>(r.cols.size())};
  }
  return out;
}

}  // namespace

namespace detail {

std::vector<std::vector<int32_t>> CalibrationSamples(const fs::path& model_dir, const Model& model,
                                                     const CalibratedOptions& method) {
  const CalibrationData data =
      ReadCalibrationData(method.calib_text, model_dir, model.config().bos_token_id);
  CalibrationOptions c = method.calib;
  c.bos = data.bos;
  if (c.seq_len == 0) {
    c.seq_len = std::min<int64_t>(kDefaultSeqLen, model.config().max_position_embeddings);
  }
  std::vector<std::vector<int32_t>> samples = DrawCalibrationSamples(data.tokens, c);
  if (method.on_calibration_data) method.on_calibration_data(data, samples);
  return samples;
}

}  // namespace detail

namespace {

// GPTQ-GGUF's step on a group of block run.block()'s layers sharing the input of Hessian `h`: each
// weight swept against the grid of the type the export stores it in, its blocks sent to `sink`;
// a weight of a type GgmlGrid does not take (F32 routers, a 1-row weight the export writes as an
// F32 vector, F16 fallbacks, the ternary types, MXFP4) is left to the export and rounded here by
// the reference quantiser. `overrides` gets the values llama.cpp will read.
void SolveGgufGroup(const Context& ctx, const CalibrationRunner& run, const GptqOptions& opt,
                    const GgmlTypeFn& type_of, const GgmlBlocksFn& sink,
                    const std::vector<std::string>& group, const HessianConsumer& h,
                    const std::string& detail, WeightOverrides* overrides) {
  const int64_t b = run.block();
  std::optional<GptqHessian> hessian;  // factored once for the layers sharing the input
  for (const std::string& name : group) {
    const std::string full = WeightName(b, name);
    const RowMatrixXf w = run.Weight(name);
    const ggml::Type type = w.rows() == 1 ? ggml::Type::kF32 : type_of(full, w.rows(), w.cols());
    const auto t0 = std::chrono::steady_clock::now();
    std::string d(ggml::Traits(type).name);
    if (!detail.empty()) d += ", " + detail;
    if (!GgmlGrid::Supports(type)) {
      RowMatrixXf back(w.rows(), w.cols());
      std::vector<std::byte> q(ggml::RowBytes(type, static_cast<uint64_t>(w.cols())));
      for (int64_t r = 0; r < w.rows(); ++r) {
        ggml::Quantize(type, &w(r, 0), q.data(), w.cols());
        ggml::Dequantize(type, q.data(), &back(r, 0), w.cols());
      }
      (*overrides)[name] = std::move(back);
      ctx.Report({b, name, 0, Since(t0), d});
      continue;
    }
    if (!hessian) hessian = PrepareGptq(h.Hessian(), opt);
    GgmlGrid grid(type, w.rows(), w.cols());
    GptqResult r = Gptq(w, *hessian, grid, opt);
    if (r.stats.damp_retries) d += fmt::format(", damp {:g}", r.stats.damp);
    ctx.Report({b, name, r.stats.loss, Since(t0), d});
    sink(full, type, grid.Write(r.q.codes));
    (*overrides)[name] = std::move(r.q.dequant);
  }
}

constexpr EnumName<Method> kMethodNames[] = {{Method::kGptq, "gptq"},
                                             {Method::kAwq, "awq"},
                                             {Method::kSmoothQuant, "smoothquant"},
                                             {Method::kHqq, "hqq"}};

}  // namespace

Method ParseMethod(const std::string& name) {
  if (const auto m = ValueOf(kMethodNames, name)) return *m;
  throw OptionError(
      fmt::format("unknown method \"{}\" (known: rtn, {})", name, JoinNames(kMethodNames)));
}

const char* MethodName(Method m) { return NameOf(kMethodNames, m); }

QuantizeReport QuantizeCalibrated(const fs::path& model_dir, const fs::path& out,
                                  const QuantizeOptions& options, const CalibratedOptions& method,
                                  const LayerFn& on_layer, const ProgressFn& progress) {
  const auto start = std::chrono::steady_clock::now();
  // AWQ's rescaled weights are rounded by the writer's codec, whichever it is; the other methods
  // choose the int codec's codes.
  const auto* int_format = std::get_if<IntFormat>(&options.format);
  QTOOL_CHECK(int_format != nullptr || method.method == Method::kAwq, OptionError,
              "--method {} writes the int codec (--format int), not {}", MethodName(method.method),
              FormatToString(options.format));
  const QuantSpec spec = int_format ? IntSpec(*int_format) : QuantSpec{};
  QTOOL_CHECK(!int_format || spec.granularity != Granularity::kTensor, OptionError,
              "--method {} needs group or channel granularity", MethodName(method.method));
  QTOOL_CHECK(!int_format || !spec.flat_groups, OptionError,
              "--method {} keeps groups inside rows: drop --flat-groups",
              MethodName(method.method));
  QTOOL_CHECK(method.method != Method::kHqq || !spec.symmetric, OptionError,
              "HQQ optimises zero-points: use an asymmetric format (--asym)");
  QTOOL_CHECK(method.moe_min_tokens >= 1, OptionError,
              "the minimum of calibration tokens per expert must be at least 1, got {}",
              method.moe_min_tokens);
  CheckpointWriter::CheckOutputPath(out, options.overwrite);
  ModelOptions mopts;
  mopts.threads = options.threads;
  mopts.weight_cache_bytes = 0;  // one block at a time
  const Model model(model_dir, mopts);
  const Checkpoint& ck = model.checkpoint();
  QuantizeOptions write_options = options;
  // W8A8: SmoothQuant's point is the activations, quantised per token at run time.
  if (method.method == Method::kSmoothQuant) write_options.activations = Int8TokenActivations();
  // GPTQ's act-order with groups fitted on the way: each column's group is stored (g_idx).
  if (method.method == Method::kGptq && method.gptq.act_order && !method.gptq.static_groups &&
      spec.granularity == Granularity::kGroup) {
    std::get<IntFormat>(write_options.format).g_idx = true;
  }
  const Context ctx{
      ck, model.config(), write_options, method, on_layer, ResolveThreads(options.threads), spec};
  QuantizedCheckpointWriter writer(ck, out, write_options, WriteOrder::kBlocks, progress);
  writer.WriteThrough(-1);
  const int64_t blocks = model.config().num_layers;
  if (!NeedsCalibration(method.method)) {
    for (int64_t b = 0; b < blocks; ++b) writer.WriteThrough(b, Solved(ctx, HqqBlock(ctx, b)));
    return writer.Finish(start);
  }
  CalibrationRunner run(model, detail::CalibrationSamples(model_dir, model, method));
  while (!run.done()) {
    const int64_t b = run.block();
    WeightOverrides overrides;
    BlockSolution sol;
    switch (method.method) {
      case Method::kGptq:
        sol = GptqBlock(ctx, run, &overrides);
        break;
      case Method::kAwq:
        sol = AwqBlock(ctx, run);
        break;
      case Method::kSmoothQuant:
        sol = SmoothBlock(ctx, run);
        break;
      case Method::kHqq:
        break;
    }
    writer.WriteThrough(b, Solved(ctx, sol));
    run.Advance(overrides);
  }
  return writer.Finish(start);
}

void SolveGgufCalibrated(const Model& model, const fs::path& model_dir,
                         const CalibratedOptions& method, int threads, const GgmlTypeFn& type_of,
                         const GgmlBlocksFn& sink, const LayerFn& on_layer) {
  QTOOL_CHECK(method.method == Method::kGptq || method.method == Method::kAwq, OptionError,
              "--method {} cannot write GGUF (gptq and awq can)", MethodName(method.method));
  QTOOL_CHECK(!method.gptq.act_order, OptionError,
              "--act-order cannot be written to GGUF: a block's scales belong to consecutive "
              "columns and llama.cpp has no column permutation (g_idx)");
  GptqOptions opt = method.gptq;
  opt.static_groups = false;
  opt.threads = ResolveThreads(threads);
  CalibrationRunner run(model, detail::CalibrationSamples(model_dir, model, method));
  if (method.method == Method::kAwq) {
    // AWQ's scale and clipping searches round with the int grid of as many bits as the query
    // projection's type has per weight (rounded down), asymmetric, in groups of 32 (a proxy of each
    // ggml type's rounding); the rescaled weights are then written by each tensor's reference
    // quantiser and the rescaled norms in F32.
    const RowMatrixXf q0 = run.Weight("self_attn.q_proj");
    const ggml::Type t0 = type_of(WeightName(0, "self_attn.q_proj"), q0.rows(), q0.cols());
    QuantSpec spec;
    const ggml::TypeTraits& tr = ggml::Traits(t0);
    spec.bits = std::clamp(8 * tr.type_size / tr.block_size, 2, 8);  // bits per weight, floor
    spec.symmetric = false;
    spec.group_size = 32;
    QuantizeOptions qopts;
    qopts.threads = threads;
    const Context ctx{model.checkpoint(), model.config(), qopts, method,
                      on_layer,           opt.threads,    spec};
    while (!run.done()) {
      BlockSolution sol = AwqBlock(ctx, run);
      for (const auto& [full, w] : sol.values) {
        const ggml::Type type =
            w.rows() == 1 ? ggml::Type::kF32 : type_of(full, w.rows(), w.cols());
        const size_t row_bytes = ggml::RowBytes(type, static_cast<uint64_t>(w.cols()));
        std::vector<std::byte> blocks(row_bytes * static_cast<size_t>(w.rows()));
        for (int64_t r = 0; r < w.rows(); ++r) {
          ggml::Quantize(type, &w(r, 0), blocks.data() + static_cast<size_t>(r) * row_bytes,
                         w.cols());
        }
        sink(full, type, std::move(blocks));
      }
      run.Advance();
    }
    return;
  }
  // Every Linear of the blocks is written: the routers and Qwen2-MoE's shared-expert gate too (in
  // F32, as the export writes them), so they are selected.
  QuantizeOptions qopts;
  qopts.include = {kDefaultExclude};
  qopts.threads = threads;
  const Context ctx{model.checkpoint(), model.config(), qopts, method, on_layer, opt.threads, {}};
  while (!run.done()) {
    WeightOverrides overrides;
    GptqLayers(
        ctx, run,
        [&](const std::vector<std::string>& group, const HessianConsumer& h,
            const std::string& detail) {
          SolveGgufGroup(ctx, run, opt, type_of, sink, group, h, detail, &overrides);
        },
        overrides);
    run.Advance(overrides);
  }
}

}  // namespace qtool::solvers
