// qtool: quantisation of large language models. Umbrella header.
#pragma once

#include "qtool/core/dtype.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/half.hpp"
#include "qtool/core/mapped_file.hpp"
#include "qtool/io/checkpoint.hpp"
#include "qtool/io/safetensors.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/quant/codec.hpp"
#include "qtool/quant/int_codec.hpp"
#include "qtool/quant/metrics.hpp"
#include "qtool/quant/pack.hpp"
#include "qtool/quant/spec.hpp"
