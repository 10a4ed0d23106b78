// PNG (libpng) and JPEG (libjpeg) files. libpng and libjpeg report errors by longjmp, so the code
// that calls them holds no C++ objects with destructors: it fills a plain struct whose buffers
// are malloc'ed, and C++ takes them over afterwards.
#include "cadyq/image_io.hpp"

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "cadyq/error.hpp"
#include "temp_file.hpp"

namespace cadyq {

Image::Image(int w, int h, int c, int depth) : width(w), height(h), channels(c), bit_depth(depth) {
  pixels.assign(row_bytes() * static_cast<std::size_t>(h), 0);
}

namespace {

bool little_endian() {
  const std::uint16_t one = 1;
  return *reinterpret_cast<const std::uint8_t*>(&one) == 1;
}

std::string lower_extension(const std::string& path) {
  const auto slash = path.find_last_of('/');
  const auto dot = path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return "";
  std::string ext = path.substr(dot);
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext;
}

// What the longjmp-guarded readers hand back.
struct RawImage {
  int width = 0, height = 0, channels = 0, bit_depth = 0;
  unsigned char* pixels = nullptr;  // malloc'ed, packed rows
  unsigned char* icc = nullptr;     // malloc'ed
  unsigned icc_size = 0;
  int orientation = 1;              // EXIF orientation (JPEG)
  char error[JMSG_LENGTH_MAX + 64] = {0};
  bool too_large = false;
};

void free_raw(RawImage& raw) {
  std::free(raw.pixels);
  std::free(raw.icc);
  raw.pixels = raw.icc = nullptr;
}

// ---- PNG -------------------------------------------------------------------------------------

struct PngJump {
  std::jmp_buf jump;
  RawImage* raw;
  char* message;
};

void png_on_error(png_structp png, png_const_charp msg) {
  auto* j = static_cast<PngJump*>(png_get_error_ptr(png));
  std::snprintf(j->message, 256, "%s", msg);
  std::longjmp(j->jump, 1);
}

void png_on_warning(png_structp, png_const_charp) {}

struct PngReadState {
  png_structp png = nullptr;
  png_infop info = nullptr;
  png_bytep* rows = nullptr;
};

bool read_png_raw(std::FILE* file, RawImage* raw, long long max_pixels) {
  PngJump j;
  j.raw = raw;
  j.message = raw->error;
  PngReadState st;
  PngReadState* s = &st;  // read through a pointer after longjmp
  s->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &j, png_on_error, png_on_warning);
  if (!s->png) {
    std::snprintf(raw->error, sizeof raw->error, "out of memory");
    return false;
  }
  s->info = png_create_info_struct(s->png);
  if (!s->info) {
    png_destroy_read_struct(&s->png, nullptr, nullptr);
    std::snprintf(raw->error, sizeof raw->error, "out of memory");
    return false;
  }
  if (setjmp(j.jump)) {
    png_destroy_read_struct(&s->png, &s->info, nullptr);
    std::free(s->rows);
    return false;
  }
  png_init_io(s->png, file);
  png_read_info(s->png, s->info);
  png_uint_32 w = 0, h = 0;
  int depth = 0, colour = 0, interlace = 0;
  png_get_IHDR(s->png, s->info, &w, &h, &depth, &colour, &interlace, nullptr, nullptr);
  if (static_cast<long long>(w) * static_cast<long long>(h) > max_pixels) {
    raw->width = static_cast<int>(w);
    raw->height = static_cast<int>(h);
    raw->too_large = true;
    png_error(s->png, "too large");
  }
  if (colour == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(s->png);
  if (colour == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(s->png);
  if (png_get_valid(s->png, s->info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(s->png);
  if (depth == 16 && little_endian()) png_set_swap(s->png);
  png_set_interlace_handling(s->png);
  png_read_update_info(s->png, s->info);
  raw->width = static_cast<int>(w);
  raw->height = static_cast<int>(h);
  raw->channels = png_get_channels(s->png, s->info);
  raw->bit_depth = png_get_bit_depth(s->png, s->info);
  const std::size_t row_bytes = png_get_rowbytes(s->png, s->info);
  raw->pixels = static_cast<unsigned char*>(std::malloc(row_bytes * h));
  s->rows = static_cast<png_bytep*>(std::malloc(sizeof(png_bytep) * h));
  if (!raw->pixels || !s->rows) png_error(s->png, "out of memory");
  for (png_uint_32 y = 0; y < h; ++y) s->rows[y] = raw->pixels + row_bytes * y;
  png_read_image(s->png, s->rows);
  png_read_end(s->png, nullptr);
  png_charp name = nullptr;
  int compression = 0;
  png_bytep profile = nullptr;
  png_uint_32 size = 0;
  if (png_get_iCCP(s->png, s->info, &name, &compression, &profile, &size) && size > 0) {
    raw->icc = static_cast<unsigned char*>(std::malloc(size));
    if (raw->icc) {
      std::memcpy(raw->icc, profile, size);
      raw->icc_size = size;
    }
  }
  png_destroy_read_struct(&s->png, &s->info, nullptr);
  std::free(s->rows);
  return true;
}

struct PngWriteState {
  png_structp png = nullptr;
  png_infop info = nullptr;
  png_bytep* rows = nullptr;
};

bool write_png_raw(std::FILE* file, const Image* img, bool with_icc, int level, char* error) {
  PngJump j;
  j.raw = nullptr;
  j.message = error;
  PngWriteState st;
  PngWriteState* s = &st;
  s->png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &j, png_on_error, png_on_warning);
  if (!s->png) {
    std::snprintf(error, 256, "out of memory");
    return false;
  }
  s->info = png_create_info_struct(s->png);
  if (!s->info) {
    png_destroy_write_struct(&s->png, nullptr);
    std::snprintf(error, 256, "out of memory");
    return false;
  }
  if (setjmp(j.jump)) {
    png_destroy_write_struct(&s->png, &s->info);
    std::free(s->rows);
    return false;
  }
  png_init_io(s->png, file);
  png_set_benign_errors(s->png, 1);  // an ICC profile libpng dislikes is dropped, not fatal
  png_set_compression_level(s->png, level);
  static const int types[] = {0, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB, PNG_COLOR_TYPE_RGB_ALPHA};
  png_set_IHDR(s->png, s->info, static_cast<png_uint_32>(img->width), static_cast<png_uint_32>(img->height), img->bit_depth,
               types[img->channels], PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (with_icc)
    png_set_iCCP(s->png, s->info, "ICC profile", PNG_COMPRESSION_TYPE_BASE, img->icc_profile.data(),
                 static_cast<png_uint_32>(img->icc_profile.size()));
  png_write_info(s->png, s->info);
  if (img->bit_depth == 16 && little_endian()) png_set_swap(s->png);
  s->rows = static_cast<png_bytep*>(std::malloc(sizeof(png_bytep) * static_cast<std::size_t>(img->height)));
  if (!s->rows) png_error(s->png, "out of memory");
  for (int y = 0; y < img->height; ++y)
    s->rows[y] = const_cast<png_bytep>(img->pixels.data() + img->row_bytes() * static_cast<std::size_t>(y));
  png_write_image(s->png, s->rows);
  png_write_end(s->png, nullptr);
  png_destroy_write_struct(&s->png, &s->info);
  std::free(s->rows);
  return true;
}

// ---- JPEG ------------------------------------------------------------------------------------

struct JpegJump {
  jpeg_error_mgr mgr;  // first: libjpeg casts cinfo->err back to this
  std::jmp_buf jump;
  char* message;
};

void jpeg_on_error(j_common_ptr cinfo) {
  auto* j = reinterpret_cast<JpegJump*>(cinfo->err);
  char buf[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, buf);
  std::snprintf(j->message, JMSG_LENGTH_MAX, "%s", buf);
  std::longjmp(j->jump, 1);
}

void jpeg_on_message(j_common_ptr cinfo, int level) {
  // A truncated file is a warning to libjpeg (it fills the rest with gray); Pillow refuses it, so do we.
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) jpeg_on_error(cinfo);
}

int exif_orientation(const unsigned char* d, unsigned n) {
  if (n < 14 || std::memcmp(d, "Exif\0\0", 6) != 0) return 1;
  d += 6;
  n -= 6;
  const bool le = d[0] == 'I' && d[1] == 'I';
  if (!le && !(d[0] == 'M' && d[1] == 'M')) return 1;
  auto u16 = [&](unsigned at) -> unsigned { return le ? d[at] | d[at + 1] << 8 : d[at] << 8 | d[at + 1]; };
  auto u32 = [&](unsigned at) -> unsigned long {
    return le ? d[at] | d[at + 1] << 8 | d[at + 2] << 16 | static_cast<unsigned long>(d[at + 3]) << 24
              : static_cast<unsigned long>(d[at]) << 24 | d[at + 1] << 16 | d[at + 2] << 8 | d[at + 3];
  };
  const unsigned long ifd = u32(4);
  if (ifd + 2 > n) return 1;
  const unsigned count = u16(static_cast<unsigned>(ifd));
  for (unsigned i = 0; i < count; ++i) {
    const unsigned long e = ifd + 2 + 12UL * i;
    if (e + 12 > n) break;
    if (u16(static_cast<unsigned>(e)) == 0x0112 && u16(static_cast<unsigned>(e + 2)) == 3) {
      const unsigned v = u16(static_cast<unsigned>(e + 8));
      return v >= 1 && v <= 8 ? static_cast<int>(v) : 1;
    }
  }
  return 1;
}

struct JpegReadState {
  jpeg_decompress_struct cinfo;
  bool created = false;
};

bool read_jpeg_raw(std::FILE* file, RawImage* raw, long long max_pixels) {
  JpegJump j;
  j.message = raw->error;
  JpegReadState st;
  JpegReadState* s = &st;
  s->cinfo.err = jpeg_std_error(&j.mgr);
  j.mgr.error_exit = jpeg_on_error;
  j.mgr.emit_message = jpeg_on_message;
  if (setjmp(j.jump)) {
    if (s->created) jpeg_destroy_decompress(&s->cinfo);
    return false;
  }
  jpeg_create_decompress(&s->cinfo);
  s->created = true;
  jpeg_stdio_src(&s->cinfo, file);
  jpeg_save_markers(&s->cinfo, JPEG_APP0 + 1, 0xFFFF);  // EXIF
  jpeg_save_markers(&s->cinfo, JPEG_APP0 + 2, 0xFFFF);  // ICC
  jpeg_read_header(&s->cinfo, TRUE);
  raw->width = static_cast<int>(s->cinfo.image_width);
  raw->height = static_cast<int>(s->cinfo.image_height);
  if (static_cast<long long>(raw->width) * raw->height > max_pixels) {
    raw->too_large = true;
    std::snprintf(raw->error, sizeof raw->error, "too large");
    jpeg_destroy_decompress(&s->cinfo);
    return false;
  }
  if (s->cinfo.jpeg_color_space == JCS_CMYK || s->cinfo.jpeg_color_space == JCS_YCCK) {
    std::snprintf(raw->error, sizeof raw->error, "a CMYK JPEG; convert it to RGB first (cadyq upscale in Python reads it)");
    jpeg_destroy_decompress(&s->cinfo);
    return false;
  }
  for (jpeg_saved_marker_ptr m = s->cinfo.marker_list; m; m = m->next)
    if (m->marker == JPEG_APP0 + 1) raw->orientation = exif_orientation(m->data, m->data_length);
#ifdef CADYQ_HAVE_JPEG_ICC
  JOCTET* icc = nullptr;
  unsigned icc_size = 0;
  if (jpeg_read_icc_profile(&s->cinfo, &icc, &icc_size) && icc) {
    raw->icc = icc;  // malloc'ed by libjpeg
    raw->icc_size = icc_size;
  }
#endif
  s->cinfo.out_color_space = s->cinfo.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&s->cinfo);
  raw->channels = s->cinfo.output_components;
  raw->bit_depth = 8;
  const std::size_t row_bytes = static_cast<std::size_t>(raw->width) * raw->channels;
  raw->pixels = static_cast<unsigned char*>(std::malloc(row_bytes * static_cast<std::size_t>(raw->height)));
  if (!raw->pixels) {
    std::snprintf(raw->error, sizeof raw->error, "out of memory");
    jpeg_destroy_decompress(&s->cinfo);
    return false;
  }
  while (s->cinfo.output_scanline < s->cinfo.output_height) {
    JSAMPROW row = raw->pixels + row_bytes * s->cinfo.output_scanline;
    jpeg_read_scanlines(&s->cinfo, &row, 1);
  }
  jpeg_finish_decompress(&s->cinfo);
  jpeg_destroy_decompress(&s->cinfo);
  return true;
}

struct JpegWriteState {
  jpeg_compress_struct cinfo;
  bool created = false;
  unsigned char* row = nullptr;
};

bool write_jpeg_raw(std::FILE* file, const Image* img, bool with_icc, char* error) {
  JpegJump j;
  j.message = error;
  JpegWriteState st;
  JpegWriteState* s = &st;
  s->cinfo.err = jpeg_std_error(&j.mgr);
  j.mgr.error_exit = jpeg_on_error;
  if (setjmp(j.jump)) {
    if (s->created) jpeg_destroy_compress(&s->cinfo);
    std::free(s->row);
    return false;
  }
  jpeg_create_compress(&s->cinfo);
  s->created = true;
  jpeg_stdio_dest(&s->cinfo, file);
  const bool gray = img->channels <= 2;
  const int out_c = gray ? 1 : 3;
  s->cinfo.image_width = static_cast<JDIMENSION>(img->width);
  s->cinfo.image_height = static_cast<JDIMENSION>(img->height);
  s->cinfo.input_components = out_c;
  s->cinfo.in_color_space = gray ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&s->cinfo);
  jpeg_set_quality(&s->cinfo, 95, TRUE);
  for (int c = 0; c < s->cinfo.num_components; ++c) {  // 4:4:4, as cadyq.data.io writes JPEG
    s->cinfo.comp_info[c].h_samp_factor = 1;
    s->cinfo.comp_info[c].v_samp_factor = 1;
  }
  jpeg_start_compress(&s->cinfo, TRUE);
#ifdef CADYQ_HAVE_JPEG_ICC
  if (with_icc)
    jpeg_write_icc_profile(&s->cinfo, img->icc_profile.data(), static_cast<unsigned>(img->icc_profile.size()));
#else
  (void)with_icc;
#endif
  s->row = static_cast<unsigned char*>(std::malloc(static_cast<std::size_t>(img->width) * out_c));
  if (!s->row) {
    std::snprintf(error, 256, "out of memory");
    jpeg_destroy_compress(&s->cinfo);
    return false;
  }
  const int C = img->channels;
  while (s->cinfo.next_scanline < s->cinfo.image_height) {
    const std::size_t y = s->cinfo.next_scanline;
    for (int x = 0; x < img->width; ++x)
      for (int c = 0; c < out_c; ++c) {
        const std::size_t i = (y * static_cast<std::size_t>(img->width) + static_cast<std::size_t>(x)) * C + c;
        s->row[static_cast<std::size_t>(x) * out_c + c] =
            img->bit_depth == 16 ? static_cast<unsigned char>(std::nearbyint(img->data16()[i] / 257.0)) : img->data8()[i];
      }
    JSAMPROW row = s->row;
    jpeg_write_scanlines(&s->cinfo, &row, 1);
  }
  jpeg_finish_compress(&s->cinfo);
  jpeg_destroy_compress(&s->cinfo);
  std::free(s->row);
  return true;
}

// EXIF orientation -> upright pixels (the transposes of Pillow's ImageOps.exif_transpose).
Image orient(const Image& in, int orientation) {
  if (orientation <= 1 || orientation > 8) return in;
  const bool swap = orientation >= 5;
  Image out(swap ? in.height : in.width, swap ? in.width : in.height, in.channels, in.bit_depth);
  out.icc_profile = in.icc_profile;
  const int W = in.width, H = in.height, C = in.channels;
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x) {
      int sy = y, sx = x;
      switch (orientation) {
        case 2: sx = W - 1 - x; break;                       // mirror
        case 3: sy = H - 1 - y; sx = W - 1 - x; break;       // rotate 180
        case 4: sy = H - 1 - y; break;                       // flip
        case 5: sy = x; sx = y; break;                       // transpose
        case 6: sy = H - 1 - x; sx = y; break;               // rotate 90 clockwise
        case 7: sy = H - 1 - x; sx = W - 1 - y; break;       // transverse
        case 8: sy = x; sx = W - 1 - y; break;               // rotate 90 counter-clockwise
      }
      std::memcpy(out.pixels.data() + (static_cast<std::size_t>(y) * out.width + x) * C,
                  in.pixels.data() + (static_cast<std::size_t>(sy) * W + sx) * C, static_cast<std::size_t>(C));
    }
  return out;
}

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};

bool icc_matches(const Image& img) {  // the profile's colour space is what is written (as cadyq.data.io)
  if (img.icc_profile.size() < 20) return false;
  const char* space = reinterpret_cast<const char*>(img.icc_profile.data()) + 16;
  return std::memcmp(space, img.channels <= 2 ? "GRAY" : "RGB ", 4) == 0;
}

}  // namespace

Image read_image(const std::string& path, long long max_pixels) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    throw Error(ErrorCode::Image, path + ": no such file; check the path");
  if (st.st_size == 0) throw Error(ErrorCode::Image, path + ": the file is empty; re-export or remove it");
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) throw Error(ErrorCode::Image, path + ": cannot open (" + std::strerror(errno) + ")");
  unsigned char magic[8] = {0};
  const std::size_t got = std::fread(magic, 1, sizeof magic, file.get());
  std::rewind(file.get());
  RawImage raw;
  bool ok;
  const char* kind;
  if (got >= 8 && png_sig_cmp(magic, 0, 8) == 0) {
    kind = "PNG";
    ok = read_png_raw(file.get(), &raw, max_pixels);
  } else if (got >= 3 && magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF) {
    kind = "JPEG";
    ok = read_jpeg_raw(file.get(), &raw, max_pixels);
  } else {
    throw Error(ErrorCode::Image, path + ": not a PNG or JPEG file; the C++ reader takes PNG and JPEG (convert "
                                         "WebP/TIFF/BMP first, or use `cadyq upscale` in Python)");
  }
  if (!ok) {
    free_raw(raw);
    if (raw.too_large)
      throw Error(ErrorCode::Image, path + ": " + std::to_string(raw.width) + "x" + std::to_string(raw.height) + " = " +
                                        std::to_string(static_cast<long long>(raw.width) * raw.height) +
                                        " pixels is more than the limit of " + std::to_string(max_pixels) +
                                        "; if the file is genuine, raise the limit (--max-pixels), otherwise it may be a decompression bomb");
    throw Error(ErrorCode::Image, path + ": the " + std::string(kind) + " file is corrupt or truncated (" + raw.error +
                                      "); re-export or remove it");
  }
  if (raw.width < 1 || raw.height < 1) {
    free_raw(raw);
    throw Error(ErrorCode::Image, path + ": the image is empty (0 pixels)");
  }
  Image img;
  img.width = raw.width;
  img.height = raw.height;
  img.channels = raw.channels;
  img.bit_depth = raw.bit_depth;
  try {
    img.pixels.assign(raw.pixels, raw.pixels + img.row_bytes() * static_cast<std::size_t>(img.height));
    if (raw.icc) img.icc_profile.assign(raw.icc, raw.icc + raw.icc_size);
  } catch (...) {
    free_raw(raw);
    throw;
  }
  const int orientation = raw.orientation;
  free_raw(raw);
  return orient(img, orientation);
}

bool is_writable_image_path(const std::string& path) {
  const std::string ext = lower_extension(path);
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

void write_image(const std::string& path, const Image& img, int png_compression) {
  const std::string ext = lower_extension(path);
  if (!is_writable_image_path(path))
    throw Error(ErrorCode::Image, path + ": unknown image extension '" + ext + "'; use .png, .jpg or .jpeg");
  if (img.width < 1 || img.height < 1) throw Error(ErrorCode::Image, "cannot write an empty (0-pixel) image");
  if (png_compression < 0 || png_compression > 9)
    throw Error(ErrorCode::InvalidArgument, "PNG compression must be a zlib level from 0 to 9, not " + std::to_string(png_compression));
  if (img.channels < 1 || img.channels > 4 || (img.bit_depth != 8 && img.bit_depth != 16) ||
      img.pixels.size() != img.row_bytes() * static_cast<std::size_t>(img.height))
    throw Error(ErrorCode::InvalidArgument, path + ": the image's size, channels or bit depth do not match its pixels");
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw Error(ErrorCode::Image, path + ": folder " + dir + " does not exist; create it first");
  detail::TempFile tmp(path);  // removed unless committed
  std::unique_ptr<std::FILE, FileCloser> file(fdopen(tmp.release_fd(), "wb"));
  if (!file) throw Error(ErrorCode::Image, path + ": cannot write (" + std::strerror(errno) + ")");
  char error[JMSG_LENGTH_MAX + 64] = {0};
  const bool ok = ext == ".png" ? write_png_raw(file.get(), &img, icc_matches(img), png_compression, error)
                                : write_jpeg_raw(file.get(), &img, icc_matches(img), error);
  const bool flushed = std::fflush(file.get()) == 0 && !std::ferror(file.get());
  const int saved = errno;
  const bool closed = std::fclose(file.release()) == 0;
  if (!ok) throw Error(ErrorCode::Image, path + ": cannot encode (" + error + ")");
  if (!flushed || !closed)
    throw Error(ErrorCode::Image, path + ": cannot write (" + std::strerror(saved) + "); check free space and permissions");
  tmp.commit();
}

}  // namespace cadyq
