/* The C API from C: error cases, then one upscale of a raw RGB image, printed as JSON.
 *
 *   cadyq-c-api-test MODEL.pt2 IN.raw WIDTH HEIGHT OUT.raw [TILE OVERLAP BATCH PROTOCOL]
 *
 * IN.raw: WIDTH x HEIGHT x 3 uint8; OUT.raw receives the SR pixels. stdout: one JSON object (sizes,
 * FQR, BitOPs, bit map). Exit 0 when every check passed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cadyq/cadyq.h"

static int failures = 0;

#define EXPECT(cond, what)                                             \
  do {                                                                 \
    if (!(cond)) {                                                     \
      fprintf(stderr, "FAILED: %s (%s:%d) last error: %s\n", what,     \
              __FILE__, __LINE__, cadyq_last_error());                 \
      ++failures;                                                      \
    }                                                                  \
  } while (0)

int main(int argc, char** argv) {
  if (argc != 6 && argc != 10) {
    fprintf(stderr, "usage: cadyq-c-api-test MODEL IN.raw WIDTH HEIGHT OUT.raw [TILE OVERLAP BATCH PROTOCOL]\n");
    return 2;
  }
  const char* model = argv[1];
  const int width = atoi(argv[3]), height = atoi(argv[4]);
  cadyq_options opt;
  cadyq_options_init(&opt);
  EXPECT(opt.tile == 96 && opt.overlap == 6 && opt.batch == 64, "default options");
  if (argc == 10) {
    opt.tile = atoi(argv[6]);
    opt.overlap = atoi(argv[7]);
    opt.batch = atoi(argv[8]);
    opt.protocol = argv[9];
  }
  cadyq_upscaler* up = NULL;

  /* errors: a status, a message, and nothing allocated */
  EXPECT(cadyq_upscaler_create(NULL, &opt, &up) == CADYQ_ERROR_INVALID_ARGUMENT && up == NULL, "NULL model path");
  EXPECT(cadyq_upscaler_create("/nonexistent/model.pt2", &opt, &up) == CADYQ_ERROR_MODEL && up == NULL, "missing model");
  EXPECT(strstr(cadyq_last_error(), "no such model package") != NULL, "missing model message");
  EXPECT(cadyq_upscaler_create(argv[2], &opt, &up) == CADYQ_ERROR_MODEL && up == NULL, "not a model file");
  cadyq_options bad = opt;
  bad.overlap = bad.tile;
  EXPECT(cadyq_upscaler_create(model, &bad, &up) == CADYQ_ERROR_INVALID_ARGUMENT && up == NULL, "overlap >= tile");
  bad = opt;
  bad.protocol = "diagonal";
  EXPECT(cadyq_upscaler_create(model, &bad, &up) == CADYQ_ERROR_INVALID_ARGUMENT, "unknown protocol");
  bad = opt;
  bad.batch = 0;
  EXPECT(cadyq_upscaler_create(model, &bad, &up) == CADYQ_ERROR_INVALID_ARGUMENT, "batch 0");
  bad = opt;
  bad.device = "tpu";
  EXPECT(cadyq_upscaler_create(model, &bad, &up) == CADYQ_ERROR_INVALID_ARGUMENT, "unknown device");

  if (cadyq_upscaler_create(model, &opt, &up) != CADYQ_OK) {
    fprintf(stderr, "FAILED: cadyq_upscaler_create: %s\n", cadyq_last_error());
    return 1;
  }
  EXPECT(cadyq_last_error()[0] == '\0', "no error after success");
  const int scale = cadyq_upscaler_scale(up), layers = cadyq_upscaler_layers(up);
  int bits[8];
  const int n_bits = cadyq_upscaler_bits(up, bits, 8);
  EXPECT(scale >= 1 && n_bits >= 1, "model info");

  size_t n_in = (size_t)width * height * 3;
  unsigned char* pixels = malloc(n_in);
  FILE* f = fopen(argv[2], "rb");
  if (!pixels || !f || fread(pixels, 1, n_in, f) != n_in) {
    fprintf(stderr, "cannot read %s\n", argv[2]);
    return 2;
  }
  fclose(f);
  cadyq_result* res = NULL;
  cadyq_image img = {pixels, width, height, 3, 8, 0};
  cadyq_image empty = {pixels, 0, 0, 3, 8, 0};
  cadyq_image five = {pixels, width, height, 5, 8, 0};
  EXPECT(cadyq_upscale(up, NULL, &res) == CADYQ_ERROR_INVALID_ARGUMENT && res == NULL, "NULL image");
  EXPECT(cadyq_upscale(up, &empty, &res) == CADYQ_ERROR_IMAGE && res == NULL, "empty image");
  EXPECT(cadyq_upscale(up, &five, &res) == CADYQ_ERROR_INVALID_ARGUMENT && res == NULL, "5 channels");

  if (cadyq_upscale(up, &img, &res) != CADYQ_OK) {
    fprintf(stderr, "FAILED: cadyq_upscale: %s\n", cadyq_last_error());
    return 1;
  }
  cadyq_image out;
  EXPECT(cadyq_result_image(res, &out) == CADYQ_OK, "result image");
  EXPECT(out.width == width * scale && out.height == height * scale && out.channels == 3 && out.bit_depth == 8, "SR size");
  const float* map = NULL;
  int rows = 0, cols = 0, n_layers = 0;
  EXPECT(cadyq_result_bit_map(res, &map, &rows, &cols, &n_layers) == CADYQ_OK && n_layers == layers, "bit map");
  EXPECT(cadyq_result_timing(res, "total") >= 0 && cadyq_result_timing(res, "nonsense") == -1.0, "timings");
  f = fopen(argv[5], "wb");
  for (int y = 0; f && y < out.height; ++y)
    fwrite((const unsigned char*)out.data + (size_t)y * out.stride, 1, (size_t)out.width * 3, f);
  if (f) fclose(f);
  printf("{\"scale\": %d, \"width\": %d, \"height\": %d, \"fqr\": %.17g, \"bitops\": %.17g, \"rows\": %d, \"cols\": %d, "
         "\"layers\": %d, \"bits\": [", scale, out.width, out.height, cadyq_result_fqr(res), cadyq_result_bitops(res), rows,
         cols, n_layers);
  for (int i = 0; i < rows * cols * n_layers; ++i) printf("%s%g", i ? ", " : "", map[i]);
  printf("], \"version\": \"%s\"}\n", cadyq_version());
  cadyq_result_free(res);
  cadyq_upscaler_free(up);
  cadyq_result_free(NULL);
  cadyq_upscaler_free(NULL);
  free(pixels);
  return failures ? 1 : 0;
}
