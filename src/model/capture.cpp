#include "qtool/model/capture.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <random>

#include "model_impl.hpp"
#include "moe.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/kernels/gemm.hpp"

namespace qtool {

const std::vector<std::string>& BlockLinearNames() {
  static const std::vector<std::string> names = {
      "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
      "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  return names;
}

const std::vector<std::string>& BlockLinearNames(const LlamaConfig& cfg) {
  static const std::vector<std::string> fused = {"self_attn.qkv_proj", "self_attn.o_proj",
                                                 "mlp.gate_up_proj", "mlp.down_proj"};
  return cfg.fused_projections ? fused : BlockLinearNames();
}

std::vector<std::string> BlockLinearNames(const LlamaConfig& cfg, int64_t block) {
  if (!cfg.IsMoeLayer(block)) return BlockLinearNames(cfg);
  std::vector<std::string> names(BlockLinearNames().begin(), BlockLinearNames().begin() + 4);
  for (std::string& n : runtime::MoeLinearNames(cfg)) names.push_back(std::move(n));
  return names;
}

MoeLayerNames MoeNames(const LlamaConfig& cfg) {
  using runtime::ExpertPart;
  MoeLayerNames n;
  n.router = runtime::RouterName(cfg);
  for (int64_t e = 0; e < cfg.moe.num_experts; ++e) {
    n.experts.push_back({runtime::ExpertLinearName(cfg, e, ExpertPart::kGate),
                         runtime::ExpertLinearName(cfg, e, ExpertPart::kUp),
                         runtime::ExpertLinearName(cfg, e, ExpertPart::kDown)});
  }
  n.has_shared = cfg.moe.shared_intermediate_size > 0;
  if (n.has_shared) {
    n.shared = {runtime::SharedExpertLinearName(ExpertPart::kGate),
                runtime::SharedExpertLinearName(ExpertPart::kUp),
                runtime::SharedExpertLinearName(ExpertPart::kDown)};
    n.shared_gate = runtime::kSharedExpertGateName;
  }
  return n;
}

const std::vector<std::vector<std::string>>& LinearInputGroups(const LlamaConfig& cfg) {
  static const std::vector<std::vector<std::string>> groups = {
      {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"},
      {"self_attn.o_proj"},
      {"mlp.gate_proj", "mlp.up_proj"},
      {"mlp.down_proj"}};
  static const std::vector<std::vector<std::string>> fused = {
      {"self_attn.qkv_proj"}, {"self_attn.o_proj"}, {"mlp.gate_up_proj"}, {"mlp.down_proj"}};
  return cfg.fused_projections ? fused : groups;
}

std::vector<std::vector<std::string>> LinearInputGroups(const LlamaConfig& cfg, int64_t block) {
  const auto& dense = LinearInputGroups(cfg);
  if (!cfg.IsMoeLayer(block)) return dense;
  std::vector<std::vector<std::string>> groups(dense.begin(), dense.begin() + 2);
  const MoeLayerNames moe = MoeNames(cfg);
  groups.push_back({moe.router});
  if (moe.has_shared) {
    groups.back().insert(groups.back().end(), {moe.shared[0], moe.shared[1], moe.shared_gate});
    groups.push_back({moe.shared[2]});
  }
  for (const auto& e : moe.experts) {
    groups.push_back({e[0], e[1]});
    groups.push_back({e[2]});
  }
  return groups;
}

std::string BlockTensorName(int64_t block, const std::string& name) {
  return fmt::format("model.layers.{}.{}", block, name);
}

HessianAccumulator::HessianAccumulator(int64_t in_features, int threads)
    : sum_(Eigen::MatrixXd::Zero(in_features, in_features)), threads_(ResolveThreads(threads)) {}

void HessianAccumulator::Consume(const Eigen::Ref<const RowMatrixXf>& x) {
  QTOOL_CHECK(x.cols() == sum_.cols(), ShapeError,
              "Hessian of {} input features given rows of {} features", sum_.cols(), x.cols());
  if (x.rows() == 0) return;
  // x^T x as (x^T)(x^T)^T: the rows of x^T are packed as the kernels' B operand. Float sums over
  // at most kRunRows rows are added to the double total, which keeps the relative error near
  // 1e-7 whatever the number of rows.
  constexpr int64_t kRunRows = 256;
  RowMatrixXf xt, run(x.cols(), x.cols());
  for (int64_t r0 = 0; r0 < x.rows(); r0 += kRunRows) {
    const int64_t n = std::min(kRunRows, x.rows() - r0);
    xt = x.middleRows(r0, n).transpose();
    const gemm::PackedMatrix packed = gemm::Pack(xt.data(), xt.rows(), n);
    gemm::MatMul(xt.data(), n, xt.rows(), packed, run.data(), run.cols(), threads_);
    sum_ += run.cast<double>();
  }
  rows_ += x.rows();
}

Eigen::MatrixXd HessianAccumulator::Hessian() const {
  if (rows_ == 0) return Eigen::MatrixXd::Zero(sum_.rows(), sum_.cols());
  return sum_ * (2.0 / static_cast<double>(rows_));
}

ChannelStats::ChannelStats(int64_t in_features)
    : sum_abs_(Eigen::VectorXd::Zero(in_features)),
      sum_sq_(Eigen::VectorXd::Zero(in_features)),
      max_abs_(Eigen::VectorXd::Zero(in_features)) {}

void ChannelStats::Consume(const Eigen::Ref<const RowMatrixXf>& x) {
  QTOOL_CHECK(x.cols() == sum_abs_.size(), ShapeError,
              "statistics of {} input features given rows of {} features", sum_abs_.size(),
              x.cols());
  const Eigen::ArrayXXd a = x.cast<double>().array().abs();
  sum_abs_ += a.colwise().sum().matrix().transpose();
  sum_sq_ += a.square().colwise().sum().matrix().transpose();
  if (x.rows() > 0) max_abs_ = max_abs_.cwiseMax(a.colwise().maxCoeff().matrix().transpose());
  rows_ += x.rows();
}

Eigen::VectorXd ChannelStats::MeanAbs() const {
  return rows_ ? Eigen::VectorXd(sum_abs_ / static_cast<double>(rows_)) : sum_abs_;
}

Eigen::VectorXd ChannelStats::MeanSquare() const {
  return rows_ ? Eigen::VectorXd(sum_sq_ / static_cast<double>(rows_)) : sum_sq_;
}

std::vector<std::vector<int32_t>> DrawCalibrationSamples(const std::vector<int32_t>& tokens,
                                                         const CalibrationOptions& options) {
  QTOOL_CHECK(options.num_samples > 0 && options.seq_len > 1, OptionError,
              "calibration needs at least one sample of two or more tokens");
  const int64_t window = options.seq_len - (options.bos >= 0 ? 1 : 0);
  const int64_t n = static_cast<int64_t>(tokens.size());
  QTOOL_CHECK(n >= window, OptionError,
              "calibration text has {} tokens, fewer than one sample of {}", n, window);
  std::mt19937_64 rng(options.seed);
  std::vector<std::vector<int32_t>> samples;
  for (int64_t s = 0; s < options.num_samples; ++s) {
    const int64_t start = static_cast<int64_t>(rng() % static_cast<uint64_t>(n - window + 1));
    std::vector<int32_t> sample;
    if (options.bos >= 0) sample.push_back(options.bos);
    sample.insert(sample.end(), tokens.begin() + start, tokens.begin() + start + window);
    samples.push_back(std::move(sample));
  }
  return samples;
}

CalibrationRunner::CalibrationRunner(const Model& model, std::vector<std::vector<int32_t>> samples)
    : model_(model), samples_(std::move(samples)) {
  QTOOL_CHECK(!samples_.empty(), OptionError, "calibration needs at least one sample");
  seq_len_ = static_cast<int64_t>(samples_.front().size());
  for (const auto& s : samples_) {
    QTOOL_CHECK(static_cast<int64_t>(s.size()) == seq_len_, OptionError,
                "calibration samples differ in length ({} and {} tokens)", seq_len_, s.size());
  }
  inputs_ = model_.impl_->Embed(samples_);
}

int64_t CalibrationRunner::num_blocks() const { return model_.config().num_layers; }

namespace {

const runtime::Linear& FindLinear(const runtime::BlockWeights& b, const std::string& name) {
  const runtime::Linear* l = b.Find(name);
  QTOOL_CHECK(l != nullptr, OptionError, "\"{}\" is not a Linear layer of a decoder block", name);
  return *l;
}

}  // namespace

RowMatrixXf CalibrationRunner::Weight(const std::string& name) const {
  QTOOL_CHECK(!done(), OptionError, "every block has been calibrated");
  const auto block = model_.impl_->Block(block_);
  if (const Eigen::VectorXf* n = block->FindNorm(name)) return n->transpose();
  const runtime::Linear& l = FindLinear(*block, name);
  RowMatrixXf w(l.out(), l.in());
  for (int64_t r = 0; r < l.out(); ++r) l.w.UnpackRow(r, &w(r, 0));
  return w;
}

std::vector<std::string> CalibrationRunner::LinearNames() const {
  return BlockLinearNames(model_.config(), block_);
}

int64_t CalibrationRunner::in_features(const std::string& linear) const {
  const LlamaConfig& c = model_.config();
  if (c.IsMoeLayer(block_) && !linear.starts_with("self_attn.")) {
    const int64_t in = runtime::MoeLinearShape(c, linear).second;
    QTOOL_CHECK(in > 0, OptionError, "\"{}\" is not a Linear layer of MoE block {}", linear,
                block_);
    return in;
  }
  if (linear == "self_attn.o_proj") return c.num_heads * c.head_dim;
  if (linear == "mlp.down_proj") return c.intermediate_size;
  const std::vector<std::string>& names = BlockLinearNames(c);
  QTOOL_CHECK(std::count(names.begin(), names.end(), linear) == 1, OptionError,
              "\"{}\" is not a Linear layer of a decoder block", linear);
  return c.hidden_size;
}

int64_t CalibrationRunner::out_features(const std::string& linear) const {
  const LlamaConfig& c = model_.config();
  if (c.IsMoeLayer(block_) && !linear.starts_with("self_attn.")) {
    const int64_t out = runtime::MoeLinearShape(c, linear).first;
    QTOOL_CHECK(out > 0, OptionError, "\"{}\" is not a Linear layer of MoE block {}", linear,
                block_);
    return out;
  }
  if (linear == "self_attn.q_proj") return c.num_heads * c.head_dim;
  if (linear == "self_attn.k_proj" || linear == "self_attn.v_proj") {
    return c.num_kv_heads * c.head_dim;
  }
  if (linear == "mlp.gate_proj" || linear == "mlp.up_proj") return c.intermediate_size;
  if (linear == "self_attn.qkv_proj") return (c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
  if (linear == "mlp.gate_up_proj") return 2 * c.intermediate_size;
  in_features(linear);  // refuses a name of another architecture
  QTOOL_CHECK(linear == "self_attn.o_proj" || linear == "mlp.down_proj", OptionError,
              "\"{}\" is not a Linear layer of a decoder block", linear);
  return c.hidden_size;
}

RowMatrixXf CalibrationRunner::Run(const ConsumerMap& consumers, const WeightOverrides& overrides,
                                   bool int8_inputs) const {
  RowMatrixXf out(inputs_.rows(), inputs_.cols());
  Forward(consumers, overrides, int8_inputs, {}, &out);
  return out;
}

void CalibrationRunner::Capture(const ConsumerMap& consumers,
                                const WeightOverrides& overrides) const {
  if (consumers.empty()) return;
  std::string last;
  for (const std::string& name : LinearNames()) {
    if (consumers.count(name)) last = name;
  }
  // Forward() refuses unknown names (with `last` empty, every name is one).
  Forward(consumers, overrides, false, last, nullptr);
}

void CalibrationRunner::Forward(const ConsumerMap& consumers, const WeightOverrides& overrides,
                                bool int8_inputs, const std::string& stop_after,
                                RowMatrixXf* out) const {
  QTOOL_CHECK(!done(), OptionError, "every block has been calibrated");
  for (const auto& [name, list] : consumers) in_features(name);  // validates the name
  const Model::Impl& m = *model_.impl_;
  std::shared_ptr<const runtime::BlockWeights> block = m.Block(block_);
  if (!overrides.empty() || int8_inputs) {
    auto changed = std::make_shared<runtime::BlockWeights>(*block);
    changed->Apply(overrides);
    if (int8_inputs) {
      if (changed->moe) changed->moe = std::make_shared<runtime::MoeWeights>(*changed->moe);
      for (const std::string& name : LinearNames())
        changed->Find(name)->inputs = InputQuantization::kInt8Token;
    }
    block = std::move(changed);
  }
  const runtime::LinearInputFn observe = [&](const std::string& name, const RowMatrixXf& x) {
    const auto it = consumers.find(name);
    if (it == consumers.end()) return;
    for (ActivationConsumer* c : it->second) c->Consume(x);
  };
  const int64_t per_chunk = std::max<int64_t>(1, kCaptureChunkTokens / seq_len_);
  for (int64_t s0 = 0; s0 < num_samples(); s0 += per_chunk) {
    const int64_t count = std::min(per_chunk, num_samples() - s0);
    RowMatrixXf x = inputs_.middleRows(s0 * seq_len_, count * seq_len_);
    runtime::RunBlock(*block, m.cfg, m.Rope(block_), std::vector<int64_t>(count, seq_len_), x,
                      m.threads, observe, nullptr, stop_after);
    if (out) out->middleRows(s0 * seq_len_, count * seq_len_) = x;
  }
}

void CalibrationRunner::Advance(const WeightOverrides& overrides) {
  inputs_ = Run({}, overrides);
  ++block_;
}

}  // namespace qtool
