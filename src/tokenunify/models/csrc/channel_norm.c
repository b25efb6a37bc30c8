/* Per-voxel LayerNorm over the channels of a channels-last feature map, forward and backward.
 *
 * x is (M, C): one row of C channels per voxel, contiguous, fp32 or bf16
 * (is_bf16). The forward pass writes the output y in x's dtype, the fp32
 * normalised xhat and rstd per row; the backward pass writes dL/dx in x's dtype and
 * adds dL/dweight, dL/dbias into per-part partials (C) that the caller
 * sums. One pass over a row in each direction, where PyTorch's route takes
 * a dozen elementwise passes (tokenunify.models.channel_norm).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as torch's cast */
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u); /* quiet NaN */
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

static void forward_rows(const void *x, int64_t is_bf16, const float *w, const float *b, float eps, void *y,
                         float *xhat, float *rstd, int64_t C, int64_t r0, int64_t r1) {
    float row[C];
    for (int64_t r = r0; r < r1; ++r) {
        if (is_bf16) {
            const uint16_t *xr = (const uint16_t *)x + r * C;
            for (int64_t c = 0; c < C; ++c) row[c] = bf16_to_f32(xr[c]);
        } else {
            memcpy(row, (const float *)x + r * C, C * sizeof(float));
        }
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t c = 0; c < C; ++c) sum += row[c];
        const float mean = sum / (float)C;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int64_t c = 0; c < C; ++c) ss += (row[c] - mean) * (row[c] - mean);
        const float rs = 1.0f / sqrtf(ss / (float)C + eps);
        float *hr = xhat + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
            const float h = (row[c] - mean) * rs;
            hr[c] = h;
            row[c] = h * w[c] + b[c];
        }
        if (is_bf16) {
            uint16_t *yr = (uint16_t *)y + r * C;
            for (int64_t c = 0; c < C; ++c) yr[c] = f32_to_bf16(row[c]);
        } else {
            memcpy((float *)y + r * C, row, C * sizeof(float));
        }
        rstd[r] = rs;
    }
}

static void backward_rows(const float *g, const float *xhat, const float *rstd, const float *w, void *gx,
                          int64_t gx_bf16, float *gw_part, float *gb_part, int64_t C, int64_t r0, int64_t r1) {
    float gw[C];
    for (int64_t r = r0; r < r1; ++r) {
        const float *gr = g + r * C, *hr = xhat + r * C;
        float m1 = 0.0f, m2 = 0.0f;
#pragma omp simd reduction(+ : m1, m2)
        for (int64_t c = 0; c < C; ++c) {
            gw[c] = gr[c] * w[c];
            m1 += gw[c];
            m2 += gw[c] * hr[c];
            gw_part[c] += gr[c] * hr[c];
            gb_part[c] += gr[c];
        }
        m1 /= (float)C;
        m2 /= (float)C;
        const float rs = rstd[r];
        if (gx_bf16) {
            uint16_t *out = (uint16_t *)gx + r * C;
            for (int64_t c = 0; c < C; ++c) out[c] = f32_to_bf16((gw[c] - m1 - hr[c] * m2) * rs);
        } else {
            float *out = (float *)gx + r * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) out[c] = (gw[c] - m1 - hr[c] * m2) * rs;
        }
    }
}

/* Entry points: M rows split into `parts` ranges on torch's OpenMP team (see
 * selective_scan.c); part p adds into gw_part + p * C and gb_part + p * C. */
void channel_norm_forward(const void *x, int64_t is_bf16, const float *w, const float *b, float eps, void *y,
                          float *xhat, float *rstd, int64_t C, int64_t M, int64_t parts) {
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t p = 0; p < parts; ++p)
        forward_rows(x, is_bf16, w, b, eps, y, xhat, rstd, C, M * p / parts, M * (p + 1) / parts);
}

void channel_norm_backward(const float *g, const float *xhat, const float *rstd, const float *w, void *gx,
                           int64_t gx_bf16, float *gw_part, float *gb_part, int64_t C, int64_t M, int64_t parts) {
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t p = 0; p < parts; ++p)
        backward_rows(g, xhat, rstd, w, gx, gx_bf16, gw_part + p * C, gb_part + p * C, C, M * p / parts,
                      M * (p + 1) / parts);
}
