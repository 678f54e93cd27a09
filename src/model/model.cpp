#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "model_impl.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/model/capture.hpp"

namespace qtool {
namespace {

Checkpoint OpenModel(const std::filesystem::path& path) {
  Checkpoint ck = Checkpoint::Open(path);
  QTOOL_CHECK(ck.config().has_value(), FormatError, "{}: no config.json beside the weights",
              path.string());
  return ck;
}

uint64_t PhysicalMemory() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
}

}  // namespace

Model::Impl::Impl(const std::filesystem::path& path, const ModelOptions& options)
    : ck(OpenModel(path)),
      cfg(LlamaConfig::FromJson(*ck.config())),
      threads(ResolveThreads(options.threads)),
      rope(cfg, cfg.max_position_embeddings) {
  const int64_t h = cfg.hidden_size, vocab = cfg.vocab_size;
  const std::vector<float> e = ReadTensorF32(ck, "model.embed_tokens.weight", threads);
  QTOOL_CHECK(static_cast<int64_t>(e.size()) == vocab * h, ShapeError,
              "model.embed_tokens.weight has {} values, the config implies {} x {}", e.size(),
              vocab, h);
  embed = Eigen::Map<const RowMatrixXf>(e.data(), vocab, h);
  const std::vector<float> n = ReadTensorF32(ck, "model.norm.weight", threads);
  QTOOL_CHECK(static_cast<int64_t>(n.size()) == h, ShapeError,
              "model.norm.weight has {} values, not {}", n.size(), h);
  final_norm = runtime::EffectiveNorm(Eigen::Map<const Eigen::VectorXf>(n.data(), h), cfg);
  if (cfg.rope_local) rope_local.emplace(cfg, cfg.max_position_embeddings, /*local=*/true);
  const std::vector<std::string> names = LogicalTensorNames(ck);
  if (std::find(names.begin(), names.end(), "lm_head.weight") != names.end()) {
    const std::vector<float> w = ReadTensorF32(ck, "lm_head.weight", threads);
    QTOOL_CHECK(static_cast<int64_t>(w.size()) == vocab * h, ShapeError,
                "lm_head.weight has {} values, the config implies {} x {}", w.size(), vocab, h);
    head.w = gemm::Pack(w.data(), vocab, h);
  } else {
    QTOOL_CHECK(cfg.tie_word_embeddings, FormatError,
                "{}: no lm_head.weight and tie_word_embeddings is false", ck.dir().string());
    head.w = gemm::Pack(embed.data(), vocab, h);
  }
  cache.resize(static_cast<size_t>(cfg.num_layers));
  cache_budget = options.weight_cache_bytes >= 0 ? static_cast<uint64_t>(options.weight_cache_bytes)
                                                 : PhysicalMemory() / 2;
}

std::shared_ptr<const runtime::BlockWeights> Model::Impl::Block(int64_t i) const {
  auto& slot = cache[static_cast<size_t>(i)];
  if (slot) return slot;
  // Reading block i from the map: its pages are dropped from the resident set once decoded, and
  // block i + 1's are requested ahead, so a streamed pass keeps about one block resident.
  auto b = std::make_shared<const runtime::BlockWeights>(runtime::LoadBlock(ck, cfg, i, threads));
  const std::string mine = BlockTensorName(i, ""), next = BlockTensorName(i + 1, "");
  for (const CheckpointTensor& t : ck.tensors()) {
    if (t.info->name.starts_with(mine)) t.file->Release(*t.info);
    if (i + 1 < cfg.num_layers && t.info->name.starts_with(next)) t.file->Prefetch(*t.info);
  }
  if (cached_bytes + b->bytes() <= cache_budget) {
    cached_bytes += b->bytes();
    slot = b;
  }
  return b;
}

RowMatrixXf Model::Impl::Embed(const std::vector<std::vector<int32_t>>& sequences) const {
  int64_t total = 0;
  for (const auto& s : sequences) {
    QTOOL_CHECK(!s.empty(), OptionError, "an empty token sequence cannot be run");
    QTOOL_CHECK(static_cast<int64_t>(s.size()) <= cfg.max_position_embeddings, OptionError,
                "a sequence of {} tokens exceeds the model's context of {}", s.size(),
                cfg.max_position_embeddings);
    total += static_cast<int64_t>(s.size());
  }
  RowMatrixXf x(total, cfg.hidden_size);
  int64_t row = 0;
  // Gemma: transformers multiplies by sqrt(hidden_size) rounded to the embedding's dtype, float32
  // here.
  const auto scale = static_cast<float>(std::sqrt(static_cast<double>(cfg.hidden_size)));
  for (const auto& s : sequences) {
    for (const int32_t t : s) {
      QTOOL_CHECK(t >= 0 && t < cfg.vocab_size, OptionError,
                  "token id {} is outside the vocabulary of {}", t, cfg.vocab_size);
      if (cfg.scale_embeddings) {
        x.row(row++) = embed.row(t) * scale;
      } else {
        x.row(row++) = embed.row(t);
      }
    }
  }
  return x;
}

void Model::Impl::Head(const RowMatrixXf& x, RowMatrixXf& logits) const {
  RowMatrixXf h;
  runtime::RmsNorm(x, final_norm, cfg.rms_norm_eps, h);
  head.Apply(h, logits, threads);
  if (cfg.final_logit_softcapping > 0) {
    runtime::SoftCap(logits.data(), logits.size(), static_cast<float>(cfg.final_logit_softcapping));
  }
}

Model::Model(const std::filesystem::path& path, ModelOptions options)
    : impl_(std::make_unique<Impl>(path, options)) {}
Model::~Model() = default;
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;

const LlamaConfig& Model::config() const { return impl_->cfg; }
const Checkpoint& Model::checkpoint() const { return impl_->ck; }
int Model::threads() const { return impl_->threads; }

void Model::Forward(const std::vector<std::vector<int32_t>>& sequences,
                    const LogitsFn& on_logits) const {
  const Impl& m = *impl_;
  RowMatrixXf x = m.Embed(sequences);
  std::vector<int64_t> lengths;
  for (const auto& s : sequences) lengths.push_back(static_cast<int64_t>(s.size()));
  for (int64_t i = 0; i < m.cfg.num_layers; ++i) {
    runtime::RunBlock(*m.Block(i), m.cfg, m.Rope(i), lengths, x, m.threads);
  }
  RowMatrixXf logits;
  int64_t row = 0;
  for (size_t s = 0; s < sequences.size(); ++s) {
    m.Head(x.middleRows(row, lengths[s]), logits);
    on_logits(s, logits);
    row += lengths[s];
  }
}

RowMatrixXf Model::Logits(const std::vector<int32_t>& tokens) const {
  RowMatrixXf out;
  Forward({tokens}, [&](size_t, const RowMatrixXf& logits) { out = logits; });
  return out;
}

std::vector<int32_t> GenerateGreedy(const Model& model, const std::vector<int32_t>& prompt,
                                    int64_t n, int32_t eos) {
  // The prompt runs once; each new token then runs alone against the cached keys and values.
  const Model::Impl& m = *model.impl_;
  const int64_t ctx = m.cfg.max_position_embeddings;
  QTOOL_CHECK(!prompt.empty(), OptionError, "generation needs a prompt of at least one token");
  std::vector<runtime::KvCache> kv(static_cast<size_t>(m.cfg.num_layers),
                                   runtime::KvCache(ctx, m.cfg.num_kv_heads * m.cfg.head_dim));
  std::vector<int32_t> step = prompt, out;
  int64_t len = 0;
  while (static_cast<int64_t>(out.size()) < n && len + static_cast<int64_t>(step.size()) <= ctx) {
    RowMatrixXf x = m.Embed({step});
    const std::vector<int64_t> lengths = {static_cast<int64_t>(step.size())};
    for (int64_t i = 0; i < m.cfg.num_layers; ++i) {
      runtime::RunBlock(*m.Block(i), m.cfg, m.Rope(i), lengths, x, m.threads, {},
                        &kv[static_cast<size_t>(i)]);
    }
    len += lengths[0];
    RowMatrixXf logits;
    m.Head(x.bottomRows(1), logits);
    Eigen::Index next = 0;
    logits.row(0).maxCoeff(&next);
    out.push_back(static_cast<int32_t>(next));
    if (next == eos) break;
    step = {static_cast<int32_t>(next)};
  }
  return out;
}

}  // namespace qtool
