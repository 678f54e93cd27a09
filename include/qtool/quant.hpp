// The quantiser core: typed formats (format/format.hpp) with their traits and text form, the
// observers, typed quantised storage with views, the Quantize / Dequantize templates and the
// error metrics. It needs the C++ standard library and fmt only. Linked with the CMake target
// qtool::quant, the templates run the dispatched SIMD kernels; with QTOOL_QUANT_HEADER_ONLY
// defined before including it, the scalar references (quant/quantized.hpp), with no library.
//
//   #include <qtool/quant.hpp>
//   const qtool::Format f = qtool::ParseFormat("int4:g128:asym");
//   auto q = qtool::Quantize(std::get<qtool::IntFormat>(f), w, rows, cols);
//   const qtool::ErrorStats e = qtool::MeasureError(w, qtool::Dequantize(q));
#pragma once

#include "qtool/format/format.hpp"
#include "qtool/format/metrics.hpp"
#include "qtool/format/observer.hpp"
#include "qtool/format/text.hpp"
#include "qtool/format/traits.hpp"
#include "qtool/quant/quantized.hpp"
