// cadyq::Upscaler: the C++ form of cadyq/runtime/upscaler.py (the same steps, the same rounding).
#include "cadyq/upscaler.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <mutex>
#include <new>
#include <optional>

#include "backend.hpp"
#include "resample.hpp"

#ifndef CADYQ_VERSION
#define CADYQ_VERSION "0.0.0"
#endif

namespace cadyq {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

bool ends_with(const std::string& s, const std::string& suffix) {
  if (s.size() < suffix.size()) return false;
  return std::equal(suffix.rbegin(), suffix.rend(), s.rbegin(),
                    [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == b; });
}

// The float the Python runtime gets for a pixel: uint8 as is, uint16 * float32(255/65535) (to_tensor).
const float kFrom16 = static_cast<float>(255.0 / 65535.0);

float sample(const ImageView& img, int y, int x, int c) {
  const auto* row = static_cast<const std::uint8_t*>(img.data) + static_cast<std::size_t>(y) * img.pitch();
  const std::size_t i = static_cast<std::size_t>(x) * img.channels + c;
  if (img.bit_depth == 16) return static_cast<float>(reinterpret_cast<const std::uint16_t*>(row)[i]) * kFrom16;
  return static_cast<float>(row[i]);
}

void check_view(const ImageView& img) {
  if (!img.data) throw Error(ErrorCode::InvalidArgument, "the image has no pixel data (null pointer)");
  if (img.width < 1 || img.height < 1)
    throw Error(ErrorCode::Image, "the image is empty (" + std::to_string(img.height) + "x" + std::to_string(img.width) +
                                      "); pass an image of at least 1x1 pixels");
  if (img.channels < 1 || img.channels > 4)
    throw Error(ErrorCode::InvalidArgument, "an image has 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) channels, not " +
                                                std::to_string(img.channels));
  if (img.bit_depth != 8 && img.bit_depth != 16)
    throw Error(ErrorCode::InvalidArgument, "bit depth must be 8 or 16, not " + std::to_string(img.bit_depth));
  if (img.stride && img.stride < img.row_bytes())
    throw Error(ErrorCode::InvalidArgument, "the row stride (" + std::to_string(img.stride) +
                                                " bytes) is shorter than a row of pixels (" + std::to_string(img.row_bytes()) + ")");
}

// Output sample from the stitched float value v in [0, 255] (cadyq.data.io.from_tensor).
template <int Depth>
inline auto encode(float v) {
  if constexpr (Depth == 8) {
    return static_cast<std::uint8_t>(std::min(std::max(std::nearbyint(v), 0.0f), 255.0f));
  } else {
    return static_cast<std::uint16_t>(std::min(std::max(std::nearbyint(v * 257.0f), 0.0f), 65535.0f));
  }
}

// The output image from the stitched RGB (HWC) and the upscaled alpha: the input's channels and depth.
template <typename T, typename Encode>
void finish(const std::vector<T>& rgb, const std::vector<float>& alpha, const ImageView& in, Image& out, Encode encode_rgb) {
  const int C = in.channels;
  const bool sixteen = in.bit_depth == 16;
  const std::size_t n_px = static_cast<std::size_t>(out.width) * out.height;
  for (std::size_t p = 0; p < n_px; ++p) {
    std::uint32_t v[4];
    const std::uint32_t r = encode_rgb(rgb[3 * p]), g = encode_rgb(rgb[3 * p + 1]), b = encode_rgb(rgb[3 * p + 2]);
    if (in.gray()) {
      v[0] = (r + g + b + 1) / 3;  // the gray of cadyq.data.io.write_image
    } else {
      v[0] = r, v[1] = g, v[2] = b;
    }
    if (in.has_alpha()) v[C - 1] = sixteen ? encode<16>(alpha[p]) : encode<8>(alpha[p]);
    for (int c = 0; c < C; ++c) {
      if (sixteen)
        out.data16()[p * C + c] = static_cast<std::uint16_t>(v[c]);
      else
        out.data8()[p * C + c] = static_cast<std::uint8_t>(v[c]);
    }
  }
}

}  // namespace

struct Upscaler::Impl {
  std::unique_ptr<detail::Backend> backend;
  Options options;
  std::mutex mutex;
};

Upscaler::Upscaler(const std::string& model_path, const Options& options) : impl_(std::make_unique<Impl>()) {
  if (options.batch < 1) throw Error(ErrorCode::InvalidArgument, "batch must be at least 1");
  if (options.threads < 0) throw Error(ErrorCode::InvalidArgument, "threads must be 0 (default) or positive");
  plan_tiles(options.tile, options.tile, options.tile, options.overlap, options.protocol);  // validates the geometry now
  if (ends_with(model_path, ".engine") || ends_with(model_path, ".plan"))
    impl_->backend = detail::open_tensorrt(model_path, options);
  else if (ends_with(model_path, ".pt2"))
    impl_->backend = detail::open_aoti(model_path, options);
  else
    throw Error(ErrorCode::Model, model_path + ": expected an AOTInductor package (*.pt2, from `cadyq export --format aoti`)"
                                               " or a TensorRT engine (*.engine, from `cadyq engine`)");
  const detail::Backend& b = *impl_->backend;
  if (b.fixed_tile() && options.protocol == Protocol::Official)
    throw Error(ErrorCode::InvalidArgument, "the official protocol has tiles of several sizes; this model takes one tile size");
  if (b.fixed_tile() && b.fixed_tile() != options.tile)
    throw Error(ErrorCode::InvalidArgument, "this model takes " + std::to_string(b.fixed_tile()) + "x" +
                                                std::to_string(b.fixed_tile()) + " tiles, not " + std::to_string(options.tile) +
                                                "; pass --tile accordingly");
  const auto [lo, hi] = b.tile_range();
  if (!b.fixed_tile() && (options.tile < lo || options.tile > hi))
    throw Error(ErrorCode::InvalidArgument, "this model takes tiles of " + std::to_string(lo) + ".." + std::to_string(hi) +
                                                " px, not " + std::to_string(options.tile) + "; pass --tile in that range");
  impl_->options = options;
  if (b.max_batch() > 0) impl_->options.batch = std::min(options.batch, b.max_batch());
}

Upscaler::~Upscaler() = default;
Upscaler::Upscaler(Upscaler&&) noexcept = default;
Upscaler& Upscaler::operator=(Upscaler&&) noexcept = default;

int Upscaler::scale() const { return impl_->backend->info().scale; }
const ModelInfo& Upscaler::model_info() const { return impl_->backend->info(); }
const Options& Upscaler::options() const { return impl_->options; }
std::string Upscaler::backend() const { return impl_->backend->name(); }
std::string Upscaler::device() const { return impl_->backend->device(); }
std::string Upscaler::description() const { return impl_->backend->description(); }

Result Upscaler::upscale(const ImageView& img, const Progress& progress) {
  const auto t0 = Clock::now();
  check_view(img);
  std::lock_guard<std::mutex> lock(impl_->mutex);
  detail::Backend& backend = *impl_->backend;
  const Options& opt = impl_->options;
  const ModelInfo& info = backend.info();
  const int s = info.scale, L = info.n_layers(), H = img.height, W = img.width;
  const bool exact = img.bit_depth == 16;  // 16-bit: stitched in float, rounded once at the end
  try {
    Result res;
    res.grid = plan_tiles(H, W, opt.tile, opt.overlap, opt.protocol);
    const TileGrid& grid = res.grid;
    const auto [lo, hi] = backend.tile_range();
    for (const int d : grid.tile_heights())
      if (d < lo || d > hi)
        throw Error(ErrorCode::Image, "this image needs " + std::to_string(d) + "-px tiles under the " +
                                          protocol_name(opt.protocol) + " protocol, but the model takes " + std::to_string(lo) +
                                          ".." + std::to_string(hi) + " px; use the shift protocol or another tile size");
    for (const int d : grid.tile_widths())
      if (d < lo || d > hi)
        throw Error(ErrorCode::Image, "this image needs " + std::to_string(d) + "-px tiles under the " +
                                          protocol_name(opt.protocol) + " protocol, but the model takes " + std::to_string(lo) +
                                          ".." + std::to_string(hi) + " px; use the shift protocol or another tile size");

    // LR planar float [3, H, W] (gray replicated), as the Python runtime sees it
    std::vector<float> lr(static_cast<std::size_t>(3) * H * W);
    const std::size_t plane = static_cast<std::size_t>(H) * W;
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x)
        for (int c = 0; c < 3; ++c)
          lr[c * plane + static_cast<std::size_t>(y) * W + x] = sample(img, y, x, img.gray() ? 0 : c);
    res.timings["prepare"] = seconds_since(t0);

    std::optional<Stitcher<std::uint8_t>> stitch8;  // 8-bit: tiles rounded, stitched as uint8 (Python does)
    std::optional<Stitcher<float>> stitchf;          // 16-bit: stitched in float, rounded once at the end
    if (exact)
      stitchf.emplace(grid, s, 3);
    else
      stitch8.emplace(grid, s, 3);
    std::vector<float> bits(static_cast<std::size_t>(grid.n_tiles()) * L);
    std::vector<float> tiles, sr, batch_bits;
    std::vector<std::uint8_t> sr8;
    double t_infer = 0, t_stitch = 0;
    int done = 0;
    for (const TileBatch& b : plan_batches(grid, opt.batch)) {
      const int n = static_cast<int>(b.indices.size()), th = b.height, tw = b.width;
      const std::size_t n_sr = static_cast<std::size_t>(n) * 3 * th * s * tw * s;
      auto t = Clock::now();
      tiles.resize(static_cast<std::size_t>(n) * 3 * th * tw);
      extract_tiles(lr.data(), 3, grid, b, tiles.data());
      sr.resize(n_sr);
      batch_bits.resize(static_cast<std::size_t>(n) * L);
      backend.run(tiles.data(), n, th, tw, sr.data(), batch_bits.data());
      for (const float v : sr)
        if (!std::isfinite(v))
          throw Error(ErrorCode::Runtime, "the " + backend.name() + " backend returned NaN/Inf; the model or engine is broken");
      if (exact) {
        for (float& v : sr) v = std::min(std::max(v, 0.0f), 255.0f);
      } else {
        sr8.resize(n_sr);
        for (std::size_t i = 0; i < n_sr; ++i) sr8[i] = encode<8>(sr[i]);
      }
      t_infer += seconds_since(t);
      t = Clock::now();
      if (exact)
        stitchf->add(b.indices, sr.data());
      else
        stitch8->add(b.indices, sr8.data());
      for (int k = 0; k < n; ++k)
        std::copy_n(batch_bits.data() + static_cast<std::size_t>(k) * L, L,
                    bits.data() + static_cast<std::size_t>(b.indices[static_cast<std::size_t>(k)]) * L);
      t_stitch += seconds_since(t);
      done += n;
      if (progress) progress(done, grid.n_tiles());
    }
    res.timings["inference"] = t_infer;
    res.timings["stitch"] = t_stitch;

    const auto t_finish = Clock::now();
    const int HS = H * s, WS = W * s;
    res.image = Image(WS, HS, img.channels, img.bit_depth);
    res.image.icc_profile.clear();
    std::vector<float> alpha;
    if (img.has_alpha()) {  // upscaled on its own, bicubic (the network is RGB only), as in Python
      std::vector<float> a(plane);
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) a[static_cast<std::size_t>(y) * W + x] = sample(img, y, x, img.channels - 1);
      alpha = detail::upsample_bicubic(a, H, W, s);
    }
    if (exact)
      finish(stitchf->result(), alpha, img, res.image, [](float v) { return encode<16>(v); });
    else
      finish(stitch8->result(), alpha, img, res.image, [](std::uint8_t v) { return v; });
    res.bit_map.rows = grid.rows();
    res.bit_map.cols = grid.cols();
    res.bit_map.layers = L;
    double sum = 0.0, ops = 0.0;
    for (const float b : bits) sum += b;
    for (int i = 0; i < grid.n_tiles(); ++i) {
      const TileBox box = grid.box(i);
      ops += info.bitops(bits.data() + static_cast<std::size_t>(i) * L, box.height, box.width);
    }
    res.bit_map.bits = std::move(bits);
    res.fqr = sum / static_cast<double>(res.bit_map.bits.size());
    res.bitops = ops;
    res.timings["finish"] = seconds_since(t_finish);
    res.timings["total"] = seconds_since(t0);
    return res;
  } catch (const std::bad_alloc&) {
    throw Error(ErrorCode::OutOfMemory, "out of memory upscaling a " + std::to_string(W) + "x" + std::to_string(H) +
                                            " image; use a smaller --batch or a smaller image");
  }
}

const char* version() { return CADYQ_VERSION; }

}  // namespace cadyq
