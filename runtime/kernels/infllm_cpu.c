/*
 * InfLLM v2 stage 2 on CPU: every query attends its own list of key ranges.
 *
 * Built by runtime/cpu_kernel.py with the machine's C compiler (-O3 -march=native -ffast-math
 * -fopenmp) on first use and called through ctypes with tensor pointers. Reading the keys and
 * values straight from the KV cache, range by range, avoids the per-query gathers the torch path
 * needs when neighbouring queries choose different blocks (see runtime/sparse_attention.py).
 *
 * Layouts (element strides; rows of D contiguous):
 *   q, out  [Hkv][G][T][D]            contiguous, query heads grouped by their KV head
 *   k, v    [Hkv][.][D]               row r of head h at h * head_stride + r * D
 *   ranges  [Hkv][T][R][2] int64      half-open token ranges per query; empty ranges are skipped
 * Per (head group, query): an online softmax over the ranges in chunks of up to CHUNK keys, in
 * float32 whatever the storage type; scale is 1/sqrt(D).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define CHUNK 64
#define MAX_ROW (32 * 256) /* G * D */

static inline float bf16_to_f32(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as torch does */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#define DEFINE_KERNEL(NAME, T, LOAD, STORE)                                                            \
    int NAME(const T *q, const T *k, const T *v, T *out, const int64_t *ranges, int64_t hkv,            \
             int64_t groups, int64_t tokens, int64_t dim, int64_t n_ranges, int64_t head_stride,         \
             float scale, int threads) {                                                                 \
        if (groups * dim > MAX_ROW || dim > 256 || groups > 32) return 1;                                \
        _Pragma("omp parallel for collapse(2) schedule(dynamic) num_threads(threads)")                   \
        for (int64_t h = 0; h < hkv; h++) {                                                              \
            for (int64_t t = 0; t < tokens; t++) {                                                       \
                float qf[MAX_ROW], acc[MAX_ROW], kf[256], vf[256];                                       \
                float w[32][CHUNK], m[32], l[32];                                                        \
                for (int64_t g = 0; g < groups; g++) {                                                   \
                    const T *qr = q + ((h * groups + g) * tokens + t) * dim;                            \
                    for (int64_t d = 0; d < dim; d++) qf[g * dim + d] = LOAD(qr[d]) * scale;             \
                    m[g] = -INFINITY;                                                                    \
                    l[g] = 0.0f;                                                                         \
                }                                                                                        \
                memset(acc, 0, sizeof(float) * groups * dim);                                            \
                const T *kh = k + h * head_stride, *vh = v + h * head_stride;                            \
                const int64_t *rg = ranges + (h * tokens + t) * n_ranges * 2;                            \
                for (int64_t r = 0; r < n_ranges; r++) {                                                 \
                    for (int64_t start = rg[2 * r]; start < rg[2 * r + 1]; start += CHUNK) {             \
                        int64_t n = rg[2 * r + 1] - start;                                               \
                        if (n > CHUNK) n = CHUNK;                                                        \
                        for (int64_t j = 0; j < n; j++) { /* scores: one key row, every head */          \
                            const T *kr = kh + (start + j) * dim;                                        \
                            for (int64_t d = 0; d < dim; d++) kf[d] = LOAD(kr[d]);                       \
                            for (int64_t g = 0; g < groups; g++) {                                       \
                                const float *qg = qf + g * dim;                                          \
                                float s = 0.0f;                                                          \
                                for (int64_t d = 0; d < dim; d++) s += qg[d] * kf[d];                    \
                                w[g][j] = s;                                                             \
                            }                                                                            \
                        }                                                                                \
                        for (int64_t g = 0; g < groups; g++) { /* online softmax, chunk by chunk */      \
                            float peak = m[g];                                                           \
                            for (int64_t j = 0; j < n; j++) peak = w[g][j] > peak ? w[g][j] : peak;      \
                            if (peak > m[g]) {                                                           \
                                float c = expf(m[g] - peak);                                             \
                                l[g] *= c;                                                               \
                                for (int64_t d = 0; d < dim; d++) acc[g * dim + d] *= c;                 \
                                m[g] = peak;                                                             \
                            }                                                                            \
                            float sum = 0.0f;                                                            \
                            for (int64_t j = 0; j < n; j++) {                                            \
                                w[g][j] = expf(w[g][j] - peak);                                          \
                                sum += w[g][j];                                                          \
                            }                                                                            \
                            l[g] += sum;                                                                 \
                        }                                                                                \
                        for (int64_t j = 0; j < n; j++) { /* values: one row, every head */              \
                            const T *vr = vh + (start + j) * dim;                                        \
                            for (int64_t d = 0; d < dim; d++) vf[d] = LOAD(vr[d]);                       \
                            for (int64_t g = 0; g < groups; g++) {                                       \
                                float *ag = acc + g * dim;                                               \
                                const float wj = w[g][j];                                                \
                                for (int64_t d = 0; d < dim; d++) ag[d] += wj * vf[d];                   \
                            }                                                                            \
                        }                                                                                \
                    }                                                                                    \
                }                                                                                        \
                for (int64_t g = 0; g < groups; g++) {                                                   \
                    T *orow = out + ((h * groups + g) * tokens + t) * dim;                               \
                    const float inv = l[g] > 0.0f ? 1.0f / l[g] : 0.0f;                                  \
                    for (int64_t d = 0; d < dim; d++) orow[d] = STORE(acc[g * dim + d] * inv);           \
                }                                                                                        \
            }                                                                                            \
        }                                                                                                \
        return 0;                                                                                        \
    }

#define LOAD_F32(x) (x)
#define STORE_F32(x) (x)

DEFINE_KERNEL(infllm_attend_ranges_f32, float, LOAD_F32, STORE_F32)
DEFINE_KERNEL(infllm_attend_ranges_bf16, uint16_t, bf16_to_f32, f32_to_bf16)
