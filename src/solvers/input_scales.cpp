#include "qtool/solvers/input_scales.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "blocks.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/format/minifloat.hpp"
#include "qtool/quant/activation.hpp"
#include "qtool/quant/codec.hpp"

namespace qtool::solvers {
namespace {

// max |x| over every row it is shown.
class AbsMax final : public ActivationConsumer {
 public:
  void Consume(const Eigen::Ref<const RowMatrixXf>& x) override {
    if (x.size() != 0) max_ = std::max(max_, x.cwiseAbs().maxCoeff());
  }
  float max() const { return max_; }

 private:
  float max_ = 0;
};

}  // namespace

float Fp8InputScale(float max_abs) { return max_abs > 0 ? max_abs / kE4M3.max() : 1.0f; }

std::map<std::string, float> MeasureFp8InputScales(const std::filesystem::path& model_dir,
                                                   const QuantizeOptions& options,
                                                   const CalibratedOptions& method) {
  CheckFp8StaticWeights(options.format);
  ModelOptions mopts;
  mopts.threads = options.threads;
  mopts.weight_cache_bytes = 0;  // one block at a time
  const Model model(model_dir, mopts);
  const Checkpoint& ck = model.checkpoint();
  const int threads = ResolveThreads(options.threads);
  CalibrationRunner run(model, detail::CalibrationSamples(model_dir, model, method));
  std::map<std::string, float> scales;
  while (!run.done()) {
    const int64_t b = run.block();
    WeightOverrides rounded;
    std::map<std::string, AbsMax> maxima;
    ConsumerMap consumers;
    for (const std::string& name : run.LinearNames()) {
      const std::string full = detail::WeightName(b, name);
      const CheckpointTensor* t = ck.Find(full);
      if (t == nullptr || !SelectedForQuantization(*t->info, options)) continue;
      rounded[name] =
          detail::RoundedByCodec(run.Weight(name), options.format, threads,
                                 fmt::format("{}: tensor \"{}\"", ck.dir().string(), full));
      consumers[name].push_back(&maxima[name]);
    }
    run.Capture(consumers, rounded);
    for (const auto& [name, m] : maxima) scales[BlockTensorName(b, name)] = Fp8InputScale(m.max());
    run.Advance(rounded);
  }
  return scales;
}

}  // namespace qtool::solvers
