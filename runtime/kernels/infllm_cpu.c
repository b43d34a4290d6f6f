/*
 * InfLLM v2 on CPU. Stage 2 first: every query attends its own list of key ranges (stage 1, the
 * block selection, is further down).
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
#include <stdlib.h>
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

/*
 * InfLLM v2 stage 1 on CPU: the blocks each query selects, as select_blocks in
 * runtime/sparse_attention.py defines them (that docstring has the definition; this is the same
 * computation, fused, so that a decode step does not pay for two dozen small torch operations).
 *
 *   q       [Hkv][G][T][D]        contiguous
 *   c1, c2  [Hkv][.][D]           compressed keys (C1, and C2 for the LSE pass), head strides given;
 *                                 n1, n2 of them computed (n2 = 0: exact LSE over C1)
 *   chosen  [Hkv][T][keep] int64  out: forced blocks (ascending), then the best by score (ties to
 *   values  [Hkv][T][keep] float  the earlier block), then empty slots; +inf / score / -inf
 * Scores in float32. Returns 0, or 1 for shapes it does not take.
 */
typedef struct {
    float v;
    int64_t i;
} Pick;

static inline int pick_worse(Pick a, Pick b) { return a.v < b.v || (a.v == b.v && a.i > b.i); }

static void heap_sift_down(Pick *heap, int64_t n, int64_t at) { /* min-heap: the worst pick on top */
    for (;;) {
        int64_t l = 2 * at + 1, r = l + 1, w = at;
        if (l < n && pick_worse(heap[l], heap[w])) w = l;
        if (r < n && pick_worse(heap[r], heap[w])) w = r;
        if (w == at) return;
        Pick tmp = heap[at];
        heap[at] = heap[w];
        heap[w] = tmp;
        at = w;
    }
}

static void heap_sift_up(Pick *heap, int64_t at) {
    while (at > 0) {
        int64_t parent = (at - 1) / 2;
        if (!pick_worse(heap[at], heap[parent])) return;
        Pick tmp = heap[at];
        heap[at] = heap[parent];
        heap[parent] = tmp;
        at = parent;
    }
}

#define MAX_EXPONENT 80.0f /* runtime/sparse_attention.py's MAX_EXPONENT */

static inline int64_t visible_kernels(int64_t pos, int64_t n, int64_t size, int64_t stride) {
    if (pos < size - 1) return 0;
    int64_t v = (pos - size + 1) / stride + 1;
    return v < n ? v : n;
}

static float log_sum_exp(const float *x, int64_t n) {
    float peak = -INFINITY, sum = 0.0f;
    for (int64_t j = 0; j < n; j++) peak = x[j] > peak ? x[j] : peak;
    if (peak == -INFINITY) return 0.0f; /* nothing visible: every probability is 0 anyway */
    for (int64_t j = 0; j < n; j++) sum += expf(x[j] - peak);
    return peak + logf(sum);
}

#define DEFINE_SELECT(NAME, T, LOAD)                                                                     \
    int NAME(const T *q, const T *c1, const T *c2, int64_t *chosen, float *values, int64_t hkv,          \
             int64_t groups, int64_t tokens, int64_t dim, int64_t n1, int64_t c1_head_stride, int64_t n2, \
             int64_t c2_head_stride, int64_t q_start, int64_t size1, int64_t stride1, int64_t size2,      \
             int64_t stride2, int64_t block_size, int64_t init_blocks, int64_t local_blocks,              \
             int64_t n_blocks, int64_t keep, float scale, int threads) {                                  \
        if (dim > 256 || keep > n_blocks) return 1;                                                      \
        const int64_t per_block = block_size / stride1, pad = size1 / stride1 - 1;                        \
        int failed = 0;                                                                                  \
        _Pragma("omp parallel num_threads(threads) reduction(|:failed)")                                 \
        {                                                                                                \
            float *s = malloc(sizeof(float) * (n1 + n2 + 1));                                            \
            float *score = malloc(sizeof(float) * (n1 + 1));                                             \
            Pick *heap = malloc(sizeof(Pick) * (keep + 1));                                              \
            if (!s || !score || !heap) failed = 1;                                                       \
            _Pragma("omp for collapse(2) schedule(dynamic)")                                             \
            for (int64_t h = 0; h < hkv; h++) {                                                          \
                for (int64_t t = 0; t < tokens; t++) {                                                   \
                    if (failed) continue;                                                                \
                    const int64_t pos = q_start + t, q_block = pos / block_size;                         \
                    const int64_t vis1 = visible_kernels(pos, n1, size1, stride1);                       \
                    const int64_t vis2 = n2 ? visible_kernels(pos, n2, size2, stride2) : 0;              \
                    float qf[256];                                                                       \
                    for (int64_t j = 0; j < n1; j++) score[j] = 0.0f; /* invisible kernels score 0 */   \
                    for (int64_t g = 0; g < groups; g++) {                                               \
                        const T *qr = q + ((h * groups + g) * tokens + t) * dim;                        \
                        for (int64_t d = 0; d < dim; d++) qf[d] = LOAD(qr[d]);                           \
                        for (int64_t j = 0; j < vis1 + vis2; j++) {                                      \
                            const T *kr = j < vis1 ? c1 + h * c1_head_stride + j * dim                   \
                                                   : c2 + h * c2_head_stride + (j - vis1) * dim;         \
                            float dot = 0.0f;                                                            \
                            for (int64_t d = 0; d < dim; d++) dot += qf[d] * LOAD(kr[d]);                \
                            s[j] = dot * scale;                                                          \
                        }                                                                                \
                        const float lse = vis2 ? log_sum_exp(s + vis1, vis2) : log_sum_exp(s, vis1);     \
                        for (int64_t j = 0; j < vis1; j++) { /* capped as in the torch path */           \
                            const float e = s[j] - lse;                                                  \
                            score[j] += expf(e < MAX_EXPONENT ? e : MAX_EXPONENT);                       \
                        }                                                                                \
                    }                                                                                    \
                    int64_t *out_i = chosen + (h * tokens + t) * keep;                                   \
                    float *out_v = values + (h * tokens + t) * keep;                                     \
                    int64_t filled = 0, heap_n = 0;                                                      \
                    const int64_t local_from = q_block - local_blocks;                                   \
                    for (int64_t k = 0; k < n_blocks && filled < keep; k++) { /* forced, ascending */    \
                        if ((k < init_blocks || k >= local_from) && k <= q_block) {                      \
                            out_i[filled] = k;                                                           \
                            out_v[filled++] = INFINITY;                                                  \
                        }                                                                                \
                    }                                                                                    \
                    const int64_t want = keep - filled;                                                  \
                    for (int64_t k = 0; k < n_blocks && k < local_from && want > 0; k++) {               \
                        if (k < init_blocks) continue;                                                   \
                        int64_t lo = k * per_block - pad, hi = k * per_block + per_block;                \
                        if (lo < 0) lo = 0;                                                              \
                        if (hi > n1) hi = n1;                                                            \
                        float best = -INFINITY;                                                          \
                        for (int64_t j = lo; j < hi; j++) best = score[j] > best ? score[j] : best;      \
                        if (best == -INFINITY) continue;                                                 \
                        Pick p = {best, k};                                                              \
                        if (heap_n < want) {                                                             \
                            heap[heap_n] = p;                                                            \
                            heap_sift_up(heap, heap_n++);                                                \
                        } else if (pick_worse(heap[0], p)) {                                             \
                            heap[0] = p;                                                                 \
                            heap_sift_down(heap, heap_n, 0);                                             \
                        }                                                                                \
                    }                                                                                    \
                    for (int64_t a = 1; a < heap_n; a++) { /* best first: insertion sort, n <= keep */   \
                        Pick p = heap[a];                                                                \
                        int64_t b = a;                                                                   \
                        for (; b > 0 && pick_worse(heap[b - 1], p); b--) heap[b] = heap[b - 1];          \
                        heap[b] = p;                                                                     \
                    }                                                                                    \
                    for (int64_t a = 0; a < heap_n; a++) {                                               \
                        out_i[filled] = heap[a].i;                                                       \
                        out_v[filled++] = heap[a].v;                                                     \
                    }                                                                                    \
                    for (int64_t k = 0; k < n_blocks && filled < keep; k++) { /* empty slots: -inf */    \
                        int taken = 0;                                                                   \
                        for (int64_t a = 0; a < filled && !taken; a++) taken = out_i[a] == k;            \
                        if (!taken) {                                                                    \
                            out_i[filled] = k;                                                           \
                            out_v[filled++] = -INFINITY;                                                 \
                        }                                                                                \
                    }                                                                                    \
                }                                                                                        \
            }                                                                                            \
            free(s);                                                                                     \
            free(score);                                                                                 \
            free(heap);                                                                                  \
        }                                                                                                \
        return failed ? 2 : 0;                                                                           \
    }

DEFINE_SELECT(infllm_select_blocks_f32, float, LOAD_F32)
DEFINE_SELECT(infllm_select_blocks_bf16, uint16_t, bf16_to_f32)
