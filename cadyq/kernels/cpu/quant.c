/* cadyq CPU kernels: per-tile bit selection + quantization, fixed fake quantization.
 *
 * One tile, channels last: x[p * c + j] for pixel p < hw and channel j < c. Built by
 * cadyq/kernels/cpu/build.py with -O3 -march=native -ffp-contract=off (no FMA contraction: the
 * quantization rounds exactly as torch's round(clamp(x, -a, a) / a * s) does, op for op).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define BLOCK 64 /* pixels per float partial sum; the block sums go to doubles */

/* Per-channel unbiased standard deviation over the tile, shifted by the first pixel (no cancellation). */
static void tile_std(const float *x, long hw, int c, float *sigma) {
    double *s1 = calloc((size_t)c, sizeof(double)), *s2 = calloc((size_t)c, sizeof(double));
    float *f1 = malloc((size_t)c * sizeof(float)), *f2 = malloc((size_t)c * sizeof(float));
    for (long p0 = 0; p0 < hw; p0 += BLOCK) {
        long p1 = p0 + BLOCK < hw ? p0 + BLOCK : hw;
        for (int j = 0; j < c; j++) f1[j] = f2[j] = 0.0f;
        for (long p = p0; p < p1; p++) {
            const float *r = x + p * c;
            for (int j = 0; j < c; j++) {
                float d = r[j] - x[j];
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
    free(s1); free(s2); free(f1); free(f2);
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

/* Select (when k_fixed < 0) and quantize one tile.
 *   q = round(clamp(x, -a, a) / a * s) with a = alpha[k], s = levels[k]
 *   split[k] == 0: q0 = q + zp[k]
 *   split[k] == 1: q0 = clamp(q, -64, 63) + 64, q1 = q - clamp(q, -64, 63) + 63  (two 7-bit halves)
 *   deq (optional): q * (a / s)
 * Returns k. */
int cadyq_select_quant(const float *x, long hw, int c, int k_fixed, const float *g, const float *w,
                       const float *b, int k_count, const float *alpha, const float *levels, const int *zp,
                       const int *split, uint8_t *q0, uint8_t *q1, float *deq) {
    int k = k_fixed;
    if (k < 0) {
        float *sigma = malloc((size_t)c * sizeof(float));
        tile_std(x, hw, c, sigma);
        k = select_k(sigma, c, g, w, b, k_count);
        free(sigma);
    }
    const float a = alpha[k], s = levels[k], t = a / s;
    const long n = hw * c;
    const int z = zp[k];
    if (!split[k]) {
        for (long i = 0; i < n; i++) {
            float v = x[i];
            v = v < a ? v : a;
            v = v > -a ? v : -a;
            float q = rintf(v / a * s);
            q0[i] = (uint8_t)(int)(q + (float)z);
            if (deq) deq[i] = q * t;
        }
    } else {
        for (long i = 0; i < n; i++) {
            float v = x[i];
            v = v < a ? v : a;
            v = v > -a ? v : -a;
            float q = rintf(v / a * s);
            float hi = q < 63.0f ? q : 63.0f;
            hi = hi > -64.0f ? hi : -64.0f;
            q0[i] = (uint8_t)(int)(hi + 64.0f);
            q1[i] = (uint8_t)(int)(q - hi + 63.0f);
            if (deq) deq[i] = q * t;
        }
    }
    return k;
}

/* out = round(clamp(x, -a, a) / a * s) / s * a, elementwise (may be in place). */
void cadyq_fake_quant(const float *x, long n, float a, float s, float *out) {
    for (long i = 0; i < n; i++) {
        float v = x[i];
        v = v < a ? v : a;
        v = v > -a ? v : -a;
        out[i] = rintf(v / a * s) / s * a;
    }
}
