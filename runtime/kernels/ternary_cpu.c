/*
 * Ternary (BitCPM) matrix products on CPU: y = x . W^T with W[n][k] = s[n][k / group] * t[n][k],
 * t in {-1, 0, 1} stored as two bit planes, 2 bits per weight:
 *   plus  [N][K / 8] uint8    bit j of byte b: t[n][8b + j] = +1
 *   minus [N][K / 8] uint8    bit j of byte b: t[n][8b + j] = -1
 *   scale [N][K / group] float
 *   x     [M][K] float, y [M][N] float (row-major, contiguous)
 * A group's dot product is (sum of x where t = +1) - (sum of x where t = -1), then times its scale:
 * no multiplications by weights at all. With AVX-512 the bit planes are the lane masks of masked
 * adds, 16 weights per 4 bytes read; elsewhere a portable loop computes the same sums.
 *
 * Built by runtime/cpu_kernel.py like the InfLLM v2 kernel (-O3 -march=native -fopenmp) and called
 * through ctypes by runtime/ternary.py. K and group must be multiples of 16. Returns 0, or 1 for
 * shapes it does not take.
 */
#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

static inline uint16_t load_mask16(const uint8_t *p) {
    uint16_t m;
    memcpy(&m, p, sizeof m); /* little-endian: bit i is weight i of the 16 */
    return m;
}

static float row_dot(const float *x, const uint8_t *plus, const uint8_t *minus, const float *scale, int64_t k,
                     int64_t group) {
#ifdef __AVX512F__
    __m512 total = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < k; g0 += group) {
        __m512 pos = _mm512_setzero_ps(), neg = _mm512_setzero_ps();
        for (int64_t i = g0; i < g0 + group; i += 16) {
            const __m512 xv = _mm512_loadu_ps(x + i);
            pos = _mm512_mask_add_ps(pos, load_mask16(plus + i / 8), pos, xv);
            neg = _mm512_mask_add_ps(neg, load_mask16(minus + i / 8), neg, xv);
        }
        total = _mm512_fmadd_ps(_mm512_set1_ps(scale[g0 / group]), _mm512_sub_ps(pos, neg), total);
    }
    return _mm512_reduce_add_ps(total);
#else
    float total = 0.0f;
    for (int64_t g0 = 0; g0 < k; g0 += group) {
        float sum = 0.0f;
        for (int64_t i = g0; i < g0 + group; i++) {
            const int bit = (int)(i & 7);
            const float t = (float)((plus[i / 8] >> bit) & 1) - (float)((minus[i / 8] >> bit) & 1);
            sum += t * x[i];
        }
        total += scale[g0 / group] * sum;
    }
    return total;
#endif
}

int ternary_matmul_f32(const float *x, const uint8_t *plus, const uint8_t *minus, const float *scale, float *y,
                       int64_t m, int64_t n, int64_t k, int64_t group, int threads) {
    if (k % 16 || group % 16 || group < 16 || k % group) return 1;
    const int64_t row_bytes = k / 8, groups = k / group;
    _Pragma("omp parallel for schedule(static) num_threads(threads)")
    for (int64_t j = 0; j < n; j++) {
        for (int64_t r = 0; r < m; r++)
            y[r * n + j] = row_dot(x + r * k, plus + j * row_bytes, minus + j * row_bytes, scale + j * groups, k, group);
    }
    return 0;
}
