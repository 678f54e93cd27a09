// Packing of b-bit unsigned codes (b = 2..8) into bytes.
//
// Bit layout: the codes of a row form one little-endian bit stream. Code i occupies bits
// [i*b, (i+1)*b) of the stream, least significant bit first, and stream bit k is bit (k % 8) of
// byte k / 8. So for INT4 byte j holds code 2j in its low nibble and code 2j+1 in its high nibble;
// INT2 packs codes 4j..4j+3 from the low bits up; INT3 packs 8 codes into 3 bytes, code 0 in bits
// 0-2 of byte 0, code 2 straddling bytes 0 and 1, and so on. Each row starts on a byte boundary and
// its last byte is padded with zero bits, so a row of n codes takes ceil(n * b / 8) bytes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "qtool/format/traits.hpp"  // PackedBytes

namespace qtool {

/// Packs n codes (each < 2^bits) into PackedBytes(n, bits) bytes.
inline void PackCodes(const uint8_t* codes, int64_t n, int bits, uint8_t* out) {
  if (bits == 8) {
    for (int64_t i = 0; i < n; ++i) out[i] = codes[i];
    return;
  }
  if (bits == 4) {
    for (int64_t i = 0; i + 1 < n; i += 2) {
      out[i / 2] = static_cast<uint8_t>(codes[i] | (codes[i + 1] << 4));
    }
    if (n & 1) out[n / 2] = codes[n - 1];
    return;
  }
  uint32_t acc = 0;
  int nbits = 0;
  int64_t o = 0;
  for (int64_t i = 0; i < n; ++i) {
    acc |= static_cast<uint32_t>(codes[i]) << nbits;
    nbits += bits;
    while (nbits >= 8) {
      out[o++] = static_cast<uint8_t>(acc);
      acc >>= 8;
      nbits -= 8;
    }
  }
  if (nbits > 0) out[o] = static_cast<uint8_t>(acc);
}

/// Unpacks n codes written by PackCodes.
inline void UnpackCodes(const uint8_t* in, int64_t n, int bits, uint8_t* codes) {
  if (bits == 8) {
    for (int64_t i = 0; i < n; ++i) codes[i] = in[i];
    return;
  }
  if (bits == 4) {
    for (int64_t i = 0; i < n; ++i) codes[i] = (in[i / 2] >> ((i & 1) * 4)) & 0xf;
    return;
  }
  const uint32_t mask = (1u << bits) - 1;
  uint32_t acc = 0;
  int nbits = 0;
  int64_t p = 0;
  for (int64_t i = 0; i < n; ++i) {
    while (nbits < bits) {
      acc |= static_cast<uint32_t>(in[p++]) << nbits;
      nbits += 8;
    }
    codes[i] = static_cast<uint8_t>(acc & mask);
    acc >>= bits;
    nbits -= bits;
  }
}

}  // namespace qtool
