// qtool logits MODEL --tokens FILE -o OUT.npy: the model's output logits for one token sequence,
// as an f32 .npy array [tokens, vocab], for comparing qtool's runtime with other readers.
#include <fmt/format.h>

#include <cstdio>
#include <memory>

#include "commands.hpp"
#include "gguf_output.hpp"
#include "qtool/core/error.hpp"
#include "qtool/model/model.hpp"
#include "qtool/model/tokenizer.hpp"

namespace qtool::cli {

void RegisterLogits(CLI::App& app) {
  struct Args {
    std::string model, tokens, output;
    int threads = 0;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd =
      app.add_subcommand("logits", "Write a model's logits for one token sequence as .npy");
  cmd->add_option("model", a->model,
                  "Model directory (plain or quantised by qtool), or a GGUF file (decoded with its "
                  "tokenizer rebuilt from the metadata)")
      ->required();
  cmd->add_option("--tokens", a->tokens, "Token ids (one per line, or int32), BOS included")
      ->required();
  cmd->add_option("-o,--output", a->output, "Output .npy file: f32 [tokens, vocab]")->required();
  cmd->add_option("--threads", a->threads, "Worker threads (0: all cores)")->capture_default_str();
  cmd->callback([a]() {
    QTOOL_CHECK(a->threads >= 0, OptionError, "--threads must not be negative");
    const ModelInput input(a->model);
    const Model model(input.path(), {.threads = a->threads});
    const std::vector<int32_t> ids = ReadTokenIds(a->tokens);
    QTOOL_CHECK(!ids.empty(), OptionError, "{}: no token ids", a->tokens);
    const RowMatrixXf logits = model.Logits(ids);
    // .npy version 1.0: magic, version, little-endian header length, a Python dict literal padded
    // with spaces to a multiple of 64 bytes and ended by a newline, then the data.
    std::string header =
        fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
                    logits.rows(), logits.cols());
    header.resize((header.size() + 10 + 1 + 63) / 64 * 64 - 10 - 1, ' ');
    header += '\n';
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(a->output.c_str(), "wb"), &std::fclose);
    QTOOL_CHECK(f != nullptr, IoError, "{}: cannot create", a->output);
    const uint16_t len = static_cast<uint16_t>(header.size());
    const unsigned char prefix[10] = {0x93,
                                      'N',
                                      'U',
                                      'M',
                                      'P',
                                      'Y',
                                      1,
                                      0,
                                      static_cast<unsigned char>(len & 0xff),
                                      static_cast<unsigned char>(len >> 8)};
    const size_t n = static_cast<size_t>(logits.size());
    const bool ok = std::fwrite(prefix, 1, 10, f.get()) == 10 &&
                    std::fwrite(header.data(), 1, header.size(), f.get()) == header.size() &&
                    std::fwrite(logits.data(), sizeof(float), n, f.get()) == n;
    QTOOL_CHECK(ok && std::fflush(f.get()) == 0, IoError, "{}: write failed", a->output);
  });
}

}  // namespace qtool::cli
