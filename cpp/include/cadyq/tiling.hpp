// Tile and stitch: the C++ form of cadyq/tiling.py, the same geometry, protocols and rounding
// (tests/test_cpp.py compares them bit for bit).
//
// shift (default): every tile is tile x tile; origins 0, step, 2*step, ... (step = tile - overlap),
//   the last one moved back to end at the border; a dimension smaller than a tile is
//   reflect-padded at its end up to the tile size.
// official: CADyQ's --test_patch geometry; origins 0, step, ... <= size - tile, the last tile of a
//   row/column runs to the border (tile .. tile+step-1 px); a dimension smaller than a tile is one
//   tile of its own size.
// Tile i of a dimension owns HR [b_i, b_{i+1}), b_0 = 0, b_n = size*scale:
//   official: b_i = o_i*scale + (overlap*scale)/2;  shift: b_i = ((o_{i-1} + tile + o_i)*scale)/2.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "cadyq/error.hpp"
#include "cadyq/export.h"

namespace cadyq {

enum class Protocol { Shift, Official };

CADYQ_API Protocol parse_protocol(const std::string& name);  // "shift" | "official"; Error otherwise
CADYQ_API const char* protocol_name(Protocol protocol);

struct TileBox {
  int y, x, height, width;  // LR origin (padded coordinates for shift) and size
};

struct CADYQ_API TileGrid {
  int height = 0, width = 0;  // LR image size
  int tile = 0, overlap = 0;
  Protocol protocol = Protocol::Shift;
  std::vector<int> ys, xs;  // tile origins per row / column

  int step() const { return tile - overlap; }
  int rows() const { return static_cast<int>(ys.size()); }
  int cols() const { return static_cast<int>(xs.size()); }
  int n_tiles() const { return rows() * cols(); }
  std::pair<int, int> padded_size() const;  // (height, width) after reflect padding (shift)
  std::vector<int> tile_heights() const;
  std::vector<int> tile_widths() const;
  std::vector<TileBox> boxes() const;  // row-major
  TileBox box(int index) const;
  // HR ownership boundaries: tile row r owns HR rows [by[r], by[r+1]); the same for columns.
  std::pair<std::vector<int>, std::vector<int>> bounds(int scale) const;
};

CADYQ_API TileGrid plan_tiles(int height, int width, int tile = 96, int overlap = 6,
                              Protocol protocol = Protocol::Shift);

// Tiles of one shape, run together (at most `batch`); the order of cadyq.tiling.iter_batches:
// groups by shape in order of first appearance, row-major within a group.
struct TileBatch {
  std::vector<int> indices;
  int height = 0, width = 0;
};

CADYQ_API std::vector<TileBatch> plan_batches(const TileGrid& grid, int batch);

// Copies the tiles of `batch` out of a planar float image [channels, grid.height, grid.width]
// into `out` [n, channels, height, width], reflect-padding where a shift grid is padded.
CADYQ_API void extract_tiles(const float* image, int channels, const TileGrid& grid, const TileBatch& batch,
                             float* out);

// Collects SR tiles into the SR image, keeping each tile's owned centre; the output is
// interleaved (HWC), T = std::uint8_t (8-bit outputs: tiles already rounded) or float.
template <typename T>
class CADYQ_API Stitcher {
 public:
  Stitcher(const TileGrid& grid, int scale, int channels = 3);
  // sr_tiles: [indices.size(), channels, th*scale, tw*scale] planar, for the tiles `indices`
  void add(const std::vector<int>& indices, const T* sr_tiles);
  bool complete() const;
  const std::vector<T>& result() const;  // [H*scale, W*scale, channels]; Error if a tile is missing
  std::vector<T> release();              // the same, moved out

 private:
  TileGrid grid_;
  int scale_, channels_;
  std::vector<int> by_, bx_;
  std::vector<T> out_;
  std::vector<char> done_;
};

extern template class Stitcher<std::uint8_t>;
extern template class Stitcher<float>;

}  // namespace cadyq
