#include "qtool/quant/codec.hpp"

#include "qtool/format/traits.hpp"
#include "qtool/quant/fp_codec.hpp"
#include "qtool/quant/int_codec.hpp"
#include "qtool/quant/mx_codec.hpp"
#include "qtool/quant/nf4_codec.hpp"
#include "qtool/quant/nvfp4_codec.hpp"
#include "qtool/quant/ternary_codec.hpp"

namespace qtool {
namespace {

// The codec of each format family (docs/CODECS.md describes each).
struct CodecFor {
  int64_t rows, cols;
  std::unique_ptr<WeightCodec> operator()(const IntFormat& f) const {
    return std::make_unique<IntCodec>(IntSpec(f), rows, cols, f.observer, f.g_idx);
  }
  std::unique_ptr<WeightCodec> operator()(const TernaryFormat& f) const {
    return std::make_unique<TernaryCodec>(
        QuantSpec{.granularity = f.granularity, .group_size = f.group}, rows, cols);
  }
  std::unique_ptr<WeightCodec> operator()(const Nf4Format& f) const {
    return std::make_unique<Nf4Codec>(f, rows, cols);
  }
  std::unique_ptr<WeightCodec> operator()(const FloatFormat& f) const {
    return std::make_unique<FpCodec>(f, rows, cols);
  }
  std::unique_ptr<WeightCodec> operator()(const MxFormat& f) const {
    return std::make_unique<MxCodec>(f, rows, cols);
  }
  std::unique_ptr<WeightCodec> operator()(const Nvfp4Format&) const {
    return std::make_unique<Nvfp4Codec>(rows, cols);
  }
};

}  // namespace

std::vector<TensorSpec> WeightCodec::Layout(const std::string& name) const {
  std::vector<TensorSpec> out;
  for (StoredPart& p : qtool::Layout(format(), rows_, cols_)) {
    out.push_back({name + p.suffix, p.dtype, std::move(p.shape)});
  }
  return out;
}

double WeightCodec::BitsPerWeight() const { return qtool::BitsPerWeight(format(), rows_, cols_); }

std::unique_ptr<WeightCodec> MakeCodec(const Format& format, int64_t rows, int64_t cols) {
  Validate(format);
  return std::visit(CodecFor{rows, cols}, format);
}

std::vector<std::string> CodecNames() { return {"fp", "int", "mx", "nf4", "nvfp4", "ternary"}; }

}  // namespace qtool
