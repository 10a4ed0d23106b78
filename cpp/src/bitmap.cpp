// The colour picture of a bit map: cadyq/runtime/bitmap.py's render_bit_map, computed the same way
// (the legend strip of `cadyq upscale --bitmap`, drawn with Pillow's font, is not drawn here).
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
  const double span = hi - lo > 0 ? static_cast<double>(hi - lo) : 1e-9;
  // per tile: 0.55 x the colour of its mean bit-width (torch's float32 mean; the ramp in float64), in float32
  std::vector<float> tint(static_cast<std::size_t>(bm.rows) * bm.cols * 3);
  for (int r = 0; r < bm.rows; ++r)
    for (int c = 0; c < bm.cols; ++c) {
      float sum = 0;
      for (int l = 0; l < bm.layers; ++l) sum += bm.at(r, c, l);
      const float mean = bm.layers ? sum / static_cast<float>(bm.layers) : NAN;
      const double t = std::min(std::max((static_cast<double>(mean) - lo) / span, 0.0), 1.0) * 3.0;
      const int i = std::min(static_cast<int>(t), 2);
      const double f = t - i;
      for (int k = 0; k < 3; ++k)
        tint[(static_cast<std::size_t>(r) * bm.cols + c) * 3 + k] =
            static_cast<float>(0.55 * (kPalette[i][k] * (1 - f) + kPalette[i + 1][k] * f));
    }
  const auto [by, bx] = grid.bounds(scale);
  std::vector<int> col_tile(static_cast<std::size_t>(sr.width));
  for (int c = 0; c < grid.cols(); ++c)
    for (int x = bx[c]; x < bx[c + 1]; ++x) col_tile[static_cast<std::size_t>(x)] = c;
  // luma weights: float32(BT.601) * float32(0.45 / (257 for 16-bit)), summed in float32
  const float k = static_cast<float>(0.45 / (sr.bit_depth == 16 ? 257.0 : 1.0));
  const float w[3] = {0.299f * k, 0.587f * k, 0.114f * k};
  Image out(sr.width, sr.height, 3, 8);
  const int C = sr.channels;
  for (int r = 0; r < grid.rows(); ++r)
    for (int y = by[r]; y < by[r + 1]; ++y)
      for (int x = 0; x < sr.width; ++x) {
        const std::size_t p = static_cast<std::size_t>(y) * sr.width + x;
        float v[3];
        for (int ch = 0; ch < 3; ++ch) {
          const int src = C <= 2 ? 0 : ch;  // gray: its one channel (Python holds it replicated)
          v[ch] = static_cast<float>(sr.bit_depth == 16 ? sr.data16()[p * C + src] : sr.data8()[p * C + src]);
        }
        const float luma = v[0] * w[0] + v[1] * w[1] + v[2] * w[2];
        const float* t = &tint[(static_cast<std::size_t>(r) * grid.cols() + col_tile[static_cast<std::size_t>(x)]) * 3];
        for (int ch = 0; ch < 3; ++ch)
          out.data8()[p * 3 + ch] = static_cast<std::uint8_t>(std::min(std::max(std::nearbyint(t[ch] + luma), 0.0f), 255.0f));
      }
  return out;
}

}  // namespace cadyq
