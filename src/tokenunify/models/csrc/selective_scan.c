/* Fused Mamba-1 selective scan for the CPU: forward and backward of the core
 * recurrence, one pass over the sequence per (batch, channel) row.
 *
 *   h_t = exp(dt_t * A) * h_{t-1} + dt_t * u_t * B_t,   y_t = C_t . h_t
 *
 * Layouts (fp32, contiguous): u, dt, y, gy, gu, gdt are time-major (batch,
 * L, D), the layout the Mamba mixer makes them in, so no transposed copy is
 * needed; a row r = b * D + d reads them with stride D. A is (D, N); Bt, Ct
 * and their gradients are (batch, L, N) (one step's B_t is one contiguous
 * vector); ckpt holds the state entering every chunk of T steps,
 * (R, ceil(L / T), N).
 *
 * The state of one row lives in a stack buffer of N floats, so the chunked
 * PyTorch path's (L, B, N, D) passes through memory become one loop whose
 * inner axis (the N states, 16 by default: one AVX-512 vector) the compiler
 * vectorises. The backward pass recomputes a chunk's states and decays from
 * its checkpoint into two T x N buffers, then runs the adjoint recurrence
 * backwards through them. Rows are independent; the caller splits them over
 * threads, and dB / dC (sums over the channels d) go to a per-thread
 * partial that the caller adds up. Compiled by tokenunify.models.native_scan
 * with -O3 and no -ffast-math: exp is the vectorisable polynomial below, so
 * results do not depend on libm or on the process's floating-point mode.
 */
#include <stdint.h>
#include <string.h>

/* torch's CPU exp takes a slow path on underflow; the PyTorch paths clamp
 * log-decays here too (exp(-80) = 1.8e-35 is still a normal float). */
#define MIN_LOG (-80.0f)
#define MAX_LOG (88.0f)

/* exp(x) for x in [MIN_LOG, MAX_LOG]: x = n ln2 + r with |r| <= ln2 / 2 (n rounded
 * by the 1.5 * 2^23 trick), e^r by a degree-7 polynomial (Cephes expf's
 * coefficients, relative error about 1e-7), 2^n by writing the exponent bits. */
static inline float exp_poly(float x) {
    x = x < MIN_LOG ? MIN_LOG : (x > MAX_LOG ? MAX_LOG : x);
    const float shifter = 12582912.0f;
    float t = x * 1.44269504088896341f + shifter;
    float n = t - shifter;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits;
    memcpy(&bits, &t, sizeof bits);
    int32_t scale_bits = (bits - 0x4B400000 + 127) << 23; /* 0x4B400000 = bits of the shifter */
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    return p * scale;
}

static inline __attribute__((always_inline)) void forward_rows(const float *u, const float *dt, const float *A, const float *Bt, const float *Ct,
                  float *y, float *ckpt, int64_t D, int64_t L, int64_t N, int64_t T, int64_t r0, int64_t r1) {
    const int64_t n_chunks = (L + T - 1) / T;
    float h[N];
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / D, d = r % D;
        const float *ur = u + b * L * D + d, *dtr = dt + b * L * D + d, *Ad = A + d * N;
        const float *Bb = Bt + b * L * N, *Cb = Ct + b * L * N;
        float *yr = y + b * L * D + d, *cr = ckpt + r * n_chunks * N;
        for (int64_t n = 0; n < N; ++n) h[n] = 0.0f;
        for (int64_t t = 0; t < L; ++t) {
            if (t % T == 0) memcpy(cr + (t / T) * N, h, N * sizeof(float));
            const float dv = dtr[t * D], xv = dv * ur[t * D];
            const float *Bv = Bb + t * N, *Cv = Cb + t * N;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t n = 0; n < N; ++n) {
                const float hn = exp_poly(dv * Ad[n]) * h[n] + xv * Bv[n];
                h[n] = hn;
                acc += Cv[n] * hn;
            }
            yr[t * D] = acc;
        }
    }
}

static inline __attribute__((always_inline)) void backward_rows(const float *u, const float *dt, const float *A, const float *Bt, const float *Ct,
                   const float *ckpt, const float *gy, float *gu, float *gdt, float *gA_rows, float *gB_part,
                   float *gC_part, int64_t D, int64_t L, int64_t N, int64_t T, int64_t r0, int64_t r1) {
    const int64_t n_chunks = (L + T - 1) / T;
    float H[T * N], E[T * N], G[N], ga[N], h[N];
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / D, d = r % D;
        const int64_t base = b * L * D + d;
        const float *ur = u + base, *dtr = dt + base, *gyr = gy + base, *Ad = A + d * N;
        const float *Bb = Bt + b * L * N, *Cb = Ct + b * L * N, *cr = ckpt + r * n_chunks * N;
        float *gBb = gB_part + b * L * N, *gCb = gC_part + b * L * N;
        for (int64_t n = 0; n < N; ++n) G[n] = ga[n] = 0.0f; /* G = a_{t+1} * dL/dh_{t+1} */
        for (int64_t c = n_chunks - 1; c >= 0; --c) {
            const int64_t t0 = c * T, t1 = t0 + T < L ? t0 + T : L;
            memcpy(h, cr + c * N, N * sizeof(float));
            for (int64_t t = t0; t < t1; ++t) { /* the chunk's decays and states again */
                const float dv = dtr[t * D], xv = dv * ur[t * D];
                const float *Bv = Bb + t * N;
                float *Ek = E + (t - t0) * N, *Hk = H + (t - t0) * N;
#pragma omp simd
                for (int64_t n = 0; n < N; ++n) {
                    Ek[n] = exp_poly(dv * Ad[n]);
                    h[n] = Ek[n] * h[n] + xv * Bv[n];
                    Hk[n] = h[n];
                }
            }
            for (int64_t t = t1 - 1; t >= t0; --t) {
                const int64_t k = t - t0;
                const float dv = dtr[t * D], uv = ur[t * D], xv = dv * uv, gyv = gyr[t * D];
                const float *Bv = Bb + t * N, *Cv = Cb + t * N, *Ek = E + k * N, *Hk = H + k * N;
                const float *Hprev = k > 0 ? H + (k - 1) * N : cr + c * N;
                float *gBv = gBb + t * N, *gCv = gCb + t * N;
                float gx = 0.0f, qa = 0.0f;
#pragma omp simd reduction(+ : gx, qa)
                for (int64_t n = 0; n < N; ++n) {
                    const float gh = Cv[n] * gyv + G[n]; /* dL/dh_t */
                    gCv[n] += gyv * Hk[n];
                    gBv[n] += gh * xv;
                    gx += gh * Bv[n];
                    const float q = gh * Ek[n] * Hprev[n]; /* dL/d(log-decay dt_t * A) */
                    qa += q * Ad[n];
                    ga[n] += q * dv;
                    G[n] = Ek[n] * gh;
                }
                gdt[base + t * D] = qa + gx * uv;
                gu[base + t * D] = gx * dv;
            }
        }
        memcpy(gA_rows + r * N, ga, N * sizeof(float));
    }
}

/* Entry points: rows split into `parts` contiguous ranges run by an OpenMP
 * team. The library links the libgomp that torch has loaded (same soname),
 * so these regions reuse torch's own threads instead of competing with
 * them. Part p adds its dB / dC into gB_part + p * part_stride. N = 16
 * (every preset's d_state) gets its own inlined copy, in which the state
 * loop is one fixed-length vector operation. */
void scan_forward(const float *u, const float *dt, const float *A, const float *Bt, const float *Ct,
                  float *y, float *ckpt, int64_t D, int64_t L, int64_t N, int64_t T, int64_t R, int64_t parts) {
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t p = 0; p < parts; ++p) {
        const int64_t r0 = R * p / parts, r1 = R * (p + 1) / parts;
        if (N == 16)
            forward_rows(u, dt, A, Bt, Ct, y, ckpt, D, L, 16, T, r0, r1);
        else
            forward_rows(u, dt, A, Bt, Ct, y, ckpt, D, L, N, T, r0, r1);
    }
}

void scan_backward(const float *u, const float *dt, const float *A, const float *Bt, const float *Ct,
                   const float *ckpt, const float *gy, float *gu, float *gdt, float *gA_rows, float *gB_part,
                   float *gC_part, int64_t part_stride, int64_t D, int64_t L, int64_t N, int64_t T, int64_t R,
                   int64_t parts) {
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t p = 0; p < parts; ++p) {
        const int64_t r0 = R * p / parts, r1 = R * (p + 1) / parts;
        float *gB = gB_part + p * part_stride, *gC = gC_part + p * part_stride;
        if (N == 16)
            backward_rows(u, dt, A, Bt, Ct, ckpt, gy, gu, gdt, gA_rows, gB, gC, D, L, 16, T, r0, r1);
        else
            backward_rows(u, dt, A, Bt, Ct, ckpt, gy, gu, gdt, gA_rows, gB, gC, D, L, N, T, r0, r1);
    }
}
