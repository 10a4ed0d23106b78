// PNG and JPEG files (libpng, libjpeg): read to an Image, write an Image atomically.
//
// read_image: PNG (8/16-bit gray, gray+alpha, RGB, RGBA; palette and tRNS become RGB(A)), JPEG
// (gray or YCbCr/RGB; EXIF orientation applied, as Pillow's exif_transpose). The ICC profile is kept.
// The format is told by the file's first bytes, not its name. CMYK JPEGs are refused (convert
// them first). Images above max_pixels are refused (decompression bombs).
// write_image: .png (8/16-bit, alpha kept) or .jpg/.jpeg (quality 95, 4:4:4; alpha dropped,
// 16-bit rounded to 8), written to a temporary name in the same folder and renamed, so an
// interrupted or failed write leaves no half-written file and keeps an existing one intact.
#pragma once

#include <string>

#include "cadyq/export.h"
#include "cadyq/image.hpp"

namespace cadyq {

constexpr long long kDefaultMaxPixels = 8192LL * 8192LL * 2LL;  // cadyq.data.io.read_image's limit

CADYQ_API Image read_image(const std::string& path, long long max_pixels = kDefaultMaxPixels);
// png_compression: zlib level 0-9 of PNG files (1, as `cadyq upscale`: fast; all levels are lossless)
CADYQ_API void write_image(const std::string& path, const Image& image, int png_compression = 1);
CADYQ_API bool is_writable_image_path(const std::string& path);  // .png .jpg .jpeg (any case)

// Writes `bytes` to `path` through a temporary file in the same folder and a rename (Error(Image)).
CADYQ_API void write_file_atomically(const std::string& path, const std::string& bytes);

// The temporary file write_image is writing now, or nullptr: a signal handler may unlink() it
// before the process exits, so an interrupted write leaves nothing behind.
CADYQ_API const char* pending_temp_file() noexcept;

}  // namespace cadyq
