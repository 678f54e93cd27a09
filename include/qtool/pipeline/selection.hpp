// The options of a quantisation run and the rules that select the tensors it quantises.
#pragma once

#include <string>
#include <vector>

#include "qtool/core/name_pattern.hpp"
#include "qtool/core/tensor_spec.hpp"
#include "qtool/format/format.hpp"
#include "qtool/io/quantized.hpp"

namespace qtool {

/// Mixture-of-experts routers and Qwen2-MoE's shared-expert gate: tiny layers whose rounding would
/// move the routing (and that the Python quantisers keep in full precision). They are kept unless
/// an `include` rule names them.
inline constexpr const char* kDefaultExclude =
    R"(\.layers\.\d+\.(mlp\.gate|block_sparse_moe\.gate|mlp\.shared_expert_gate)\.weight$)";

/// Which tensors are quantised: by default every 2-D floating point weight inside the decoder
/// blocks (names matching kDefaultInclude, io/quantized.hpp) but those kDefaultExclude names.
/// `include` rules add tensors, `exclude` rules remove them (exclusion wins). Rules are RE2
/// regular expressions (core/name_pattern.hpp) searched in the tensor name.
struct QuantizeOptions : QuantizedWriteOptions {
  // Not an aggregate: GCC 12 sees `QuantizeOptions{}`'s aggregate-initialised base as possibly
  // uninitialised (-Wmaybe-uninitialized).
  QuantizeOptions() = default;

  /// The weights' format (INT4 symmetric in groups of 128 unless set).
  Format format = IntFormat{};
  std::vector<std::string> include;
  std::vector<std::string> exclude;
  int threads = 0;  // 0: every hardware thread
};

/// The selection rules of QuantizeOptions, compiled once.
class TensorSelection {
 public:
  enum class Decision {
    kKeep,
    kQuantize,
    kNotMatrix,  // named by an `include` rule but not a 2-D float matrix
  };

  explicit TensorSelection(const QuantizeOptions& options);
  Decision Decide(const TensorSpec& t) const;

 private:
  std::vector<NamePattern> include_, exclude_;  // include_ ends with the default rule
  bool explicit_include_;
  NamePattern default_exclude_;
};

/// Returns true when `t` (its name, shape and dtype) is quantised under `options`' rules.
bool SelectedForQuantization(const TensorSpec& t, const QuantizeOptions& options);

}  // namespace qtool
