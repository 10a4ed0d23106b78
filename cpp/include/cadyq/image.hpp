// Images in memory: ImageView (borrowed pixels) and Image (owned pixels).
// Pixels are interleaved rows: 1 = gray, 2 = gray + alpha, 3 = RGB, 4 = RGBA channels, 8 or 16 bits
// per channel (16-bit samples are native-endian std::uint16_t).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cadyq/export.h"

namespace cadyq {

struct ImageView {
  const void* data = nullptr;
  int width = 0, height = 0;
  int channels = 3;
  int bit_depth = 8;
  std::size_t stride = 0;  // bytes from one row to the next; 0: packed rows

  std::size_t row_bytes() const {
    return static_cast<std::size_t>(width) * static_cast<std::size_t>(channels) * (bit_depth == 16 ? 2u : 1u);
  }
  std::size_t pitch() const { return stride ? stride : row_bytes(); }
  bool has_alpha() const { return channels == 2 || channels == 4; }
  bool gray() const { return channels <= 2; }
};

struct CADYQ_API Image {
  int width = 0, height = 0;
  int channels = 3;
  int bit_depth = 8;
  std::vector<std::uint8_t> pixels;       // packed rows, row_bytes() each
  std::vector<std::uint8_t> icc_profile;  // kept from the input file, written back where it applies

  Image() = default;
  Image(int width, int height, int channels, int bit_depth);  // zero pixels
  std::size_t row_bytes() const {
    return static_cast<std::size_t>(width) * static_cast<std::size_t>(channels) * (bit_depth == 16 ? 2u : 1u);
  }
  ImageView view() const { return {pixels.data(), width, height, channels, bit_depth, 0}; }
  std::uint8_t* data8() { return pixels.data(); }
  const std::uint8_t* data8() const { return pixels.data(); }
  std::uint16_t* data16() { return reinterpret_cast<std::uint16_t*>(pixels.data()); }
  const std::uint16_t* data16() const { return reinterpret_cast<const std::uint16_t*>(pixels.data()); }
};

}  // namespace cadyq
