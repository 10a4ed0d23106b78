/* cadyq CPU kernels: per-tile bit selection + quantization, fixed fake quantization.
 *
 * One tile, channels last: x[p * c + j] for pixel p < hw and channel j < c. Built by
 * cadyq/kernels/cpu/build.py with -O3 -march=native -ffp-contract=off (no FMA contraction: the
 * quantization rounds exactly as torch's round(clamp(x, -a, a) / a * s) does, op for op).
 */
#include <math.h>
#include <stdint.h>

#define BLOCK 64 /* pixels per float partial sum; the block sums go to doubles */
#define MAXC 1024 /* channels of one quantized layer input, at most */

/* Per-channel unbiased standard deviation over the tile, shifted by the first pixel (no cancellation). */
static void tile_std(const float *restrict x, long hw, int c, float *restrict sigma) {
    double s1[MAXC], s2[MAXC];
    float f1[MAXC], f2[MAXC], x0[MAXC];
    for (int j = 0; j < c; j++) { s1[j] = s2[j] = 0.0; x0[j] = x[j]; }
    for (long p0 = 0; p0 < hw; p0 += BLOCK) {
        long p1 = p0 + BLOCK < hw ? p0 + BLOCK : hw;
        for (int j = 0; j < c; j++) f1[j] = f2[j] = 0.0f;
        for (long p = p0; p < p1; p++) {
            const float *restrict r = x + p * c;
            for (int j = 0; j < c; j++) {
                float d = r[j] - x0[j];
                f1[j] += d;
                f2[j] += d * d;
            }
        }
        for (int j = 0; j < c; j++) { s1[j] += f1[j]; s2[j] += f2[j]; }
    }
    for (int j = 0; j < c; j++) {
        double var = hw > 1 ? (s2[j] - s1[j] * s1[j] / (double)hw) / (double)(hw - 1) : NAN;
        sigma[j] = (float)sqrt(var > 0.0 ? var : 0.0);
    }
}

/* k = argmax(W @ [g, sigma] + b), the first maximum on ties (as torch.argmax). */
static int select_k(const float *sigma, int c, const float *g, const float *w, const float *b, int k_count) {
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

/* round(clamp(v, -a, a) / a * s), op for op as torch: minimum, maximum, divide, multiply, round half even */
static inline float quant1(float v, float a, float s) {
    v = v < a ? v : a;
    v = v > -a ? v : -a;
    return rintf(v / a * s);
}
#define QUANT(v) quant1((v), a, s)

/* Select (when k_fixed < 0) and quantize one tile.
 *   q = round(clamp(x, -a, a) / a * s) with a = alpha[k], s = levels[k]
 *   split[k] == 0: q0 = q + zp[k]
 *   split[k] == 1: q0 = clamp(q, -64, 63) + 64, q1 = q - clamp(q, -64, 63) + 63  (two 7-bit halves)
 *   split[k] == 2: no integer output (the caller takes deq)
 *   deq (optional; required for split 2): q * (a / s)
 * Returns k. */
int cadyq_select_quant(const float *restrict x, long hw, int c, int k_fixed, const float *g, const float *w,
                       const float *b, int k_count, const float *alpha, const float *levels, const int *zp,
                       const int *split, uint8_t *restrict q0, uint8_t *restrict q1, float *restrict deq) {
    int k = k_fixed;
    if (k < 0) {
        float sigma[MAXC];
        if (c > MAXC) return -1;
        tile_std(x, hw, c, sigma);
        k = select_k(sigma, c, g, w, b, k_count);
    }
    const float a = alpha[k], s = levels[k], t = a / s, z = (float)zp[k];
    const long n = hw * c;
    if (split[k] == 0) {
        for (long i = 0; i < n; i++) q0[i] = (uint8_t)(int)(QUANT(x[i]) + z);
    } else if (split[k] == 1) {
        for (long i = 0; i < n; i++) {
            int q = (int)QUANT(x[i]);
            int hi = q < 63 ? q : 63;
            hi = hi > -64 ? hi : -64;
            q0[i] = (uint8_t)(hi + 64);
            q1[i] = (uint8_t)(q - hi + 63);
        }
    }
    if (deq)
        for (long i = 0; i < n; i++) deq[i] = QUANT(x[i]) * t;
    return k;
}

/* out = round(clamp(x, -a, a) / a * s) / s * a, elementwise (may be in place). */
void cadyq_fake_quant(const float *x, long n, float a, float s, float *out) {  /* out may be x */
    for (long i = 0; i < n; i++) out[i] = QUANT(x[i]) / s * a;
}

/* ---- training: the quantizers' backward pass, one read of x and g, one write of dx ----------------
 * For each tile n (a contiguous block of m elements) and candidate j < k_count (a_j, s_j):
 *   y_j = round(clamp(x, -a_j, a_j) / a_j * s_j) / s_j * a_j           (the forward, op for op)
 *   dx  = g * sum_j p[n, j] * [|x| < a_j]
 *   gp[n, j] = sum g * y_j;   ga[n, j] = sum g * ((y_j - x) / a_j if |x| < a_j else sign(x))
 * x, g and dx are float32 (bf16 == 0) or bfloat16 (bf16 == 1, computed in float32). */
#define MAXK 8

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
