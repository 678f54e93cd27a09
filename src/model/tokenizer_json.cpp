// Hugging Face tokenizer.json, as the `tokenizers` library defines it (its Rust sources are the
// specification: tokenizers/src/{normalizers,pre_tokenizers,models,decoders,processors}).
//
// Encoding: the text is split on added tokens that are matched before normalisation, each other
// piece is normalised and split on the remaining (normalised) added tokens, then the pre-tokenizer
// splits it into words and the model turns each word into ids. Decoding maps ids to token strings
// and runs the decoder chain over them.
//
// Implemented: models BPE (byte fallback, ignore_merges, unk fusing, subword prefix/suffix) and
// Unigram (Viterbi, byte fallback); normalizers Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Strip,
// StripAccents, Replace, Prepend; pre-tokenizers Sequence, ByteLevel, Split, Metaspace, Digits,
// Whitespace, WhitespaceSplit; post-processors TemplateProcessing, ByteLevel, Sequence; decoders
// Sequence, ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace. Any other type is refused.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <queue>
#include <unordered_map>

#include "qtool/core/error.hpp"
#include "qtool/core/input_file.hpp"
#include "tokenizer_backend.hpp"

namespace qtool::tokenizer {
namespace {

using nlohmann::json;

// Errors name the file and the key path of the offending component.
struct Ctx {
  std::string file;
  [[noreturn]] void Fail(const std::string& key, const std::string& what) const {
    throw FormatError(fmt::format("{}: \"{}\": {}", file, key, what));
  }
  const json& At(const json& j, const std::string& key, const char* name) const {
    if (!j.is_object() || !j.contains(name)) Fail(key, fmt::format("missing \"{}\"", name));
    return j[name];
  }
  std::string Str(const json& j, const std::string& key, const char* name) const {
    const json& v = At(j, key, name);
    if (!v.is_string()) Fail(key + "." + name, "must be a string, got " + v.dump());
    return v.get<std::string>();
  }
  std::string StrOr(const json& j, const std::string& key, const char* name,
                    const std::string& fallback) const {
    if (!j.contains(name) || j[name].is_null()) return fallback;
    return Str(j, key, name);
  }
  bool BoolOr(const json& j, const std::string& key, const char* name, bool fallback) const {
    if (!j.contains(name) || j[name].is_null()) return fallback;
    if (!j[name].is_boolean()) Fail(key + "." + name, "must be true or false");
    return j[name].get<bool>();
  }
  int64_t IntOr(const json& j, const std::string& key, const char* name, int64_t fallback) const {
    if (!j.contains(name) || j[name].is_null()) return fallback;
    if (!j[name].is_number_integer() || j[name].get<int64_t>() < 0) {
      Fail(key + "." + name, "must be a non-negative integer, got " + j[name].dump());
    }
    return j[name].get<int64_t>();
  }
  std::string Type(const json& j, const std::string& key) const {
    if (!j.is_object()) Fail(key, "must be an object, got " + j.dump().substr(0, 80));
    return Str(j, key, "type");
  }
};

// ---------------------------------------------------------------------------------------------
// UTF-8

// Byte length of the UTF-8 sequence that starts with `c` (1 for a stray continuation byte).
inline size_t CharLen(unsigned char c) {
  return c < 0x80 ? 1 : c < 0xE0 ? (c < 0xC0 ? 1 : 2) : c < 0xF0 ? 3 : 4;
}

std::string EncodeUtf8(int32_t cp) {
  std::array<utf8proc_uint8_t, 4> buf{};
  const auto n = utf8proc_encode_char(cp, buf.data());
  return std::string(reinterpret_cast<const char*>(buf.data()), static_cast<size_t>(n));
}

bool ValidUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(s.size());
  while (left > 0) {
    if (*p < 0x80) {  // ASCII fast path
      ++p;
      --left;
      continue;
    }
    utf8proc_int32_t cp = 0;
    const utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
    if (n <= 0) return false;
    p += n;
    left -= n;
  }
  return true;
}

// Code points of a valid UTF-8 string.
std::vector<int32_t> CodePoints(std::string_view s) {
  std::vector<int32_t> out;
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(s.size());
  while (left > 0) {
    utf8proc_int32_t cp = 0;
    const utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
    if (n <= 0) break;
    out.push_back(cp);
    p += n;
    left -= n;
  }
  return out;
}

// Rust's char::is_whitespace: the White_Space property.
bool IsWhitespace(int32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// ---------------------------------------------------------------------------------------------
// Regular expressions: PCRE2 in UTF mode with Unicode properties (\p{L}, \s and \w as Unicode
// defines them), JIT-compiled. Patterns are shared; each call has its own match data.

// GPT-2's pre-tokenizer pattern (ByteLevel's use_regex, and a Split regex of many tokenizers).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// The GPT-2 pattern's match at `pos` where ASCII alone decides it, as PCRE2 finds it (leftmost
// alternative, greedy runs, backtracking for the lookahead); 0 where a byte it would have to
// classify is not ASCII (a non-ASCII character may be a letter, digit or white space), and PCRE2
// decides. In ASCII, \s is HT, LF, VT, FF, CR and space, \p{L} is A-Z a-z and \p{N} is 0-9,
// whether or not Unicode properties apply. The pattern matches at every position (each character
// is a letter, digit, space or other), so its matches tile the text.
size_t Gpt2AsciiMatch(std::string_view s, size_t pos) {
  enum : uint8_t { kOther, kLetter, kDigit, kSpace, kNonAscii };
  static const std::array<uint8_t, 256> cls = [] {
    std::array<uint8_t, 256> t{};
    for (int c = 0; c < 256; ++c) {
      t[static_cast<size_t>(c)] = c >= 0x80                                          ? kNonAscii
                                  : (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ? kLetter
                                  : c >= '0' && c <= '9'                             ? kDigit
                                  : (c >= 9 && c <= 13) || c == ' '                  ? kSpace
                                                                                     : kOther;
    }
    return t;
  }();
  const size_t n = s.size();
  auto at = [&](size_t i) { return cls[static_cast<unsigned char>(s[i])]; };
  if (s[pos] == '\'') {  // 's|'t|'re|'ve|'m|'ll|'d
    const std::string_view rest = s.substr(pos + 1);
    for (const std::string_view c : {"s", "t", "re", "ve", "m", "ll", "d"}) {
      if (rest.substr(0, c.size()) == c) return pos + 1 + c.size();
    }
  }
  // ` ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+`: one class's run, after an optional space.
  const size_t q = s[pos] == ' ' && pos + 1 < n ? pos + 1 : pos;
  const uint8_t c = at(q);
  if (c == kNonAscii) return 0;
  if (c != kSpace) {
    size_t e = q + 1;
    while (e < n && at(e) == c) ++e;
    return e < n && at(e) == kNonAscii ? 0 : e;
  }
  // `\s+(?!\S)|\s+`: a run of white space, less its last character where a non-space follows
  // and the run is longer than one.
  size_t e = pos + 1;
  while (e < n && at(e) == kSpace) ++e;
  if (e == n) return e;
  if (at(e) == kNonAscii) return 0;
  return e - pos >= 2 ? e - 1 : e;
}

class Regex {
 public:
  Regex(const std::string& pattern, bool literal, const Ctx& ctx, const std::string& key) {
    int err = 0;
    PCRE2_SIZE off = 0;
    // PCRE2_LITERAL admits no UCP (there are no classes in a literal).
    const uint32_t flags = PCRE2_UTF | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), flags, &err,
                          &off, nullptr);
    if (code_ == nullptr) {
      std::array<PCRE2_UCHAR, 256> msg{};
      pcre2_get_error_message(err, msg.data(), msg.size());
      ctx.Fail(key, fmt::format("regex {} does not compile at offset {}: {}", pattern, off,
                                reinterpret_cast<const char*>(msg.data())));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter on failure
    if (!literal && pattern == kGpt2Pattern) ascii_match_ = &Gpt2AsciiMatch;
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  /// Calls fn(begin, end) for each non-empty match in `s`, left to right.
  template <typename Fn>
  void ForEachMatch(std::string_view s, Fn&& fn) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    QTOOL_CHECK(md != nullptr, Error, "out of memory for regex match data");
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    size_t pos = 0;
    while (pos <= s.size()) {
      if (ascii_match_ != nullptr && pos < s.size()) {
        if (const size_t e = ascii_match_(s, pos); e > pos) {
          fn(pos, e);
          pos = e;
          continue;
        }
      }
      const int rc = pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc < 0) break;  // PCRE2_ERROR_NOMATCH, or a resource limit: no further match
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t b = ov[0], e = ov[1];
      if (e > b) {
        fn(b, e);
        pos = e;
      } else {
        // An empty match: step over one character.
        if (b >= s.size()) break;
        pos = b + CharLen(static_cast<unsigned char>(s[b]));
      }
    }
    pcre2_match_data_free(md);
  }

 private:
  pcre2_code* code_ = nullptr;
  // A hand-written matcher of this pattern on ASCII text (0: PCRE2 decides), or null.
  size_t (*ascii_match_)(std::string_view, size_t) = nullptr;
};

// A `pattern` object: {"String": "..."} (literal) or {"Regex": "..."}.
std::unique_ptr<Regex> PatternOf(const json& j, const Ctx& ctx, const std::string& key) {
  const json& p = ctx.At(j, key, "pattern");
  if (p.is_object() && p.contains("String") && p["String"].is_string()) {
    return std::make_unique<Regex>(p["String"].get<std::string>(), true, ctx, key + ".pattern");
  }
  if (p.is_object() && p.contains("Regex") && p["Regex"].is_string()) {
    return std::make_unique<Regex>(p["Regex"].get<std::string>(), false, ctx, key + ".pattern");
  }
  ctx.Fail(key + ".pattern", "must be {\"String\": ...} or {\"Regex\": ...}");
}

// ---------------------------------------------------------------------------------------------
// Normalizers: text -> text.

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void Apply(std::string& s) const = 0;
};

class SequenceNormalizer : public Normalizer {
 public:
  std::vector<std::unique_ptr<Normalizer>> parts;
  void Apply(std::string& s) const override {
    for (const auto& p : parts) p->Apply(s);
  }
};

// Unicode normalisation forms and case folding through utf8proc.
class Utf8procNormalizer : public Normalizer {
 public:
  explicit Utf8procNormalizer(int options) : options_(options) {}
  void Apply(std::string& s) const override {
    utf8proc_uint8_t* out = nullptr;
    const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                            static_cast<utf8proc_ssize_t>(s.size()), &out,
                                            static_cast<utf8proc_option_t>(options_));
    QTOOL_CHECK(n >= 0, FormatError, "text is not valid UTF-8 ({})", utf8proc_errmsg(n));
    s.assign(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
    std::free(out);
  }

 private:
  int options_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  void Apply(std::string& s) const override {
    std::string out;
    out.reserve(s.size());
    for (const int32_t c : CodePoints(s)) out += EncodeUtf8(utf8proc_tolower(c));
    s = std::move(out);
  }
};

// Removes combining marks (Unicode category Mn), as tokenizers' StripAccents does.
class StripAccentsNormalizer : public Normalizer {
 public:
  void Apply(std::string& s) const override {
    std::string out;
    for (const int32_t c : CodePoints(s)) {
      if (utf8proc_category(c) != UTF8PROC_CATEGORY_MN) out += EncodeUtf8(c);
    }
    s = std::move(out);
  }
};

class StripNormalizer : public Normalizer {
 public:
  bool left = true, right = true;
  void Apply(std::string& s) const override {
    std::vector<int32_t> cps = CodePoints(s);
    size_t b = 0, e = cps.size();
    while (left && b < e && IsWhitespace(cps[b])) ++b;
    while (right && e > b && IsWhitespace(cps[e - 1])) --e;
    std::string out;
    for (size_t i = b; i < e; ++i) out += EncodeUtf8(cps[i]);
    s = std::move(out);
  }
};

class ReplaceNormalizer : public Normalizer {
 public:
  std::unique_ptr<Regex> pattern;
  std::string content;
  void Apply(std::string& s) const override {
    std::string out;
    size_t last = 0;
    pattern->ForEachMatch(s, [&](size_t b, size_t e) {
      out.append(s, last, b - last);
      out += content;
      last = e;
    });
    out.append(s, last, std::string::npos);
    s = std::move(out);
  }
};

class PrependNormalizer : public Normalizer {
 public:
  std::string prefix;
  void Apply(std::string& s) const override {
    if (!s.empty()) s.insert(0, prefix);
  }
};

std::unique_ptr<Normalizer> ParseNormalizer(const json& j, const Ctx& ctx, const std::string& key) {
  const std::string type = ctx.Type(j, key);
  if (type == "Sequence") {
    auto n = std::make_unique<SequenceNormalizer>();
    const json& list = ctx.At(j, key, "normalizers");
    if (!list.is_array()) ctx.Fail(key + ".normalizers", "must be an array");
    for (size_t i = 0; i < list.size(); ++i) {
      n->parts.push_back(ParseNormalizer(list[i], ctx, fmt::format("{}.normalizers[{}]", key, i)));
    }
    return n;
  }
  if (type == "NFC")
    return std::make_unique<Utf8procNormalizer>(UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  if (type == "NFD") {
    return std::make_unique<Utf8procNormalizer>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE);
  }
  if (type == "NFKC") {
    return std::make_unique<Utf8procNormalizer>(UTF8PROC_STABLE | UTF8PROC_COMPOSE |
                                                UTF8PROC_COMPAT);
  }
  if (type == "NFKD") {
    return std::make_unique<Utf8procNormalizer>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE |
                                                UTF8PROC_COMPAT);
  }
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
  if (type == "Strip") {
    auto n = std::make_unique<StripNormalizer>();
    n->left = ctx.BoolOr(j, key, "strip_left", true);
    n->right = ctx.BoolOr(j, key, "strip_right", true);
    return n;
  }
  if (type == "Replace") {
    auto n = std::make_unique<ReplaceNormalizer>();
    n->pattern = PatternOf(j, ctx, key);
    n->content = ctx.Str(j, key, "content");
    return n;
  }
  if (type == "Prepend") {
    auto n = std::make_unique<PrependNormalizer>();
    n->prefix = ctx.Str(j, key, "prepend");
    return n;
  }
  ctx.Fail(key + ".type", fmt::format("normalizer \"{}\" is not implemented", type));
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers: pieces -> pieces. `first` marks the piece that starts at the beginning of the
// original text (Metaspace's prepend_scheme "first" looks at it).

struct Piece {
  std::string text;
  bool first = false;
};
using Pieces = std::vector<Piece>;

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void Apply(Pieces& pieces) const = 0;
};

enum class Behavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Splits each piece at the matches of `re` (tokenizers' NormalizedString::split).
void SplitPieces(Pieces& pieces, const Regex& re, Behavior behavior) {
  Pieces out;
  out.reserve(pieces.size() * 2);
  for (Piece& p : pieces) {
    // (begin, end, is_match) spans covering the piece.
    std::vector<std::tuple<size_t, size_t, bool>> spans;
    size_t last = 0;
    re.ForEachMatch(p.text, [&](size_t b, size_t e) {
      if (b > last) spans.emplace_back(last, b, false);
      spans.emplace_back(b, e, true);
      last = e;
    });
    if (last < p.text.size()) spans.emplace_back(last, p.text.size(), false);
    if (behavior == Behavior::kContiguous) {
      std::vector<std::tuple<size_t, size_t, bool>> merged;
      for (const auto& s : spans) {
        if (!merged.empty() && std::get<2>(merged.back()) && std::get<2>(s)) {
          std::get<1>(merged.back()) = std::get<1>(s);
        } else {
          merged.push_back(s);
        }
      }
      spans = std::move(merged);
    } else if (behavior == Behavior::kMergedWithPrevious) {
      std::vector<std::tuple<size_t, size_t, bool>> merged;
      for (const auto& s : spans) {
        if (!merged.empty() && std::get<2>(s) && !std::get<2>(merged.back())) {
          std::get<1>(merged.back()) = std::get<1>(s);
          std::get<2>(merged.back()) = false;
        } else {
          merged.emplace_back(std::get<0>(s), std::get<1>(s), false);
        }
      }
      spans = std::move(merged);
    } else if (behavior == Behavior::kMergedWithNext) {
      std::vector<std::tuple<size_t, size_t, bool>> merged;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (!merged.empty() && std::get<2>(*it) && !std::get<2>(merged.back())) {
          std::get<0>(merged.back()) = std::get<0>(*it);
        } else {
          merged.emplace_back(std::get<0>(*it), std::get<1>(*it), false);
        }
      }
      std::reverse(merged.begin(), merged.end());
      spans = std::move(merged);
    }
    for (const auto& [b, e, match] : spans) {
      if (behavior == Behavior::kRemoved && match) continue;
      out.push_back({p.text.substr(b, e - b), p.first && b == 0});
    }
  }
  pieces = std::move(out);
}

class SequencePreTokenizer : public PreTokenizer {
 public:
  std::vector<std::unique_ptr<PreTokenizer>> parts;
  void Apply(Pieces& pieces) const override {
    for (const auto& p : parts) p->Apply(pieces);
  }
};

// GPT-2's byte-to-character map: printable bytes stand for themselves, the others for U+0100 on.
const std::array<std::string, 256>& ByteChars() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      t[static_cast<size_t>(b)] = EncodeUtf8(printable ? b : next++);
    }
    return t;
  }();
  return table;
}

// The inverse map: code point -> byte, -1 for a character outside the map.
int ByteOfChar(int32_t cp) {
  static const std::unordered_map<int32_t, int> inv = [] {
    std::unordered_map<int32_t, int> m;
    for (int b = 0; b < 256; ++b) m[CodePoints(ByteChars()[static_cast<size_t>(b)])[0]] = b;
    return m;
  }();
  const auto it = inv.find(cp);
  return it == inv.end() ? -1 : it->second;
}

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  bool add_prefix_space = false;
  std::unique_ptr<Regex> regex;  // null: use_regex false
  void Apply(Pieces& pieces) const override {
    if (add_prefix_space) {
      for (Piece& p : pieces) {
        if (!p.text.empty() && p.text[0] != ' ') p.text.insert(0, " ");
      }
    }
    if (regex) SplitPieces(pieces, *regex, Behavior::kIsolated);
    const auto& map = ByteChars();
    for (Piece& p : pieces) {
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (const char c : p.text) mapped += map[static_cast<unsigned char>(c)];
      p.text = std::move(mapped);
    }
  }
};

class SplitPreTokenizer : public PreTokenizer {
 public:
  std::unique_ptr<Regex> regex;
  Behavior behavior = Behavior::kIsolated;
  void Apply(Pieces& pieces) const override { SplitPieces(pieces, *regex, behavior); }
};

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  std::string replacement = "\xE2\x96\x81";  // U+2581
  enum class Prepend { kAlways, kFirst, kNever } prepend = Prepend::kAlways;
  bool split = true;
  std::unique_ptr<Regex> replacement_re;
  void Apply(Pieces& pieces) const override {
    for (Piece& p : pieces) {
      std::string out;
      for (const char c : p.text) {
        if (c == ' ') {
          out += replacement;
        } else {
          out += c;
        }
      }
      const bool starts = out.compare(0, replacement.size(), replacement) == 0;
      if (!starts && (prepend == Prepend::kAlways || (prepend == Prepend::kFirst && p.first))) {
        out.insert(0, replacement);
      }
      p.text = std::move(out);
    }
    if (split) SplitPieces(pieces, *replacement_re, Behavior::kMergedWithNext);
  }
};

std::unique_ptr<PreTokenizer> ParsePreTokenizer(const json& j, const Ctx& ctx,
                                                const std::string& key);

Behavior ParseBehavior(const json& j, const Ctx& ctx, const std::string& key) {
  const std::string b = ctx.Str(j, key, "behavior");
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  ctx.Fail(key + ".behavior", fmt::format("\"{}\" is not implemented", b));
}

std::unique_ptr<PreTokenizer> ParsePreTokenizer(const json& j, const Ctx& ctx,
                                                const std::string& key) {
  const std::string type = ctx.Type(j, key);
  if (type == "Sequence") {
    auto p = std::make_unique<SequencePreTokenizer>();
    const json& list = ctx.At(j, key, "pretokenizers");
    if (!list.is_array()) ctx.Fail(key + ".pretokenizers", "must be an array");
    for (size_t i = 0; i < list.size(); ++i) {
      p->parts.push_back(
          ParsePreTokenizer(list[i], ctx, fmt::format("{}.pretokenizers[{}]", key, i)));
    }
    return p;
  }
  if (type == "ByteLevel") {
    auto p = std::make_unique<ByteLevelPreTokenizer>();
    p->add_prefix_space = ctx.BoolOr(j, key, "add_prefix_space", true);
    if (ctx.BoolOr(j, key, "use_regex", true)) {
      p->regex = std::make_unique<Regex>(kGpt2Pattern, false, ctx, key);
    }
    return p;
  }
  if (type == "Split") {
    auto p = std::make_unique<SplitPreTokenizer>();
    p->regex = PatternOf(j, ctx, key);
    p->behavior = ParseBehavior(j, ctx, key);
    if (ctx.BoolOr(j, key, "invert", false)) ctx.Fail(key + ".invert", "true is not implemented");
    return p;
  }
  if (type == "Metaspace") {
    auto p = std::make_unique<MetaspacePreTokenizer>();
    p->replacement = ctx.StrOr(j, key, "replacement", p->replacement);
    if (CodePoints(p->replacement).size() != 1) {
      ctx.Fail(key + ".replacement", "must be one character");
    }
    p->split = ctx.BoolOr(j, key, "split", true);
    // Older files give add_prefix_space instead of prepend_scheme.
    const std::string scheme =
        ctx.StrOr(j, key, "prepend_scheme",
                  ctx.BoolOr(j, key, "add_prefix_space", true) ? "always" : "never");
    if (scheme == "always") {
      p->prepend = MetaspacePreTokenizer::Prepend::kAlways;
    } else if (scheme == "first") {
      p->prepend = MetaspacePreTokenizer::Prepend::kFirst;
    } else if (scheme == "never") {
      p->prepend = MetaspacePreTokenizer::Prepend::kNever;
    } else {
      ctx.Fail(key + ".prepend_scheme", fmt::format("\"{}\" is not implemented", scheme));
    }
    p->replacement_re = std::make_unique<Regex>(p->replacement, true, ctx, key);
    return p;
  }
  if (type == "Digits") {
    auto p = std::make_unique<SplitPreTokenizer>();
    const bool individual = ctx.BoolOr(j, key, "individual_digits", false);
    p->regex = std::make_unique<Regex>(individual ? "[0-9]" : "[0-9]+", false, ctx, key);
    return p;
  }
  if (type == "Whitespace") {
    // Keeps the matches of \w+|[^\w\s]+ and drops the rest: whitespace runs are removed, then
    // word characters are isolated from the others.
    auto spaces = std::make_unique<SplitPreTokenizer>();
    spaces->regex = std::make_unique<Regex>(R"(\s+)", false, ctx, key);
    spaces->behavior = Behavior::kRemoved;
    auto words = std::make_unique<SplitPreTokenizer>();
    words->regex = std::make_unique<Regex>(R"(\w+)", false, ctx, key);
    auto seq = std::make_unique<SequencePreTokenizer>();
    seq->parts.push_back(std::move(spaces));
    seq->parts.push_back(std::move(words));
    return seq;
  }
  if (type == "WhitespaceSplit") {
    auto p = std::make_unique<SplitPreTokenizer>();
    p->regex = std::make_unique<Regex>(R"(\s+)", false, ctx, key);
    p->behavior = Behavior::kRemoved;
    return p;
  }
  ctx.Fail(key + ".type", fmt::format("pre-tokenizer \"{}\" is not implemented", type));
}

// ---------------------------------------------------------------------------------------------
// Models: one pre-tokenized word -> ids.

using Vocab = std::unordered_map<std::string, int32_t>;

class Model {
 public:
  virtual ~Model() = default;
  virtual void Tokenize(std::string_view word, std::vector<int32_t>& out) const = 0;
  std::vector<std::string> id_to_token;
  Vocab vocab;
};

std::string ByteToken(unsigned char b) { return fmt::format("<0x{:02X}>", b); }

// BPE as tokenizers' Word::merge_all: the pair of lowest merge rank (then leftmost) is merged
// first, through a priority queue over a linked list of symbols: O(n log n) per word.
// Merge rules: (left id, right id) -> (rank, merged id) in an open-addressing table (linear
// probing, power-of-two size, at most half full), the hot lookup of BPE.
class MergeTable {
 public:
  static uint64_t Key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void Build(const std::vector<std::pair<uint64_t, std::pair<int32_t, int32_t>>>& entries) {
    int bits = 4;
    while ((size_t{1} << bits) < 2 * entries.size() + 2) ++bits;
    shift_ = 64 - bits;
    slots_.assign(size_t{1} << bits, Slot{kEmpty, {0, 0}});
    for (const auto& [key, value] : entries) {
      size_t i = Index(key);
      while (slots_[i].key != kEmpty && slots_[i].key != key) i = (i + 1) & (slots_.size() - 1);
      slots_[i] = {key, value};  // a later duplicate replaces the earlier rule
    }
  }
  /// (rank, merged id), or nullptr.
  const std::pair<int32_t, int32_t>* Find(int32_t a, int32_t b) const {
    const uint64_t key = Key(a, b);
    for (size_t i = Index(key);; i = (i + 1) & (slots_.size() - 1)) {
      if (slots_[i].key == key) return &slots_[i].value;
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  struct Slot {
    uint64_t key;
    std::pair<int32_t, int32_t> value;
  };
  size_t Index(uint64_t key) const {
    return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_);
  }
  std::vector<Slot> slots_ = std::vector<Slot>(1, Slot{kEmpty, {0, 0}});
  int shift_ = 64;
};

class BpeModel : public Model {
 public:
  MergeTable merges;
  // Ids of single characters below U+0800 (the byte-level alphabet among them), -1 where absent;
  // used when there is no subword prefix or suffix.
  std::vector<int32_t> char_ids;
  std::optional<int32_t> unk;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  std::string prefix, suffix;           // continuing_subword_prefix, end_of_word_suffix
  std::array<int32_t, 256> byte_ids{};  // <0xXX> tokens, -1 where absent

  void Tokenize(std::string_view w, std::vector<int32_t>& out) const override {
    if (w.empty()) return;
    if (ignore_merges) {
      const auto it = vocab.find(std::string(w));
      if (it != vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    struct Symbol {
      int32_t id;
      int32_t prev, next;
    };
    std::vector<Symbol> sym;
    sym.reserve(w.size());
    auto add = [&](int32_t id) {
      const auto n = static_cast<int32_t>(sym.size());
      sym.push_back({id, n - 1, n + 1});
    };
    std::optional<int32_t> pending_unk;
    std::string s;
    for (size_t i = 0; i < w.size();) {
      const size_t n = std::min(CharLen(static_cast<unsigned char>(w[i])), w.size() - i);
      int32_t id = -1;
      const auto c0 = static_cast<unsigned char>(w[i]);
      if (!char_ids.empty() && n <= 2 && (n == 1 || c0 < 0xE0)) {
        const int32_t cp =
            n == 1 ? c0 : ((c0 & 0x1F) << 6) | (static_cast<unsigned char>(w[i + 1]) & 0x3F);
        id = char_ids[static_cast<size_t>(cp)];
        s.assign(w.substr(i, n));
      } else {
        s.assign(i > 0 ? prefix : std::string());
        s.append(w.substr(i, n));
        if (i + n == w.size()) s += suffix;
        const auto it = vocab.find(s);
        if (it != vocab.end()) id = it->second;
      }
      i += n;
      if (id >= 0) {
        if (pending_unk) add(*std::exchange(pending_unk, std::nullopt));
        add(id);
        continue;
      }
      if (byte_fallback && std::all_of(s.begin(), s.end(), [&](char c) {
            return byte_ids[static_cast<unsigned char>(c)] >= 0;
          })) {
        for (const char c : s) add(byte_ids[static_cast<unsigned char>(c)]);
        continue;
      }
      if (unk) {
        if (pending_unk && !fuse_unk) add(*pending_unk);
        pending_unk = *unk;
      }
    }
    if (pending_unk) add(*pending_unk);
    if (sym.empty()) return;
    sym.back().next = -1;

    struct Merge {
      int32_t rank, pos, new_id;
      bool operator>(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Merge, std::vector<Merge>, std::greater<>> queue;
    auto push = [&](int32_t pos) {
      const int32_t next = sym[static_cast<size_t>(pos)].next;
      if (next < 0) return;
      const auto* m =
          merges.Find(sym[static_cast<size_t>(pos)].id, sym[static_cast<size_t>(next)].id);
      if (m != nullptr) queue.push({m->first, pos, m->second});
    };
    for (int32_t i = 0; i + 1 < static_cast<int32_t>(sym.size()); ++i) push(i);
    while (!queue.empty()) {
      const Merge top = queue.top();
      queue.pop();
      Symbol& left = sym[static_cast<size_t>(top.pos)];
      if (left.id < 0 || left.next < 0) continue;
      Symbol& right = sym[static_cast<size_t>(left.next)];
      const auto* m = merges.Find(left.id, right.id);
      if (m == nullptr || m->second != top.new_id) continue;  // stale entry
      left.id = top.new_id;
      right.id = -1;  // removed
      left.next = right.next;
      if (left.next >= 0) sym[static_cast<size_t>(left.next)].prev = top.pos;
      if (left.prev >= 0) push(left.prev);
      push(top.pos);
    }
    for (const Symbol& x : sym) {
      if (x.id >= 0) out.push_back(x.id);
    }
  }
};

// Unigram: the segmentation of highest total log-probability (Viterbi over a trie of pieces), as
// tokenizers' Unigram::encode_optimized; an unknown character costs min score - 10.
class UnigramModel : public Model {
 public:
  std::vector<double> scores;
  int32_t unk = -1;
  bool byte_fallback = false;
  std::array<int32_t, 256> byte_ids{};
  size_t max_piece = 0;
  double unk_score = 0;

  void Tokenize(std::string_view w, std::vector<int32_t>& out) const override {
    if (w.empty()) return;
    struct Best {
      double score = 0;
      int32_t id = -1;
      int64_t start = -1;
    };
    std::vector<Best> best(w.size() + 1);
    best[0].start = 0;
    std::string key;
    for (size_t at = 0; at < w.size();) {
      const size_t mblen = std::min(CharLen(static_cast<unsigned char>(w[at])), w.size() - at);
      if (best[at].start >= 0 || at == 0) {
        const double here = best[at].score;
        bool single = false;
        for (size_t len = 1; len <= std::min(max_piece, w.size() - at); ++len) {
          key.assign(w.substr(at, len));
          const auto it = vocab.find(key);
          if (it == vocab.end()) continue;
          const double cand = here + scores[static_cast<size_t>(it->second)];
          Best& b = best[at + len];
          if (b.start < 0 || cand > b.score) b = {cand, it->second, static_cast<int64_t>(at)};
          if (len == mblen) single = true;
        }
        if (!single) {
          const double cand = here + unk_score;
          Best& b = best[at + mblen];
          if (b.start < 0 || cand > b.score) b = {cand, unk, static_cast<int64_t>(at)};
        }
      }
      at += mblen;
    }
    // Back from the end; consecutive unknown pieces are fused.
    std::vector<std::pair<size_t, size_t>> spans;  // (start, end) in reverse
    std::vector<int32_t> ids;
    for (size_t end = w.size(); end > 0;) {
      const Best& b = best[end];
      const auto start = static_cast<size_t>(b.start);
      if (b.id == unk && !ids.empty() && ids.back() == unk) {
        spans.back().first = start;
      } else {
        ids.push_back(b.id);
        spans.emplace_back(start, end);
      }
      end = start;
    }
    for (size_t i = ids.size(); i-- > 0;) {
      if (ids[i] == unk && byte_fallback) {
        const std::string_view piece = w.substr(spans[i].first, spans[i].second - spans[i].first);
        if (std::all_of(piece.begin(), piece.end(),
                        [&](char c) { return byte_ids[static_cast<unsigned char>(c)] >= 0; })) {
          for (const char c : piece) out.push_back(byte_ids[static_cast<unsigned char>(c)]);
          continue;
        }
      }
      QTOOL_CHECK(ids[i] >= 0, FormatError,
                  "tokenizer: a character is not in the Unigram vocabulary and there is no unk_id");
      out.push_back(ids[i]);
    }
  }
};

void FillByteIds(const Vocab& vocab, std::array<int32_t, 256>& ids) {
  for (int b = 0; b < 256; ++b) {
    const auto it = vocab.find(ByteToken(static_cast<unsigned char>(b)));
    ids[static_cast<size_t>(b)] = it == vocab.end() ? -1 : it->second;
  }
}

std::unique_ptr<Model> ParseBpe(const json& j, const Ctx& ctx, const std::string& key) {
  auto m = std::make_unique<BpeModel>();
  const json& vocab = ctx.At(j, key, "vocab");
  if (!vocab.is_object()) ctx.Fail(key + ".vocab", "must be an object of token: id");
  for (const auto& [tok, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<int64_t>() >= std::numeric_limits<int32_t>::max()) {
      ctx.Fail(key + ".vocab", fmt::format("\"{}\" has id {}, not a valid id", tok, id.dump()));
    }
    m->vocab[tok] = id.get<int32_t>();
  }
  if (j.contains("dropout") && !j["dropout"].is_null() && j["dropout"] != 0.0) {
    ctx.Fail(key + ".dropout", "BPE dropout is not implemented (it is random)");
  }
  m->prefix = ctx.StrOr(j, key, "continuing_subword_prefix", "");
  m->suffix = ctx.StrOr(j, key, "end_of_word_suffix", "");
  m->fuse_unk = ctx.BoolOr(j, key, "fuse_unk", false);
  m->byte_fallback = ctx.BoolOr(j, key, "byte_fallback", false);
  m->ignore_merges = ctx.BoolOr(j, key, "ignore_merges", false);
  if (const std::string u = ctx.StrOr(j, key, "unk_token", ""); !u.empty()) {
    const auto it = m->vocab.find(u);
    if (it == m->vocab.end()) ctx.Fail(key + ".unk_token", "\"" + u + "\" is not in the vocab");
    m->unk = it->second;
  }
  FillByteIds(m->vocab, m->byte_ids);
  const json& merges = ctx.At(j, key, "merges");
  if (!merges.is_array()) ctx.Fail(key + ".merges", "must be an array");
  auto id_of = [&](const std::string& t, size_t rank) {
    const auto it = m->vocab.find(t);
    if (it == m->vocab.end()) {
      ctx.Fail(fmt::format("{}.merges[{}]", key, rank), "\"" + t + "\" is not in the vocab");
    }
    return it->second;
  };
  std::vector<std::pair<uint64_t, std::pair<int32_t, int32_t>>> entries;
  entries.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    const json& e = merges[r];
    std::string a, b;
    if (e.is_string()) {
      // "a b": the two parts are separated by the first space (tokens hold no plain space).
      const std::string s = e.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos) ctx.Fail(fmt::format("{}.merges[{}]", key, r), "no space");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      ctx.Fail(fmt::format("{}.merges[{}]", key, r), "must be \"a b\" or [a, b]");
    }
    const size_t cut = !m->prefix.empty() && b.rfind(m->prefix, 0) == 0 ? m->prefix.size() : 0;
    const int32_t ia = id_of(a, r), ib = id_of(b, r), merged = id_of(a + b.substr(cut), r);
    entries.emplace_back(MergeTable::Key(ia, ib), std::make_pair(static_cast<int32_t>(r), merged));
  }
  m->merges.Build(entries);
  if (m->prefix.empty() && m->suffix.empty()) {
    m->char_ids.assign(0x800, -1);
    for (int32_t cp = 0; cp < 0x800; ++cp) {
      const auto it = m->vocab.find(EncodeUtf8(cp));
      if (it != m->vocab.end()) m->char_ids[static_cast<size_t>(cp)] = it->second;
    }
  }
  return m;
}

std::unique_ptr<Model> ParseUnigram(const json& j, const Ctx& ctx, const std::string& key) {
  auto m = std::make_unique<UnigramModel>();
  const json& vocab = ctx.At(j, key, "vocab");
  if (!vocab.is_array()) ctx.Fail(key + ".vocab", "must be an array of [piece, score]");
  double min_score = std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < vocab.size(); ++i) {
    const json& e = vocab[i];
    if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number()) {
      ctx.Fail(fmt::format("{}.vocab[{}]", key, i), "must be [piece, score]");
    }
    const std::string piece = e[0].get<std::string>();
    m->vocab.emplace(piece, static_cast<int32_t>(i));
    m->scores.push_back(e[1].get<double>());
    m->max_piece = std::max(m->max_piece, piece.size());
    min_score = std::min(min_score, m->scores.back());
  }
  m->unk_score = min_score - 10.0;
  const int64_t unk = ctx.IntOr(j, key, "unk_id", -1);
  if (unk >= static_cast<int64_t>(vocab.size())) ctx.Fail(key + ".unk_id", "outside the vocab");
  m->unk = static_cast<int32_t>(unk);
  m->byte_fallback = ctx.BoolOr(j, key, "byte_fallback", false);
  FillByteIds(m->vocab, m->byte_ids);
  return m;
}

// ---------------------------------------------------------------------------------------------
// Decoders: token strings -> token strings; the result is their concatenation.

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void Apply(std::vector<std::string>& tokens) const = 0;
};

class SequenceDecoder : public Decoder {
 public:
  std::vector<std::unique_ptr<Decoder>> parts;
  void Apply(std::vector<std::string>& t) const override {
    for (const auto& p : parts) p->Apply(t);
  }
};

// Invalid UTF-8 becomes U+FFFD per maximal invalid subsequence (Rust's from_utf8_lossy).
std::string LossyUtf8(std::string_view bytes) {
  std::string out;
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(bytes.data());
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(bytes.size());
  while (left > 0) {
    utf8proc_int32_t cp = 0;
    const utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
    if (n > 0) {
      out.append(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
      p += n;
      left -= n;
      continue;
    }
    // Skip the longest prefix of a valid sequence (at least one byte).
    size_t skip = 1;
    const unsigned char c = p[0];
    const size_t want = CharLen(c);
    while (want > 1 && skip < want && static_cast<utf8proc_ssize_t>(skip) < left &&
           (p[skip] & 0xC0) == 0x80) {
      ++skip;
    }
    out += "\xEF\xBF\xBD";
    p += skip;
    left -= static_cast<utf8proc_ssize_t>(skip);
  }
  return out;
}

class ByteLevelDecoder : public Decoder {
 public:
  void Apply(std::vector<std::string>& t) const override {
    std::string bytes;
    for (const std::string& s : t) {
      for (const int32_t cp : CodePoints(s)) {
        const int b = ByteOfChar(cp);
        if (b >= 0) {
          bytes += static_cast<char>(b);
        } else {
          bytes += EncodeUtf8(cp);
        }
      }
    }
    t = {LossyUtf8(bytes)};
  }
};

class MetaspaceDecoder : public Decoder {
 public:
  std::string replacement;
  bool strip_first = true;  // prepend_scheme other than "never"
  void Apply(std::vector<std::string>& t) const override {
    for (size_t i = 0; i < t.size(); ++i) {
      std::string out;
      for (size_t k = 0; k < t[i].size();) {
        if (t[i].compare(k, replacement.size(), replacement) == 0) {
          out += ' ';
          k += replacement.size();
        } else {
          out += t[i][k++];
        }
      }
      if (i == 0 && strip_first && !out.empty() && out[0] == ' ') out.erase(0, 1);
      t[i] = std::move(out);
    }
  }
};

class ByteFallbackDecoder : public Decoder {
 public:
  void Apply(std::vector<std::string>& t) const override {
    std::vector<std::string> out;
    std::string bytes;
    size_t nbytes = 0;
    // Consecutive byte tokens form a string when they are valid UTF-8, else one U+FFFD each.
    auto flush = [&] {
      if (nbytes == 0) return;
      if (ValidUtf8(bytes)) {
        out.push_back(bytes);
      } else {
        for (size_t i = 0; i < nbytes; ++i) out.push_back("\xEF\xBF\xBD");
      }
      bytes.clear();
      nbytes = 0;
    };
    for (const std::string& s : t) {
      if (s.size() == 6 && s.rfind("<0x", 0) == 0 && s[5] == '>' &&
          std::isxdigit(static_cast<unsigned char>(s[3])) &&
          std::isxdigit(static_cast<unsigned char>(s[4]))) {
        bytes += static_cast<char>(std::stoi(s.substr(3, 2), nullptr, 16));
        ++nbytes;
        continue;
      }
      flush();
      out.push_back(s);
    }
    flush();
    t = std::move(out);
  }
};

class FuseDecoder : public Decoder {
 public:
  void Apply(std::vector<std::string>& t) const override {
    std::string all;
    for (const auto& s : t) all += s;
    t = {all};
  }
};

class StripDecoder : public Decoder {
 public:
  std::string content;
  size_t start = 0, stop = 0;
  void Apply(std::vector<std::string>& t) const override {
    for (std::string& s : t) {
      for (size_t i = 0; i < start && s.rfind(content, 0) == 0; ++i) s.erase(0, content.size());
      for (size_t i = 0; i < stop && s.size() >= content.size() &&
                         s.compare(s.size() - content.size(), content.size(), content) == 0;
           ++i) {
        s.erase(s.size() - content.size());
      }
    }
  }
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceNormalizer replace;
  void Apply(std::vector<std::string>& t) const override {
    for (std::string& s : t) replace.Apply(s);
  }
};

std::unique_ptr<Decoder> ParseDecoder(const json& j, const Ctx& ctx, const std::string& key) {
  const std::string type = ctx.Type(j, key);
  if (type == "Sequence") {
    auto d = std::make_unique<SequenceDecoder>();
    const json& list = ctx.At(j, key, "decoders");
    if (!list.is_array()) ctx.Fail(key + ".decoders", "must be an array");
    for (size_t i = 0; i < list.size(); ++i) {
      d->parts.push_back(ParseDecoder(list[i], ctx, fmt::format("{}.decoders[{}]", key, i)));
    }
    return d;
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    auto d = std::make_unique<MetaspaceDecoder>();
    d->replacement = ctx.StrOr(j, key, "replacement", "\xE2\x96\x81");
    const std::string scheme =
        ctx.StrOr(j, key, "prepend_scheme",
                  ctx.BoolOr(j, key, "add_prefix_space", true) ? "always" : "never");
    d->strip_first = scheme != "never";
    return d;
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    auto d = std::make_unique<StripDecoder>();
    d->content = ctx.Str(j, key, "content");
    d->start = static_cast<size_t>(ctx.IntOr(j, key, "start", 0));
    d->stop = static_cast<size_t>(ctx.IntOr(j, key, "stop", 0));
    return d;
  }
  if (type == "Replace") {
    auto d = std::make_unique<ReplaceDecoder>();
    d->replace.pattern = PatternOf(j, ctx, key);
    d->replace.content = ctx.Str(j, key, "content");
    return d;
  }
  ctx.Fail(key + ".type", fmt::format("decoder \"{}\" is not implemented", type));
}

// ---------------------------------------------------------------------------------------------
// Added tokens, matched in the text before the model (leftmost, then longest).

struct AddedToken {
  std::string content;
  std::string match;  // what is matched: the content, normalised when `normalized`
  int32_t id;
  bool special, normalized, lstrip, rstrip, single_word;
};

bool IsWordChar(int32_t c) {
  const auto cat = utf8proc_category(c);
  return c == '_' || (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO) ||
         (cat >= UTF8PROC_CATEGORY_MN && cat <= UTF8PROC_CATEGORY_ME);
}

class AddedMatcher {
 public:
  std::vector<const AddedToken*> tokens;
  std::array<bool, 256> first_byte{};

  void Add(const AddedToken* t) {
    tokens.push_back(t);
    if (!t->match.empty()) first_byte[static_cast<unsigned char>(t->match[0])] = true;
  }

  // Splits `text` into (text, -1) and (token content, id) parts.
  std::vector<std::pair<std::string, int32_t>> Split(std::string text) const {
    std::vector<std::pair<std::string, int32_t>> out;
    size_t last = 0;
    for (size_t i = tokens.empty() ? text.size() : 0; i < text.size();) {
      if (!first_byte[static_cast<unsigned char>(text[i])]) {
        ++i;
        continue;
      }
      const AddedToken* best = nullptr;
      for (const AddedToken* t : tokens) {
        if (t->match.empty() || text.compare(i, t->match.size(), t->match) != 0) continue;
        if (t->single_word && !SingleWord(text, i, i + t->match.size())) continue;
        if (best == nullptr || t->match.size() > best->match.size()) best = t;
      }
      if (best == nullptr) {
        ++i;
        continue;
      }
      size_t b = i, e = i + best->match.size();
      if (best->lstrip) {
        while (b > last && IsWhitespace(static_cast<unsigned char>(text[b - 1]))) --b;
      }
      if (best->rstrip) {
        while (e < text.size() && IsWhitespace(static_cast<unsigned char>(text[e]))) ++e;
      }
      if (b > last) out.emplace_back(text.substr(last, b - last), -1);
      out.emplace_back(best->content, best->id);
      last = e;
      i = e;
    }
    if (last == 0 && !text.empty()) {
      out.emplace_back(std::move(text), -1);  // no added token: the text as it is
    } else if (last < text.size()) {
      out.emplace_back(text.substr(last), -1);
    }
    return out;
  }

 private:
  static bool SingleWord(const std::string& text, size_t b, size_t e) {
    if (b > 0) {
      size_t p = b - 1;
      while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
      const std::vector<int32_t> c = CodePoints(std::string_view(text).substr(p, b - p));
      if (!c.empty() && IsWordChar(c[0])) return false;
    }
    if (e < text.size()) {
      const size_t n = CharLen(static_cast<unsigned char>(text[e]));
      const std::vector<int32_t> c = CodePoints(std::string_view(text).substr(e, n));
      if (!c.empty() && IsWordChar(c[0])) return false;
    }
    return true;
  }
};

// ---------------------------------------------------------------------------------------------

// Words already tokenised (a text has few distinct words): word -> span of `ids`. Looked up by
// string_view without a copy.
struct WordCache {
  // Words are short: eight bytes at a time, each folded in by xor-shift-multiply.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const {
      uint64_t h = s.size() * 0x9E3779B97F4A7C15ull;
      size_t i = 0;
      for (; i + 8 <= s.size(); i += 8) {
        uint64_t v;
        std::memcpy(&v, s.data() + i, 8);
        h = Mix(h ^ v);
      }
      uint64_t v = 0;
      std::memcpy(&v, s.data() + i, s.size() - i);
      return static_cast<size_t>(Mix(h ^ v));
    }
    static uint64_t Mix(uint64_t x) {
      x = (x ^ (x >> 32)) * 0xD6E8FEB86659FD93ull;
      return x ^ (x >> 32);
    }
  };
  std::unordered_map<std::string, std::pair<uint32_t, uint32_t>, Hash, std::equal_to<>> spans;
  std::vector<int32_t> ids;
  std::string mapped;  // scratch: a word in the byte-level alphabet
};

class JsonTokenizer : public Backend {
 public:
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<Model> model;
  std::unique_ptr<Decoder> decoder;
  std::vector<AddedToken> added;
  AddedMatcher raw_added, normalized_added;
  std::unordered_map<int32_t, const AddedToken*> added_by_id;
  std::unordered_map<std::string, int32_t> added_by_content;
  int64_t size = 0;

  // Byte-level pre-tokenisation without a general pipeline: the pre-tokenizer is ByteLevel with
  // its regex, or a Split (Isolated) followed by ByteLevel without one. Words are then cut from
  // the text in place and cached by their raw bytes (the byte-to-character map is a bijection).
  const Regex* byte_level_split = nullptr;
  bool byte_level_prefix_space = false;

  void FindByteLevelFastPath() {
    if (const auto* b = dynamic_cast<const ByteLevelPreTokenizer*>(pre_tokenizer.get());
        b != nullptr && b->regex) {
      byte_level_split = b->regex.get();
      byte_level_prefix_space = b->add_prefix_space;
    }
    if (const auto* seq = dynamic_cast<const SequencePreTokenizer*>(pre_tokenizer.get());
        seq != nullptr && seq->parts.size() == 2) {
      const auto* split = dynamic_cast<const SplitPreTokenizer*>(seq->parts[0].get());
      const auto* b = dynamic_cast<const ByteLevelPreTokenizer*>(seq->parts[1].get());
      if (split != nullptr && split->behavior == Behavior::kIsolated && b != nullptr && !b->regex &&
          !b->add_prefix_space) {
        byte_level_split = split->regex.get();
      }
    }
  }

  // Words seen by earlier calls, kept across calls (cleared when it grows past kMaxCachedWords);
  // one Encode at a time uses it.
  static constexpr size_t kMaxCachedWords = size_t{1} << 18;
  mutable std::mutex cache_mutex;
  mutable WordCache word_cache;

  std::vector<int32_t> Encode(std::string_view text) const override {
    QTOOL_CHECK(ValidUtf8(text), FormatError, "text is not valid UTF-8");
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3);  // English runs at about 4.5 bytes per token
    const std::lock_guard<std::mutex> lock(cache_mutex);
    WordCache& cache = word_cache;
    if (cache.spans.size() > kMaxCachedWords) {
      cache.spans.clear();
      cache.ids.clear();
    }
    bool first = true;
    for (auto& [part, id] : raw_added.Split(std::string(text))) {
      if (id >= 0) {
        ids.push_back(id);
        first = false;
        continue;
      }
      std::string s = std::move(part);
      if (normalizer) normalizer->Apply(s);
      for (auto& [sub, sub_id] : normalized_added.Split(std::move(s))) {
        if (sub_id >= 0) {
          ids.push_back(sub_id);
          first = false;
          continue;
        }
        if (byte_level_split != nullptr) {
          if (byte_level_prefix_space && !sub.empty() && sub[0] != ' ') sub.insert(0, " ");
          // Isolated: the matches and the text between them are words.
          const std::string_view v = sub;
          size_t last = 0;
          byte_level_split->ForEachMatch(v, [&](size_t b, size_t e) {
            if (b > last) EncodeWord(v.substr(last, b - last), true, cache, ids);
            EncodeWord(v.substr(b, e - b), true, cache, ids);
            last = e;
          });
          if (last < v.size()) EncodeWord(v.substr(last), true, cache, ids);
          first = false;
          continue;
        }
        Pieces pieces = {{std::move(sub), first}};
        first = false;
        if (pre_tokenizer) pre_tokenizer->Apply(pieces);
        for (const Piece& p : pieces) EncodeWord(p.text, false, cache, ids);
      }
    }
    return ids;
  }

  std::string Decode(const std::vector<int32_t>& ids, bool skip_special) const override {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (const int32_t id : ids) {
      const auto it = added_by_id.find(id);
      if (it != added_by_id.end()) {
        if (!(skip_special && it->second->special)) tokens.push_back(it->second->content);
        continue;
      }
      QTOOL_CHECK(id >= 0 && static_cast<size_t>(id) < model->id_to_token.size() &&
                      !model->id_to_token[static_cast<size_t>(id)].empty(),
                  OptionError, "token id {} is not in the tokenizer's vocabulary", id);
      tokens.push_back(model->id_to_token[static_cast<size_t>(id)]);
    }
    if (!decoder) {
      std::string out;
      for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
      return out;
    }
    decoder->Apply(tokens);
    std::string out;
    for (const auto& t : tokens) out += t;
    return out;
  }

  int64_t vocab_size() const override { return size; }

  // Appends the ids of one pre-tokenized word; `raw` words are mapped to the byte-level alphabet
  // first. Words longer than 64 bytes are not cached.
  void EncodeWord(std::string_view word, bool raw, WordCache& cache,
                  std::vector<int32_t>& ids) const {
    if (word.empty()) return;
    const auto it = word.size() <= 64 ? cache.spans.find(word) : cache.spans.end();
    if (it != cache.spans.end()) {
      ids.insert(ids.end(), cache.ids.begin() + it->second.first,
                 cache.ids.begin() + it->second.second);
      return;
    }
    std::string_view w = word;
    if (raw) {
      const auto& map = ByteChars();
      cache.mapped.clear();
      for (const char c : word) cache.mapped += map[static_cast<unsigned char>(c)];
      w = cache.mapped;
    }
    if (word.size() > 64) {
      model->Tokenize(w, ids);
      return;
    }
    const auto b = static_cast<uint32_t>(cache.ids.size());
    model->Tokenize(w, cache.ids);
    cache.spans.emplace(std::string(word),
                        std::make_pair(b, static_cast<uint32_t>(cache.ids.size())));
    ids.insert(ids.end(), cache.ids.begin() + b, cache.ids.end());
  }

  int32_t TokenId(std::string_view token) const override {
    const std::string t(token);
    if (const auto it = added_by_content.find(t); it != added_by_content.end()) return it->second;
    if (const auto it = model->vocab.find(t); it != model->vocab.end()) return it->second;
    return -1;
  }
};

// TemplateProcessing's "single" template: the special tokens around sequence A.
void ParsePostProcessor(const json& j, const Ctx& ctx, const std::string& key,
                        const JsonTokenizer& tok, Backend& out) {
  const std::string type = ctx.Type(j, key);
  if (type == "ByteLevel") return;  // offsets only
  if (type == "Sequence") {
    const json& list = ctx.At(j, key, "processors");
    if (!list.is_array()) ctx.Fail(key + ".processors", "must be an array");
    for (size_t i = 0; i < list.size(); ++i) {
      ParsePostProcessor(list[i], ctx, fmt::format("{}.processors[{}]", key, i), tok, out);
    }
    return;
  }
  if (type != "TemplateProcessing") {
    ctx.Fail(key + ".type", fmt::format("post-processor \"{}\" is not implemented", type));
  }
  const json& single = ctx.At(j, key, "single");
  const json specials = j.value("special_tokens", json::object());
  if (!specials.is_object()) ctx.Fail(key + ".special_tokens", "must be an object");
  if (!single.is_array()) ctx.Fail(key + ".single", "must be an array");
  bool seen_sequence = false;
  for (size_t i = 0; i < single.size(); ++i) {
    const std::string k = fmt::format("{}.single[{}]", key, i);
    const json& item = single[i];
    if (item.is_object() && item.contains("Sequence")) {
      seen_sequence = true;
      continue;
    }
    if (!item.is_object() || !item.contains("SpecialToken")) ctx.Fail(k, "not a template item");
    const std::string name = ctx.Str(item["SpecialToken"], k, "id");
    std::vector<int32_t> ids;
    if (specials.contains(name) && specials[name].is_object() && specials[name].contains("ids")) {
      const json& list = specials[name]["ids"];
      if (!list.is_array()) ctx.Fail(key + ".special_tokens", "ids must be an array");
      for (const json& id : list) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
            id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
          ctx.Fail(k, "special token ids must be non-negative 32-bit integers");
        }
        ids.push_back(id.get<int32_t>());
      }
    } else {
      const int32_t id = tok.TokenId(name);
      if (id < 0) ctx.Fail(k, "\"" + name + "\" is not a token");
      ids.push_back(id);
    }
    auto& dst = seen_sequence ? out.suffix : out.prefix;
    dst.insert(dst.end(), ids.begin(), ids.end());
  }
}

}  // namespace

std::unique_ptr<Backend> LoadJson(const std::filesystem::path& path) {
  const Ctx ctx{path.string()};
  const json j = ReadJsonFile(path);
  if (!j.is_object()) ctx.Fail("", "the file must hold a JSON object");
  auto tok = std::make_unique<JsonTokenizer>();
  auto present = [&](const char* k) { return j.contains(k) && !j[k].is_null(); };
  if (present("truncation")) ctx.Fail("truncation", "truncation is not implemented");
  if (present("normalizer")) tok->normalizer = ParseNormalizer(j["normalizer"], ctx, "normalizer");
  if (present("pre_tokenizer")) {
    tok->pre_tokenizer = ParsePreTokenizer(j["pre_tokenizer"], ctx, "pre_tokenizer");
  }
  const json& model = ctx.At(j, "", "model");
  const std::string model_type = model.is_object() && model.contains("type")
                                     ? ctx.Str(model, "model", "type")
                                     : std::string("BPE");  // older files omit it
  if (model_type == "BPE") {
    tok->model = ParseBpe(model, ctx, "model");
  } else if (model_type == "Unigram") {
    tok->model = ParseUnigram(model, ctx, "model");
  } else {
    ctx.Fail("model.type", fmt::format("model \"{}\" is not implemented", model_type));
  }
  int32_t max_id = -1;
  for (const auto& [t, id] : tok->model->vocab) max_id = std::max(max_id, id);
  tok->model->id_to_token.resize(static_cast<size_t>(max_id + 1));
  for (const auto& [t, id] : tok->model->vocab)
    tok->model->id_to_token[static_cast<size_t>(id)] = t;

  if (present("added_tokens")) {
    const json& list = j["added_tokens"];
    if (!list.is_array()) ctx.Fail("added_tokens", "must be an array");
    tok->added.reserve(list.size());
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string k = fmt::format("added_tokens[{}]", i);
      const json& e = list[i];
      AddedToken t{ctx.Str(e, k, "content"),
                   {},
                   0,
                   ctx.BoolOr(e, k, "special", false),
                   ctx.BoolOr(e, k, "normalized", true),
                   ctx.BoolOr(e, k, "lstrip", false),
                   ctx.BoolOr(e, k, "rstrip", false),
                   ctx.BoolOr(e, k, "single_word", false)};
      const int64_t id = ctx.IntOr(e, k, "id", -1);
      if (id < 0 || id >= std::numeric_limits<int32_t>::max()) ctx.Fail(k + ".id", "missing");
      if (t.content.empty()) ctx.Fail(k + ".content", "empty");
      t.id = static_cast<int32_t>(id);
      max_id = std::max(max_id, t.id);
      tok->added.push_back(std::move(t));
    }
    for (AddedToken& t : tok->added) {
      t.match = t.content;
      if (t.normalized && tok->normalizer) tok->normalizer->Apply(t.match);
      (t.normalized ? tok->normalized_added : tok->raw_added).Add(&t);
      tok->added_by_id[t.id] = &t;
      tok->added_by_content[t.content] = t.id;
    }
  }
  tok->size = max_id + 1;
  tok->FindByteLevelFastPath();
  if (present("decoder")) tok->decoder = ParseDecoder(j["decoder"], ctx, "decoder");
  if (present("post_processor")) {
    ParsePostProcessor(j["post_processor"], ctx, "post_processor", *tok, *tok);
  }
  return tok;
}

}  // namespace qtool::tokenizer
