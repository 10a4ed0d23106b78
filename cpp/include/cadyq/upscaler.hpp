// cadyq::Upscaler: tile an image, run the tiles in batches through a model, stitch the SR image
// and report the bit-widths chosen, as cadyq.Upscaler does in Python.
//
//   cadyq::Upscaler up("model.pt2", {96, 6, 16});       // tile, overlap, batch (see Options)
//   cadyq::Result r = up.upscale(image.view());         // r.image, r.bit_map, r.fqr, r.bitops
//
// Models: AOTInductor packages (`cadyq export --format aoti -o model.pt2`, CPU or CUDA as compiled)
// and, in a build with -DCADYQ_WITH_TENSORRT=ON, TensorRT engines (`cadyq engine`, with their
// .json sidecar). Errors are cadyq::Error (error.hpp). One Upscaler may be shared by threads;
// its upscale() calls then run one at a time.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cadyq/error.hpp"
#include "cadyq/export.h"
#include "cadyq/image.hpp"
#include "cadyq/model_info.hpp"
#include "cadyq/tiling.hpp"

namespace cadyq {

struct Options {
  int tile = 96;     // LR tile size
  int overlap = 6;   // LR overlap of neighbouring tiles
  int batch = 64;    // tiles per model run (at most the model's maximum)
  std::string device = "auto";  // auto (the package's device) | cpu | cuda | cuda:N
  Protocol protocol = Protocol::Shift;
  int threads = 0;   // CPU threads of the model (0: the library default, one per core)
  std::vector<std::string> plugin_libraries;  // TensorRT: plugin libraries to load before an engine
};

struct BitMap {
  int rows = 0, cols = 0, layers = 0;
  std::vector<float> bits;  // [rows][cols][layers]: the bit-width per tile and dynamic layer
  float at(int row, int col, int layer) const {
    return bits[(static_cast<std::size_t>(row) * cols + col) * layers + layer];
  }
};

struct Result {
  Image image;      // the SR image: the input's channels (gray stays gray, alpha kept) and bit depth
  BitMap bit_map;
  double fqr = 0;     // mean bit-width over tiles and layers
  double bitops = 0;  // BitOPs of the quantized convs over all tiles (overlaps included)
  TileGrid grid;
  std::map<std::string, double> timings;  // seconds: prepare, inference, stitch, finish, total
};

using Progress = std::function<void(int done, int total)>;  // tiles done, after each batch

class CADYQ_API Upscaler {
 public:
  explicit Upscaler(const std::string& model_path, const Options& options = Options());
  ~Upscaler();
  Upscaler(Upscaler&&) noexcept;
  Upscaler& operator=(Upscaler&&) noexcept;
  Upscaler(const Upscaler&) = delete;
  Upscaler& operator=(const Upscaler&) = delete;

  Result upscale(const ImageView& image, const Progress& progress = Progress());

  int scale() const;
  const ModelInfo& model_info() const;
  const Options& options() const;  // as used (batch capped at the model's maximum)
  std::string backend() const;     // "aoti" | "tensorrt"
  std::string device() const;      // "cpu", "cuda:0", ...
  std::string description() const; // one line: model, program, device

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The colour picture of a bit map (cadyq.runtime.bitmap.render_bit_map): each HR pixel gets the
// colour of its tile's mean bit-width (blue = fewest bits, red = most) over the SR image's luma.
CADYQ_API Image render_bit_map(const Result& result, int scale, const std::vector<int>& candidates);

CADYQ_API const char* version();

}  // namespace cadyq
