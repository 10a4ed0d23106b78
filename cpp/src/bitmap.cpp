// The colour picture of a bit map: cadyq/runtime/bitmap.py, computed the same way.
#include <algorithm>
#include <cmath>

#include "cadyq/upscaler.hpp"

namespace cadyq {

namespace {

const double kPalette[4][3] = {{40, 80, 230}, {40, 200, 90}, {240, 200, 40}, {230, 50, 40}};

}  // namespace

Image render_bit_map(const Result& result, int scale, const std::vector<int>& candidates) {
  const BitMap& bm = result.bit_map;
  const TileGrid& grid = result.grid;
  const Image& sr = result.image;
  if (candidates.empty()) throw Error(ErrorCode::InvalidArgument, "render_bit_map needs the model's bit candidates");
  if (sr.width != grid.width * scale || sr.height != grid.height * scale)
    throw Error(ErrorCode::InvalidArgument, "render_bit_map: the image is not the SR image of this grid at this scale");
  const int lo = *std::min_element(candidates.begin(), candidates.end());
  const int hi = *std::max_element(candidates.begin(), candidates.end());
  const float span = hi - lo > 0 ? static_cast<float>(hi - lo) : 1e-9f;
  // per tile: the colour of its mean bit-width (float32 mean, as torch's)
  std::vector<double> tint(static_cast<std::size_t>(bm.rows) * bm.cols * 3);
  for (int r = 0; r < bm.rows; ++r)
    for (int c = 0; c < bm.cols; ++c) {
      float sum = 0;
      for (int l = 0; l < bm.layers; ++l) sum += bm.at(r, c, l);
      const float mean = bm.layers ? sum / static_cast<float>(bm.layers) : NAN;
      const float t = std::min(std::max((mean - static_cast<float>(lo)) / span, 0.0f), 1.0f) * 3.0f;
      const int i = std::min(static_cast<int>(t), 2);
      const double f = static_cast<double>(t) - i;
      for (int k = 0; k < 3; ++k)
        tint[(static_cast<std::size_t>(r) * bm.cols + c) * 3 + k] = kPalette[i][k] * (1 - f) + kPalette[i + 1][k] * f;
    }
  const auto [by, bx] = grid.bounds(scale);
  std::vector<int> col_tile(static_cast<std::size_t>(sr.width));
  for (int c = 0; c < grid.cols(); ++c)
    for (int x = bx[c]; x < bx[c + 1]; ++x) col_tile[static_cast<std::size_t>(x)] = c;
  Image out(sr.width, sr.height, 3, 8);
  const int C = sr.channels;
  const double div = sr.bit_depth == 16 ? 257.0 : 1.0;
  for (int r = 0; r < grid.rows(); ++r)
    for (int y = by[r]; y < by[r + 1]; ++y)
      for (int x = 0; x < sr.width; ++x) {
        const std::size_t p = static_cast<std::size_t>(y) * sr.width + x;
        double rgb[3];
        for (int k = 0; k < 3; ++k) {
          const int ch = C <= 2 ? 0 : k;  // gray: its one channel (Python holds it replicated)
          rgb[k] = sr.bit_depth == 16 ? sr.data16()[p * C + ch] : sr.data8()[p * C + ch];
        }
        const double luma = (rgb[0] * 0.299 + rgb[1] * 0.587 + rgb[2] * 0.114) / div;
        const double* t = &tint[(static_cast<std::size_t>(r) * grid.cols() + col_tile[static_cast<std::size_t>(x)]) * 3];
        for (int k = 0; k < 3; ++k)
          out.data8()[p * 3 + k] = static_cast<std::uint8_t>(std::min(std::max(std::nearbyint(0.55 * t[k] + 0.45 * luma), 0.0), 255.0));
      }
  return out;
}

}  // namespace cadyq
