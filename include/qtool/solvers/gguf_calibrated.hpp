// GPTQ and AWQ into GGUF: the calibrated pipeline (calibrated.hpp) with each Linear weight swept
// against the ggml grid it is stored in (ggml_grid.hpp), then written as a GGUF file by the export
// (io/gguf_export.hpp) with GPTQ's blocks in place of the reference quantiser's. AWQ folds its
// scales block by block (its searches round with an int grid of the type's bits in groups of 32,
// a proxy of the ggml types' rounding), and the rescaled weights are written by the reference
// quantiser of each tensor's type, the rescaled norms in F32.
//
// The type of each weight is the export's (TensorType: the recipe, its mixes and the fallbacks for
// rows that are not whole blocks), so the file is the one RTN export writes with other codes.
// Weights stored in a type GPTQ cannot sweep (F32, F16, BF16, TQ1_0, TQ2_0, MXFP4) are written by
// the export as usual; the layers after them are calibrated on their stored (rounded) values.
// Mixture-of-experts blocks run GPTQ's loop of the int format (solvers/calibrated.hpp): each
// expert solved with the Hessians of the tokens routed to it (all the block's tokens below
// moe_min_tokens), its blocks stacked by the export into the 3-D expert tensors; the routers and
// Qwen2-MoE's one-row shared-expert gate are F32 in the file, so the later layers see them exact.
// The embeddings and the output head are not Linear layers of the blocks: the export quantises
// them.
// act-order is refused: a GGUF block's parameters belong to consecutive columns, and llama.cpp
// has no column permutation (g_idx) to undo another order.
//
// Memory: the calibrated pipeline's (calibration activations, one block and its Hessians); the
// blocks of the solved weights are spilled to a file next to the output until the export reads
// them back, one tensor at a time.
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "qtool/format/ggml.hpp"
#include "qtool/io/gguf_export.hpp"
#include "qtool/model/model.hpp"
#include "qtool/solvers/calibrated.hpp"

namespace qtool::solvers {

/// The ggml type a Linear weight (checkpoint name, [rows, cols]) is stored in.
using GgmlTypeFn = std::function<ggml::Type(const std::string& weight, int64_t rows, int64_t cols)>;
/// Receives a solved weight's blocks: rows * RowBytes(type, cols) bytes, rows in order.
using GgmlBlocksFn =
    std::function<void(const std::string& weight, ggml::Type type, std::vector<std::byte> blocks)>;

/// Runs GPTQ or AWQ block by block over `model` and hands each solved tensor's blocks to `sink`.
/// GPTQ: each Linear weight against type_of's grid (GgmlGrid) when it can be swept; the other
/// weights (and one-row weights, in F32) are rounded by the reference quantiser for the later
/// layers' inputs and left to the export. Experts are given one by one. AWQ: the rescaled
/// Linear weights in type_of's type by the reference quantiser, the rescaled norms in F32.
/// `threads` 0: all cores. Throws OptionError for another method or act-order.
void SolveGgufCalibrated(const Model& model, const std::filesystem::path& model_dir,
                         const CalibratedOptions& method, int threads, const GgmlTypeFn& type_of,
                         const GgmlBlocksFn& sink, const LayerFn& on_layer = {});

/// GPTQ or AWQ into a GGUF file at `out` with the export's options (type, pure, threads,
/// overwrite): SolveGgufCalibrated, then ExportGguf with the solved blocks. Throws as both.
gguf::ExportReport QuantizeCalibratedGguf(
    const std::filesystem::path& model_dir, const std::filesystem::path& out,
    const gguf::ExportOptions& options, const CalibratedOptions& method,
    const LayerFn& on_layer = {},
    const std::function<void(size_t, size_t, const std::string&)>& progress = {});

}  // namespace qtool::solvers
