// bitsandbytes layouts (qtool/io/export_layouts.hpp): 4-bit NF4 and FP4 from qtool's NF4 codec's
// weights, LLM.int8 from its INT8 symmetric per-row weights.
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "qtool/core/error.hpp"
#include "qtool/io/export_layouts.hpp"
#include "qtool/quant/nf4_codec.hpp"

namespace qtool {
namespace {

float F32At(const ExportTensor& t, int64_t i) {
  float v;
  std::memcpy(&v, t.data.data() + i * 4, 4);
  return v;
}

// The quant_state JSON, padded with spaces (which JSON readers skip) to a length that does not
// depend on the offset's digits, so that the layout is known before the data.
std::string QuantStateJson(int64_t rows, int64_t cols, const Nf4Format& f, const std::string& dtype,
                           float offset) {
  nlohmann::json state = {{"quant_type", NameOf(kBnb4MapNames, f.map)},
                          {"blocksize", f.block},
                          {"dtype", dtype},
                          {"shape", {rows, cols}}};
  if (f.double_quant) {
    state["nested_blocksize"] = kNf4DoubleQuantBlock;
    state["nested_dtype"] = "float32";
    state["nested_offset"] = 0;
  }
  const size_t size = state.dump().size() + 32;  // room for any f32 in place of the 0
  if (f.double_quant) state["nested_offset"] = offset;
  std::string s = state.dump();
  s.resize(size, ' ');
  return s;
}

void CheckBnb(const std::string& name, int64_t cols, int64_t block) {
  QTOOL_CHECK(cols % 2 == 0, OptionError,
              "weight \"{}\": bitsandbytes packs the flattened tensor two codes a byte, so a row "
              "of {} (odd) columns would share a byte with the next; qtool pads rows instead",
              name, cols);
  QTOOL_CHECK(block >= 64 && block <= 4096 && (block & (block - 1)) == 0, OptionError,
              "weight \"{}\": bitsandbytes has NF4 blocks of 64 to 4096 (powers of two), not {}",
              name, block);
}

// The SCB, near 127 * scale, whose LLM.int8 decoding of the codes -128..127 is q * scale for the
// most codes (then the smallest largest difference, then the nearest to 127 * scale), and that
// largest relative difference. Decoding is odd in q (f32 rounding is symmetric), so 1..128 is
// enough.
std::pair<float, double> ChooseScb(float scale) {
  if (!(scale > 0)) return {0.0f, 0.0};  // an all-zero row: zeros either way
  constexpr int kUlps = 4;
  const float centre = 127.0f * scale;
  float best = centre;
  int best_misses = 129;
  double best_change = 0;
  for (int k = 0; k <= 2 * kUlps; ++k) {  // 0, -1, +1, -2, +2, ... ulps from the centre
    float scb = centre;
    for (int step = 0; step < (k + 1) / 2; ++step)
      scb = std::nextafter(scb, k % 2 ? 0.0f : INFINITY);
    int misses = 0;
    double change = 0;
    for (int q = 1; q <= 128; ++q) {
      const float want = static_cast<float>(q) * scale, got = BnbInt8Value(q, scb);
      if (got != want) {
        ++misses;
        change = std::max(change, std::abs(static_cast<double>(got) - want) / want);
      }
    }
    if (misses < best_misses || (misses == best_misses && change < best_change)) {
      best = scb;
      best_misses = misses;
      best_change = change;
    }
  }
  return {best, best_change};
}

}  // namespace

std::vector<TensorSpec> BnbInt8Layout(const IntWeight& w, const std::string& prefix) {
  QTOOL_CHECK(
      w.bits == 8 && w.symmetric && w.groups == 1, OptionError,
      "weight \"{}\": bitsandbytes' LLM.int8 holds 8-bit symmetric weights with one "
      "scale per row (--format int8 --granularity channel); this one is {}-bit {} {}",
      w.name, w.bits, w.symmetric ? "symmetric" : "asymmetric",
      w.groups == 1 ? "with one scale per row" : fmt::format("in groups of {}", w.group_size));
  return {{prefix + ".weight", DType::kI8, {w.rows, w.cols}},
          {prefix + ".SCB", DType::kF32, {w.rows}},
          {prefix + ".weight_format", DType::kU8, {}}};
}

std::vector<ExportTensor> PackBnbInt8(const IntWeight& w, const std::string& prefix,
                                      double* max_change) {
  const std::vector<TensorSpec> layout = BnbInt8Layout(w, prefix);
  std::vector<ExportTensor> out;
  for (const TensorSpec& spec : layout) out.push_back(ExportTensor::Zeros(spec));
  // qtool's unsigned code u = q + 128 is the two's complement byte of q with its top bit flipped.
  const size_t n = static_cast<size_t>(w.rows * w.cols);
  const auto* u = w.packed ? reinterpret_cast<const uint8_t*>(w.packed) : w.codes.data();
  for (size_t i = 0; i < n; ++i) out[0].data[i] = static_cast<std::byte>(u[i] ^ 0x80u);
  for (int64_t r = 0; r < w.rows; ++r) {
    const auto [scb, change] = ChooseScb(w.scales[static_cast<size_t>(r)]);
    std::memcpy(out[1].data.data() + r * 4, &scb, 4);
    *max_change = std::max(*max_change, change);
  }
  return out;  // weight_format: 0
}

std::array<float, 16> BnbQuantMap(Bnb4Map map) {
  using T = FormatTraits<Nf4Format>;
  if (map == Bnb4Map::kNf4) return T::kValues;
  std::array<float, 16> out{};
  for (size_t i = 0; i < 16; ++i) out[T::kFp4Codes[i]] = T::kFp4Values[i];
  return out;
}

std::array<uint8_t, 256> BnbCodeBytes(Bnb4Map map, bool to_bnb) {
  std::array<uint8_t, 16> nibble{};
  for (uint8_t i = 0; i < 16; ++i) {
    const uint8_t code = map == Bnb4Map::kFp4 ? FormatTraits<Nf4Format>::kFp4Codes[i] : i;
    nibble[to_bnb ? i : code] = to_bnb ? code : i;
  }
  std::array<uint8_t, 256> out{};
  for (int b = 0; b < 256; ++b) out[b] = static_cast<uint8_t>(nibble[b >> 4] << 4 | nibble[b & 15]);
  return out;
}

std::vector<TensorSpec> BnbNf4Layout(const std::string& name, int64_t rows, int64_t cols,
                                     const Nf4Format& f, const std::string& prefix,
                                     const std::string& dtype) {
  CheckBnb(name, cols, f.block);
  const int64_t n = rows * cols, nb = (n + f.block - 1) / f.block;
  const std::string w = prefix + ".weight";
  std::vector<TensorSpec> out = {{w, DType::kU8, {n / 2, 1}}};
  if (!f.double_quant) {
    out.push_back({w + ".absmax", DType::kF32, {nb}});
    out.push_back({w + ".quant_map", DType::kF32, {16}});
  } else {
    out.push_back({w + ".absmax", DType::kU8, {nb}});
    out.push_back({w + ".quant_map", DType::kF32, {16}});
    out.push_back({w + ".nested_absmax",
                   DType::kF32,
                   {(nb + kNf4DoubleQuantBlock - 1) / kNf4DoubleQuantBlock}});
    out.push_back({w + ".nested_quant_map", DType::kF32, {256}});
  }
  const int64_t js = static_cast<int64_t>(QuantStateJson(rows, cols, f, dtype, 0.0f).size());
  out.push_back({fmt::format("{}.quant_state.bitsandbytes__{}", w, NameOf(kBnb4MapNames, f.map)),
                 DType::kU8,
                 {js}});
  return out;
}

std::vector<ExportTensor> PackBnbNf4(const std::string& name, int64_t rows, int64_t cols,
                                     const Nf4Format& f, const std::byte* const* parts,
                                     const std::string& prefix, const std::string& dtype) {
  const std::vector<TensorSpec> layout = BnbNf4Layout(name, rows, cols, f, prefix, dtype);
  float offset = 0;
  if (f.double_quant) std::memcpy(&offset, parts[3], 4);
  const std::string js = QuantStateJson(rows, cols, f, dtype, offset);
  const std::array<float, 16> quant_map = BnbQuantMap(f.map);
  // The sources of the layout's tensors, in its order.
  std::vector<const void*> src = {parts[0], parts[1], quant_map.data()};
  if (f.double_quant) {
    src.push_back(parts[2]);
    src.push_back(DynamicMap8().data());
  }
  src.push_back(js.data());
  std::vector<ExportTensor> out;
  for (size_t k = 0; k < layout.size(); ++k) out.push_back(ExportTensor::CopyOf(layout[k], src[k]));
  if (f.map != Bnb4Map::kNf4) {  // qtool's indices into the ascending values as bitsandbytes' codes
    const std::array<uint8_t, 256> to_bnb = BnbCodeBytes(f.map, true);
    for (std::byte& b : out[0].data)
      b = static_cast<std::byte>(to_bnb[std::to_integer<uint8_t>(b)]);
  }
  return out;
}

std::vector<float> DecodeBnbNf4(const std::vector<ExportTensor>& t, int64_t rows, int64_t cols) {
  const nlohmann::json state = nlohmann::json::parse(
      std::string(reinterpret_cast<const char*>(t.back().data.data()), t.back().data.size()));
  const int64_t block = state.at("blocksize").get<int64_t>();
  const bool nested = state.contains("nested_offset");
  const ExportTensor& absmax = t[1];
  const ExportTensor& quant_map = t[2];
  std::vector<float> out(static_cast<size_t>(rows * cols));
  const auto* packed = reinterpret_cast<const uint8_t*>(t[0].data.data());
  for (int64_t i = 0; i < rows * cols; ++i) {
    const int64_t b = i / block;
    float a;
    if (nested) {
      const uint8_t q = static_cast<uint8_t>(absmax.data[static_cast<size_t>(b)]);
      a = F32At(t[4], q) * F32At(t[3], b / state.at("nested_blocksize").get<int64_t>()) +
          state.at("nested_offset").get<float>();
    } else {
      a = F32At(absmax, b);
    }
    const int code = (packed[i / 2] >> ((i % 2) ? 0 : 4)) & 0xf;
    out[static_cast<size_t>(i)] = F32At(quant_map, code) * a;
  }
  return out;
}

}  // namespace qtool
