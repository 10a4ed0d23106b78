/* libcadyq's C API: super-resolution with CADyQ models from C and other languages.
 *
 *   cadyq_options opt;
 *   cadyq_options_init(&opt);                     // tile 96, overlap 6, batch 64, device "auto"
 *   cadyq_upscaler* up = NULL;
 *   if (cadyq_upscaler_create("model.pt2", &opt, &up) != CADYQ_OK) { puts(cadyq_last_error()); ... }
 *   cadyq_image in = {pixels, width, height, 3, 8, 0};
 *   cadyq_result* res = NULL;
 *   if (cadyq_upscale(up, &in, &res) == CADYQ_OK) { cadyq_image out; cadyq_result_image(res, &out); ... }
 *   cadyq_result_free(res);
 *   cadyq_upscaler_free(up);
 *
 * Every function that can fail returns a cadyq_status; on failure cadyq_last_error() gives the
 * message of this thread's last error. No C++ exception crosses this API. Results stay valid until
 * cadyq_result_free; pointers they hand out point into them. An upscaler may be used from several
 * threads; its calls then run one at a time.
 */
#ifndef CADYQ_H
#define CADYQ_H

#include <stddef.h>

#include "cadyq/export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cadyq_status {
  CADYQ_OK = 0,
  CADYQ_ERROR_INVALID_ARGUMENT = 1, /* a bad option or argument (NULL pointer, tile, overlap, ...) */
  CADYQ_ERROR_MODEL = 2,            /* the model cannot be loaded or run here */
  CADYQ_ERROR_IMAGE = 3,            /* the image is not usable (empty, unsupported layout) */
  CADYQ_ERROR_RUNTIME = 4,          /* the model failed while running */
  CADYQ_ERROR_OUT_OF_MEMORY = 5
} cadyq_status;

typedef struct cadyq_upscaler cadyq_upscaler;
typedef struct cadyq_result cadyq_result;

typedef struct cadyq_options {
  int tile;             /* LR tile size (96) */
  int overlap;          /* LR overlap of neighbouring tiles (6) */
  int batch;            /* tiles per model run (64) */
  int threads;          /* CPU threads of the model; 0: one per core */
  const char* device;   /* "auto", "cpu", "cuda", "cuda:N" (NULL: "auto") */
  const char* protocol; /* "shift" or "official" (NULL: "shift") */
} cadyq_options;

/* Interleaved pixels: channels 1 (gray), 2 (gray+alpha), 3 (RGB), 4 (RGBA); bit_depth 8 or 16
 * (16: native-endian uint16 samples); stride in bytes between rows, 0 for packed rows. */
typedef struct cadyq_image {
  const void* data;
  int width;
  int height;
  int channels;
  int bit_depth;
  size_t stride;
} cadyq_image;

CADYQ_API const char* cadyq_version(void);
CADYQ_API const char* cadyq_last_error(void); /* "" when there was none; valid until the next call on this thread */

CADYQ_API void cadyq_options_init(cadyq_options* options);
CADYQ_API cadyq_status cadyq_upscaler_create(const char* model_path, const cadyq_options* options, cadyq_upscaler** out);
CADYQ_API void cadyq_upscaler_free(cadyq_upscaler* upscaler); /* NULL is fine */
CADYQ_API int cadyq_upscaler_scale(const cadyq_upscaler* upscaler);  /* 0 for NULL */
CADYQ_API int cadyq_upscaler_layers(const cadyq_upscaler* upscaler); /* dynamic layers: columns of the bit map */
/* The bit candidates of the model: writes up to `capacity` of them, returns how many there are. */
CADYQ_API int cadyq_upscaler_bits(const cadyq_upscaler* upscaler, int* bits, int capacity);

CADYQ_API cadyq_status cadyq_upscale(cadyq_upscaler* upscaler, const cadyq_image* image, cadyq_result** out);

CADYQ_API cadyq_status cadyq_result_image(const cadyq_result* result, cadyq_image* out);
/* bits: [rows][cols][layers] floats, the bit-width per tile and dynamic layer */
CADYQ_API cadyq_status cadyq_result_bit_map(const cadyq_result* result, const float** bits, int* rows, int* cols, int* layers);
CADYQ_API double cadyq_result_fqr(const cadyq_result* result);
CADYQ_API double cadyq_result_bitops(const cadyq_result* result);
/* seconds spent in "prepare", "inference", "stitch", "finish" or "total"; -1 for an unknown name */
CADYQ_API double cadyq_result_timing(const cadyq_result* result, const char* name);
CADYQ_API void cadyq_result_free(cadyq_result* result); /* NULL is fine */

#ifdef __cplusplus
}
#endif

#endif /* CADYQ_H */
