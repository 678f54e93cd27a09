#include "block.hpp"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <tuple>
#include <vector>

#include "moe.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/quant/activation.hpp"

namespace qtool::runtime {

void Linear::Apply(const RowMatrixXf& x, RowMatrixXf& y, int threads) const {
  QTOOL_DASSERT(x.cols() == in());
  y.resize(x.rows(), out());
  if (inputs == InputQuantization::kNone) {
    gemm::MatMul(x.data(), in(), x.rows(), w, y.data(), out(), threads);
  } else {
    RowMatrixXf xq(x.rows(), x.cols());
    switch (inputs) {
      case InputQuantization::kInt8Token:
        FakeQuantizePerTokenInt8(x.data(), x.rows(), x.cols(), xq.data());
        break;
      case InputQuantization::kFp8Static:
        FakeQuantizeStaticFp8(x.data(), x.size(), fp8_input_scale, xq.data());
        break;
      case InputQuantization::kLlmInt8:
        FakeQuantizeLlmInt8(x.data(), x.rows(), x.cols(), llm_int8_threshold, xq.data());
        break;
      case InputQuantization::kNone:
        break;
    }
    gemm::MatMul(xq.data(), in(), xq.rows(), w, y.data(), out(), threads);
  }
  if (bias.size() != 0) y.rowwise() += bias.transpose();
}

uint64_t Linear::bytes() const {
  return (w.data.size() + static_cast<size_t>(bias.size())) * sizeof(float);
}

const Linear* BlockWeights::Find(const std::string& name) const {
  if (moe) {
    if (const Linear* l = moe->Find(name)) return l;
    if (name.starts_with("mlp.")) return nullptr;  // no dense feed-forward in a MoE block
  }
  const std::pair<const char*, const Linear*> table[] = {
      {"self_attn.q_proj", &q}, {"self_attn.k_proj", &k},     {"self_attn.v_proj", &v},
      {"self_attn.o_proj", &o}, {"mlp.gate_proj", &gate},     {"mlp.up_proj", &up},
      {"mlp.down_proj", &down}, {"self_attn.qkv_proj", &qkv}, {"mlp.gate_up_proj", &gate_up}};
  for (const auto& [n, l] : table) {
    if (name == n) return l;
  }
  return nullptr;
}

Linear* BlockWeights::Find(const std::string& name) {
  return const_cast<Linear*>(static_cast<const BlockWeights*>(this)->Find(name));
}

const Eigen::VectorXf* BlockWeights::FindNorm(const std::string& name) const {
  const std::pair<const char*, const Eigen::VectorXf*> table[] = {
      {"input_layernorm", &input_norm},
      {"post_attention_layernorm", &post_attention_norm},
      {"pre_feedforward_layernorm", &pre_feedforward_norm},
      {"post_feedforward_layernorm", &post_feedforward_norm},
      {"self_attn.q_norm", &q_norm},
      {"self_attn.k_norm", &k_norm}};
  for (const auto& [n, v] : table) {
    if (name == n) return v->size() != 0 ? v : nullptr;
  }
  return nullptr;
}

uint64_t BlockWeights::bytes() const {
  uint64_t total =
      static_cast<uint64_t>(input_norm.size() + post_attention_norm.size() +
                            pre_feedforward_norm.size() + post_feedforward_norm.size() +
                            q_norm.size() + k_norm.size()) *
      4;
  for (const Linear* l : {&q, &k, &v, &o, &gate, &up, &down, &qkv, &gate_up}) total += l->bytes();
  return total + (moe ? moe->bytes() : 0);
}

void BlockWeights::Apply(const WeightOverrides& overrides) {
  if (moe && !overrides.empty()) moe = std::make_shared<MoeWeights>(*moe);  // this copy's own
  for (const auto& [name, m] : overrides) {
    if (Linear* l = Find(name)) {
      QTOOL_CHECK(m.rows() == l->out() && m.cols() == l->in(), ShapeError,
                  "override of {} is {}x{}, the layer is {}x{}", name, m.rows(), m.cols(), l->out(),
                  l->in());
      l->w = gemm::Pack(m.data(), m.rows(), m.cols());
    } else if (const Eigen::VectorXf* found = FindNorm(name)) {
      Eigen::VectorXf& norm = *const_cast<Eigen::VectorXf*>(found);
      QTOOL_CHECK(m.size() == norm.size(), ShapeError, "override of {} has {} values, not {}", name,
                  m.size(), norm.size());
      norm = Eigen::Map<const Eigen::VectorXf>(m.data(), m.size());
    } else {
      QTOOL_CHECK(false, OptionError, "override names no tensor of a decoder block: \"{}\"", name);
    }
  }
}

namespace {

std::vector<float> ReadShaped(const Checkpoint& ck, const std::string& name,
                              const std::vector<int64_t>& shape, int threads) {
  const std::vector<int64_t> actual = LogicalShape(ck, name);
  QTOOL_CHECK(actual == shape, ShapeError, "{}: shape [{}] where the config implies [{}]", name,
              fmt::join(actual, ", "), fmt::join(shape, ", "));
  return ReadTensorF32(ck, name, threads);
}

Eigen::VectorXf ToVector(const std::vector<float>& v) {
  return Eigen::Map<const Eigen::VectorXf>(v.data(), static_cast<Eigen::Index>(v.size()));
}

}  // namespace

Linear LoadLinear(const Checkpoint& ck, const std::string& prefix, int64_t out, int64_t in,
                  InputQuantization inputs, int threads) {
  Linear l;
  const std::vector<float> w = ReadShaped(ck, prefix + ".weight", {out, in}, threads);
  l.w = gemm::Pack(w.data(), out, in);
  // A quantised weight is stored under its parts' names (a qtool checkpoint), or has a weight
  // scale beside it (compressed-tensors' int- and float-quantized and bitsandbytes' LLM.int8 keep
  // the name "weight").
  const bool quantised = ck.Find(prefix + ".weight") == nullptr ||
                         ck.Find(prefix + ".weight_scale") != nullptr ||
                         ck.Find(prefix + ".SCB") != nullptr;
  if (quantised) l.inputs = inputs;
  if (l.inputs == InputQuantization::kFp8Static) l.fp8_input_scale = StaticInputScale(ck, prefix);
  if (l.inputs == InputQuantization::kLlmInt8) l.llm_int8_threshold = LlmInt8Threshold(ck);
  if (ck.Find(prefix + ".bias") != nullptr) {
    l.bias = ToVector(ReadShaped(ck, prefix + ".bias", {out}, threads));
  }
  return l;
}

Eigen::VectorXf EffectiveNorm(const Eigen::VectorXf& stored, const LlamaConfig& cfg) {
  if (!cfg.norm_plus_one) return stored;
  return (stored.array() + 1.0f).matrix();
}

BlockWeights LoadBlock(const Checkpoint& ck, const LlamaConfig& cfg, int64_t i, int threads) {
  const int64_t h = cfg.hidden_size, f = cfg.intermediate_size, d = cfg.head_dim;
  const int64_t q = cfg.num_heads * d, kv = cfg.num_kv_heads * d;
  auto name = [&](const char* n) { return BlockTensorName(i, n); };
  auto norm = [&](const char* n, int64_t size) {
    return EffectiveNorm(ToVector(ReadShaped(ck, name(n), {size}, threads)), cfg);
  };
  const InputQuantization w8a8 = InputQuantizationOf(ck);
  BlockWeights b;
  b.sliding = cfg.Sliding(i);
  b.input_norm = norm("input_layernorm.weight", h);
  b.post_attention_norm = norm("post_attention_layernorm.weight", h);
  if (cfg.sandwich_norms) {
    b.pre_feedforward_norm = norm("pre_feedforward_layernorm.weight", h);
    b.post_feedforward_norm = norm("post_feedforward_layernorm.weight", h);
  }
  if (cfg.qk_norm) {
    b.q_norm = norm("self_attn.q_norm.weight", d);
    b.k_norm = norm("self_attn.k_norm.weight", d);
  }
  const bool moe = cfg.IsMoeLayer(i);
  if (moe) b.moe = std::make_shared<MoeWeights>(LoadMoe(ck, cfg, i, w8a8, threads));
  // The layers are decoded and packed in parallel, largest first (a MoE block has no dense mlp
  // ones).
  using Layer = std::tuple<Linear*, const char*, int64_t, int64_t>;
  std::vector<Layer> layers;
  if (cfg.fused_projections) {
    layers = {{&b.gate_up, "mlp.gate_up_proj", 2 * f, h},
              {&b.down, "mlp.down_proj", h, f},
              {&b.qkv, "self_attn.qkv_proj", q + 2 * kv, h},
              {&b.o, "self_attn.o_proj", h, q}};
  } else {
    layers = {{&b.gate, "mlp.gate_proj", f, h}, {&b.up, "mlp.up_proj", f, h},
              {&b.down, "mlp.down_proj", h, f}, {&b.q, "self_attn.q_proj", q, h},
              {&b.o, "self_attn.o_proj", h, q}, {&b.k, "self_attn.k_proj", kv, h},
              {&b.v, "self_attn.v_proj", kv, h}};
  }
  ParallelFor(static_cast<int64_t>(layers.size()), 1, threads, [&](int64_t l0, int64_t l1, int) {
    for (int64_t l = l0; l < l1; ++l) {
      const auto& [layer, short_name, out, in] = layers[static_cast<size_t>(l)];
      if (moe && std::string_view(short_name).starts_with("mlp.")) continue;
      *layer = LoadLinear(ck, name(short_name), out, in, w8a8, 1);
    }
  });
  return b;
}

RopeTable::RopeTable(const LlamaConfig& cfg, int64_t positions, bool local) {
  const int64_t dim = cfg.rotary_dim, half = dim / 2;
  const RopeScaling& s = local ? cfg.rope_local_scaling : cfg.rope_scaling;
  const double theta = local ? cfg.rope_local_theta : cfg.rope_theta;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    float f = 1.0f / std::pow(static_cast<float>(theta),
                              static_cast<float>(2 * i) / static_cast<float>(dim));
    if (s.type == RopeScaling::Type::kLinear) {
      f /= static_cast<float>(s.factor);
    } else if (s.type == RopeScaling::Type::kLlama3) {
      // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, a smooth blend
      // between.
      const double orig = static_cast<double>(s.original_max_position_embeddings);
      const double wavelen = 2 * M_PI / f;
      const double low_wavelen = orig / s.low_freq_factor, high_wavelen = orig / s.high_freq_factor;
      if (wavelen > low_wavelen) {
        f /= static_cast<float>(s.factor);
      } else if (wavelen >= high_wavelen) {
        const double smooth =
            (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        f = static_cast<float>((1 - smooth) * f / s.factor + smooth * f);
      }
    }
    inv[static_cast<size_t>(i)] = f;
  }
  cos.resize(positions, half);
  sin.resize(positions, half);
  for (int64_t p = 0; p < positions; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * inv[static_cast<size_t>(i)];
      cos(p, i) = std::cos(angle);
      sin(p, i) = std::sin(angle);
    }
  }
}

void RmsNorm(const RowMatrixXf& x, const Eigen::VectorXf& w, double eps, RowMatrixXf& y) {
  y.resize(x.rows(), x.cols());
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    const float var =
        static_cast<float>(x.row(r).cast<double>().squaredNorm() / static_cast<double>(x.cols()));
    const float scale = 1.0f / std::sqrt(var + static_cast<float>(eps));
    y.row(r) = (x.row(r) * scale).cwiseProduct(w.transpose());
  }
}

void SoftCap(float* x, int64_t n, float cap) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::tanh(x[i] / cap) * cap;
}

namespace {

// RMSNorm of each head of x [tokens, heads * d] over its d values, in place.
void HeadRmsNorm(RowMatrixXf& x, int64_t heads, int64_t d, const Eigen::VectorXf& w, double eps) {
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      auto v = x.row(r).segment(h * d, d);
      const float var = static_cast<float>(v.cast<double>().squaredNorm() / static_cast<double>(d));
      const float scale = 1.0f / std::sqrt(var + static_cast<float>(eps));
      v = (v * scale).cwiseProduct(w.transpose());
    }
  }
}

// Rotate-half rotary embedding of the first rope.cos.cols() * 2 dimensions of every head of
// x [tokens, heads * d], in place (the rest pass unrotated). Each sequence's first token is at
// position `past`.
void ApplyRope(RowMatrixXf& x, int64_t heads, int64_t d, const RopeTable& rope,
               const std::vector<int64_t>& lengths, int64_t past) {
  const int64_t half = rope.cos.cols();
  int64_t row = 0;
  for (const int64_t len : lengths) {
    for (int64_t p = past; p < past + len; ++p, ++row) {
      const float* c = &rope.cos(p, 0);
      const float* s = &rope.sin(p, 0);
      for (int64_t h = 0; h < heads; ++h) {
        float* v = &x(row, h * d);
        for (int64_t i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * c[i] - b * s[i];
          v[i + half] = b * c[i] + a * s[i];
        }
      }
    }
  }
}

// Causal attention of every sequence and head, within the last `window` positions when it is
// not 0: out = softmax(cap(q k^T * scale) + mask) v, heads sharing a key/value head in groups
// (GQA). scale is 1/sqrt(head_dim), or query_pre_attn_scalar^-1/2 (Gemma); cap(x) is
// c * tanh(x / c) with attention soft-capping (Gemma 2), else x. Each sequence has `past` earlier
// positions whose keys and values precede its own in k and v: q holds `len` rows per sequence,
// k and v `past + len`.
void Attention(const RowMatrixXf& q, const RowMatrixXf& k, const RowMatrixXf& v,
               const LlamaConfig& cfg, const std::vector<int64_t>& lengths, int64_t past,
               int64_t window, RowMatrixXf& out, int threads) {
  const int64_t d = cfg.head_dim, group = cfg.num_heads / cfg.num_kv_heads;
  const float scale = cfg.query_pre_attn_scalar > 0
                          ? static_cast<float>(1.0 / std::sqrt(cfg.query_pre_attn_scalar))
                          : 1.0f / std::sqrt(static_cast<float>(d));
  const auto cap = static_cast<float>(cfg.attn_logit_softcapping);
  std::vector<int64_t> starts, key_starts;
  int64_t row = 0, key_row = 0;
  for (const int64_t len : lengths) {
    starts.push_back(row);
    key_starts.push_back(key_row);
    row += len;
    key_row += past + len;
  }
  out.resize(q.rows(), cfg.num_heads * d);
  const int64_t items = static_cast<int64_t>(lengths.size()) * cfg.num_kv_heads;
  ParallelFor(items, 1, threads, [&](int64_t i0, int64_t i1, int) {
    RowMatrixXf scores, vt;
    for (int64_t item = i0; item < i1; ++item) {
      const size_t seq = static_cast<size_t>(item / cfg.num_kv_heads);
      const int64_t kvh = item % cfg.num_kv_heads, r0 = starts[seq], len = lengths[seq];
      const int64_t k0 = key_starts[seq], keys = past + len;
      const gemm::PackedMatrix kp = gemm::Pack(&k(k0, kvh * d), keys, d, k.cols());
      vt = v.block(k0, kvh * d, keys, d).transpose();
      const gemm::PackedMatrix vp = gemm::Pack(vt.data(), d, keys);
      scores.resize(len, keys);
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
        gemm::MatMul(&q(r0, h * d), q.cols(), len, kp, scores.data(), keys, 1);
        for (int64_t i = 0; i < len; ++i) {
          const int64_t last = past + i;  // the query's own position
          const int64_t first = window > 0 ? std::max<int64_t>(0, last - window + 1) : 0;
          float* s = &scores(i, 0);
          for (int64_t j = first; j <= last; ++j) s[j] *= scale;
          if (cap > 0) SoftCap(s + first, last + 1 - first, cap);
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t j = first; j <= last; ++j) mx = std::max(mx, s[j]);
          float sum = 0;
          for (int64_t j = first; j <= last; ++j) sum += (s[j] = std::exp(s[j] - mx));
          const float inv = 1.0f / sum;
          std::fill(s, s + first, 0.0f);
          for (int64_t j = first; j <= last; ++j) s[j] *= inv;
          std::fill(s + last + 1, s + keys, 0.0f);
        }
        gemm::MatMul(scores.data(), keys, len, vp, &out(r0, h * d), out.cols(), 1);
      }
    }
  });
}

}  // namespace

void RunBlock(const BlockWeights& w, const LlamaConfig& cfg, const RopeTable& rope,
              const std::vector<int64_t>& lengths, RowMatrixXf& x, int threads,
              const LinearInputFn& observe, KvCache* kv, const std::string& stop_after) {
  // Shows a layer's input; true when the block can stop there.
  auto see = [&](const std::string& name, const RowMatrixXf& in) {
    if (observe) observe(name, in);
    return stop_after == name;
  };
  const int64_t d = cfg.head_dim, qd = cfg.num_heads * d, kvd = cfg.num_kv_heads * d;
  const int64_t f = cfg.intermediate_size;
  RowMatrixXf h, q, k, v, attn, y, fused;
  RmsNorm(x, w.input_norm, cfg.rms_norm_eps, h);
  if (cfg.fused_projections) {
    if (see("self_attn.qkv_proj", h)) return;
    w.qkv.Apply(h, fused, threads);
    q = fused.leftCols(qd);
    k = fused.middleCols(qd, kvd);
    v = fused.rightCols(kvd);
  } else {
    if (see("self_attn.q_proj", h) || see("self_attn.k_proj", h) || see("self_attn.v_proj", h)) {
      return;
    }
    w.q.Apply(h, q, threads);
    w.k.Apply(h, k, threads);
    w.v.Apply(h, v, threads);
  }
  if (cfg.qk_norm) {
    HeadRmsNorm(q, cfg.num_heads, d, w.q_norm, cfg.rms_norm_eps);
    HeadRmsNorm(k, cfg.num_kv_heads, d, w.k_norm, cfg.rms_norm_eps);
  }
  const int64_t window = w.sliding ? cfg.sliding_window : 0;
  if (kv == nullptr) {
    ApplyRope(q, cfg.num_heads, d, rope, lengths, 0);
    ApplyRope(k, cfg.num_kv_heads, d, rope, lengths, 0);
    Attention(q, k, v, cfg, lengths, 0, window, attn, threads);
  } else {
    QTOOL_DASSERT(lengths.size() == 1 && kv->len + lengths[0] <= kv->k.rows());
    const int64_t past = kv->len, len = lengths[0];
    ApplyRope(q, cfg.num_heads, d, rope, lengths, past);
    ApplyRope(k, cfg.num_kv_heads, d, rope, lengths, past);
    kv->k.middleRows(past, len) = k;
    kv->v.middleRows(past, len) = v;
    kv->len += len;
    // Attention reads the cache's first past + len rows (Eigen blocks of a row-major matrix keep
    // its row stride, so the kernels read them in place).
    Attention(q, kv->k, kv->v, cfg, lengths, past, window, attn, threads);
  }
  if (see("self_attn.o_proj", attn)) return;
  w.o.Apply(attn, y, threads);
  if (cfg.sandwich_norms) {
    // Gemma: x += norm(attention); the MLP reads pre_feedforward_layernorm(x).
    RmsNorm(y, w.post_attention_norm, cfg.rms_norm_eps, h);
    x += h;
    RmsNorm(x, w.pre_feedforward_norm, cfg.rms_norm_eps, h);
  } else {
    x += y;
    RmsNorm(x, w.post_attention_norm, cfg.rms_norm_eps, h);
  }
  if (w.moe) {
    if (RunMoe(*w.moe, cfg, h, y, threads, see)) x += y;
    return;
  }
  if (cfg.fused_projections) {
    if (see("mlp.gate_up_proj", h)) return;
    w.gate_up.Apply(h, fused, threads);
    q = fused.leftCols(f);
    k = fused.rightCols(f);
  } else {
    if (see("mlp.gate_proj", h) || see("mlp.up_proj", h)) return;
    w.gate.Apply(h, q, threads);
    w.up.Apply(h, k, threads);
  }
  if (cfg.activation == Activation::kSilu) {
    // SwiGLU: silu(gate) * up, silu(g) = g / (1 + e^-g).
    q = (q.array() / (1.0f + (-q.array()).exp()) * k.array()).matrix();
  } else {
    // GeGLU: gelu(gate) * up with the tanh approximation
    // gelu(g) = g/2 * (1 + tanh(sqrt(2/pi) * (g + 0.044715 g^3))).
    const float beta = static_cast<float>(std::sqrt(2.0 / M_PI)), kappa = 0.044715f;
    float* g = q.data();
    const float* u = k.data();
    for (Eigen::Index i = 0; i < q.size(); ++i) {
      const float a = g[i];
      g[i] = 0.5f * a * (1.0f + std::tanh(beta * (a + kappa * (a * a * a)))) * u[i];
    }
  }
  if (see("mlp.down_proj", q)) return;
  w.down.Apply(q, y, threads);
  if (cfg.sandwich_norms) {
    RmsNorm(y, w.post_feedforward_norm, cfg.rms_norm_eps, h);
    x += h;
  } else {
    x += y;
  }
}

}  // namespace qtool::runtime
