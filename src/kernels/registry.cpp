// CPU feature detection, the choice of kernel path per operation, and the public entry points
// (which split work over threads and call the chosen kernels).
#include <array>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "qtool/core/enum_names.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/format/minifloat.hpp"
#include "qtool/format/pack.hpp"
#include "qtool/kernels.hpp"
#include "qtool/kernels/gemm.hpp"
#include "table.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#elif defined(__aarch64__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace qtool::kernels {
namespace detail {
namespace {

struct CpuInfo {
  std::vector<std::string> features;
  bool avx2 = false, avx512 = false, avx_vnni = false, neon = false, dotprod = false;
};

#if defined(__x86_64__) || defined(_M_X64)
CpuInfo DetectCpu() {
  CpuInfo info;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(1, 0, &a, &b, &c, &d)) return info;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28),
             f16c = c & (1u << 29);
  // The OS must save the YMM (bits 1-2) and ZMM/opmask (bits 5-7) state for the registers to be
  // usable; XGETBV reports which state components it enabled.
  uint64_t xcr0 = 0;
  if (osxsave) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<uint64_t>(hi) << 32) | lo;
  }
  const bool ymm_os = (xcr0 & 0x6) == 0x6, zmm_os = (xcr0 & 0xe6) == 0xe6;
  unsigned b7 = 0, c7 = 0, a71 = 0;
  if (__get_cpuid_count(7, 0, &a, &b7, &c7, &d)) {
    __get_cpuid_count(7, 1, &a71, &b, &c, &d);
  }
  const std::pair<const char*, bool> flags[] = {
      {"avx", avx && ymm_os},
      {"avx2", (b7 & (1u << 5)) && ymm_os},
      {"fma", fma && ymm_os},
      {"f16c", f16c && ymm_os},
      {"bmi2", (b7 & (1u << 8)) != 0},
      {"avxvnni", (a71 & (1u << 4)) && ymm_os},
      {"avx512f", (b7 & (1u << 16)) && zmm_os},
      {"avx512dq", (b7 & (1u << 17)) && zmm_os},
      {"avx512bw", (b7 & (1u << 30)) && zmm_os},
      {"avx512vl", (b7 & (1u << 31)) && zmm_os},
      {"avx512vnni", (c7 & (1u << 11)) && zmm_os},
      {"avx512bf16", (a71 & (1u << 5)) && zmm_os},
  };
  auto has = [&](std::string_view name) {
    for (const auto& [n, on] : flags) {
      if (name == n) return on;
    }
    return false;
  };
  for (const auto& [name, on] : flags) {
    if (on) info.features.emplace_back(name);
  }
  info.avx2 = has("avx2") && has("fma") && has("f16c") && has("bmi2");
  info.avx_vnni = info.avx2 && has("avxvnni");
  info.avx512 = info.avx2 && has("avx512f") && has("avx512dq") && has("avx512bw") &&
                has("avx512vl") && has("avx512vnni");
  return info;
}
#elif defined(__aarch64__)
CpuInfo DetectCpu() {
  CpuInfo info;
  const unsigned long hw = getauxval(AT_HWCAP);
  info.neon = hw & HWCAP_ASIMD;
  info.dotprod = hw & HWCAP_ASIMDDP;
  if (info.neon) info.features.emplace_back("asimd");
  if (info.dotprod) info.features.emplace_back("asimddp");
  if (hw & HWCAP_FPHP) info.features.emplace_back("fphp");
  return info;
}
#else
CpuInfo DetectCpu() { return {}; }
#endif

const CpuInfo& Cpu() {
  static const CpuInfo info = DetectCpu();
  return info;
}

bool Supported(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return true;
    case Isa::kAvx2:
      return Cpu().avx2 && Avx2Table(false);
    case Isa::kAvx512:
      return Cpu().avx512 && Avx512Table();
    case Isa::kNeon:
      return Cpu().neon && NeonTable(false);
  }
  return false;
}

const KernelTable* TableOf(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return ScalarTable();
    case Isa::kAvx2:
      return Avx2Table(Cpu().avx_vnni);
    case Isa::kAvx512:
      return Avx512Table();
    case Isa::kNeon:
      return NeonTable(Cpu().dotprod);
  }
  return nullptr;
}

constexpr const char* kOpNames[] = {
#define QTOOL_KERNEL_NAME(name, ret, args) #name,
    QTOOL_KERNEL_LIST(QTOOL_KERNEL_NAME)
#undef QTOOL_KERNEL_NAME
};
constexpr size_t kNumOps = std::size(kOpNames);

// The resolved table: for each operation, the entry of the first family in the fallback chain of
// the active family that has one.
struct Dispatch {
  Isa active = Isa::kScalar;
  KernelTable table;
  std::array<Isa, kNumOps> paths{};

  void Select(Isa isa) {
    QTOOL_CHECK(Supported(isa), OptionError,
                "instruction set \"{}\" is not supported by this CPU or build (supported: {})",
                IsaName(isa), fmt::join(SupportedNames(), ", "));
    std::vector<Isa> chain = {isa};
    if (isa == Isa::kAvx512) chain.push_back(Isa::kAvx2);
    if (isa != Isa::kScalar) chain.push_back(Isa::kScalar);
    active = isa;
    size_t op = 0;
#define QTOOL_KERNEL_RESOLVE(name, ret, args)         \
  for (Isa c : chain) {                               \
    if (const KernelTable* t = TableOf(c); t->name) { \
      table.name = t->name;                           \
      paths[op] = c;                                  \
      break;                                          \
    }                                                 \
  }                                                   \
  ++op;
    QTOOL_KERNEL_LIST(QTOOL_KERNEL_RESOLVE)
#undef QTOOL_KERNEL_RESOLVE
  }

  static std::vector<std::string> SupportedNames() {
    std::vector<std::string> names;
    for (Isa i : SupportedIsas()) names.emplace_back(IsaName(i));
    return names;
  }
};

Dispatch& State() {
  static Dispatch d = [] {
    Dispatch s;
    const char* env = std::getenv("QTOOL_ISA");
    s.Select(env && *env ? ParseIsa(env) : SupportedIsas().back());
    return s;
  }();
  return d;
}

const KernelTable& K() { return State().table; }

}  // namespace
}  // namespace detail

using detail::K;

namespace {

constexpr EnumName<Isa> kIsaNames[] = {
    {Isa::kScalar, "scalar"}, {Isa::kAvx2, "avx2"}, {Isa::kAvx512, "avx512"}, {Isa::kNeon, "neon"}};

}  // namespace

const char* IsaName(Isa isa) { return NameOf(kIsaNames, isa); }

Isa ParseIsa(std::string_view name) {
  if (const auto isa = ValueOf(kIsaNames, name)) return *isa;
  throw OptionError(fmt::format("unknown instruction set \"{}\" (QTOOL_ISA takes {})", name,
                                JoinNames(kIsaNames)));
}

std::vector<Isa> SupportedIsas() {
  std::vector<Isa> out;
  for (Isa i : {Isa::kScalar, Isa::kNeon, Isa::kAvx2, Isa::kAvx512}) {
    if (detail::Supported(i)) out.push_back(i);
  }
  return out;
}

std::string CpuFeatures() { return fmt::format("{}", fmt::join(detail::Cpu().features, " ")); }

Isa ActiveIsa() { return detail::State().active; }

void SelectIsa(Isa isa) { detail::State().Select(isa); }

std::vector<std::pair<std::string, Isa>> KernelPaths() {
  std::vector<std::pair<std::string, Isa>> out;
  for (size_t i = 0; i < detail::kNumOps; ++i) {
    out.emplace_back(detail::kOpNames[i], detail::State().paths[i]);
  }
  return out;
}

void Bf16ToF32(const uint16_t* in, int64_t n, float* out) { K().bf16_to_f32(in, n, out); }
void F16ToF32(const uint16_t* in, int64_t n, float* out) { K().f16_to_f32(in, n, out); }
void F32ToBf16(const float* in, int64_t n, uint16_t* out) { K().f32_to_bf16(in, n, out); }
void F32ToF16(const float* in, int64_t n, uint16_t* out) { K().f32_to_f16(in, n, out); }

int64_t FirstNonFinite(const float* x, int64_t n) { return K().first_non_finite(x, n); }

void AccumulateErrors(const float* x, const float* y, int64_t n, ErrorStats* stats) {
  K().accumulate_errors(x, y, n, stats);
}

void MinMax(const float* x, int64_t n, float* lo, float* hi) { K().min_max(x, n, lo, hi); }

void QuantizeGroups(const float* x, int64_t n, int64_t glen, const QuantSpec& spec, uint8_t* codes,
                    float* scales, uint8_t* zeros, float* deq) {
  K().quantize_groups(x, n, glen, spec, codes, scales, zeros, deq);
}

int64_t QuantizeStoredRows(const void* x, StoredFloat type, int64_t rows, int64_t cols,
                           int64_t glen, const QuantSpec& spec, uint8_t* packed, float* scales,
                           uint8_t* zeros, ErrorStats* stats) {
  QTOOL_DASSERT(cols % 16 == 0 && glen % 16 == 0 && spec.bits >= 2 && spec.bits <= 8);
  return K().quantize_stored_rows(x, type, rows, cols, glen, spec, packed, scales, zeros, stats);
}

void QuantizeCodes(const float* x, int64_t n, GroupParams p, int bits, uint8_t* codes) {
  K().quantize_codes(x, n, p, (1 << bits) - 1, codes);
}

void DequantizeCodes(const uint8_t* codes, int64_t n, GroupParams p, float* out) {
  K().dequantize_codes(codes, n, p, out);
}

void PackCodes(const uint8_t* codes, int64_t n, int bits, uint8_t* out) {
  K().pack_codes(codes, n, bits, out);
}

void UnpackCodes(const uint8_t* in, int64_t n, int bits, uint8_t* codes) {
  K().unpack_codes(in, n, bits, codes);
}

namespace {

// Rows are independent; this many per task keeps the per-task overhead negligible.
constexpr int64_t kRowsPerTask = 16;

}  // namespace

void QuantizeRows(const float* x, int64_t rows, int64_t cols, const QuantSpec& spec, uint8_t* codes,
                  float* scales, uint8_t* zeros, int threads) {
  QTOOL_DASSERT(spec.granularity != Granularity::kTensor);
  const detail::KernelTable& k = K();
  const int64_t glen = spec.GroupLen(cols), ng = spec.GroupsPerRow(cols);
  const int64_t row_bytes = PackedBytes(cols, spec.bits);
  ParallelFor(rows, kRowsPerTask, threads, [&](int64_t r0, int64_t r1, int) {
    std::vector<uint8_t> buf(spec.bits == 8 ? 0 : static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      uint8_t* c = spec.bits == 8 ? codes + r * row_bytes : buf.data();
      k.quantize_groups(x + r * cols, cols, glen, spec, c, scales + r * ng,
                        spec.symmetric ? nullptr : zeros + r * ng, nullptr);
      if (spec.bits != 8) k.pack_codes(c, cols, spec.bits, codes + r * row_bytes);
    }
  });
}

void DequantizeRows(const QuantWeights& w, float* out, int threads) {
  const detail::KernelTable& k = K();
  const int64_t ng = w.groups_per_row(), row_bytes = w.row_bytes();
  ParallelFor(w.rows, kRowsPerTask, threads, [&](int64_t r0, int64_t r1, int) {
    std::vector<uint8_t> buf(w.bits == 8 ? 0 : static_cast<size_t>(w.cols));
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* c = w.codes + r * row_bytes;
      if (w.bits != 8) {
        k.unpack_codes(c, w.cols, w.bits, buf.data());
        c = buf.data();
      }
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t g0 = g * w.group, n = std::min(w.group, w.cols - g0);
        GroupParams p;
        p.scale = w.scales[r * ng + g];
        p.zero = w.zeros ? w.zeros[r * ng + g] : 1 << (w.bits - 1);
        k.dequantize_codes(c + g0, n, p, out + r * w.cols + g0);
      }
    }
  });
}

void QuantizeActivations(const float* x, int64_t m, int64_t k, int8_t* q, float* scales) {
  K().quantize_activations(x, m, k, q, scales);
}

namespace {

// Output columns per task: a multiple of every kernel's column block (48 for the AVX-512 GEMM),
// large enough that a task's weight rows amortise its set-up (packing or activation reordering).
constexpr int64_t kColsPerTask = 384;

template <typename Fn>
void OverColumns(int64_t n, int threads, Fn&& fn) {
  ParallelFor(n, kColsPerTask, threads, [&](int64_t n0, int64_t n1, int) { fn(n0, n1); });
}

}  // namespace

void GemmW8A8(const int8_t* q, const float* a_scales, int64_t m, const QuantWeights& w, float* y,
              int threads) {
  QTOOL_DASSERT(w.bits == 8 && w.group == w.cols && w.cols < (1 << 16));
  const detail::Int8Acts a{q, a_scales, m};
  if (m < detail::kGemmTokens) {
    OverColumns(w.rows, threads, [&](int64_t n0, int64_t n1) { K().gemm_w8a8(a, w, n0, n1, y); });
    return;
  }
  // A GEMM prepares its activations once per call: one range of rows per thread.
  const int t = std::max(1, ResolveThreads(threads));
  const int64_t per_thread = (w.rows + t - 1) / t;
  ParallelFor(w.rows, (per_thread + 47) / 48 * 48, t,
              [&](int64_t n0, int64_t n1, int) { K().gemm_w8a8(a, w, n0, n1, y); });
}

// The vector 4-bit kernels step through a group 32 codes at a time; other shapes take the
// reference path.
const detail::KernelTable& FourBitTable(int64_t group, int64_t cols) {
  return group % 32 == 0 && cols % 32 == 0 ? K() : *detail::ScalarTable();
}

void GemmW4A8(const int8_t* q, const float* a_scales, int64_t m, const QuantWeights& w, float* y,
              int threads) {
  QTOOL_DASSERT(w.bits == 4);
  const detail::Int8Acts a{q, a_scales, m};
  const auto fn = FourBitTable(w.group, w.cols).gemm_w4a8;
  OverColumns(w.rows, threads, [&](int64_t n0, int64_t n1) { fn(a, w, n0, n1, y); });
}

void GemmW4A16(const uint16_t* a_bf16, int64_t m, const QuantWeights& w, float* y, int threads) {
  QTOOL_DASSERT(w.bits == 4);
  const auto fn = FourBitTable(w.group, w.cols).gemm_w4a16;
  OverColumns(w.rows, threads, [&](int64_t n0, int64_t n1) { fn(a_bf16, m, w, n0, n1, y); });
}

void GemvNf4(const float* x, const Nf4Weights& w, float* y, int threads) {
  const auto fn = FourBitTable(w.group, w.cols).gemv_nf4;
  OverColumns(w.rows, threads, [&](int64_t n0, int64_t n1) { fn(x, w, n0, n1, y); });
}

// ---- Float codes ----

float AbsMax(const float* x, int64_t n) {
  float lo, hi;
  K().min_max(x, n, &lo, &hi);
  return std::max(hi, -lo);  // hi first: +0, not -0, when both are zero
}

MinifloatCodes::MinifloatCodes(const MinifloatFormat& f, bool saturate_overflow)
    : format(&f), saturate(saturate_overflow), bits(f.bits()), emax(f.emax()), value{} {
  for (int c = 0; c < f.num_codes(); ++c) value[c] = DecodeMinifloat(static_cast<uint32_t>(c), f);
  const int m = f.man_bits, emin = f.emin();
  const uint32_t top = (1u << f.exp_bits) - 1, mant = (1u << m) - 1;
  sign_bit = f.sign_bit();
  sign_shift = 31 - f.exp_bits - m;
  shift = 23 - m;
  min_normal = static_cast<uint32_t>(emin + 127) << 23;
  sub_magic = static_cast<uint32_t>(emin - m + 23 + 127) << 23;
  round_half = (1u << (shift - 1)) - 1;
  rebias = static_cast<uint32_t>(127 - f.bias) << m;
  max_code = MaxFiniteCode(f);
  // EncodeMinifloat's NaN code: S.11111.10 with infinities, else all ones (E4M3fn).
  const uint32_t nan = f.has_inf ? (top << m) | (1u << (m - 1)) : (top << m) | mant;
  nan_code = f.has_nan ? nan : 0;
  nan_sign = f.has_nan ? sign_bit : 0;
  if (saturate || !(f.has_inf || f.has_nan)) {
    overflow_code = max_code;
  } else {
    overflow_code = f.has_inf ? top << m : nan;
  }
  min_normal_code = 1u << m;
  exp_rebias = static_cast<uint32_t>(127 - f.bias) << 23;
  sub_unit = std::ldexp(1.0f, emin - m);
  constexpr uint32_t kNone = 0x100;
  inf_code = f.has_inf ? top << m : kNone;
  nan_from = f.has_inf ? (top << m) + 1 : f.has_nan ? (top << m) | mant : kNone;
}

namespace {

// Calls fn(r) for each of `rows` rows, split over threads in chunks of kRowsPerTask.
template <typename Fn>
void OverRows(int64_t rows, int threads, Fn&& fn) {
  ParallelFor(rows, kRowsPerTask, threads, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) fn(r);
  });
}

}  // namespace

void QuantizeNf4Rows(const float* x, int64_t rows, int64_t cols, const Nf4Blocks& b,
                     uint8_t* packed, float* deq, int threads) {
  const auto fn = K().quantize_nf4;
  const int64_t rb = (cols + 1) / 2;
  OverRows(rows, threads, [&](int64_t r) {
    fn(x + r * cols, cols, b.first + r * cols, b, packed + r * rb, deq + r * cols);
  });
}

void DequantizeNf4Rows(const uint8_t* packed, int64_t rows, int64_t cols, const Nf4Blocks& b,
                       float* out, int threads) {
  const auto fn = K().dequantize_nf4;
  const int64_t rb = (cols + 1) / 2;
  OverRows(rows, threads,
           [&](int64_t r) { fn(packed + r * rb, cols, b.first + r * cols, b, out + r * cols); });
}

void QuantizeMinifloatRows(const float* x, int64_t rows, int64_t cols, const float* scales,
                           int64_t group, const MinifloatCodes& f, uint8_t* packed, float* deq,
                           int threads) {
  const auto fn = K().quantize_minifloat;
  const int64_t rb = PackedBytes(cols, f.bits);
  OverRows(rows, threads, [&](int64_t r) {
    fn(x + r * cols, cols, scales, group, f, packed + r * rb, deq + r * cols);
  });
}

void DequantizeMinifloatRows(const uint8_t* packed, int64_t rows, int64_t cols, const float* scales,
                             int64_t group, const MinifloatCodes& f, float* out, int threads) {
  const auto fn = K().dequantize_minifloat;
  const int64_t rb = PackedBytes(cols, f.bits);
  OverRows(rows, threads,
           [&](int64_t r) { fn(packed + r * rb, cols, scales, group, f, out + r * cols); });
}

void QuantizeMxRows(const float* x, int64_t rows, int64_t cols, int64_t block,
                    const MinifloatCodes* element, uint8_t* packed, uint8_t* scales, float* deq,
                    int threads) {
  QTOOL_DASSERT(!element || (element->saturate && element->emax >= 0));
  const auto fn = K().quantize_mx;
  const int64_t rb = PackedBytes(cols, element ? element->bits : 8),
                nb = (cols + block - 1) / block;
  OverRows(rows, threads, [&](int64_t r) {
    fn(x + r * cols, cols, block, element, packed + r * rb, scales + r * nb, deq + r * cols);
  });
}

void DequantizeMxRows(const uint8_t* packed, const uint8_t* scales, int64_t rows, int64_t cols,
                      int64_t block, const MinifloatCodes* element, float* out, int threads) {
  const auto fn = K().dequantize_mx;
  const int64_t rb = PackedBytes(cols, element ? element->bits : 8),
                nb = (cols + block - 1) / block;
  OverRows(rows, threads, [&](int64_t r) {
    fn(packed + r * rb, scales + r * nb, cols, block, element, out + r * cols);
  });
}

}  // namespace qtool::kernels

// ---- Float32 matrix kernels (qtool/kernels/gemm.hpp). ----

namespace qtool::gemm {

PanelKernel ActivePanelKernel() { return kernels::detail::K().f32_gemm_panels; }

MicroKernel ActiveMicroKernel() { return kernels::detail::K().f32_gemm_micro; }

void Transpose(const float* src, int64_t src_stride, int64_t rows, int64_t cols, float* dst,
               int64_t dst_stride) {
  kernels::detail::K().transpose_f32(src, src_stride, rows, cols, dst, dst_stride);
}

void Transpose(const uint8_t* src, int64_t src_stride, int64_t rows, int64_t cols, uint8_t* dst,
               int64_t dst_stride) {
  kernels::detail::K().transpose_u8(src, src_stride, rows, cols, dst, dst_stride);
}

}  // namespace qtool::gemm
