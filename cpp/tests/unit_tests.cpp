// Unit tests of libcadyq that need no model: geometry invariants, metadata, image files, C API errors.
// Run by ctest and by tests/test_cpp.py.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "cadyq/cadyq.h"
#include "cadyq/image_io.hpp"
#include "cadyq/model_info.hpp"
#include "cadyq/tiling.hpp"

namespace {

int failures = 0;

#define CHECK(cond)                                                         \
  do {                                                                      \
    if (!(cond)) {                                                          \
      std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                           \
    }                                                                       \
  } while (0)

template <typename F>
cadyq::ErrorCode error_of(F&& f) {
  try {
    f();
  } catch (const cadyq::Error& e) {
    return e.code();
  }
  return static_cast<cadyq::ErrorCode>(0);
}

void test_geometry() {
  for (const auto protocol : {cadyq::Protocol::Shift, cadyq::Protocol::Official})
    for (int h = 1; h < 260; h += 7)
      for (int s = 1; s <= 4; ++s) {
        const auto g = cadyq::plan_tiles(h, 200, 48, 6, protocol);
        const auto [by, bx] = g.bounds(s);
        CHECK(by.front() == 0 && by.back() == h * s && bx.back() == 200 * s);
        for (std::size_t i = 1; i < by.size(); ++i) CHECK(by[i] > by[i - 1]);  // every tile owns something
        int covered = 0;
        for (int r = 0; r < g.rows(); ++r) covered += by[r + 1] - by[r];
        CHECK(covered == h * s);
      }
  CHECK(error_of([] { cadyq::plan_tiles(10, 10, 0, 0); }) == cadyq::ErrorCode::InvalidArgument);
  CHECK(error_of([] { cadyq::plan_tiles(10, 10, 8, 8); }) == cadyq::ErrorCode::InvalidArgument);
  CHECK(error_of([] { cadyq::plan_tiles(0, 10, 8, 2); }) == cadyq::ErrorCode::Image);
  CHECK(error_of([] { cadyq::parse_protocol("diagonal"); }) == cadyq::ErrorCode::InvalidArgument);
}

void test_model_info() {
  const auto m = cadyq::ModelInfo::from_json(
      R"({"backbone": "edsr", "scale": 2, "method": "cadyq", "bits": [4, 6, 8], "mode": "full", "layers": [)"
      R"({"name": "a", "macs_per_pixel": 576, "weight_bits": 8, "act_bits": null},)"
      R"({"name": "b", "macs_per_pixel": 100, "weight_bits": 8, "act_bits": 8}]})");
  CHECK(m.scale == 2 && m.bits.size() == 3 && m.n_layers() == 1 && m.layers[0].name == "a");
  const float bits[] = {6};
  CHECK(m.bitops(bits, 96, 96) == (6.0 * 2 * 576 * 8 + 2 * 100 * 8 * 8) * 96 * 96 / 1024.0);
  CHECK(error_of([] { cadyq::ModelInfo::from_json("{\"scale\": 2}"); }) == cadyq::ErrorCode::Model);
  CHECK(error_of([] { cadyq::ModelInfo::from_json("not json"); }) == cadyq::ErrorCode::Model);
}

void test_image_files(const std::string& dir) {
  for (const int depth : {8, 16})
    for (int c = 1; c <= 4; ++c) {
      cadyq::Image im(13, 7, c, depth);
      for (std::size_t i = 0; i < static_cast<std::size_t>(13 * 7 * c); ++i) {
        if (depth == 8) im.data8()[i] = static_cast<std::uint8_t>(i * 37 % 256);
        else im.data16()[i] = static_cast<std::uint16_t>(i * 4099 % 65536);
      }
      const std::string path = dir + "/rt.png";
      cadyq::write_image(path, im);
      const cadyq::Image back = cadyq::read_image(path);
      CHECK(back.width == 13 && back.height == 7 && back.channels == c && back.bit_depth == depth);
      CHECK(back.pixels == im.pixels);
    }
  cadyq::Image rgb(16, 8, 3, 8);
  for (std::size_t i = 0; i < rgb.pixels.size(); ++i) rgb.pixels[i] = static_cast<std::uint8_t>(i % 200);
  cadyq::write_image(dir + "/rt.jpg", rgb);
  const cadyq::Image j = cadyq::read_image(dir + "/rt.jpg");
  CHECK(j.width == 16 && j.height == 8 && j.channels == 3);
  // errors: missing, empty, not an image, truncated, unknown extension, missing folder
  CHECK(error_of([&] { cadyq::read_image(dir + "/missing.png"); }) == cadyq::ErrorCode::Image);
  std::ofstream(dir + "/empty.png").close();
  CHECK(error_of([&] { cadyq::read_image(dir + "/empty.png"); }) == cadyq::ErrorCode::Image);
  std::ofstream(dir + "/text.png") << "hello, not a picture";
  CHECK(error_of([&] { cadyq::read_image(dir + "/text.png"); }) == cadyq::ErrorCode::Image);
  {
    std::ifstream in(dir + "/rt.jpg", std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(dir + "/cut.jpg", std::ios::binary) << data.substr(0, data.size() / 2);
  }
  CHECK(error_of([&] { cadyq::read_image(dir + "/cut.jpg"); }) == cadyq::ErrorCode::Image);
  CHECK(error_of([&] { cadyq::read_image(dir + "/rt.png", 10); }) == cadyq::ErrorCode::Image);  // too many pixels
  CHECK(error_of([&] { cadyq::write_image(dir + "/x.webp", rgb); }) == cadyq::ErrorCode::Image);
  CHECK(error_of([&] { cadyq::write_image(dir + "/no/such/x.png", rgb); }) == cadyq::ErrorCode::Image);
}

void test_c_api_errors() {
  cadyq_upscaler* up = reinterpret_cast<cadyq_upscaler*>(1);
  CHECK(cadyq_upscaler_create("/nonexistent.pt2", nullptr, &up) == CADYQ_ERROR_MODEL && up == nullptr);
  CHECK(std::strlen(cadyq_last_error()) > 0);
  CHECK(cadyq_upscaler_create("model.onnx", nullptr, &up) == CADYQ_ERROR_MODEL);
  CHECK(cadyq_upscaler_create("model.engine", nullptr, &up) == CADYQ_ERROR_MODEL);  // no TensorRT in this build, or no file
  CHECK(cadyq_upscaler_create(nullptr, nullptr, &up) == CADYQ_ERROR_INVALID_ARGUMENT);
  CHECK(cadyq_upscaler_create("x.pt2", nullptr, nullptr) == CADYQ_ERROR_INVALID_ARGUMENT);
  cadyq_result* res = nullptr;
  CHECK(cadyq_upscale(nullptr, nullptr, &res) == CADYQ_ERROR_INVALID_ARGUMENT && res == nullptr);
  CHECK(cadyq_result_fqr(nullptr) == 0.0 && cadyq_result_timing(nullptr, "total") == -1.0);
}

}  // namespace

int main(int argc, char** argv) {
  char tmpl[] = "/tmp/cadyq-unit-XXXXXX";
  const bool own_dir = argc <= 1;
  const std::string dir = own_dir ? (mkdtemp(tmpl) ? tmpl : ".") : argv[1];
  test_geometry();
  test_model_info();
  test_image_files(dir);
  test_c_api_errors();
  if (own_dir && dir != ".") std::filesystem::remove_all(dir);
  if (failures) {
    std::fprintf(stderr, "%d checks failed\n", failures);
    return 1;
  }
  std::printf("all unit checks passed\n");
  return 0;
}
