#include "qtool/solvers/gguf_calibrated.hpp"

#include <fstream>
#include <map>

#include "qtool/core/error.hpp"
#include "qtool/model/gguf_params.hpp"

namespace qtool::solvers {
namespace fs = std::filesystem;

namespace {

// The solved weights' blocks in a file, appended as they come and read back by name; the file is
// removed with the object.
class BlockSpill {
 public:
  explicit BlockSpill(fs::path path) : path_(std::move(path)) {
    file_.open(path_, std::ios::binary | std::ios::in | std::ios::out | std::ios::trunc);
    QTOOL_CHECK(file_.good(), IoError, "{}: cannot create", path_.string());
  }
  ~BlockSpill() {
    file_.close();
    std::error_code ec;
    fs::remove(path_, ec);
  }
  BlockSpill(const BlockSpill&) = delete;
  BlockSpill& operator=(const BlockSpill&) = delete;

  void Put(const std::string& name, ggml::Type type, const std::vector<std::byte>& data) {
    file_.seekp(0, std::ios::end);
    const auto offset = static_cast<uint64_t>(file_.tellp());
    file_.write(reinterpret_cast<const char*>(data.data()),
                static_cast<std::streamsize>(data.size()));
    QTOOL_CHECK(file_.good(), IoError, "{}: write failed", path_.string());
    entries_[name] = {offset, data.size(), type};
  }

  /// The blocks of `name` when they were put with `type`.
  bool Get(const std::string& name, ggml::Type type, std::vector<std::byte>& data) {
    const auto it = entries_.find(name);
    if (it == entries_.end()) return false;
    QTOOL_CHECK(it->second.type == type, FormatError,
                "tensor '{}': solved as {}, but the export stores it as {}", name,
                ggml::Traits(it->second.type).name, ggml::Traits(type).name);
    data.resize(it->second.size);
    file_.seekg(static_cast<std::streamoff>(it->second.offset));
    file_.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size()));
    QTOOL_CHECK(file_.good(), IoError, "{}: read failed", path_.string());
    return true;
  }

 private:
  struct Entry {
    uint64_t offset;
    size_t size;
    ggml::Type type;
  };
  fs::path path_;
  std::fstream file_;
  std::map<std::string, Entry> entries_;
};

}  // namespace

gguf::ExportReport QuantizeCalibratedGguf(
    const fs::path& model_dir, const fs::path& out, const gguf::ExportOptions& options,
    const CalibratedOptions& method, const LayerFn& on_layer,
    const std::function<void(size_t, size_t, const std::string&)>& progress) {
  const std::optional<gguf::Recipe> recipe = gguf::FindRecipe(options.type);
  QTOOL_CHECK(recipe.has_value(), OptionError, "unknown GGUF type \"{}\" (known: {})", options.type,
              gguf::RecipeNames());
  QTOOL_CHECK(options.overwrite || !fs::exists(out), OutputExistsError,
              "{} exists (use --force to replace it)", out.string());
  ModelOptions mopts;
  mopts.threads = options.threads;
  mopts.weight_cache_bytes = 0;  // one block at a time
  const Model model(model_dir, mopts);
  const Checkpoint& ck = model.checkpoint();
  const LlamaConfig& c = model.config();
  bool has_output = false;
  for (const CheckpointTensor& t : ck.tensors()) {
    has_output |= t.info->name == "lm_head.weight" && !c.tie_word_embeddings;
  }
  const int64_t n_gqa = c.num_heads / std::max<int64_t>(1, c.num_kv_heads);
  // Refuses what llama.cpp cannot run before the calibration starts.
  const gguf::ModelParams params = gguf::GgufModelParams(c, model_dir.string());
  // The export's choice for each weight (see gguf::ExportGguf).
  const GgmlTypeFn type_of = [&](const std::string& weight, int64_t, int64_t cols) {
    const gguf::GgufTensorRef ref = gguf::GgufTensor(weight, params.sandwich_norms);
    return gguf::TensorType(*recipe, options.pure, ref.name, static_cast<uint64_t>(cols), ref.layer,
                            c.num_layers, n_gqa, has_output, false, params.num_experts);
  };
  fs::path spill_path = out;
  spill_path += ".gptq-blocks";
  BlockSpill spill(spill_path);
  SolveGgufCalibrated(
      model, model_dir, method, options.threads, type_of,
      [&](const std::string& weight, ggml::Type type, std::vector<std::byte> blocks) {
        spill.Put(weight, type, blocks);
      },
      on_layer);
  gguf::ExportOptions export_options = options;
  export_options.quantized = [&](const std::string& source, ggml::Type type,
                                 std::vector<std::byte>& data) {
    return spill.Get(source, type, data);
  };
  return gguf::ExportGguf(ck, out, export_options, progress);
}

}  // namespace qtool::solvers
