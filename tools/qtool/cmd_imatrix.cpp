// qtool imatrix MODEL --calib FILE -o OUT.gguf: llama.cpp's importance matrix of a model (per
// Linear weight, the sum of the squared inputs of each column and the number of input rows) from
// calibration data run through qtool's runtime, in llama.cpp's GGUF imatrix format (or the legacy
// .dat format for an output named *.dat). `quantize --output-format gguf --imatrix FILE` and
// llama-quantize read it.
#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>

#include "commands.hpp"
#include "gguf_output.hpp"
#include "qtool/core/error.hpp"
#include "qtool/io/gguf_export.hpp"
#include "qtool/io/imatrix.hpp"
#include "qtool/model/capture.hpp"
#include "qtool/model/model.hpp"
#include "qtool/model/tokenizer.hpp"
#include "staged_output.hpp"
#include "terminal.hpp"

namespace qtool::cli {

namespace {

// Sum over rows of x[j]^2 per column (in double; stored as float in the file, as llama.cpp's
// in_sum2), and the number of rows.
class SquareSum : public ActivationConsumer {
 public:
  explicit SquareSum(int64_t cols) : sum_(static_cast<size_t>(cols), 0.0) {}
  void Consume(const Eigen::Ref<const RowMatrixXf>& x) override {
    for (int64_t r = 0; r < x.rows(); ++r) {
      const float* row = x.data() + r * x.outerStride();
      for (size_t j = 0; j < sum_.size(); ++j) sum_[j] += static_cast<double>(row[j]) * row[j];
    }
    rows_ += x.rows();
  }
  imatrix::Entry ToEntry() const {
    imatrix::Entry e;
    e.ncols = static_cast<int64_t>(sum_.size());
    e.nmat = 1;
    e.in_sum2.assign(sum_.begin(), sum_.end());
    e.counts = {static_cast<float>(rows_)};
    return e;
  }

 private:
  std::vector<double> sum_;
  int64_t rows_ = 0;
};

// llama-imatrix's chunks: consecutive windows of `len` tokens, the first token of each replaced by
// BOS when the tokenizer adds one (bos >= 0); at most `max` windows.
std::vector<std::vector<int32_t>> SequentialChunks(const std::vector<int32_t>& tokens, int64_t len,
                                                   int32_t bos, int64_t max,
                                                   const std::string& file) {
  const int64_t n = std::min<int64_t>(max, static_cast<int64_t>(tokens.size()) / len);
  QTOOL_CHECK(n >= 1, OptionError, "{}: {} tokens, fewer than one chunk of --seqlen {}", file,
              tokens.size(), len);
  std::vector<std::vector<int32_t>> chunks;
  for (int64_t i = 0; i < n; ++i) {
    chunks.emplace_back(tokens.begin() + i * len, tokens.begin() + (i + 1) * len);
    if (bos >= 0) chunks.back()[0] = bos;
  }
  return chunks;
}

}  // namespace

void RegisterImatrix(CLI::App& app) {
  struct Args {
    std::string model, output, json;
    CalibrationArgs data;
    bool sequential = false, force = false, quiet = false;
    int threads = 0;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "imatrix", "Compute llama.cpp's importance matrix of a model on calibration data");
  cmd->add_option("model", a->model,
                  "Model directory (plain or quantised by qtool), or a GGUF file (decoded with its "
                  "tokenizer rebuilt from the metadata)")
      ->required();
  cmd->add_option("-o,--output", a->output,
                  "Output imatrix file: GGUF (llama.cpp's current format), or legacy .dat when "
                  "the name ends in .dat")
      ->required();
  AddCalibrationOptions(cmd, a->data,
                        "Calibration data: text, .jsonl, or token ids (.ids, .tokens, .bin)");
  cmd->get_option("--calib")->required();
  cmd->add_flag("--sequential", a->sequential,
                "Consecutive chunks of --seqlen tokens from the start of the data, the first "
                "token of each replaced by BOS (llama-imatrix's chunks), instead of a random draw");
  cmd->add_option("--threads", a->threads, "Worker threads (0: all cores)")->capture_default_str();
  cmd->add_option("--json", a->json, "Write a JSON report to this file (- for stdout)");
  cmd->add_flag("-f,--force", a->force, "Replace an existing output");
  cmd->add_flag("-q,--quiet", a->quiet, "No report on stdout");
  cmd->callback([a]() {
    const auto start = std::chrono::steady_clock::now();
    QTOOL_CHECK(a->threads >= 0, OptionError, "--threads must not be negative");
    CheckCalibrationArgs(a->data);
    const ModelInput input(a->model);
    input.CheckOutput(a->output);
    const Model model(input.path(), {.threads = a->threads});
    const Checkpoint& in = model.checkpoint();
    StagedRun run_out(in, a->output, a->json, a->force);
    const int64_t seqlen =
        a->data.seqlen.value_or(std::min<int64_t>(512, model.config().max_position_embeddings));
    const CalibrationData data =
        ReadCalibrationData(a->data.file, in.dir(), model.config().bos_token_id);
    std::vector<std::vector<int32_t>> samples =
        a->sequential
            ? SequentialChunks(data.tokens, seqlen, data.bos, a->data.nsamples, a->data.file)
            : DrawCalibrationSamples(data.tokens, {.num_samples = a->data.nsamples,
                                                   .seq_len = seqlen,
                                                   .seed = a->data.seed,
                                                   .bos = data.bos});
    const int64_t nchunks = static_cast<int64_t>(samples.size());
    for (const auto& s : samples) {
      for (const int32_t t : s) {
        QTOOL_CHECK(t >= 0 && t < model.config().vocab_size, FormatError,
                    "{}: token {} is outside the model's vocabulary 0..{}", a->data.file, t,
                    model.config().vocab_size - 1);
      }
    }

    imatrix::Matrix m;
    m.datasets = {a->data.file};
    m.chunk_count = static_cast<uint32_t>(nchunks);
    m.chunk_size = static_cast<uint32_t>(seqlen);
    CalibrationRunner run(model, std::move(samples));
    Progress progress("imatrix");
    const LlamaConfig& cfg = model.config();
    for (; !run.done(); run.Advance()) {
      // Layers that share an input (q/k/v; gate/up) see the same rows: one sum serves them all.
      // An expert's layers see the rows routed to it; its sums are one row of the stacked
      // expert tensor's entry, as llama-imatrix counts them.
      const auto inputs = LinearInputGroups(cfg, run.block());
      std::vector<std::unique_ptr<SquareSum>> sums;
      ConsumerMap consumers;
      for (const auto& group : inputs) {
        sums.push_back(std::make_unique<SquareSum>(run.in_features(group[0])));
        consumers[group[0]] = {sums.back().get()};
      }
      run.Capture(consumers);
      for (size_t i = 0; i < inputs.size(); ++i) {
        for (const std::string& user : inputs[i]) {
          const gguf::GgufTensorRef ref =
              gguf::GgufTensor(BlockTensorName(run.block(), user) + ".weight", cfg.sandwich_norms);
          const imatrix::Entry one = sums[i]->ToEntry();
          if (ref.expert < 0) {
            m.entries[ref.name] = one;
            continue;
          }
          imatrix::Entry& stacked = m.entries[ref.name];
          if (stacked.in_sum2.empty()) {
            stacked.ncols = one.ncols;
            stacked.nmat = cfg.moe.num_experts;
            stacked.in_sum2.assign(static_cast<size_t>(one.ncols * cfg.moe.num_experts), 0.0f);
            stacked.counts.assign(static_cast<size_t>(cfg.moe.num_experts), 0.0f);
          }
          std::copy(one.in_sum2.begin(), one.in_sum2.end(),
                    stacked.in_sum2.begin() + ref.expert * one.ncols);
          stacked.counts[static_cast<size_t>(ref.expert)] = one.counts[0];
        }
      }
      progress.Update(static_cast<size_t>(run.block() + 1), static_cast<size_t>(run.num_blocks()),
                      fmt::format("block {}", run.block()));
    }
    progress.Done();
    const bool dat = std::filesystem::path(a->output).extension() == ".dat";
    if (dat) {
      imatrix::WriteDat(m, run_out.output());
    } else {
      imatrix::WriteGguf(m, run_out.output());
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const nlohmann::json report = {
        {"output", a->output},         {"format", dat ? "dat" : "gguf"},
        {"calibration", a->data.file}, {"calibration_format", data.format},
        {"chunks", nchunks},           {"chunk_size", seqlen},
        {"sequential", a->sequential}, {"entries", m.entries.size()},
        {"seconds", seconds}};
    if (!a->quiet && a->json != "-") {
      fmt::print(
          "{}: importance matrix of {} weights from {} chunks of {} tokens of {} ({}), "
          "{:.1f} s\n",
          a->output, m.entries.size(), nchunks, seqlen, a->data.file, data.format, seconds);
    }
    run_out.Commit(report);
  });
}

}  // namespace qtool::cli
