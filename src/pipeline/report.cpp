#include "qtool/pipeline/report.hpp"

#include <algorithm>
#include <cmath>

namespace qtool {
using json = nlohmann::json;

TensorReport TensorReport::Begin(const TensorInfo& t) {
  TensorReport tr;
  tr.name = t.name;
  tr.shape = t.shape;
  tr.dtype = std::string(DTypeName(t.dtype));
  tr.bytes_in = t.nbytes();
  tr.numel_ = t.numel();
  tr.start_ = std::chrono::steady_clock::now();
  return tr;
}

void QuantizeReport::Add(TensorReport tr) {
  tr.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - tr.start_).count();
  params_total += tr.numel_;
  bytes_in += tr.bytes_in;
  bytes_out += tr.bytes_out;
  if (tr.quantized) {
    params_quantized += tr.numel_;
    quantized_bytes_out += tr.bytes_out;
  }
  tensors.push_back(std::move(tr));
}

double QuantizeReport::bits_per_weight() const {
  return params_quantized ? 8.0 * static_cast<double>(quantized_bytes_out) /
                                static_cast<double>(params_quantized)
                          : 0.0;
}

json QuantizeReport::ToJson() const {
  json t = json::array();
  for (const TensorReport& r : tensors) {
    json e = {{"name", r.name},           {"shape", r.shape},       {"dtype", r.dtype},
              {"quantized", r.quantized}, {"bytes_in", r.bytes_in}, {"bytes_out", r.bytes_out},
              {"seconds", r.seconds}};
    if (r.quantized) {
      e["bits_per_weight"] = r.bits_per_weight;
      const double sqnr = r.stats.sqnr_db();
      e["metrics"] = {{"mse", r.stats.mse()},
                      {"rmse", r.stats.rmse()},
                      {"max_abs_error", r.stats.max_abs_err},
                      {"sqnr_db", std::isfinite(sqnr) ? json(sqnr) : json(nullptr)},
                      {"cosine", r.stats.cosine()},
                      {"rel_frobenius", r.stats.rel_frobenius()}};
    }
    t.push_back(std::move(e));
  }
  uint64_t largest = 0;
  for (const TensorReport& r : tensors) largest = std::max(largest, r.bytes_in);
  return {{"codec", codec},
          {"tensors", std::move(t)},
          {"summary",
           {{"bytes_in", bytes_in},
            {"bytes_out", bytes_out},
            {"largest_tensor_bytes", largest},
            {"params_total", params_total},
            {"params_quantized", params_quantized},
            {"bits_per_weight", bits_per_weight()},
            {"compression_ratio",
             bytes_out ? static_cast<double>(bytes_in) / static_cast<double>(bytes_out) : 0.0},
            {"seconds", seconds},
            {"input_gb_per_s", seconds > 0 ? static_cast<double>(bytes_in) / seconds / 1e9 : 0.0},
            {"threads", threads}}}};
}

}  // namespace qtool
