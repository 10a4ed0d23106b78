// The C API: every entry point catches everything, sets the thread's last error and returns a status.
#include "cadyq/cadyq.h"

#include <exception>
#include <new>
#include <string>

#include "cadyq/upscaler.hpp"

struct cadyq_upscaler {
  cadyq::Upscaler impl;
};

struct cadyq_result {
  cadyq::Result impl;
};

namespace {

thread_local std::string g_last_error;

cadyq_status fail(cadyq_status status, const std::string& message) {
  try {
    g_last_error = message;
  } catch (...) {
  }
  return status;
}

template <typename F>
cadyq_status guarded(F&& body) {
  try {
    g_last_error.clear();
    body();
    return CADYQ_OK;
  } catch (const cadyq::Error& e) {
    return fail(static_cast<cadyq_status>(static_cast<int>(e.code())), e.what());
  } catch (const std::bad_alloc&) {
    return fail(CADYQ_ERROR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail(CADYQ_ERROR_RUNTIME, e.what());
  } catch (...) {
    return fail(CADYQ_ERROR_RUNTIME, "unknown error");
  }
}

}  // namespace

extern "C" {

const char* cadyq_version(void) { return cadyq::version(); }

const char* cadyq_last_error(void) { return g_last_error.c_str(); }

void cadyq_options_init(cadyq_options* o) {
  if (!o) return;
  const cadyq::Options d;
  o->tile = d.tile;
  o->overlap = d.overlap;
  o->batch = d.batch;
  o->threads = d.threads;
  o->device = "auto";
  o->protocol = "shift";
}

cadyq_status cadyq_upscaler_create(const char* model_path, const cadyq_options* options, cadyq_upscaler** out) {
  if (!out) return fail(CADYQ_ERROR_INVALID_ARGUMENT, "cadyq_upscaler_create: out is NULL");
  *out = nullptr;
  if (!model_path) return fail(CADYQ_ERROR_INVALID_ARGUMENT, "cadyq_upscaler_create: model_path is NULL");
  return guarded([&] {
    cadyq::Options opt;
    if (options) {
      opt.tile = options->tile;
      opt.overlap = options->overlap;
      opt.batch = options->batch;
      opt.threads = options->threads;
      if (options->device) opt.device = options->device;
      if (options->protocol) opt.protocol = cadyq::parse_protocol(options->protocol);
    }
    *out = new cadyq_upscaler{cadyq::Upscaler(model_path, opt)};
  });
}

void cadyq_upscaler_free(cadyq_upscaler* upscaler) { delete upscaler; }

int cadyq_upscaler_scale(const cadyq_upscaler* u) { return u ? u->impl.scale() : 0; }

int cadyq_upscaler_layers(const cadyq_upscaler* u) { return u ? u->impl.model_info().n_layers() : 0; }

int cadyq_upscaler_bits(const cadyq_upscaler* u, int* bits, int capacity) {
  if (!u) return 0;
  const auto& b = u->impl.model_info().bits;
  for (int i = 0; bits && i < capacity && i < static_cast<int>(b.size()); ++i) bits[i] = b[static_cast<std::size_t>(i)];
  return static_cast<int>(b.size());
}

cadyq_status cadyq_upscale(cadyq_upscaler* u, const cadyq_image* image, cadyq_result** out) {
  if (!out) return fail(CADYQ_ERROR_INVALID_ARGUMENT, "cadyq_upscale: out is NULL");
  *out = nullptr;
  if (!u) return fail(CADYQ_ERROR_INVALID_ARGUMENT, "cadyq_upscale: upscaler is NULL");
  if (!image) return fail(CADYQ_ERROR_INVALID_ARGUMENT, "cadyq_upscale: image is NULL");
  return guarded([&] {
    const cadyq::ImageView view{image->data, image->width, image->height, image->channels, image->bit_depth, image->stride};
    *out = new cadyq_result{u->impl.upscale(view)};
  });
}

cadyq_status cadyq_result_image(const cadyq_result* r, cadyq_image* out) {
  if (!r || !out) return fail(CADYQ_ERROR_INVALID_ARGUMENT, "cadyq_result_image: NULL argument");
  const cadyq::Image& im = r->impl.image;
  *out = {im.pixels.data(), im.width, im.height, im.channels, im.bit_depth, im.row_bytes()};
  return CADYQ_OK;
}

cadyq_status cadyq_result_bit_map(const cadyq_result* r, const float** bits, int* rows, int* cols, int* layers) {
  if (!r) return fail(CADYQ_ERROR_INVALID_ARGUMENT, "cadyq_result_bit_map: result is NULL");
  const cadyq::BitMap& b = r->impl.bit_map;
  if (bits) *bits = b.bits.data();
  if (rows) *rows = b.rows;
  if (cols) *cols = b.cols;
  if (layers) *layers = b.layers;
  return CADYQ_OK;
}

double cadyq_result_fqr(const cadyq_result* r) { return r ? r->impl.fqr : 0.0; }

double cadyq_result_bitops(const cadyq_result* r) { return r ? r->impl.bitops : 0.0; }

double cadyq_result_timing(const cadyq_result* r, const char* name) {
  if (!r || !name) return -1.0;
  const auto it = r->impl.timings.find(name);
  return it == r->impl.timings.end() ? -1.0 : it->second;
}

void cadyq_result_free(cadyq_result* result) { delete result; }

}  // extern "C"
