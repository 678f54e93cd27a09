#include "qtool/io/format_record.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <initializer_list>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "qtool/core/error.hpp"
#include "qtool/format/traits.hpp"

namespace qtool {
namespace {

using json = nlohmann::json;

// Typed, range-checked access to one record's keys; every error names the record and the key.
class RecordReader {
 public:
  RecordReader(const json& r, const std::string& where, std::string_view codec,
               std::initializer_list<const char*> keys)
      : r_(r), where_(where), codec_(codec) {
    for (const auto& [key, value] : r.items()) {
      bool known = key == "codec";
      for (const char* k : keys) known = known || key == k;
      QTOOL_CHECK(known, OptionError, "{}: unknown key \"{}\" in a {} record (its keys: codec, {})",
                  where_, key, codec_, fmt::join(keys, ", "));
    }
  }

  bool Has(const char* key) const { return r_.contains(key); }

  int64_t Int(const char* key, int64_t lo, int64_t hi, std::optional<int64_t> fallback) const {
    if (!Has(key)) {
      Require(fallback.has_value(), key);
      return *fallback;
    }
    return IntValue(r_[key], key, lo, hi);
  }

  bool Bool(const char* key, bool fallback) const {
    if (!Has(key)) return fallback;
    const json& v = r_[key];
    QTOOL_CHECK(v.is_boolean(), OptionError, "{}: \"{}\" must be true or false, got {}", where_,
                key, v.dump());
    return v.get<bool>();
  }

  std::string String(const char* key, std::optional<std::string> fallback) const {
    if (!Has(key)) {
      Require(fallback.has_value(), key);
      return *fallback;
    }
    const json& v = r_[key];
    QTOOL_CHECK(v.is_string(), OptionError, "{}: \"{}\" must be a string, got {}", where_, key,
                v.dump());
    return v.get<std::string>();
  }

  // One of `names` (the value's index among them).
  size_t Choice(const char* key, std::initializer_list<std::string_view> names,
                std::optional<std::string> fallback) const {
    const std::string v = String(key, std::move(fallback));
    size_t i = 0;
    for (const std::string_view n : names) {
      if (n == v) return i;
      ++i;
    }
    throw OptionError(
        fmt::format("{}: \"{}\" is \"{}\", not one of {}", where_, key, v, fmt::join(names, ", ")));
  }

  Element ElementValue(const char* key, bool allow_int8) const {
    const std::string v = String(key, std::nullopt);
    const std::optional<Element> e = ValueOf(kElementNames, v);
    if (e && (allow_int8 || *e != Element::kInt8)) return *e;
    throw OptionError(fmt::format("{}: \"{}\" is \"{}\", not one of e4m3, e5m2, e3m2, e2m3, e2m1{}",
                                  where_, key, v, allow_int8 ? ", int8" : ""));
  }

  // [rows, cols], each in lo..hi.
  std::pair<int64_t, int64_t> Pair(const char* key, int64_t lo, int64_t hi) const {
    Require(Has(key), key);
    const json& v = r_[key];
    QTOOL_CHECK(v.is_array() && v.size() == 2, OptionError,
                "{}: \"{}\" must be an array [rows, cols], got {}", where_, key, v.dump());
    return {IntValue(v[0], key, lo, hi), IntValue(v[1], key, lo, hi)};
  }

  void Refuse(const char* key, const char* why) const {
    QTOOL_CHECK(!Has(key), OptionError, "{}: \"{}\" {}", where_, key, why);
  }

  // Cross-parameter rules of the family, under this record's name.
  template <class F>
  F Validated(F f) const {
    try {
      FormatTraits<F>::Validate(f);
    } catch (const OptionError& e) {
      throw OptionError(fmt::format("{}: {}", where_, e.what()));
    }
    return f;
  }

 private:
  void Require(bool present, const char* key) const {
    QTOOL_CHECK(present, OptionError, "{}: a {} record needs \"{}\"", where_, codec_, key);
  }

  int64_t IntValue(const json& v, const char* key, int64_t lo, int64_t hi) const {
    QTOOL_CHECK(v.is_number_integer(), OptionError, "{}: \"{}\" must be an integer, got {}", where_,
                key, v.dump());
    const bool in_range = v.is_number_unsigned() ? v.get<uint64_t>() <= static_cast<uint64_t>(hi)
                                                 : v.get<int64_t>() <= hi;
    QTOOL_CHECK(in_range && v.get<int64_t>() >= lo, OptionError,
                "{}: \"{}\" must be in {}..{}, got {}", where_, key, lo, hi, v.dump());
    return v.get<int64_t>();
  }

  const json& r_;
  const std::string& where_;
  std::string_view codec_;
};

Granularity GranularityOf(size_t choice) { return static_cast<Granularity>(choice); }

IntFormat IntFromRecord(const json& r, const std::string& where) {
  const RecordReader in(
      r, where, "int",
      {"bits", "symmetric", "granularity", "group_size", "flat_groups", "g_idx", "observer"});
  IntFormat f;
  f.bits = static_cast<int>(in.Int("bits", 2, 8, std::nullopt));
  f.symmetric = in.Bool("symmetric", true);
  f.granularity = GranularityOf(in.Choice("granularity", {"tensor", "channel", "group"}, "group"));
  if (f.granularity == Granularity::kGroup) {
    f.group = in.Int("group_size", 1, kMaxFormatBlock, std::nullopt);
  } else {
    in.Refuse("group_size", "applies to granularity \"group\" only");
  }
  f.flat = in.Bool("flat_groups", false);
  f.g_idx = in.Bool("g_idx", false);
  if (in.Has("observer")) {
    const std::string o = in.String("observer", std::nullopt);
    try {
      f.observer = ObserverSpec::Parse(o);
    } catch (const OptionError& e) {
      throw OptionError(fmt::format("{}: \"observer\": {}", where, e.what()));
    }
  }
  return in.Validated(f);
}

TernaryFormat TernaryFromRecord(const json& r, const std::string& where) {
  const RecordReader in(r, where, "ternary", {"granularity", "group_size"});
  TernaryFormat f;
  f.granularity = GranularityOf(in.Choice("granularity", {"tensor", "channel", "group"}, "group"));
  if (f.granularity == Granularity::kGroup) {
    f.group = in.Int("group_size", 1, kMaxFormatBlock, std::nullopt);
  } else {
    in.Refuse("group_size", "applies to granularity \"group\" only");
  }
  return in.Validated(f);
}

Nf4Format Nf4FromRecord(const json& r, const std::string& where) {
  using T = FormatTraits<Nf4Format>;
  const RecordReader in(r, where, "nf4", {"block", "double_quant", "map"});
  Nf4Format f;
  f.block = in.Int("block", T::kMinBlock, T::kMaxBlock, Nf4Format{}.block);
  f.double_quant = in.Bool("double_quant", false);
  f.map = in.Choice("map", {"nf4", "fp4"}, "nf4") == 1 ? Bnb4Map::kFp4 : Bnb4Map::kNf4;
  return in.Validated(f);
}

FloatFormat FloatFromRecord(const json& r, const std::string& where) {
  const RecordReader in(r, where, "fp", {"format", "scale", "block", "saturate"});
  FloatFormat f;
  f.element = in.ElementValue("format", /*allow_int8=*/false);
  // Records name 2-D scale blocks "block"; Format calls every sub-tensor scale a group.
  f.granularity =
      GranularityOf(in.Choice("scale", {"tensor", "channel", "block"}, std::string("channel")));
  if (f.granularity == Granularity::kGroup) {
    std::tie(f.block_rows, f.block_cols) = in.Pair("block", 1, kMaxFormatBlock);
  } else {
    in.Refuse("block", "applies to scale \"block\" only");
  }
  f.saturate = in.Bool("saturate", true);
  return in.Validated(f);
}

MxFormat MxFromRecord(const json& r, const std::string& where) {
  using T = FormatTraits<MxFormat>;
  const RecordReader in(r, where, "mx", {"element", "block"});
  MxFormat f;
  f.element = in.ElementValue("element", /*allow_int8=*/true);
  f.block = in.Int("block", 1, T::kMaxBlock, T::kDefaultBlock);
  return in.Validated(f);
}

Nvfp4Format Nvfp4FromRecord(const json& r, const std::string& where) {
  const RecordReader in(r, where, "nvfp4", {});
  return in.Validated(Nvfp4Format{});
}

struct ToRecord {
  json operator()(const IntFormat& f) const {
    json r = {{"codec", "int"},
              {"bits", f.bits},
              {"symmetric", f.symmetric},
              {"granularity", GranularityName(f.granularity)}};
    if (f.granularity == Granularity::kGroup) r["group_size"] = f.group;
    if (f.flat) r["flat_groups"] = true;
    if (f.g_idx) r["g_idx"] = true;
    if (f.observer.kind != ObserverKind::kMinMax) r["observer"] = f.observer.ToString();
    return r;
  }
  json operator()(const TernaryFormat& f) const {
    json r = {{"codec", "ternary"}, {"granularity", GranularityName(f.granularity)}};
    if (f.granularity == Granularity::kGroup) r["group_size"] = f.group;
    return r;
  }
  json operator()(const Nf4Format& f) const {
    json r = {{"codec", "nf4"}, {"block", f.block}, {"double_quant", f.double_quant}};
    if (f.map != Bnb4Map::kNf4) r["map"] = std::string(NameOf(kBnb4MapNames, f.map));
    return r;
  }
  json operator()(const FloatFormat& f) const {
    json r = {{"codec", "fp"}, {"format", std::string(ElementName(f.element))}};
    if (f.granularity == Granularity::kGroup) {
      r["scale"] = "block";
      r["block"] = {f.block_rows, f.block_cols};
    } else {
      r["scale"] = GranularityName(f.granularity);
    }
    r["saturate"] = f.saturate;
    return r;
  }
  json operator()(const MxFormat& f) const {
    return {{"codec", "mx"}, {"element", std::string(ElementName(f.element))}, {"block", f.block}};
  }
  json operator()(const Nvfp4Format&) const { return {{"codec", "nvfp4"}}; }
};

}  // namespace

json FormatToRecord(const Format& f) { return std::visit(ToRecord{}, f); }

Format FormatFromRecord(const json& record, const std::string& where) {
  QTOOL_CHECK(record.is_object(), OptionError, "{}: a codec record must be an object, got {}",
              where, record.dump());
  const auto it = record.find("codec");
  QTOOL_CHECK(it != record.end() && it->is_string(), OptionError,
              "{}: the record {} has no \"codec\" name", where, record.dump());
  const std::string codec = it->get<std::string>();
  if (codec == "int") return IntFromRecord(record, where);
  if (codec == "ternary") return TernaryFromRecord(record, where);
  if (codec == "nf4") return Nf4FromRecord(record, where);
  if (codec == "fp") return FloatFromRecord(record, where);
  if (codec == "mx") return MxFromRecord(record, where);
  if (codec == "nvfp4") return Nvfp4FromRecord(record, where);
  throw OptionError(fmt::format(
      "{}: unknown codec \"{}\" (known: fp, int, mx, nf4, nvfp4, ternary)", where, codec));
}

}  // namespace qtool
