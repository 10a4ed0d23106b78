#include "cadyq/model_info.hpp"

#include <stdexcept>

#include "cadyq/error.hpp"
#include "json.hpp"

namespace cadyq {

int ModelInfo::n_layers() const {
  int n = 0;
  for (const auto& c : layers) n += c.act_bits == 0;
  return n;
}

double ModelInfo::bitops(const float* bits, int height, int width) const {
  // Python: (bits.double() @ [2*macs*wb for dynamic layers] + fixed) * height * width / 1024; every term
  // is an integer below 2^53, so the sums are exact in any order.
  double per_pixel = 0.0;
  long long fixed = 0;
  int j = 0;
  for (const auto& c : layers) {
    if (c.act_bits == 0)
      per_pixel += static_cast<double>(bits[j++]) * (2.0 * static_cast<double>(c.macs_per_pixel) * c.weight_bits);
    else
      fixed += 2LL * c.macs_per_pixel * c.weight_bits * c.act_bits;
  }
  per_pixel += static_cast<double>(fixed);
  return per_pixel * height * width / 1024.0;
}

namespace detail {

ModelInfo model_info_from(const json::Value& v) {
  try {
    ModelInfo m;
    m.backbone = v.at("backbone").as_string();
    m.scale = static_cast<int>(v.at("scale").as_int());
    m.method = v.at("method").as_string();
    for (const auto& b : v.at("bits").as_array()) m.bits.push_back(static_cast<int>(b.as_int()));
    const json::Value* mode = v.find("mode");
    m.mode = mode && !mode->is_null() ? mode->as_string() : "";
    for (const auto& l : v.at("layers").as_array()) {
      LayerCost c;
      c.name = l.at("name").as_string();
      c.macs_per_pixel = l.at("macs_per_pixel").as_int();
      c.weight_bits = static_cast<int>(l.at("weight_bits").as_int());
      const json::Value& a = l.at("act_bits");
      c.act_bits = a.is_null() ? 0 : static_cast<int>(a.as_int());
      m.layers.push_back(std::move(c));
    }
    if (m.scale < 1) throw std::runtime_error("scale must be positive");
    return m;
  } catch (const std::runtime_error& e) {
    throw Error(ErrorCode::Model, std::string("malformed cadyq model metadata (") + e.what() +
                                      "); re-export the model with this cadyq version");
  }
}

}  // namespace detail

ModelInfo ModelInfo::from_json(const std::string& text) {
  json::Value v;
  try {
    v = json::parse(text);
  } catch (const std::runtime_error& e) {
    throw Error(ErrorCode::Model, std::string("malformed cadyq model metadata (") + e.what() + ")");
  }
  return detail::model_info_from(v);
}

}  // namespace cadyq
