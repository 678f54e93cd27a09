// The helpers the block algorithms share (blocks.hpp).
#include "blocks.hpp"

#include <memory>

#include "qtool/pipeline/quantize.hpp"
#include "qtool/quant/codec.hpp"

namespace qtool::solvers::detail {

std::string MlpNorm(const LlamaConfig& cfg) {
  return cfg.sandwich_norms ? "pre_feedforward_layernorm" : "post_attention_layernorm";
}

RowMatrixXf StoredNorm(const LlamaConfig& cfg, RowMatrixXf effective) {
  if (cfg.norm_plus_one) effective.array() -= 1.0f;
  return effective;
}

RowMatrixXf RoundedByCodec(const RowMatrixXf& w, const Format& format, int threads,
                           const std::string& label) {
  const std::unique_ptr<WeightCodec> codec = MakeCodec(format, w.rows(), w.cols());
  std::vector<std::vector<std::byte>> parts;
  std::vector<std::byte*> ptrs;
  for (const TensorSpec& p : codec->Layout("")) {
    parts.emplace_back(p.nbytes());
    ptrs.push_back(parts.back().data());
  }
  QuantizeMatrix(reinterpret_cast<const std::byte*>(w.data()), DType::kF32, *codec, ptrs.data(),
                 threads, label);
  const std::vector<const std::byte*> cptrs(ptrs.begin(), ptrs.end());
  RowMatrixXf out(w.rows(), w.cols());
  codec->DecodeRows(cptrs.data(), 0, w.rows(), out.data());
  return out;
}

namespace {

// Counts the rows a layer is shown.
class RowCounter final : public ActivationConsumer {
 public:
  void Consume(const Eigen::Ref<const RowMatrixXf>& x) override { rows_ += x.rows(); }
  int64_t rows() const { return rows_; }

 private:
  int64_t rows_ = 0;
};

}  // namespace

MoeRouting RouteExperts(const Context& ctx, const CalibrationRunner& run,
                        const MoeLayerNames& names, const WeightOverrides& overrides) {
  std::vector<RowCounter> counters(names.experts.size());
  ConsumerMap consumers;
  for (size_t e = 0; e < names.experts.size(); ++e) consumers[names.experts[e][0]] = {&counters[e]};
  run.Capture(consumers, overrides);
  MoeRouting r;
  r.all = run.num_samples() * run.seq_len();
  for (size_t e = 0; e < counters.size(); ++e) {
    r.tokens.push_back(counters[e].rows());
    r.fallback.push_back(counters[e].rows() < ctx.method.moe_min_tokens);
    if (ctx.method.on_expert) {
      ctx.method.on_expert({run.block(), static_cast<int64_t>(e), r.tokens.back(),
                            r.fallback.back(), r.fallback.back() ? r.all : 0});
    }
  }
  return r;
}

}  // namespace qtool::solvers::detail
