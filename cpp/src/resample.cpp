#include "resample.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace cadyq::detail {

namespace {

// aten/src/ATen/native/UpSample.h: cubic_convolution1/2, get_cubic_upsample_coefficients
inline float cubic1(float x, float a) { return ((a + 2) * x - (a + 3)) * x * x + 1; }
inline float cubic2(float x, float a) { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a; }

struct Taps {
  std::vector<int> index;    // [out, 4]
  std::vector<float> weight;  // [out, 4]
};

Taps taps(int in_size, int scale) {
  const int out_size = in_size * scale;
  const float s = static_cast<float>(1.0 / scale);  // area_pixel_compute_scale with the given scale factor
  Taps t;
  t.index.resize(static_cast<std::size_t>(out_size) * 4);
  t.weight.resize(static_cast<std::size_t>(out_size) * 4);
  const float a = -0.75f;
  for (int i = 0; i < out_size; ++i) {
    const float real = s * (static_cast<float>(i) + 0.5f) - 0.5f;  // area_pixel_compute_source_index, cubic
    const std::int64_t idx = std::min(static_cast<std::int64_t>(std::floor(real)), static_cast<std::int64_t>(in_size - 1));
    const float lambda = std::min(std::max(real - static_cast<float>(idx), 0.0f), 1.0f);  // guard_index_and_lambda
    const float x2 = 1.0f - lambda;
    const float w[4] = {cubic2(lambda + 1.0f, a), cubic1(lambda, a), cubic1(x2, a), cubic2(x2 + 1.0f, a)};
    for (int j = 0; j < 4; ++j) {
      const std::int64_t k = std::max<std::int64_t>(std::min<std::int64_t>(idx + j - 1, in_size - 1), 0);
      t.index[static_cast<std::size_t>(i) * 4 + j] = static_cast<int>(k);
      t.weight[static_cast<std::size_t>(i) * 4 + j] = w[j];
    }
  }
  return t;
}

}  // namespace

std::vector<float> upsample_bicubic(const std::vector<float>& src, int height, int width, int scale) {
  const Taps ty = taps(height, scale), tx = taps(width, scale);
  const int oh = height * scale, ow = width * scale;
  std::vector<float> out(static_cast<std::size_t>(oh) * ow);
  for (int y = 0; y < oh; ++y) {
    const int* iy = &ty.index[static_cast<std::size_t>(y) * 4];
    const float* wy = &ty.weight[static_cast<std::size_t>(y) * 4];
    for (int x = 0; x < ow; ++x) {
      const int* ix = &tx.index[static_cast<std::size_t>(x) * 4];
      const float* wx = &tx.weight[static_cast<std::size_t>(x) * 4];
      float acc = 0;
      for (int i = 0; i < 4; ++i) {  // outer: rows, inner: columns (the order of torch's Interpolate<2>)
        const float* row = &src[static_cast<std::size_t>(iy[i]) * width];
        float t = row[ix[0]] * wx[0];
        for (int j = 1; j < 4; ++j) t += row[ix[j]] * wx[j];
        acc = i == 0 ? t * wy[0] : acc + t * wy[i];
      }
      out[static_cast<std::size_t>(y) * ow + x] = acc;
    }
  }
  return out;
}

}  // namespace cadyq::detail
