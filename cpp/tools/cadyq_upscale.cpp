// cadyq-upscale: the C++ command line.
//
//   cadyq-upscale in.png -o out.png --model model.pt2 [--tile 96] [--overlap 6] [--batch N] [--bitmap]
//
// Exit status: 0 done; 1 some images could not be read or written (reported, skipped; the others
// are done); 2 a bad option, input path, output plan or model (nothing is written). Every output
// name is decided and checked before the first image runs; existing outputs are replaced only with
// --overwrite. Every error is one line on stderr.
// Outputs are written under a temporary name and renamed, so nothing is half-written; Ctrl-C
// removes the file being written.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <filesystem>
#include <cmath>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iostream>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include "cadyq/image_io.hpp"
#include "cadyq/upscaler.hpp"

namespace {

const char* const kUsage =
    "usage: cadyq-upscale INPUT... -o OUTPUT --model MODEL [options]\n"
    "\n"
    "Upscale PNG/JPEG images with a cadyq model: an AOTInductor package (cadyq export --format aoti)\n"
    "or, in a TensorRT build, an engine (cadyq engine). One input and an OUTPUT ending in .png/.jpg\n"
    "writes that file; otherwise OUTPUT is a folder and gets <stem>_x<scale>.png per input.\n"
    "\n"
    "options:\n"
    "  -o, --output PATH    output file (one input) or folder\n"
    "  -m, --model PATH     model.pt2 (or model.engine with its .json sidecar)\n"
    "  --tile N             LR tile size (default 96)\n"
    "  --overlap N          LR overlap of neighbouring tiles (default 6)\n"
    "  --batch N            tiles per model run (default 64)\n"
    "  --protocol NAME      shift (default: equal tiles) or official (CADyQ's test geometry)\n"
    "  --device NAME        auto (default: the package's), cpu, cuda, cuda:N\n"
    "  --threads N          CPU threads of the model (default: one per core)\n"
    "  --bitmap             also write <output stem>_bits.png: the bit-width of each tile\n"
    "  --overwrite          replace outputs that exist (inputs are never replaced)\n"
    "  --json PATH          write a JSON report (sizes, tiles, FQR, BitOPs, bit map, times)\n"
    "  --png-compression N  zlib level of PNG outputs, 0-9 (default 1: fast; all lossless)\n"
    "  --max-pixels N       refuse larger inputs (default 134217728)\n"
    "  --plugin-lib PATH    TensorRT plugin library to load (repeatable)\n"
    "  -q, --quiet          no per-image line on stderr\n"
    "  --version            print the version\n"
    "  -h, --help           this help\n";

struct UsageError {
  std::string message;
};

struct Args {
  std::vector<std::string> inputs;
  std::string output, model, json, device = "auto", protocol = "shift";
  int tile = 96, overlap = 6, batch = 64, threads = 0, png_compression = 1;
  long long max_pixels = cadyq::kDefaultMaxPixels;
  bool bitmap = false, quiet = false, overwrite = false;
  std::vector<std::string> plugin_libs;
};

long long parse_int(const std::string& flag, const std::string& text, long long lo, long long hi) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE)
    throw UsageError{flag + ": '" + text + "' is not an integer"};
  if (v < lo || v > hi)
    throw UsageError{flag + ": " + text + " is out of range (" + std::to_string(lo) + ".." + std::to_string(hi) + ")"};
  return v;
}

Args parse_args(int argc, char** argv) {
  Args a;
  bool only_inputs = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (only_inputs || arg.empty() || arg[0] != '-' || arg == "-") {
      a.inputs.push_back(arg);
      continue;
    }
    if (arg == "--") {
      only_inputs = true;
      continue;
    }
    std::string flag = arg, value;
    bool has_value = false;
    const auto eq = arg.find('=');
    if (arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      flag = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    auto take = [&]() -> std::string {
      if (has_value) return value;
      if (i + 1 >= argc) throw UsageError{flag + " needs a value"};
      return argv[++i];
    };
    auto no_value = [&] {
      if (has_value) throw UsageError{flag + " takes no value"};
    };
    if (flag == "-h" || flag == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (flag == "--version") {
      std::cout << "cadyq-upscale " << cadyq::version() << "\n";
      std::exit(0);
    } else if (flag == "-o" || flag == "--output") {
      a.output = take();
    } else if (flag == "-m" || flag == "--model") {
      a.model = take();
    } else if (flag == "--tile") {
      a.tile = static_cast<int>(parse_int(flag, take(), 1, 1 << 20));
    } else if (flag == "--overlap") {
      a.overlap = static_cast<int>(parse_int(flag, take(), 0, 1 << 20));
    } else if (flag == "--batch") {
      a.batch = static_cast<int>(parse_int(flag, take(), 1, 1 << 20));
    } else if (flag == "--threads") {
      a.threads = static_cast<int>(parse_int(flag, take(), 0, 4096));
    } else if (flag == "--png-compression") {
      a.png_compression = static_cast<int>(parse_int(flag, take(), 0, 9));
    } else if (flag == "--max-pixels") {
      a.max_pixels = parse_int(flag, take(), 1, 1LL << 40);
    } else if (flag == "--protocol") {
      a.protocol = take();
      if (a.protocol != "shift" && a.protocol != "official")
        throw UsageError{"--protocol: '" + a.protocol + "' is not one of shift, official"};
    } else if (flag == "--device") {
      a.device = take();
    } else if (flag == "--json") {
      a.json = take();
    } else if (flag == "--plugin-lib") {
      a.plugin_libs.push_back(take());
    } else if (flag == "--bitmap") {
      no_value();
      a.bitmap = true;
    } else if (flag == "--overwrite") {
      no_value();
      a.overwrite = true;
    } else if (flag == "-q" || flag == "--quiet") {
      no_value();
      a.quiet = true;
    } else {
      throw UsageError{"unknown option " + flag + " (see --help)"};
    }
  }
  if (a.inputs.empty()) throw UsageError{"no input images given (see --help)"};
  if (a.output.empty()) throw UsageError{"-o/--output is required"};
  if (a.model.empty()) throw UsageError{"--model is required (a .pt2 from `cadyq export --format aoti`)"};
  // as cadyq.tiling.check_step: more than half the tile would run each LR pixel through more than 4 tiles
  const std::string suggest = "use --overlap " + std::to_string(std::min(6, std::max(a.tile, 0) / 2)) + " or less";
  if (a.overlap >= a.tile)
    throw UsageError{"--overlap must be smaller than --tile (" + std::to_string(a.overlap) + " >= " +
                     std::to_string(a.tile) + "); " + suggest};
  if (2 * a.overlap > a.tile) {
    const int step = a.tile - a.overlap;
    const long per_pixel = std::lround(double(a.tile) * a.tile / (double(step) * step));
    throw UsageError{"--tile " + std::to_string(a.tile) + " with --overlap " + std::to_string(a.overlap) +
                     " starts a tile every " + std::to_string(step) + " px, so each LR pixel runs through about " +
                     std::to_string(per_pixel) + " tiles; the overlap can be at most half the tile: " + suggest};
  }
  const std::string& d = a.device;
  const bool device_ok = d == "auto" || d == "cpu" || d == "cuda" ||
                         (d.rfind("cuda:", 0) == 0 && d.size() > 5 && d.find_first_not_of("0123456789", 5) == std::string::npos);
  if (!device_ok) throw UsageError{"--device: '" + d + "' is not one of auto, cpu, cuda, cuda:N"};
  return a;
}

bool same_file(const std::string& a, const std::string& b) {
  struct stat sa {}, sb {};
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

void on_signal(int sig) {
  if (const char* tmp = cadyq::pending_temp_file()) ::unlink(tmp);  // async-signal-safe
  const char msg[] = "cadyq-upscale: interrupted\n";
  ssize_t ignored = ::write(2, msg, sizeof msg - 1);
  (void)ignored;
  std::_Exit(128 + sig);
}

std::string quote(const std::string& text) {  // a JSON string
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string fmt(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

namespace fs = std::filesystem;

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool is_image_name(const fs::path& p) {
  const std::string ext = lower(p.extension().string());
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

// Files as given, plus each folder's PNG/JPEG files (sorted by name, hidden files skipped).
std::vector<std::string> expand_inputs(const std::vector<std::string>& given) {
  std::vector<std::string> out;
  for (const auto& g : given) {
    std::error_code ec;
    if (fs::is_directory(g, ec)) {
      std::vector<std::string> files;
      for (const auto& e : fs::directory_iterator(g, ec))
        if (e.is_regular_file() && is_image_name(e.path()) && e.path().filename().string()[0] != '.')
          files.push_back(e.path().string());
      std::sort(files.begin(), files.end());
      out.insert(out.end(), files.begin(), files.end());
    } else if (fs::is_regular_file(g, ec)) {
      out.push_back(g);
    } else {
      throw cadyq::Error(cadyq::ErrorCode::InvalidArgument, g + ": no such file or folder; check the path");
    }
  }
  if (out.empty()) throw cadyq::Error(cadyq::ErrorCode::InvalidArgument, "no PNG or JPEG images found in the inputs");
  std::vector<std::string> unique;  // duplicates dropped, order kept
  for (const auto& f : out)
    if (std::find(unique.begin(), unique.end(), f) == unique.end()) unique.push_back(f);
  return unique;
}

struct Plan {
  std::vector<std::string> images, bit_maps;
  std::string folder;  // the output folder to create, if any
};

std::string key(const fs::path& p) {  // how two names of one file compare
  std::error_code ec;
  const fs::path abs = fs::weakly_canonical(fs::absolute(p, ec), ec);
  return ec ? p.lexically_normal().string() : abs.string();
}

// Every file this run writes, decided and checked before the first image (as cadyq.outputs.plan_upscale):
// one input and an image file name: that file; otherwise OUTPUT/<stem>_x<s>.png (inputs whose names
// collide get their extension in it); outputs that are inputs, written twice, or exist (without
// --overwrite) are refused.
Plan plan_outputs(const std::vector<std::string>& inputs, const Args& a, int scale) {
  Plan plan;
  const fs::path out(a.output);
  std::error_code ec;
  const bool names_file = !fs::is_directory(out, ec) && !out.extension().empty();
  if (names_file) {
    if (!is_image_name(out))
      throw cadyq::Error(cadyq::ErrorCode::InvalidArgument, "-o " + a.output + ": " + out.extension().string() +
                                                                " is not an image format cadyq-upscale writes (use .png .jpg .jpeg)");
    if (inputs.size() > 1)
      throw cadyq::Error(cadyq::ErrorCode::InvalidArgument, "-o " + a.output + " names one image file, but " +
                                                                std::to_string(inputs.size()) + " images were given; pass a folder for -o");
    const fs::path parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
    if (!fs::is_directory(parent, ec))
      throw cadyq::Error(cadyq::ErrorCode::InvalidArgument, a.output + ": folder " + parent.string() + " does not exist; create it first");
    plan.images.push_back(a.output);
  } else {
    if (fs::exists(out, ec) && !fs::is_directory(out, ec))
      throw cadyq::Error(cadyq::ErrorCode::InvalidArgument, "-o " + a.output + ": exists and is not a folder");
    if (!fs::exists(out, ec)) plan.folder = a.output;
    std::vector<std::string> names;
    for (const auto& src : inputs) names.push_back(fs::path(src).stem().string() + "_x" + std::to_string(scale) + ".png");
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      bool clash = false;
      for (std::size_t j = 0; j < inputs.size(); ++j) clash |= i != j && lower(names[i]) == lower(names[j]);
      const fs::path src(inputs[i]);
      plan.images.push_back((out / (clash ? src.stem().string() + "_" + lower(src.extension().string().substr(1)) + "_x" +
                                                std::to_string(scale) + ".png"
                                          : names[i]))
                                .string());
    }
  }
  for (const auto& img : plan.images) {
    const fs::path p(img);
    plan.bit_maps.push_back((p.parent_path() / (p.stem().string() + "_bits.png")).string());
  }
  std::vector<std::pair<std::string, std::string>> planned;  // path, what
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    planned.push_back({plan.images[i], "the output of " + inputs[i]});
    if (a.bitmap) planned.push_back({plan.bit_maps[i], "the bit map of " + inputs[i]});
  }
  if (!a.json.empty()) planned.push_back({a.json, "the --json report"});
  for (std::size_t i = 0; i < planned.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j)
      if (key(planned[i].first) == key(planned[j].first))
        throw cadyq::Error(cadyq::ErrorCode::InvalidArgument, planned[i].first + " would be written twice (" + planned[j].second +
                                                                  " and " + planned[i].second + "); give the inputs different names");
    for (const auto& src : inputs)
      if (key(planned[i].first) == key(src) || same_file(planned[i].first, src))
        throw cadyq::Error(cadyq::ErrorCode::InvalidArgument, planned[i].first + ": " + planned[i].second +
                                                                  " would replace the input " + src + "; choose another -o");
    if (fs::is_directory(planned[i].first, ec))
      throw cadyq::Error(cadyq::ErrorCode::InvalidArgument, planned[i].first + ": " + planned[i].second + " would be written here, but it is a folder");
  }
  for (const auto& [path, what] : planned)
    if (!a.overwrite && fs::exists(path, ec))
      throw cadyq::Error(cadyq::ErrorCode::InvalidArgument, path + ": exists; pass --overwrite to replace it, or choose another -o");
  if (!a.json.empty()) {
    const fs::path parent = fs::path(a.json).has_parent_path() ? fs::path(a.json).parent_path() : fs::path(".");
    if (!fs::is_directory(parent, ec))
      throw cadyq::Error(cadyq::ErrorCode::InvalidArgument, a.json + ": its folder does not exist; create it first");
  }
  return plan;
}

int run(const Args& a) {
  cadyq::Options opt;
  opt.tile = a.tile;
  opt.overlap = a.overlap;
  opt.batch = a.batch;
  opt.device = a.device;
  opt.protocol = cadyq::parse_protocol(a.protocol);
  opt.threads = a.threads;
  opt.plugin_libraries = a.plugin_libs;
  const std::vector<std::string> inputs = expand_inputs(a.inputs);  // missing inputs: an error before any work
  cadyq::Upscaler up(a.model, opt);  // a bad model fails here, before anything is read or written
  const int s = up.scale();
  const Plan plan = plan_outputs(inputs, a, s);  // every output name, checked before the first image
  if (!plan.folder.empty()) {
    std::error_code ec;
    fs::create_directories(plan.folder, ec);
    if (ec) throw cadyq::Error(cadyq::ErrorCode::InvalidArgument, plan.folder + ": cannot create this folder (" + ec.message() + ")");
  }
  std::string images_json;
  std::vector<std::string> failed;
  for (std::size_t n = 0; n < inputs.size(); ++n) {
    const std::string& src = inputs[n];
    const std::string& dst = plan.images[n];
    try {
      const auto t0 = std::chrono::steady_clock::now();
      cadyq::Image lr = cadyq::read_image(src, a.max_pixels);
      const double t_decode = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      cadyq::Result r = up.upscale(lr.view());
      r.image.icc_profile = lr.icc_profile;
      const auto t1 = std::chrono::steady_clock::now();
      cadyq::write_image(dst, r.image, a.png_compression);
      const std::string bm_path = a.bitmap ? plan.bit_maps[n] : std::string();
      if (a.bitmap) cadyq::write_image(bm_path, cadyq::render_bit_map(r, s, up.model_info().bits), a.png_compression);
      const double t_encode = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
      r.timings["decode"] = t_decode;
      r.timings["encode"] = t_encode;
      r.timings["total"] += t_decode + t_encode;
      if (!a.quiet)
        std::fprintf(stderr, "%s: %dx%d -> %s  tiles %dx%d  FQR %.2f  BitOPs %.2f G  %.2f s\n", src.c_str(), lr.height,
                     lr.width, dst.c_str(), r.grid.rows(), r.grid.cols(), r.fqr, r.bitops / 1e9, r.timings["total"]);
      std::ostringstream e;
      e << "{\"input\": " << quote(src) << ", \"output\": " << quote(dst)
        << ", \"lr_size\": [" << lr.height << ", " << lr.width << "], \"sr_size\": [" << r.image.height << ", "
        << r.image.width << "], \"tiles\": [" << r.grid.rows() << ", " << r.grid.cols() << "], \"n_tiles\": "
        << r.grid.n_tiles() << ", \"fqr\": " << json_number(r.fqr) << ", \"bitops\": " << json_number(r.bitops)
        << ", \"bitops_g\": " << fmt(r.bitops / 1e9, 4) << ", \"time_s\": {";
      bool first = true;
      for (const auto& [k, v] : r.timings) {
        e << (first ? "" : ", ") << quote(k) << ": " << fmt(v, 4);
        first = false;
      }
      e << "}";
      if (!bm_path.empty()) e << ", \"bit_map\": " << quote(bm_path);
      e << ", \"bits\": [";  // [rows][cols][layers]
      for (int y = 0; y < r.bit_map.rows; ++y) {
        e << (y ? ", [" : "[");
        for (int x = 0; x < r.bit_map.cols; ++x) {
          e << (x ? ", [" : "[");
          for (int l = 0; l < r.bit_map.layers; ++l) e << (l ? ", " : "") << json_number(r.bit_map.at(y, x, l));
          e << "]";
        }
        e << "]";
      }
      e << "]}";
      images_json += (images_json.empty() ? "" : ",\n    ") + e.str();
    } catch (const cadyq::Error& e) {
      if (e.code() != cadyq::ErrorCode::Image) throw;  // a model failure is not one bad image
      failed.push_back(src);
      std::fprintf(stderr, "cadyq-upscale: error: %s\n", e.what());
    }
  }
  if (!a.json.empty()) {
    std::string failed_json;
    for (const auto& f : failed) failed_json += (failed_json.empty() ? "" : ", ") + quote(f);
    std::ostringstream j;
    j << "{\n  \"model\": " << quote(a.model) << ",\n  \"backend\": " << quote(up.backend())
      << ",\n  \"device\": " << quote(up.device()) << ",\n  \"scale\": " << s << ",\n  \"tile\": " << a.tile
      << ",\n  \"overlap\": " << a.overlap << ",\n  \"batch\": " << up.options().batch << ",\n  \"protocol\": "
      << quote(a.protocol) << ",\n  \"images\": [\n    " << images_json << "\n  ],\n  \"failed\": ["
      << failed_json << "]\n}\n";
    cadyq::write_file_atomically(a.json, j.str());
  }
  if (!failed.empty()) {
    if (inputs.size() > 1)
      std::fprintf(stderr, "cadyq-upscale: %zu of %zu images failed\n", failed.size(), inputs.size());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  try {
    return run(parse_args(argc, argv));
  } catch (const UsageError& e) {
    std::fprintf(stderr, "cadyq-upscale: error: %s\n", e.message.c_str());
    return 2;
  } catch (const cadyq::Error& e) {
    std::fprintf(stderr, "cadyq-upscale: error: %s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "cadyq-upscale: error: out of memory; use a smaller --batch or a smaller image\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cadyq-upscale: error: %s\n", e.what());
    return 2;
  } catch (...) {
    std::fprintf(stderr, "cadyq-upscale: error: unknown error\n");
    return 2;
  }
}
