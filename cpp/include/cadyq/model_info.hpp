// What the runtime knows about a model: the C++ form of cadyq.quant.ModelInfo (stored as JSON in
// AOTInductor packages and engine sidecars), and BitOPs computed as Python computes them.
#pragma once

#include <string>
#include <vector>

#include "cadyq/export.h"

namespace cadyq {

struct LayerCost {
  std::string name;
  long long macs_per_pixel = 0;  // MACs per LR pixel of the conv's output
  int weight_bits = 0;
  int act_bits = 0;  // 0: dynamic (taken from the bit map)
};

struct CADYQ_API ModelInfo {
  std::string backbone;
  int scale = 0;
  std::string method;  // fp32 | pams8 | cadyq
  std::vector<int> bits;  // candidate bit-widths
  std::string mode;
  std::vector<LayerCost> layers;

  int n_layers() const;  // dynamic layers: the columns of the bit map
  // BitOPs of one tile of height x width LR px with `bits` [n_layers()] (ModelInfo.bitops in Python).
  double bitops(const float* bits, int height, int width) const;
  static ModelInfo from_json(const std::string& text);  // ModelInfo.to_dict() as JSON; Error(Model) if malformed
};

}  // namespace cadyq
