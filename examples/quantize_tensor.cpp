// Quantises one weight of a checkpoint with the library and reports the error:
//   quantize_tensor MODEL_DIR [TENSOR] [BITS] [GROUP]
#include <cstdio>
#include <qtool/qtool.hpp>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL_DIR [TENSOR] [BITS] [GROUP]\n", argv[0]);
    return 2;
  }
  try {
    const qtool::Checkpoint ck = qtool::Checkpoint::Open(argv[1]);
    const std::string name = argc > 2 ? argv[2] : "model.layers.0.mlp.down_proj.weight";
    const int bits = argc > 3 ? std::stoi(argv[3]) : 4;
    const int64_t group = argc > 4 ? std::stoll(argv[4]) : 32;

    const qtool::CheckpointTensor& t = ck.Get(name);
    QTOOL_CHECK(t.info->shape.size() == 2, qtool::ShapeError, "{} is not a matrix", name);
    const qtool::IntFormat format{.bits = bits, .group = group};  // symmetric, in groups
    auto codec = qtool::MakeCodec(format, t.info->shape[0], t.info->shape[1]);

    // Buffers for the codec's stored tensors (packed codes, scales).
    std::vector<std::vector<std::byte>> parts;
    std::vector<std::byte*> ptrs;
    for (const qtool::TensorSpec& s : codec->Layout(name)) {
      parts.emplace_back(s.nbytes());
      ptrs.push_back(parts.back().data());
    }
    const qtool::ErrorStats stats = qtool::QuantizeMatrix(t.data().data(), t.info->dtype, *codec,
                                                          ptrs.data(), /*threads=*/0, name);
    std::printf("%s %lldx%lld int%d g%lld: %.3f bits/weight, SQNR %.2f dB, cosine %.6f\n",
                name.c_str(), static_cast<long long>(codec->rows()),
                static_cast<long long>(codec->cols()), bits, static_cast<long long>(group),
                codec->BitsPerWeight(), stats.sqnr_db(), stats.cosine());
  } catch (const qtool::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return static_cast<int>(e.exit_code());
  }
  return 0;
}
