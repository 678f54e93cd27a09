#include "qtool/model/eval.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "qtool/core/error.hpp"

namespace qtool {
namespace {

// log softmax of each row, in double for the sums.
RowMatrixXf LogSoftmax(const RowMatrixXf& logits) {
  RowMatrixXf out(logits.rows(), logits.cols());
  for (Eigen::Index r = 0; r < logits.rows(); ++r) {
    const float mx = logits.row(r).maxCoeff();
    const double sum = (logits.row(r).array() - mx).cast<double>().exp().sum();
    out.row(r) = logits.row(r).array() - mx - static_cast<float>(std::log(sum));
  }
  return out;
}

// The value below which `q` of the sorted values lie (linear interpolation between ranks).
double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(v.size() - 1, lo + 1);
  return v[lo] + (pos - static_cast<double>(lo)) * (v[hi] - v[lo]);
}

}  // namespace

std::vector<std::vector<int32_t>> PerplexityWindows(const std::vector<int32_t>& tokens, int64_t ctx,
                                                    int32_t bos) {
  QTOOL_CHECK(ctx >= 2, OptionError, "--ctx must be at least 2, got {}", ctx);
  std::vector<std::vector<int32_t>> windows;
  const size_t step = static_cast<size_t>(ctx - 1);
  for (size_t i = 0; i < tokens.size(); i += step) {
    std::vector<int32_t> w = {bos};
    w.insert(w.end(), tokens.begin() + static_cast<std::ptrdiff_t>(i),
             tokens.begin() + static_cast<std::ptrdiff_t>(std::min(tokens.size(), i + step)));
    windows.push_back(std::move(w));
  }
  return windows;
}

EvalReport Evaluate(const Model& model, const std::vector<int32_t>& tokens,
                    const EvalOptions& options, const Model* base, const EvalProgressFn& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  const LlamaConfig& cfg = model.config();
  EvalReport r;
  r.ctx = options.ctx > 0 ? options.ctx : cfg.max_position_embeddings;
  QTOOL_CHECK(r.ctx <= cfg.max_position_embeddings, OptionError,
              "--ctx {} exceeds the model's context of {}", r.ctx, cfg.max_position_embeddings);
  QTOOL_CHECK(!tokens.empty(), OptionError, "the evaluation text has no tokens");
  if (base != nullptr) {
    QTOOL_CHECK(base->config().vocab_size == cfg.vocab_size, OptionError,
                "the base model's vocabulary ({}) differs from the model's ({})",
                base->config().vocab_size, cfg.vocab_size);
    QTOOL_CHECK(r.ctx <= base->config().max_position_embeddings, OptionError,
                "--ctx {} exceeds the base model's context of {}", r.ctx,
                base->config().max_position_embeddings);
  }
  const auto windows = PerplexityWindows(tokens, r.ctx, cfg.bos_token_id);
  r.windows = static_cast<int64_t>(windows.size());
  const size_t per_batch = static_cast<size_t>(std::max<int64_t>(1, options.batch_tokens / r.ctx));
  double nll = 0, base_nll = 0;
  int64_t agree = 0;
  std::vector<double> kl;
  for (size_t w0 = 0; w0 < windows.size(); w0 += per_batch) {
    const std::vector<std::vector<int32_t>> batch(
        windows.begin() + static_cast<std::ptrdiff_t>(w0),
        windows.begin() + static_cast<std::ptrdiff_t>(std::min(windows.size(), w0 + per_batch)));
    // Log-probabilities of the base model for this batch, consumed by the model's pass below.
    std::vector<RowMatrixXf> base_lp(batch.size());
    if (base != nullptr) {
      base->Forward(batch, [&](size_t s, const RowMatrixXf& logits) {
        base_lp[s] = LogSoftmax(logits.topRows(logits.rows() - 1));
      });
    }
    model.Forward(batch, [&](size_t s, const RowMatrixXf& logits) {
      // Position i predicts token i + 1 of the window; BOS itself is never predicted.
      const RowMatrixXf lp = LogSoftmax(logits.topRows(logits.rows() - 1));
      const std::vector<int32_t>& seq = batch[s];
      for (Eigen::Index i = 0; i < lp.rows(); ++i) {
        const int32_t next = seq[static_cast<size_t>(i) + 1];
        nll -= lp(i, next);
        if (base == nullptr) continue;
        const auto& b = base_lp[s];
        base_nll -= b(i, next);
        // KL(base || model) = sum p_base (log p_base - log p_model).
        kl.push_back(
            (b.row(i).array().cast<double>().exp() * (b.row(i) - lp.row(i)).array().cast<double>())
                .sum());
        Eigen::Index am = 0, bm = 0;
        lp.row(i).maxCoeff(&am);
        b.row(i).maxCoeff(&bm);
        agree += am == bm;
      }
      r.tokens += lp.rows();
    });
    if (progress) progress(static_cast<int64_t>(w0 + batch.size()), r.windows);
  }
  const double n = static_cast<double>(r.tokens);
  r.mean_nll = nll / n;
  r.ppl = std::exp(r.mean_nll);
  if (base != nullptr) {
    KlStats k;
    k.base_ppl = std::exp(base_nll / n);
    k.delta_ppl = r.ppl - k.base_ppl;
    double sum = 0;
    for (const double v : kl) sum += v;
    k.kl_mean = sum / n;
    k.kl_median = Quantile(kl, 0.5);
    k.kl_p99 = Quantile(kl, 0.99);
    k.top1_agreement = static_cast<double>(agree) / n;
    r.kl = k;
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

nlohmann::json EvalReport::ToJson() const {
  nlohmann::json j = {
      {"ppl", ppl},
      {"mean_nll", mean_nll},
      {"tokens", tokens},
      {"windows", windows},
      {"ctx", ctx},
      {"seconds", seconds},
      {"tokens_per_second", seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0}};
  if (kl) {
    j["base_ppl"] = kl->base_ppl;
    j["delta_ppl"] = kl->delta_ppl;
    j["kl_mean"] = kl->kl_mean;
    j["kl_median"] = kl->kl_median;
    j["kl_p99"] = kl->kl_p99;
    j["top1_agreement"] = kl->top1_agreement;
  }
  return j;
}

}  // namespace qtool
