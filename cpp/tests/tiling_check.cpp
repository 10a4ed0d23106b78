// Prints the tile geometry of cadyq::plan_tiles for the cases on stdin, one JSON line each, and
// writes each case's stitched test image, for tests/test_cpp.py to compare with cadyq.tiling.
//
//   stdin:  HEIGHT WIDTH TILE OVERLAP PROTOCOL SCALE BATCH    (one case per line)
//   argv:   OUT_DIR   (case_<n>.u8: the stitched [H*s, W*s, 3] uint8 image of case n)
//
// The LR image is lr(c, y, x) = (c*131 + y*31 + x*17) % 251; the "SR" of tile k at HR (c, Y, X)
// is (lr_tile(c, Y/s, X/s) + 7*k + 3*(Y%s) + X%s) % 256, so the stitched image depends on the tile
// extraction (reflect padding), the batch order, the ownership bounds and the stitching.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "cadyq/tiling.hpp"

namespace {

template <typename T>
std::string list(const std::vector<T>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: cadyq-tiling-check OUT_DIR < cases\n");
    return 2;
  }
  const std::string out_dir = argv[1];
  std::string line;
  int n = 0;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    int h, w, tile, overlap, scale, batch;
    std::string protocol;
    if (!(in >> h >> w >> tile >> overlap >> protocol >> scale >> batch)) continue;
    try {
      const cadyq::TileGrid g = cadyq::plan_tiles(h, w, tile, overlap, cadyq::parse_protocol(protocol));
      const auto [by, bx] = g.bounds(scale);
      const auto batches = cadyq::plan_batches(g, batch);
      std::string bl = "[";
      for (std::size_t i = 0; i < batches.size(); ++i) bl += (i ? "," : "") + list(batches[i].indices);
      bl += "]";
      const auto [ph, pw] = g.padded_size();
      // the stitched test image
      std::vector<float> lr(static_cast<std::size_t>(3) * h * w);
      for (int c = 0; c < 3; ++c)
        for (int y = 0; y < h; ++y)
          for (int x = 0; x < w; ++x)
            lr[(static_cast<std::size_t>(c) * h + y) * w + x] = static_cast<float>((c * 131 + y * 31 + x * 17) % 251);
      cadyq::Stitcher<std::uint8_t> st(g, scale, 3);
      for (const auto& b : batches) {
        const int k = static_cast<int>(b.indices.size()), th = b.height, tw = b.width;
        std::vector<float> tiles(static_cast<std::size_t>(k) * 3 * th * tw);
        cadyq::extract_tiles(lr.data(), 3, g, b, tiles.data());
        std::vector<std::uint8_t> sr(static_cast<std::size_t>(k) * 3 * th * scale * tw * scale);
        std::size_t o = 0;
        for (int t = 0; t < k; ++t)
          for (int c = 0; c < 3; ++c)
            for (int Y = 0; Y < th * scale; ++Y)
              for (int X = 0; X < tw * scale; ++X) {
                const int v = static_cast<int>(tiles[((static_cast<std::size_t>(t) * 3 + c) * th + Y / scale) * tw + X / scale]);
                sr[o++] = static_cast<std::uint8_t>((v + 7 * b.indices[static_cast<std::size_t>(t)] + 3 * (Y % scale) + X % scale) % 256);
              }
        st.add(b.indices, sr.data());
      }
      const auto& img = st.result();
      std::ofstream f(out_dir + "/case_" + std::to_string(n) + ".u8", std::ios::binary);
      f.write(reinterpret_cast<const char*>(img.data()), static_cast<std::streamsize>(img.size()));
      std::cout << "{\"ys\":" << list(g.ys) << ",\"xs\":" << list(g.xs) << ",\"heights\":" << list(g.tile_heights())
                << ",\"widths\":" << list(g.tile_widths()) << ",\"by\":" << list(by) << ",\"bx\":" << list(bx)
                << ",\"padded\":[" << ph << "," << pw << "],\"batches\":" << bl << "}\n";
    } catch (const cadyq::Error& e) {
      std::cout << "{\"error\":" << static_cast<int>(e.code()) << "}\n";
    }
    ++n;
  }
  return 0;
}
