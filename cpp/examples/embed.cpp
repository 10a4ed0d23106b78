#include <cadyq/image_io.hpp>
#include <cadyq/upscaler.hpp>
#include <iostream>

int main(int argc, char** argv) try {
  if (argc != 4) return std::cerr << "usage: embed MODEL.pt2 IN.png OUT.png\n", 2;
  cadyq::Upscaler up(argv[1], {/*tile*/ 96, /*overlap*/ 6, /*batch*/ 16});
  cadyq::Image lr = cadyq::read_image(argv[2]);
  cadyq::Result r = up.upscale(lr.view());
  cadyq::write_image(argv[3], r.image);
  std::cout << r.grid.rows() << "x" << r.grid.cols() << " tiles, FQR " << r.fqr << ", BitOPs "
            << r.bitops / 1e9 << " G, first tile's bits " << r.bit_map.at(0, 0, 0) << "\n";
} catch (const cadyq::Error& e) {
  return std::cerr << "error: " << e.what() << "\n", 1;
}
