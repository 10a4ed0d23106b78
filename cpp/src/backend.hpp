// What runs a model: a batch of LR tiles in, SR tiles and bits out. One per model format.
#pragma once

#include <memory>
#include <string>
#include <utility>

#include "cadyq/model_info.hpp"
#include "cadyq/upscaler.hpp"

namespace cadyq::detail {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const ModelInfo& info() const = 0;
  virtual std::string name() const = 0;
  virtual std::string device() const = 0;
  virtual std::string description() const = 0;
  virtual int max_batch() const = 0;                    // 0: any
  virtual int fixed_tile() const = 0;                   // 0: any size in tile_range()
  virtual std::pair<int, int> tile_range() const = 0;   // smallest and largest tile side
  // tiles: float [n, 3, h, w] in [0, 255] (planar, contiguous); sr: [n, 3, h*s, w*s]; bits: [n, L]
  virtual void run(const float* tiles, int n, int h, int w, float* sr, float* bits) = 0;
};

std::unique_ptr<Backend> open_aoti(const std::string& path, const Options& options);
std::unique_ptr<Backend> open_tensorrt(const std::string& path, const Options& options);

}  // namespace cadyq::detail
