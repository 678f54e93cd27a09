// The text form of a Format: NAME[:OPTION]... (docs/CODECS.md, "Format text"). Examples:
//   int4                 4-bit symmetric, groups of 128 (the defaults)
//   int4:g64:asym        groups of 64 with a zero-point      int8:channel   one scale per row
//   int3:g48:flat:mse    flat groups, MSE observer           ternary:g64
//   nf4:b64:dq           NF4, absmax blocks of 64, double quantisation
//   bnb-fp4:dq           bitsandbytes' FP4 (its own values, not fp4's E2M1), as nf4 otherwise
//   fp8-e4m3:128x128     FP8 with 128 x 128 scale blocks     fp4:g16   FP4, 1 x 16 blocks
//   mxfp4                MXFP4 (E8M0 scales per 32)          mxint8:b16
//   nvfp4                NVFP4 (E4M3 scales per 16, an f32 global scale; no options)
// ParseFormat reads it once (OptionError naming the text and the offending part) and
// FormatToString prints the shortest text that ParseFormat reads back as the same Format.
#pragma once

#include <fmt/format.h>

#include <array>
#include <charconv>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "qtool/core/error.hpp"
#include "qtool/format/format.hpp"
#include "qtool/format/traits.hpp"

namespace qtool {

namespace detail {

struct FormatName {
  std::string_view name;
  Element element;
};

// The small-float formats with f32 scales, and the MX formats, by their text names.
inline constexpr std::array<FormatName, 5> kFloatFormatNames = {{{"fp8-e4m3", Element::kE4M3},
                                                                 {"fp8-e5m2", Element::kE5M2},
                                                                 {"fp6-e2m3", Element::kE2M3},
                                                                 {"fp6-e3m2", Element::kE3M2},
                                                                 {"fp4", Element::kE2M1}}};
inline constexpr std::array<FormatName, 6> kMxFormatNames = {{{"mxfp4", Element::kE2M1},
                                                              {"mxfp6-e2m3", Element::kE2M3},
                                                              {"mxfp6-e3m2", Element::kE3M2},
                                                              {"mxfp8-e4m3", Element::kE4M3},
                                                              {"mxfp8-e5m2", Element::kE5M2},
                                                              {"mxint8", Element::kInt8}}};

// Defaults of the text form where a family's name alone does not say everything.
inline constexpr int64_t kTextIntGroup = 128;
inline constexpr int64_t kTextFp4Block = 32;  // fp4: 1 x 32 blocks; the others: per channel

// Reads one NAME:OPTION... text, naming it in every error.
class FormatTextParser {
 public:
  explicit FormatTextParser(std::string_view text) : text_(text) {}

  Format Parse() {
    std::vector<std::string_view> parts;
    for (size_t begin = 0;;) {
      const size_t end = text_.find(':', begin);
      parts.push_back(text_.substr(begin, end - begin));
      if (end == std::string_view::npos) break;
      begin = end + 1;
    }
    const std::string_view name = parts[0];
    Format f = FromName(name);
    for (size_t i = 1; i < parts.size(); ++i) {
      const std::string_view opt = parts[i];
      Check(!opt.empty(), "an empty option");
      std::visit([&](auto& x) { Option(x, opt); }, f);
    }
    try {
      Validate(f);
    } catch (const OptionError& e) {
      throw OptionError(fmt::format("format \"{}\": {}", text_, e.what()));
    }
    return f;
  }

 private:
  template <class... Args>
  void Check(bool cond, fmt::format_string<Args...> what, Args&&... args) {
    QTOOL_CHECK(cond, OptionError, "format \"{}\": {}", text_,
                fmt::format(what, std::forward<Args>(args)...));
  }

  Format FromName(std::string_view name) {
    if (name.size() == 4 && name.substr(0, 3) == "int" && name[3] >= '2' && name[3] <= '8') {
      return IntFormat{.bits = name[3] - '0', .group = kTextIntGroup};
    }
    if (name == "ternary") return TernaryFormat{};
    if (name == "nf4") return Nf4Format{};
    if (name == "bnb-fp4") return Nf4Format{.map = Bnb4Map::kFp4};
    if (name == "nvfp4") return Nvfp4Format{};
    for (const FormatName& n : kFloatFormatNames) {
      if (n.name != name) continue;
      if (n.element == Element::kE2M1) {
        return FloatFormat{.element = n.element,
                           .granularity = Granularity::kGroup,
                           .block_rows = 1,
                           .block_cols = kTextFp4Block};
      }
      return FloatFormat{.element = n.element, .granularity = Granularity::kChannel};
    }
    for (const FormatName& n : kMxFormatNames) {
      if (n.name == name) return MxFormat{.element = n.element};
    }
    throw OptionError(fmt::format(
        "format \"{}\": unknown format \"{}\" (known: int2..int8, ternary, nf4, bnb-fp4, fp8-e4m3, "
        "fp8-e5m2, fp6-e2m3, fp6-e3m2, fp4, mxfp4, mxfp6-e2m3, mxfp6-e3m2, mxfp8-e4m3, "
        "mxfp8-e5m2, mxint8, nvfp4)",
        text_, name));
  }

  // Marks an option kind as given; a second option of that kind is a conflict.
  void Once(const char* kind, std::string_view opt) {
    for (const auto& [k, o] : seen_) {
      Check(k != kind, "option \"{}\" conflicts with \"{}\" (both set the {})", opt, o, kind);
    }
    seen_.emplace_back(kind, opt);
  }

  // A positive decimal number of at most 10 digits: the text after a one-letter prefix, or
  // either side of RxC.
  int64_t Number(std::string_view digits, std::string_view opt) {
    int64_t v = 0;
    const bool ok = !digits.empty() && digits.size() <= 10 &&
                    digits.find_first_not_of("0123456789") == std::string_view::npos;
    if (ok) std::from_chars(digits.data(), digits.data() + digits.size(), v);
    Check(ok && v >= 1 && v <= kMaxFormatBlock, "\"{}\": \"{}\" is not a size in 1..{}", opt,
          digits, kMaxFormatBlock);
    return v;
  }

  bool GranularityOption(Granularity* g, int64_t* group, std::string_view opt) {
    if (opt == "channel" || opt == "tensor") {
      Once("granularity", opt);
      *g = opt == "channel" ? Granularity::kChannel : Granularity::kTensor;
      return true;
    }
    if (opt[0] == 'g' && opt.size() > 1 && opt[1] >= '0' && opt[1] <= '9') {
      Once("granularity", opt);
      *g = Granularity::kGroup;
      *group = Number(opt.substr(1), opt);
      return true;
    }
    return false;
  }

  void Option(IntFormat& f, std::string_view opt) {
    if (GranularityOption(&f.granularity, &f.group, opt)) return;
    if (opt == "sym" || opt == "asym") {
      Once("symmetry", opt);
      f.symmetric = opt == "sym";
    } else if (opt == "flat") {
      Once("flat groups", opt);
      f.flat = true;
    } else if (opt == "gidx") {
      Once("g_idx", opt);
      f.g_idx = true;
    } else if (opt == "minmax" || opt == "kl" || opt.starts_with("mse") ||
               opt.starts_with("percentile")) {
      Once("observer", opt);
      std::string observer(opt);
      if (const size_t eq = observer.find('='); eq != std::string::npos) observer[eq] = ':';
      try {
        f.observer = ObserverSpec::Parse(observer);
      } catch (const OptionError&) {
        Check(false, "\"{}\" is not an observer (minmax, percentile=P, mse, mse=P, kl)", opt);
      }
    } else {
      Check(false,
            "unknown option \"{}\" for int{} (options: gN, channel, tensor, sym, asym, flat, "
            "gidx, minmax, percentile=P, mse, mse=P, kl)",
            opt, f.bits);
    }
  }

  void Option(TernaryFormat& f, std::string_view opt) {
    Check(GranularityOption(&f.granularity, &f.group, opt),
          "unknown option \"{}\" for ternary (options: gN, channel, tensor)", opt);
  }

  void Option(Nf4Format& f, std::string_view opt) {
    if (opt[0] == 'b') {
      Once("block", opt);
      f.block = Number(opt.substr(1), opt);
    } else if (opt == "dq") {
      Once("double quantisation", opt);
      f.double_quant = true;
    } else {
      Check(false, "unknown option \"{}\" for {} (options: bN, dq)", opt,
            f.map == Bnb4Map::kFp4 ? "bnb-fp4" : "nf4");
    }
  }

  void Option(FloatFormat& f, std::string_view opt) {
    if (GranularityOption(&f.granularity, &f.block_cols, opt)) {
      f.block_rows = 1;
    } else if (const size_t x = opt.find('x'); x != std::string_view::npos) {
      Once("granularity", opt);
      f.granularity = Granularity::kGroup;
      f.block_rows = Number(opt.substr(0, x), opt);
      f.block_cols = Number(opt.substr(x + 1), opt);
    } else if (opt == "nosat") {
      Once("saturation", opt);
      f.saturate = false;
    } else {
      Check(false, "unknown option \"{}\" for {} (options: channel, tensor, gN, RxC, nosat)", opt,
            text_.substr(0, text_.find(':')));
    }
  }

  void Option(MxFormat& f, std::string_view opt) {
    Check(opt[0] == 'b', "unknown option \"{}\" for {} (options: bN)", opt,
          text_.substr(0, text_.find(':')));
    Once("block", opt);
    f.block = Number(opt.substr(1), opt);
  }

  void Option(Nvfp4Format&, std::string_view opt) {
    Check(false, "unknown option \"{}\" for nvfp4 (it has no options)", opt);
  }

  std::string_view text_;
  std::vector<std::pair<const char*, std::string_view>> seen_;
};

inline std::string TextName(const FloatFormat& f) {
  for (const FormatName& n : kFloatFormatNames) {
    if (n.element == f.element) return std::string(n.name);
  }
  return "fp?";
}

inline std::string TextName(const MxFormat& f) {
  for (const FormatName& n : kMxFormatNames) {
    if (n.element == f.element) return std::string(n.name);
  }
  return "mx?";
}

}  // namespace detail

/// Parses the text form; OptionError names the text and the part at fault.
inline Format ParseFormat(std::string_view text) { return detail::FormatTextParser(text).Parse(); }

/// The shortest text ParseFormat reads back as `f` (defaults are left out).
inline std::string FormatToString(const Format& format) {
  struct Printer {
    std::string operator()(const IntFormat& f) const {
      std::string s = fmt::format("int{}", f.bits);
      if (f.granularity == Granularity::kGroup && f.group != detail::kTextIntGroup) {
        s += fmt::format(":g{}", f.group);
      } else if (f.granularity != Granularity::kGroup) {
        s += fmt::format(":{}", GranularityName(f.granularity));
      }
      if (!f.symmetric) s += ":asym";
      if (f.flat) s += ":flat";
      if (f.g_idx) s += ":gidx";
      if (f.observer.kind != ObserverKind::kMinMax) {
        std::string o = f.observer.ToString();
        if (const size_t colon = o.find(':'); colon != std::string::npos) o[colon] = '=';
        s += ":" + o;
      }
      return s;
    }
    std::string operator()(const TernaryFormat& f) const {
      if (f.granularity == Granularity::kGroup) return fmt::format("ternary:g{}", f.group);
      return f.granularity == Granularity::kChannel ? "ternary:channel" : "ternary";
    }
    std::string operator()(const Nf4Format& f) const {
      std::string s = f.map == Bnb4Map::kFp4 ? "bnb-fp4" : "nf4";
      if (f.block != Nf4Format{}.block) s += fmt::format(":b{}", f.block);
      if (f.double_quant) s += ":dq";
      return s;
    }
    std::string operator()(const FloatFormat& f) const {
      std::string s = detail::TextName(f);
      const bool fp4 = f.element == Element::kE2M1;
      if (f.granularity == Granularity::kGroup) {
        if (!fp4 || f.block_rows != 1 || f.block_cols != detail::kTextFp4Block) {
          s += f.block_rows == 1 ? fmt::format(":g{}", f.block_cols)
                                 : fmt::format(":{}x{}", f.block_rows, f.block_cols);
        }
      } else if (fp4 || f.granularity == Granularity::kTensor) {
        s += fmt::format(":{}", GranularityName(f.granularity));
      }
      if (!f.saturate) s += ":nosat";
      return s;
    }
    std::string operator()(const MxFormat& f) const {
      std::string s = detail::TextName(f);
      if (f.block != FormatTraits<MxFormat>::kDefaultBlock) s += fmt::format(":b{}", f.block);
      return s;
    }
    std::string operator()(const Nvfp4Format&) const { return "nvfp4"; }
  };
  return std::visit(Printer{}, format);
}

}  // namespace qtool
