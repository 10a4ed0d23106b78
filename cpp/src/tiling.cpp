// The C++ form of cadyq/tiling.py; keep the two in step (tests/test_cpp.py checks them bit for bit).
#include "cadyq/tiling.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <string>

namespace cadyq {

namespace {

std::vector<int> origins(int size, int tile, int step, Protocol protocol) {
  std::vector<int> out;
  if (protocol == Protocol::Official) {
    const int last = std::max(size - tile, 0);  // range(0, last + 1, step)
    for (int o = 0; o <= last; o += step) out.push_back(o);
    return out;
  }
  const int padded = std::max(size, tile);
  for (int o = 0; o < padded - tile; o += step) out.push_back(o);  // range(0, padded - tile, step)
  out.push_back(padded - tile);
  return out;
}

std::vector<int> sizes(const std::vector<int>& origins, int size, int tile, Protocol protocol) {
  std::vector<int> out(origins.size(), tile);
  if (protocol == Protocol::Official) out.back() = size - origins.back();
  return out;
}

std::vector<int> dim_bounds(const std::vector<int>& origins, int size, int tile, int overlap, int scale,
                            Protocol protocol) {
  std::vector<int> out{0};
  for (std::size_t i = 1; i < origins.size(); ++i) {
    if (protocol == Protocol::Official)
      out.push_back(origins[i] * scale + overlap * scale / 2);
    else
      out.push_back((origins[i - 1] + tile + origins[i]) * scale / 2);
  }
  out.push_back(size * scale);
  return out;
}

// Index i of [0, n) reflected into [0, size) without repeating the edge (cadyq.tiling._reflect_index).
inline int reflect_index(int size, int i) {
  if (size == 1) return 0;
  const int period = 2 * (size - 1);
  const int m = i % period;
  return m < size ? m : period - m;
}

}  // namespace

Protocol parse_protocol(const std::string& name) {
  if (name == "shift") return Protocol::Shift;
  if (name == "official") return Protocol::Official;
  throw Error(ErrorCode::InvalidArgument, "unknown tiling protocol '" + name + "'; use one of shift, official");
}

const char* protocol_name(Protocol protocol) { return protocol == Protocol::Official ? "official" : "shift"; }

std::pair<int, int> TileGrid::padded_size() const {
  if (protocol == Protocol::Shift) return {std::max(height, tile), std::max(width, tile)};
  return {height, width};
}

std::vector<int> TileGrid::tile_heights() const { return sizes(ys, height, tile, protocol); }
std::vector<int> TileGrid::tile_widths() const { return sizes(xs, width, tile, protocol); }

std::vector<TileBox> TileGrid::boxes() const {
  const auto hs = tile_heights(), ws = tile_widths();
  std::vector<TileBox> out;
  out.reserve(static_cast<std::size_t>(n_tiles()));
  for (int r = 0; r < rows(); ++r)
    for (int c = 0; c < cols(); ++c) out.push_back({ys[r], xs[c], hs[r], ws[c]});
  return out;
}

TileBox TileGrid::box(int index) const {
  if (index < 0 || index >= n_tiles())
    throw Error(ErrorCode::InvalidArgument,
                "tile " + std::to_string(index) + " out of range for a grid of " + std::to_string(n_tiles()) + " tiles");
  const int r = index / cols(), c = index % cols();
  const bool last_r = r == rows() - 1, last_c = c == cols() - 1;
  const bool official = protocol == Protocol::Official;
  return {ys[r], xs[c], official && last_r ? height - ys[r] : tile, official && last_c ? width - xs[c] : tile};
}

std::pair<std::vector<int>, std::vector<int>> TileGrid::bounds(int scale) const {
  return {dim_bounds(ys, height, tile, overlap, scale, protocol), dim_bounds(xs, width, tile, overlap, scale, protocol)};
}

TileGrid plan_tiles(int height, int width, int tile, int overlap, Protocol protocol) {
  if (tile < 1)
    throw Error(ErrorCode::InvalidArgument,
                "tile size must be a positive integer, got " + std::to_string(tile) + "; use e.g. --tile 96");
  if (overlap < 0 || overlap >= tile)
    throw Error(ErrorCode::InvalidArgument, "overlap must be an integer in [0, tile=" + std::to_string(tile) +
                                                "), got " + std::to_string(overlap) + "; use e.g. --overlap " +
                                                std::to_string(std::min(6, tile / 2)));
  if (height < 1 || width < 1)
    throw Error(ErrorCode::Image, "the image is empty (" + std::to_string(height) + "x" + std::to_string(width) +
                                      "); pass an image of at least 1x1 pixels");
  TileGrid g;
  g.height = height;
  g.width = width;
  g.tile = tile;
  g.overlap = overlap;
  g.protocol = protocol;
  g.ys = origins(height, tile, tile - overlap, protocol);
  g.xs = origins(width, tile, tile - overlap, protocol);
  return g;
}

std::vector<TileBatch> plan_batches(const TileGrid& grid, int batch) {
  if (batch < 1) throw Error(ErrorCode::InvalidArgument, "batch must be >= 1, got " + std::to_string(batch));
  std::vector<std::pair<std::pair<int, int>, std::vector<int>>> groups;  // shape -> tiles, first-seen order
  const auto boxes = grid.boxes();
  for (int i = 0; i < static_cast<int>(boxes.size()); ++i) {
    const std::pair<int, int> shape{boxes[i].height, boxes[i].width};
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == shape; });
    if (it == groups.end()) {
      groups.push_back({shape, {}});
      it = groups.end() - 1;
    }
    it->second.push_back(i);
  }
  std::vector<TileBatch> out;
  for (const auto& [shape, idx] : groups) {
    for (std::size_t k = 0; k < idx.size(); k += static_cast<std::size_t>(batch)) {
      TileBatch b;
      b.indices.assign(idx.begin() + static_cast<std::ptrdiff_t>(k),
                       idx.begin() + static_cast<std::ptrdiff_t>(std::min(idx.size(), k + static_cast<std::size_t>(batch))));
      b.height = shape.first;
      b.width = shape.second;
      out.push_back(std::move(b));
    }
  }
  return out;
}

void extract_tiles(const float* image, int channels, const TileGrid& grid, const TileBatch& batch, float* out) {
  const auto boxes = grid.boxes();
  const std::size_t plane = static_cast<std::size_t>(grid.height) * static_cast<std::size_t>(grid.width);
  std::vector<int> cols;
  for (const int i : batch.indices) {
    const TileBox& b = boxes.at(static_cast<std::size_t>(i));
    if (b.height != batch.height || b.width != batch.width)
      throw Error(ErrorCode::InvalidArgument, "internal: tile " + std::to_string(i) + " does not have its batch's shape");
    cols.resize(static_cast<std::size_t>(b.width));
    for (int dx = 0; dx < b.width; ++dx) cols[static_cast<std::size_t>(dx)] = reflect_index(grid.width, b.x + dx);
    for (int c = 0; c < channels; ++c) {
      const float* src = image + static_cast<std::size_t>(c) * plane;
      for (int dy = 0; dy < b.height; ++dy) {
        const float* row = src + static_cast<std::size_t>(reflect_index(grid.height, b.y + dy)) * grid.width;
        if (b.x + b.width <= grid.width) {
          std::memcpy(out, row + b.x, sizeof(float) * static_cast<std::size_t>(b.width));
        } else {
          for (int dx = 0; dx < b.width; ++dx) out[dx] = row[cols[static_cast<std::size_t>(dx)]];
        }
        out += b.width;
      }
    }
  }
}

template <typename T>
Stitcher<T>::Stitcher(const TileGrid& grid, int scale, int channels) : grid_(grid), scale_(scale), channels_(channels) {
  if (scale < 1) throw Error(ErrorCode::InvalidArgument, "scale must be a positive integer, got " + std::to_string(scale));
  if (channels < 1) throw Error(ErrorCode::InvalidArgument, "channels must be positive");
  std::tie(by_, bx_) = grid.bounds(scale);
  out_.assign(static_cast<std::size_t>(grid.height) * scale * static_cast<std::size_t>(grid.width) * scale *
                  static_cast<std::size_t>(channels),
              T{});
  done_.assign(static_cast<std::size_t>(grid.n_tiles()), 0);
}

template <typename T>
void Stitcher<T>::add(const std::vector<int>& indices, const T* sr_tiles) {
  const int s = scale_, out_w = grid_.width * s;
  for (const int i : indices) {
    const TileBox b = grid_.box(i);
    const int th = b.height * s, tw = b.width * s;
    if (done_[static_cast<std::size_t>(i)]) throw Error(ErrorCode::Runtime, "tile " + std::to_string(i) + " was added twice");
    const int r = i / grid_.cols(), c = i % grid_.cols();
    const int y0 = by_[r], y1 = by_[r + 1], sy = y0 - grid_.ys[r] * s;
    const int x0 = bx_[c], x1 = bx_[c + 1], sx = x0 - grid_.xs[c] * s;
    for (int ch = 0; ch < channels_; ++ch) {
      const T* plane = sr_tiles + static_cast<std::size_t>(ch) * th * tw;
      for (int y = y0; y < y1; ++y) {
        const T* src = plane + static_cast<std::size_t>(sy + y - y0) * tw + sx;
        T* dst = out_.data() + (static_cast<std::size_t>(y) * out_w + x0) * channels_ + ch;
        for (int x = 0; x < x1 - x0; ++x) dst[static_cast<std::size_t>(x) * channels_] = src[x];
      }
    }
    done_[static_cast<std::size_t>(i)] = 1;
    sr_tiles += static_cast<std::size_t>(channels_) * th * tw;
  }
}

template <typename T>
bool Stitcher<T>::complete() const {
  return std::all_of(done_.begin(), done_.end(), [](char d) { return d != 0; });
}

template <typename T>
const std::vector<T>& Stitcher<T>::result() const {
  if (!complete()) {
    const auto missing = std::count(done_.begin(), done_.end(), 0);
    throw Error(ErrorCode::Runtime, std::to_string(missing) + " of " + std::to_string(grid_.n_tiles()) +
                                        " tiles were never added");
  }
  return out_;
}

template <typename T>
std::vector<T> Stitcher<T>::release() {
  result();
  return std::move(out_);
}

template class Stitcher<std::uint8_t>;
template class Stitcher<float>;

}  // namespace cadyq
