/* cadyq CPU kernels: the 8-bit activations of the native CPU program (statistics, selection, re-quantization
 * tables, the residual stream), and the quantizers' training passes.
 *
 * Tensors are channels last: x[p * c + j] for pixel p < hw and channel j < c, tiles one after another. Built by
 * cadyq/kernels/cpu/build.py with -O3 -march=native -ffp-contract=off (no FMA contraction: the quantization
 * rounds exactly as torch's round(clamp(x, -a, a) / a * s) does, op for op).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#endif

#define BLOCK 64 /* pixels per float partial sum; the block sums go to doubles */
#define MAXC 1024 /* channels of one quantized layer input, at most */

/* ---- inference: 8-bit activations (native CPU program) ------------------------------------------------------
 * Activations are uint8 u = v + 128, v an integer on a layer's top grid: value = v / s_T * a_T (the top candidate's
 * 8-bit quantizer, s_T = 127). A dynamic quantizer reads the statistics of v, picks candidate k per tile, and maps
 * v through its 256-entry table luts[k] (the re-quantization to k's levels, expressed on the top grid again; built
 * by cadyq.quant.lowering from the reference arithmetic, so every executor agrees). Tiles are NHWC, n pixels x c
 * channels, stored one after another. */

/* sigma of a tile from integer sums, k = argmax(W @ [g, sigma] + b) (first maximum, as torch.argmax). */
static int select_tile(const int32_t *s1, const int64_t *s2, long hw, int c, float t, const float *g, const float *w,
                       const float *b, int k_count) {
    float sigma[MAXC];
    for (int j = 0; j < c; j++) {
        double var = hw > 1 ? ((double)s2[j] - (double)s1[j] * (double)s1[j] / (double)hw) / (double)(hw - 1) : NAN;
        sigma[j] = (float)(sqrt(var > 0.0 ? var : 0.0) * (double)t);
    }
    int best = 0;
    double best_v = 0.0;
    for (int k = 0; k < k_count; k++) {
        const float *row = w + (long)k * (c + 2);
        double v = (double)b[k] + (double)row[0] * g[0] + (double)row[1] * g[1];
        for (int j = 0; j < c; j++) v += (double)row[2 + j] * sigma[j];
        if (k == 0 || v > best_v) { best = k; best_v = v; }
    }
    return best;
}

/* x[i] = lut[x[i]] over m bytes. */
static void apply_lut(uint8_t *restrict x, long m, const uint8_t *restrict lut) {
    long i = 0;
#if defined(__AVX512VBMI__) && defined(__AVX512BW__)
    const __m512i t0 = _mm512_loadu_si512(lut), t1 = _mm512_loadu_si512(lut + 64);
    const __m512i t2 = _mm512_loadu_si512(lut + 128), t3 = _mm512_loadu_si512(lut + 192);
    for (; i + 64 <= m; i += 64) {
        __m512i v = _mm512_loadu_si512(x + i);
        __m512i lo = _mm512_permutex2var_epi8(t0, v, t1), hi = _mm512_permutex2var_epi8(t2, v, t3);
        __mmask64 top = _mm512_movepi8_mask(v);  /* bit 7: the upper half of the table */
        _mm512_storeu_si512(x + i, _mm512_mask_blend_epi8(top, lo, hi));
    }
#endif
    for (; i < m; i++) x[i] = lut[x[i]];
}

/* The per-tile statistics of a u8 tile: s1[j] = sum v, s2[j] = sum v^2 over the hw pixels (v = u - 128). */
static void u8_stats(const uint8_t *restrict x, long hw, int c, int32_t *restrict s1, int64_t *restrict s2) {
    int32_t a1[MAXC], a2[MAXC];
    for (int j = 0; j < c; j++) { s1[j] = 0; s2[j] = 0; }
#if defined(__AVX512F__) && defined(__AVX512BW__)
    if (c % 32 == 0 && c <= 256 && hw % 2 == 0) {
        /* 32 channels of two pixels at a time in int16: sums of v add up in int16 for 256 pixels (256 * 127 fits);
         * squares of the pixel pair, interleaved by unpack, summed by madd into int32 lanes that each hold one
         * channel (unpack works within 128-bit lanes: lane l of lo holds channels 8l..8l+3, of hi 8l+4..8l+7). */
        const int groups = c / 32;
        const __m512i off = _mm512_set1_epi16(128);
        __m512i q2lo[8], q2hi[8], w1[8];
        for (int g = 0; g < groups; g++) q2lo[g] = q2hi[g] = _mm512_setzero_si512();
        for (int j = 0; j < c; j++) a1[j] = 0;
        for (long p0 = 0; p0 < hw; p0 += 256) {
            const long p1 = p0 + 256 < hw ? p0 + 256 : hw;
            for (int g = 0; g < groups; g++) w1[g] = _mm512_setzero_si512();
            for (long p = p0; p < p1; p += 2) {
                for (int g = 0; g < groups; g++) {
                    const long i = p * c + 32 * g;
                    __m512i a = _mm512_sub_epi16(_mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(x + i))), off);
                    __m512i b = _mm512_sub_epi16(_mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(x + i + c))), off);
                    w1[g] = _mm512_add_epi16(w1[g], _mm512_add_epi16(a, b));
                    q2lo[g] = _mm512_add_epi32(q2lo[g], _mm512_madd_epi16(_mm512_unpacklo_epi16(a, b), _mm512_unpacklo_epi16(a, b)));
                    q2hi[g] = _mm512_add_epi32(q2hi[g], _mm512_madd_epi16(_mm512_unpackhi_epi16(a, b), _mm512_unpackhi_epi16(a, b)));
                }
            }
            for (int g = 0; g < groups; g++) {  /* the int16 sums into int32 */
                int16_t t[32];
                _mm512_storeu_si512(t, w1[g]);
                for (int j = 0; j < 32; j++) a1[32 * g + j] += t[j];
            }
        }
        for (int g = 0; g < groups; g++) {
            int32_t lo[16], hi[16];
            _mm512_storeu_si512(lo, q2lo[g]);
            _mm512_storeu_si512(hi, q2hi[g]);
            for (int l = 0; l < 4; l++)
                for (int e = 0; e < 4; e++) {
                    s2[32 * g + 8 * l + e] = lo[4 * l + e];
                    s2[32 * g + 8 * l + 4 + e] = hi[4 * l + e];
                }
            for (int j = 0; j < 32; j++) s1[32 * g + j] = a1[32 * g + j];
        }
        return;
    }
#endif
    for (long p0 = 0; p0 < hw; p0 += 1024) {  /* 1024 * 127^2 fits int32 */
        long p1 = p0 + 1024 < hw ? p0 + 1024 : hw;
        for (int j = 0; j < c; j++) a1[j] = a2[j] = 0;
        for (long p = p0; p < p1; p++) {
            const uint8_t *restrict r = x + p * c;
            for (int j = 0; j < c; j++) {
                int32_t v = (int32_t)r[j] - 128;
                a1[j] += v;
                a2[j] += v * v;
            }
        }
        for (int j = 0; j < c; j++) { s1[j] += a1[j]; s2[j] += a2[j]; }
    }
}

/* Choose k per tile (k_in == NULL: from the statistics; else k_in[n]) and apply luts[k] in place, unless the row is
 * the identity. Returns 0, or -1 when c > MAXC. */
static int finish(uint8_t *x, long n_tiles, long hw, int c, const float *g, const float *w, const float *b,
                  int k_count, const int *k_in, float t, const uint8_t *luts, const int *identity, int *k_out,
                  const int32_t *s1_all, const int64_t *s2_all) {
    for (long n = 0; n < n_tiles; n++) {
        uint8_t *xt = x + n * hw * c;
        int k;
        if (k_in) {
            k = k_in[n];
        } else {
            k = select_tile(s1_all + n * c, s2_all + n * c, hw, c, t, g + 2 * n, w, b, k_count);
        }
        k_out[n] = k;
        if (!identity[k]) apply_lut(xt, hw * c, luts + 256L * k);
    }
    return 0;
}

#define SELECT_ARGS const float *g, const float *w, const float *b, int k_count, const int *k_in, float t, \
                    const uint8_t *luts, const int *identity, int *k_out
#define SELECT_PASS g, w, b, k_count, k_in, t, luts, identity, k_out

/* A dynamic quantizer on a u8 tensor (a convolution wrote it on the top grid): statistics, choice, table, in place. */
int cadyq_select_u8(uint8_t *x, long n_tiles, long hw, int c, SELECT_ARGS) {
    if (c > MAXC) return -1;
    int32_t s1[MAXC];
    int64_t s2[MAXC];
    for (long n = 0; n < n_tiles; n++) {
        if (!k_in) u8_stats(x + n * hw * c, hw, c, s1, s2);
        finish(x + n * hw * c, 1, hw, c, g + 2 * n, w, b, k_count, k_in ? k_in + n : NULL, t, luts, identity,
               k_out + n, s1, s2);
    }
    return 0;
}

/* round(clamp(v, -a, a) / a * s), op for op as torch: minimum, maximum, divide, multiply, round half even */
static inline float quant1(float v, float a, float s) {
    v = v < a ? v : a;
    v = v > -a ? v : -a;
    return rintf(v / a * s);
}

/* The inference passes multiply where the reference divides (x * (s / a) for x / a * s, q * (a / 127) for q / 127 * a):
 * a division per element would cost more than the rest of the pass. The two differ only where a value sits within
 * a float rounding of a .5 tie, a few elements in a million; the parity tests explain any choice such an element
 * moves as a rounding boundary. */
static inline int32_t quant_fast(float v, float a, float inv) {
    v = v < a ? v : a;
    v = v > -a ? v : -a;
    return (int32_t)rintf(v * inv);
}

static inline float bf16_load(const uint16_t *p, long i) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)p[i] << 16;
    return v.f;
}
static inline uint16_t bf16_round(float f) {  /* round to nearest even, as torch's float -> bfloat16 */
    union { uint32_t u; float f; } v;
    v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);  /* NaN stays NaN */
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

/* Tile by tile: u = round(clamp(x, -a, a) / a * s) + 128 with the statistics of the same pass, then the choice and
 * the table. x: float32 (bf16 == 0) or bfloat16, NHWC. */
int cadyq_quantize_select(const void *x, int bf16, uint8_t *out, long n_tiles, long hw, int c, float a, float s,
                          SELECT_ARGS) {
    if (c > MAXC) return -1;
    const float inv = s / a;
    int32_t s1[MAXC], a1[MAXC];
    int64_t s2[MAXC];
    int32_t a2[MAXC];
    for (long n = 0; n < n_tiles; n++) {
        const long base = n * hw * c;
        for (int j = 0; j < c; j++) { s1[j] = 0; s2[j] = 0; }
        for (long p0 = 0; p0 < hw; p0 += 1024) {
            long p1 = p0 + 1024 < hw ? p0 + 1024 : hw;
            for (int j = 0; j < c; j++) a1[j] = a2[j] = 0;
            for (long p = p0; p < p1; p++) {
                const long r = base + p * c;
                uint8_t *restrict o = out + r;
                if (bf16) {
                    for (int j = 0; j < c; j++) {
                        int32_t v = quant_fast(bf16_load((const uint16_t *)x, r + j), a, inv);
                        o[j] = (uint8_t)(v + 128); a1[j] += v; a2[j] += v * v;
                    }
                } else {
                    const float *restrict xr = (const float *)x + r;
                    for (int j = 0; j < c; j++) {
                        int32_t v = quant_fast(xr[j], a, inv);
                        o[j] = (uint8_t)(v + 128); a1[j] += v; a2[j] += v * v;
                    }
                }
            }
            for (int j = 0; j < c; j++) { s1[j] += a1[j]; s2[j] += a2[j]; }
        }
        finish(out + base, 1, hw, c, g + 2 * n, w, b, k_count, k_in ? k_in + n : NULL, t, luts, identity, k_out + n,
               s1, s2);
    }
    return 0;
}

/* One tile of the residual pass (below): out = round(clamp(r, -a, a) * inv) + 128 and the statistics of the same
 * integers into s1, s2. */
static void residual_tile(const uint8_t *restrict y, const uint8_t *restrict sk, uint8_t *restrict out, long hw, int c,
                          float ty, float ts, float a, float s, float inv, int32_t *s1, int64_t *s2) {
    int32_t a1[MAXC], a2[MAXC];
    for (int j = 0; j < c; j++) { s1[j] = 0; s2[j] = 0; }
    for (long p0 = 0; p0 < hw; p0 += 1024) {  /* 1024 * 127^2 fits int32 */
        long p1 = p0 + 1024 < hw ? p0 + 1024 : hw;
#if defined(__AVX512F__) && defined(__AVX512BW__)
        if (c % 16 == 0 && c <= 256) {  /* 16 channels at a time: r * inv by FMA, the statistics in float (exact) */
            const __m512 vcy = _mm512_set1_ps(ty * inv), vcs = _mm512_set1_ps(ts * inv), vs = _mm512_set1_ps(s),
                         vns = _mm512_set1_ps(-s), v128 = _mm512_set1_ps(128.0f);
            const __m128i one = _mm_set1_epi8(1), sign = _mm_set1_epi8((char)0x80);
            __m512 acc1[16], acc2[16];
            const int groups = c / 16;
            for (int g = 0; g < groups; g++) acc1[g] = acc2[g] = _mm512_setzero_ps();
            for (long p = p0; p < p1; p++) {
                for (int g = 0; g < groups; g++) {
                    const long i = p * c + 16 * g;
                    /* max(y, 1): the block output's quantizer clamps at -127 (u = 1) */
                    __m128i yb = _mm_max_epu8(_mm_loadu_si128((const __m128i *)(y + i)), one);
                    __m512 yf = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(yb)), v128);
                    __m512 sf = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
                        _mm_loadu_si128((const __m128i *)(sk + i)))), v128);
                    __m512 t = _mm512_fmadd_ps(yf, vcy, _mm512_mul_ps(sf, vcs));
                    t = _mm512_max_ps(_mm512_min_ps(t, vs), vns);
                    __m512 v = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                    /* int8 v, then u = v + 128 as a flip of the sign bit */
                    _mm_storeu_si128((__m128i *)(out + i), _mm_xor_si128(_mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)), sign));
                    acc1[g] = _mm512_add_ps(acc1[g], v);
                    acc2[g] = _mm512_fmadd_ps(v, v, acc2[g]);  /* exact: 1024 * 127^2 < 2^24 */
                }
            }
            for (int g = 0; g < groups; g++) {
                float f1[16], f2[16];
                _mm512_storeu_ps(f1, acc1[g]);
                _mm512_storeu_ps(f2, acc2[g]);
                for (int j = 0; j < 16; j++) { s1[16 * g + j] += (int32_t)f1[j]; s2[16 * g + j] += (int64_t)f2[j]; }
            }
            continue;
        }
#endif
        for (int j = 0; j < c; j++) a1[j] = a2[j] = 0;
        for (long p = p0; p < p1; p++) {
            const uint8_t *restrict yr = y + p * c, *restrict sr = sk + p * c;
            uint8_t *restrict o = out + p * c;
            for (int j = 0; j < c; j++) {
                int32_t yq = (int32_t)yr[j] - 128;
                yq = yq > -127 ? yq : -127;
                float r = (float)yq * ty + (float)((int32_t)sr[j] - 128) * ts;
                int32_t v = quant_fast(r, a, inv);
                o[j] = (uint8_t)(v + 128); a1[j] += v; a2[j] += v * v;
            }
        }
        for (int j = 0; j < c; j++) { s1[j] += a1[j]; s2[j] += a2[j]; }
    }
}

/* The residual stream of EDSR's blocks: r = y / 127 * a_y + skip / 127 * a_skip (y: a block's output on its fixed
 * 8-bit quantizer, clamped to -127; skip: the block's quantized input), then as cadyq_quantize_select with the next
 * block's quantizer (a, s). */
int cadyq_residual_select(const uint8_t *y, float a_y, const uint8_t *skip, float a_skip, uint8_t *out, long n_tiles,
                          long hw, int c, float a, float s, SELECT_ARGS) {
    if (c > MAXC) return -1;
    int32_t s1[MAXC];
    int64_t s2[MAXC];
    const float ty = a_y / 127.0f, ts = a_skip / 127.0f, inv = s / a;
    for (long n = 0; n < n_tiles; n++) {
        const long base = n * hw * c;
        residual_tile(y + base, skip + base, out + base, hw, c, ty, ts, a, s, inv, s1, s2);
        finish(out + base, 1, hw, c, g + 2 * n, w, b, k_count, k_in ? k_in + n : NULL, t, luts, identity, k_out + n,
               s1, s2);
    }
    return 0;
}

/* The tile gradient of ops.tile_gradient: gray = sum_c x_c / 255 * (0.299, 0.587, 0.114)_c, the normalized 3x3 Sobel
 * (kernel / 8) with replicate padding, mean |dx| and |dy| * 1e3 per tile. x: n tiles of h x w RGB pixels, float32,
 * channels last; out [n, 2]. The sums run in another order than torch's convolution: values equal to float rounding. */
int cadyq_tile_gradient(const float *x, long n_tiles, long h, long w, float *out) {
    float *gray = malloc(sizeof(float) * (size_t)(h * w));
    if (!gray) return -1;
    const float k0 = 0.299f, k1 = 0.587f, k2 = 0.114f;
    for (long n = 0; n < n_tiles; n++) {
        const float *t = x + n * h * w * 3;
        for (long i = 0; i < h * w; i++)
            gray[i] = t[3 * i] / 255.0f * k0 + t[3 * i + 1] / 255.0f * k1 + t[3 * i + 2] / 255.0f * k2;
        double sx = 0.0, sy = 0.0;
        for (long yy = 0; yy < h; yy++) {
            const float *up = gray + (yy > 0 ? yy - 1 : 0) * w, *mid = gray + yy * w,
                        *dn = gray + (yy + 1 < h ? yy + 1 : h - 1) * w;
            float rx = 0.0f, ry = 0.0f;
            for (long xx = 0; xx < w; xx++) {
                const long l = xx > 0 ? xx - 1 : 0, r = xx + 1 < w ? xx + 1 : w - 1;
                float gx = (up[r] - up[l]) * 0.125f + (mid[r] - mid[l]) * 0.25f + (dn[r] - dn[l]) * 0.125f;
                float gy = (dn[l] - up[l]) * 0.125f + (dn[xx] - up[xx]) * 0.25f + (dn[r] - up[r]) * 0.125f;
                rx += fabsf(gx);
                ry += fabsf(gy);
            }
            sx += rx;
            sy += ry;
        }
        out[2 * n] = (float)(sx / (double)(h * w) * 1e3);
        out[2 * n + 1] = (float)(sy / (double)(h * w) * 1e3);
    }
    free(gray);
    return 0;
}

/* The last block's residual as float32 (bf16 == 0) or bfloat16, for the float convolution after it. */
void cadyq_residual_float(const uint8_t *y, float a_y, const uint8_t *skip, float a_skip, long m, void *out, int bf16) {
    const float ty = a_y / 127.0f, ts = a_skip / 127.0f;
    for (long i = 0; i < m; i++) {
        int32_t yq = (int32_t)y[i] - 128;
        yq = yq > -127 ? yq : -127;
        float r = (float)yq * ty + (float)((int32_t)skip[i] - 128) * ts;
        if (bf16) ((uint16_t *)out)[i] = bf16_round(r);
        else ((float *)out)[i] = r;
    }
}

/* ---- training: the quantizers' backward pass, one read of x and g, one write of dx ----------------
 * For each tile n (a contiguous block of m elements) and candidate j < k_count (a_j, s_j):
 *   y_j = round(clamp(x, -a_j, a_j) / a_j * s_j) / s_j * a_j           (the forward, op for op)
 *   dx  = g * sum_j p[n, j] * [|x| < a_j]
 *   gp[n, j] = sum g * y_j;   ga[n, j] = sum g * ((y_j - x) / a_j if |x| < a_j else sign(x))
 * x, g and dx are float32 (bf16 == 0) or bfloat16 (bf16 == 1, computed in float32). */
#define MAXK 8

#define QB 256 /* elements per block: loaded once as float32, then one vectorized pass per candidate */

static inline void quant_backward_tile(const void *x, const void *g, void *dx, long off, long m, int bf16,
                                       int k_count, const float *alpha, const float *levels, const float *p,
                                       double *gp, double *ga) {
    float xf[QB], gf[QB], d[QB];
    for (int j = 0; j < k_count; j++) gp[j] = ga[j] = 0.0;
    for (long b0 = 0; b0 < m; b0 += QB) {
        const int len = (int)(b0 + QB < m ? QB : m - b0);
        const long base = off + b0;
        if (bf16) {
            for (int i = 0; i < len; i++) {
                xf[i] = bf16_load((const uint16_t *)x, base + i);
                gf[i] = bf16_load((const uint16_t *)g, base + i);
            }
        } else {
            for (int i = 0; i < len; i++) { xf[i] = ((const float *)x)[base + i]; gf[i] = ((const float *)g)[base + i]; }
        }
        for (int i = 0; i < len; i++) d[i] = 0.0f;
        for (int j = 0; j < k_count; j++) {
            const float a = alpha[j], s = levels[j], inv_a = 1.0f / a, pj = p[j];
            float sp = 0.0f, sa = 0.0f;
#pragma omp simd reduction(+ : sp, sa)
            for (int i = 0; i < len; i++) {
                const float xv = xf[i], gv = gf[i];
                const float y = quant1(xv, a, s) / s * a;  /* the forward's value, op for op */
                const int in = fabsf(xv) < a;
                const float sg = xv > 0.0f ? 1.0f : (xv < 0.0f ? -1.0f : 0.0f);
                sp += gv * y;
                sa += gv * (in ? (y - xv) * inv_a : sg);
                d[i] += in ? pj : 0.0f;
            }
            gp[j] += sp;
            ga[j] += sa;
        }
        if (dx) {
            if (bf16) for (int i = 0; i < len; i++) ((uint16_t *)dx)[base + i] = bf16_round(gf[i] * d[i]);
            else for (int i = 0; i < len; i++) ((float *)dx)[base + i] = gf[i] * d[i];
        }
    }
}

/* Tiles n0 <= n < n1 of x [N, m]; p [N, k_count]; gp, ga [N, k_count] (float). dx may be NULL. */
int cadyq_quant_backward(const void *x, const void *g, void *dx, long n0, long n1, long m, int bf16, int k_count,
                         const float *alpha, const float *levels, const float *p, float *gp, float *ga) {
    if (k_count > MAXK) return -1;
    double tgp[MAXK], tga[MAXK];
    for (long n = n0; n < n1; n++) {
        quant_backward_tile(x, g, dx, n * m, m, bf16, k_count, alpha, levels, p + n * k_count, tgp, tga);
        for (int j = 0; j < k_count; j++) { gp[n * k_count + j] = (float)tgp[j]; ga[n * k_count + j] = (float)tga[j]; }
    }
    return 0;
}

/* ---- training: the selector's feature, per-channel unbiased standard deviation of each tile ----------
 * Tiles n0 <= n < n1 of x (N tiles of hw pixels x c channels; nhwc: x[n][p][j], else x[n][j][p]),
 * float32 or bfloat16; sums shifted by the tile's first pixel, block partials in float, totals in double. */
int cadyq_channel_std(const void *x, long n0, long n1, long hw, int c, int bf16, int nhwc, float *out) {
    if (c > MAXC) return -1;
    double s1[MAXC], s2[MAXC];
    float f1[MAXC], f2[MAXC], x0[MAXC];
    for (long n = n0; n < n1; n++) {
        const long base = n * hw * c;
#define LOAD(i) (bf16 ? bf16_load((const uint16_t *)x, (i)) : ((const float *)x)[(i)])
        if (nhwc) {
            for (int j = 0; j < c; j++) { s1[j] = s2[j] = 0.0; x0[j] = LOAD(base + j); }
            for (long p0 = 0; p0 < hw; p0 += BLOCK) {
                long p1 = p0 + BLOCK < hw ? p0 + BLOCK : hw;
                for (int j = 0; j < c; j++) f1[j] = f2[j] = 0.0f;
                for (long p = p0; p < p1; p++) {
                    const long r = base + p * c;
                    if (bf16) {
                        for (int j = 0; j < c; j++) {
                            float d = bf16_load((const uint16_t *)x, r + j) - x0[j];
                            f1[j] += d; f2[j] += d * d;
                        }
                    } else {
                        const float *restrict row = (const float *)x + r;
                        for (int j = 0; j < c; j++) { float d = row[j] - x0[j]; f1[j] += d; f2[j] += d * d; }
                    }
                }
                for (int j = 0; j < c; j++) { s1[j] += f1[j]; s2[j] += f2[j]; }
            }
        } else {
            for (int j = 0; j < c; j++) {
                const long r = base + (long)j * hw;
                const float first = LOAD(r);
                double t1 = 0.0, t2 = 0.0;
                for (long p0 = 0; p0 < hw; p0 += BLOCK) {
                    long p1 = p0 + BLOCK < hw ? p0 + BLOCK : hw;
                    float a1 = 0.0f, a2 = 0.0f;
#pragma omp simd reduction(+ : a1, a2)
                    for (long p = p0; p < p1; p++) { float d = LOAD(r + p) - first; a1 += d; a2 += d * d; }
                    t1 += a1; t2 += a2;
                }
                s1[j] = t1; s2[j] = t2;
            }
        }
#undef LOAD
        for (int j = 0; j < c; j++) {
            double var = hw > 1 ? (s2[j] - s1[j] * s1[j] / (double)hw) / (double)(hw - 1) : NAN;
            out[n * c + j] = (float)sqrt(var > 0.0 ? var : 0.0);
        }
    }
    return 0;
}

/* ---- training: the quantizers' forward, y = round(clamp(x, -a_n, a_n) / a_n * s_n) / s_n * a_n per tile n,
 * op for op in float32 (bfloat16 tensors: loaded to float32, the result rounded once to bfloat16). */
void cadyq_quant_forward(const void *x, void *y, long n0, long n1, long m, int bf16, const float *a, const float *s) {
    for (long n = n0; n < n1; n++) {
        const float an = a[n], sn = s[n];
        const long base = n * m;
        if (bf16) {
            const uint16_t *restrict xi = (const uint16_t *)x + base;
            uint16_t *restrict yo = (uint16_t *)y + base;
            for (long i = 0; i < m; i++) yo[i] = bf16_round(quant1(bf16_load(xi, i), an, sn) / sn * an);
        } else {
            const float *restrict xi = (const float *)x + base;
            float *restrict yo = (float *)y + base;
            for (long i = 0; i < m; i++) yo[i] = quant1(xi[i], an, sn) / sn * an;
        }
    }
}
