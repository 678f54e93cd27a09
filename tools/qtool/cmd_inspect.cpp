// qtool inspect CKPT: tensors, parameter count, architecture, weight and KV-cache memory.
#include <fmt/format.h>

#include <algorithm>

#include "commands.hpp"
#include "gguf_output.hpp"
#include "qtool/core/checked.hpp"
#include "qtool/core/error.hpp"
#include "qtool/io/import.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/model/model.hpp"
#include "staged_output.hpp"
#include "terminal.hpp"

namespace qtool::cli {
namespace {

using json = nlohmann::json;

// Largest size config.json may give (a dimension, a layer count, a vocabulary): products of a few
// of them stay far from overflowing int64.
constexpr int64_t kMaxConfigInt = int64_t{1} << 32;

// Integer `key` of config.json `c`, or `fallback` when absent or null. Throws FormatError for a
// value that is not an integer in 0..kMaxConfigInt.
int64_t ConfigInt(const Checkpoint& ck, const json& c, const char* key, int64_t fallback = 0) {
  const auto it = c.find(key);
  if (it == c.end() || it->is_null()) return fallback;
  QTOOL_CHECK(
      it->is_number_integer() && it->get<int64_t>() >= 0 && it->get<int64_t>() <= kMaxConfigInt,
      FormatError, "{}: \"{}\" is {}, not an integer in 0..{}", (ck.dir() / "config.json").string(),
      key, it->dump(), kMaxConfigInt);
  return it->get<int64_t>();
}

// The product of `factors`; FormatError naming `what` in `ck` when it overflows.
int64_t Product(const Checkpoint& ck, std::initializer_list<int64_t> factors, const char* what) {
  const auto p = CheckedProduct<int64_t>(factors);
  QTOOL_CHECK(p.has_value(), FormatError, "{}: {} overflows 64 bits", ck.dir().string(), what);
  return *p;
}

json Inspect(const Checkpoint& ck) {
  json tensors = json::array();
  int64_t params = 0;
  const auto qrec = QuantizationRecord(ck);
  const auto imported = ImportedCheckpoint::Open(ck);  // GPTQ, AWQ, ... (docs/EXPORT.md)
  for (const std::string& name : LogicalTensorNames(ck)) {
    const std::vector<int64_t> shape = LogicalShape(ck, name);
    int64_t n = 1;
    for (const int64_t d : shape) n = Product(ck, {n, d}, "a tensor's element count");
    const auto total = CheckedAdd(params, n);
    QTOOL_CHECK(total.has_value(), FormatError, "{}: the parameter count overflows",
                ck.dir().string());
    params = *total;
    json e = {{"name", name}, {"shape", shape}, {"params", n}};
    if (qrec && qrec->at("tensors").contains(name)) {
      const json& r = qrec->at("tensors").at(name);
      e["dtype"] = r.at("dtype");
      e["quantized"] = r;
      uint64_t bytes = 0;
      for (const CheckpointTensor& t : ck.tensors()) {
        if (t.info->name.starts_with(name + ".") && t.info->name != name) bytes += t.info->nbytes();
      }
      e["bytes"] = bytes;
    } else if (imported && imported->IsQuantized(name)) {
      const json r = imported->Record(name);
      e["dtype"] = std::string(DTypeName(imported->scheme().dtype));
      if (!r.is_null()) e["quantized"] = r;
      e["bytes"] = imported->StoredBytes(name);
    } else {
      const TensorInfo& t = *ck.Get(name).info;
      e["dtype"] = std::string(DTypeName(t.dtype));
      e["bytes"] = t.nbytes();
    }
    tensors.push_back(std::move(e));
  }
  json out = {{"path", ck.dir().string()},
              {"files", ck.files().size()},
              {"tensors", tensors},
              {"params", params},
              {"bytes", ck.total_bytes()}};
  const double p = static_cast<double>(params);
  out["weight_memory_bytes"] = {{"fp32", p * 4}, {"fp16", p * 2}, {"int8", p}, {"int4", p / 2}};
  if (qrec) out["quantization"] = qrec->at("codec");
  if (imported) out["quantization"] = imported->scheme().Describe();
  if (ck.config()) {
    const json& c = *ck.config();
    QTOOL_CHECK(c.is_object(), FormatError, "{}: not a JSON object",
                (ck.dir() / "config.json").string());
    const int64_t hidden = ConfigInt(ck, c, "hidden_size");
    const int64_t heads = ConfigInt(ck, c, "num_attention_heads");
    const int64_t kv_heads = ConfigInt(ck, c, "num_key_value_heads", heads);
    const int64_t layers = ConfigInt(ck, c, "num_hidden_layers");
    const int64_t head_dim = ConfigInt(ck, c, "head_dim", heads ? hidden / heads : 0);
    json arch = {{"model_type", c.value("model_type", "")},
                 {"hidden_size", hidden},
                 {"intermediate_size", ConfigInt(ck, c, "intermediate_size")},
                 {"num_hidden_layers", layers},
                 {"num_attention_heads", heads},
                 {"num_key_value_heads", kv_heads},
                 {"head_dim", head_dim},
                 {"vocab_size", ConfigInt(ck, c, "vocab_size")},
                 {"max_position_embeddings", ConfigInt(ck, c, "max_position_embeddings")},
                 {"tie_word_embeddings", c.value("tie_word_embeddings", false)}};
    if (c.contains("architectures")) arch["architectures"] = c["architectures"];
    out["architecture"] = arch;
    // KV cache: keys and values (2) for every layer, kv head and head dimension. A
    // sliding-window layer keeps at most sliding_window positions; which layers slide is read
    // through the runtime's config parser, for the architectures it runs (others count every
    // layer at the full context).
    int64_t sliding = 0, window = 0, cache_head_dim = head_dim;
    try {
      const LlamaConfig rc = LlamaConfig::FromJson(c);
      window = rc.sliding_window;
      cache_head_dim = rc.head_dim;
      for (int64_t i = 0; i < rc.num_layers; ++i) sliding += rc.Sliding(i) ? 1 : 0;
    } catch (const Error&) {
    }
    const int64_t per_layer_elems = Product(ck, {2, kv_heads, cache_head_dim}, "the KV cache size");
    const int64_t per_token_elems = Product(ck, {per_layer_elems, layers}, "the KV cache size");
    json kv = {{"elements_per_token", per_token_elems}};
    if (sliding > 0) {
      kv["sliding_window"] = window;
      kv["sliding_window_layers"] = sliding;
    }
    for (const auto& [dtype, bytes] : {std::pair{"fp16", 2}, std::pair{"fp8", 1}}) {
      json d = {{"bytes_per_token", per_token_elems * bytes}};
      for (const int64_t ctx : {4096, 32768, 131072}) {
        // Positions cached over all layers at this context.
        const int64_t positions =
            Product(ck, {layers - sliding, ctx}, "the KV cache size") +
            Product(ck, {sliding, std::min<int64_t>(ctx, window)}, "the KV cache size");
        d[fmt::format("ctx_{}", ctx)] =
            Product(ck, {per_layer_elems, bytes, positions}, "the KV cache size");
      }
      kv[dtype] = d;
    }
    out["kv_cache"] = kv;
  }
  return out;
}

void Print(const json& r) {
  fmt::print("{}: {} file(s), {} tensors, {} parameters, {} of tensor data\n",
             r["path"].get<std::string>(), r["files"].get<size_t>(), r["tensors"].size(),
             r["params"].get<int64_t>(), HumanBytes(r["bytes"].get<double>()));
  fmt::print("\n{:<56} {:>8} {:>16} {:>12}\n", "tensor", "dtype", "shape", "bytes");
  for (const json& t : r["tensors"]) {
    std::string shape;
    for (const auto& d : t["shape"])
      shape += (shape.empty() ? "" : "x") + std::to_string(d.get<int64_t>());
    std::string dtype = t["dtype"].get<std::string>();
    if (t.contains("quantized")) {
      const json& q = t["quantized"];
      dtype = q.at("codec").get<std::string>() +
              (q.contains("bits") ? std::to_string(q["bits"].get<int>()) : "");
    }
    fmt::print("{:<56} {:>8} {:>16} {:>12}\n", t["name"].get<std::string>(), dtype, shape,
               t["bytes"].get<uint64_t>());
  }
  if (r.contains("quantization")) {
    const json& q = r["quantization"];
    fmt::print("\nquantisation: {}\n", q.is_string() ? q.get<std::string>() : q.dump());
  }
  if (r.contains("architecture")) {
    const json& a = r["architecture"];
    fmt::print(
        "\narchitecture: {} (layers {}, hidden {}, intermediate {}, heads {}, kv heads {}, head "
        "dim "
        "{}, vocab {}, context {}, tied embeddings {})\n",
        a["model_type"].get<std::string>(), a["num_hidden_layers"].get<int64_t>(),
        a["hidden_size"].get<int64_t>(), a["intermediate_size"].get<int64_t>(),
        a["num_attention_heads"].get<int64_t>(), a["num_key_value_heads"].get<int64_t>(),
        a["head_dim"].get<int64_t>(), a["vocab_size"].get<int64_t>(),
        a["max_position_embeddings"].get<int64_t>(), a["tie_word_embeddings"].get<bool>());
  }
  const json& m = r["weight_memory_bytes"];
  fmt::print("\nweights at fp32 {}, fp16 {}, int8 {}, int4 {} (scales not included)\n",
             HumanBytes(m["fp32"].get<double>()), HumanBytes(m["fp16"].get<double>()),
             HumanBytes(m["int8"].get<double>()), HumanBytes(m["int4"].get<double>()));
  if (r.contains("kv_cache")) {
    const json& kv = r["kv_cache"];
    for (const char* d : {"fp16", "fp8"}) {
      const json& k = kv[d];
      fmt::print("kv cache ({}): {} per token; {} at 4k, {} at 32k, {} at 128k context\n", d,
                 HumanBytes(k["bytes_per_token"].get<double>()),
                 HumanBytes(k["ctx_4096"].get<double>()), HumanBytes(k["ctx_32768"].get<double>()),
                 HumanBytes(k["ctx_131072"].get<double>()));
    }
    if (kv.contains("sliding_window")) {
      fmt::print("kv cache: {} of the layers keep only their last {} positions\n",
                 kv["sliding_window_layers"].get<int64_t>(), kv["sliding_window"].get<int64_t>());
    }
  }
}

}  // namespace

void RegisterInspect(CLI::App& app) {
  struct Args {
    std::string input, json;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("inspect", "Describe a checkpoint: tensors, size, memory");
  cmd->add_option("input", a->input, "Checkpoint: a .safetensors file or a model directory")
      ->required();
  cmd->add_option("--json", a->json, "Also write the report as JSON to this file (- for stdout)");
  cmd->callback([a]() {
    if (IsGgufFile(a->input)) return InspectGguf(a->input, a->json);
    const Checkpoint ck = Checkpoint::Open(a->input);
    CheckReportPathFor(ck, a->json);
    json r;
    try {
      r = Inspect(ck);
      if (a->json != "-") Print(r);
    } catch (const json::exception& e) {  // a value of the wrong type in config.json or a record
      throw FormatError(
          fmt::format("{}: config.json or a quantisation record: {}", ck.dir().string(), e.what()));
    }
    if (!a->json.empty()) WriteJsonReport(a->json, r);
  });
}

}  // namespace qtool::cli
