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
 * float32 whatever the storage type; scale is 1/sqrt(D). Returns 0, 1 for shapes it does not take
 * (G > 32 or D > 256), 2 when out of memory.
 *
 * Speed, measured on the embedded model's decode (3 KV heads, 6,144 keys per query): the work is
 * the exponentials and the products, so both run on whole vectors (GCC/Clang vector extensions:
 * AVX-512 where the CPU has it, narrower registers otherwise; exp_v below instead of a scalar expf
 * call per key and head). A decode step has only a few (head group, query) pairs, fewer than
 * threads to keep busy, so each query's keys are cut into spans of SPAN keys that threads take
 * separately and that are merged in span order afterwards. Every query is cut the same way
 * whatever else is in the call, so a query's output does not depend on how many queries came with
 * it (a verified speculative draft gets the numbers a plain decode step would). That holds on one
 * machine: bfloat16 groups of 16 or 32 heads take the AVX512-BF16 path below where the CPU has it
 * and the widening path elsewhere, which round differently.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 64
#define SPAN 1024 /* keys per span: 16 chunks */
#define MAX_DIM 256
#define MAX_GROUPS 32
#define VW 16 /* floats per vector */

typedef float vfloat __attribute__((vector_size(VW * sizeof(float))));
typedef int32_t vint __attribute__((vector_size(VW * sizeof(int32_t))));
typedef uint32_t vuint __attribute__((vector_size(VW * sizeof(uint32_t))));

static inline vfloat load_v(const float *p) {
    vfloat x;
    memcpy(&x, p, sizeof x);
    return x;
}

static inline void store_v(float *p, vfloat x) { memcpy(p, &x, sizeof x); }

static inline vfloat splat(float x) { return (vfloat){0} + x; }

static inline float sum_v(vfloat x) {
    float s = 0.0f;
    for (int i = 0; i < VW; i++) s += x[i];
    return s;
}

static inline float max_v(vfloat x) {
    float m = x[0];
    for (int i = 1; i < VW; i++) m = x[i] > m ? x[i] : m;
    return m;
}

static inline vfloat min_v(vfloat a, vfloat b) { /* lane-wise min; a NaN-free input is assumed */
    vint take_a = a < b;
    return (vfloat)(((vint)a & take_a) | ((vint)b & ~take_a));
}

/* e^x lane by lane: 2^k e^r with k = round(x / ln 2), |r| <= ln(2) / 2, e^r by its Taylor series
 * to degree 7 (relative error within 3e-7 as compiled: -ffast-math may fold the two parts of ln 2
 * into one). x below -87 gives 0 (-inf included); the callers pass at most 80. */
static inline vfloat exp_v(vfloat x) {
    const vint tiny = x < -87.0f;
    x = (vfloat)(((vint)x & ~tiny) | ((vint)splat(-87.0f) & tiny));
    const vfloat y = x * 1.44269504088896341f;
    const vint sign = (vint)y & (int32_t)0x80000000;
    const vint k = __builtin_convertvector(y + (vfloat)(sign | (vint)splat(0.5f)), vint); /* half away from 0 */
    const vfloat kf = __builtin_convertvector(k, vfloat);
    vfloat r = x - kf * 0.693145751953125f; /* ln 2 in two parts, the first with few bits: kf times it is exact */
    r = r - kf * 1.428606765330187e-06f;
    vfloat p = splat(1.0f / 5040.0f);
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const vfloat two_k = (vfloat)((k + 127) << 23);
    return (vfloat)((vint)(p * two_k) & ~tiny);
}

static inline float dot(const float *a, const float *b, int64_t n) {
    vfloat s = {0};
    int64_t d = 0;
    for (; d + VW <= n; d += VW) s += load_v(a + d) * load_v(b + d);
    float r = sum_v(s);
    for (; d < n; d++) r += a[d] * b[d];
    return r;
}

/* acc[0:D] += sum_j w[j] * rows[j][0:D] over n rows (stride D): four vectors of acc at a time, so
 * four independent chains of multiply-adds run side by side. */
static inline void mix_rows(float *acc, const float *w, const float *rows, int64_t n, int64_t D) {
    int64_t d = 0;
    for (; d + 4 * VW <= D; d += 4 * VW) {
        vfloat a0 = load_v(acc + d), a1 = load_v(acc + d + VW), a2 = load_v(acc + d + 2 * VW),
               a3 = load_v(acc + d + 3 * VW);
        for (int64_t j = 0; j < n; j++) {
            const float *r = rows + j * D + d;
            a0 += w[j] * load_v(r);
            a1 += w[j] * load_v(r + VW);
            a2 += w[j] * load_v(r + 2 * VW);
            a3 += w[j] * load_v(r + 3 * VW);
        }
        store_v(acc + d, a0);
        store_v(acc + d + VW, a1);
        store_v(acc + d + 2 * VW, a2);
        store_v(acc + d + 3 * VW, a3);
    }
    for (; d + VW <= D; d += VW) {
        vfloat a = load_v(acc + d);
        for (int64_t j = 0; j < n; j++) a += w[j] * load_v(rows + j * D + d);
        store_v(acc + d, a);
    }
    for (; d < D; d++) {
        float a = acc[d];
        for (int64_t j = 0; j < n; j++) a += w[j] * rows[j * D + d];
        acc[d] = a;
    }
}

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

/* n elements from index `at` of a float32 or bfloat16 tensor, as float32: in place for float32,
 * converted into scratch for bfloat16. */
static inline const float *as_f32(const void *base, int bf16, int64_t at, int64_t n, float *scratch) {
    if (!bf16) return (const float *)base + at;
    const uint16_t *src = (const uint16_t *)base + at;
    for (int64_t i = 0; i < n; i++) scratch[i] = bf16_to_f32(src[i]);
    return scratch;
}

typedef struct { /* the online softmax of one query's G heads over some of its keys */
    float m[MAX_GROUPS], l[MAX_GROUPS];
    float acc[MAX_GROUPS * MAX_DIM]; /* unnormalised: sum of e^(s - m) v */
} Softmax;

static void softmax_reset(Softmax *s, int64_t G, int64_t D) {
    for (int64_t g = 0; g < G; g++) {
        s->m[g] = -INFINITY;
        s->l[g] = 0.0f;
    }
    memset(s->acc, 0, sizeof(float) * G * D);
}

/* into += part (same query): rescale both to the larger maximum. */
__attribute__((noinline)) static void softmax_merge(Softmax *into, const Softmax *part, int64_t G, int64_t D) {
    for (int64_t g = 0; g < G; g++) {
        if (part->m[g] == -INFINITY) continue; /* an empty span */
        const float m = part->m[g] > into->m[g] ? part->m[g] : into->m[g];
        const float a = into->m[g] == -INFINITY ? 0.0f : expf(into->m[g] - m), b = expf(part->m[g] - m);
        into->l[g] = into->l[g] * a + part->l[g] * b;
        float *x = into->acc + g * D;
        const float *y = part->acc + g * D;
        for (int64_t d = 0; d < D; d++) x[d] = x[d] * a + y[d] * b;
        into->m[g] = m;
    }
}

/*
 * Stage 2 for bfloat16 with 16 or 32 query heads per KV head (MiniCPM4's shapes), on CPUs with
 * AVX512-BF16: vdpbf16ps multiplies pairs of bfloat16 and adds them into float32 lanes, twice the
 * products per instruction of float32 FMA and no widening of K and V first. Vectors hold one lane
 * per query head, so a key's logits for 16 heads come out of one accumulator (no horizontal sums),
 * and the online softmax runs on whole vectors. The logits are exact products of the stored
 * bfloat16 values summed in float32, as the float32 path's; the softmax weights are rounded to
 * bfloat16 for the product with V (the denominator sums the rounded weights, so they still add
 * up to one), as torch's bfloat16 attention on CPU does.
 */
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <immintrin.h>
#define HEAD_LANES 1
#endif

static inline int use_head_lanes(int bf16, int64_t G, int64_t D) {
#ifdef HEAD_LANES
    return bf16 && G % VW == 0 && D % 64 == 0;
#else
    (void)bf16, (void)G, (void)D;
    return 0;
#endif
}

/* q pairs with heads in lanes: qp[(g / 16) * D/2 + p][g % 16] is the bfloat16 pair (q[g][2p],
 * q[g][2p+1]) of query t, unscaled. */
static void pack_query_pairs(uint32_t *qp, const uint16_t *q, int64_t h, int64_t t, int64_t G, int64_t T, int64_t D) {
    const int64_t P = D / 2;
    for (int64_t g = 0; g < G; g++) {
        const uint16_t *row = q + ((h * G + g) * T + t) * D;
        for (int64_t p = 0; p < P; p++) {
            uint32_t pair;
            memcpy(&pair, row + 2 * p, sizeof pair);
            qp[((g / VW) * P + p) * VW + g % VW] = pair;
        }
    }
}

#ifdef HEAD_LANES
static inline vfloat round_bf16_v(vfloat x) { /* to the nearest bfloat16, ties to even, kept as float32 */
    const vint u = (vint)x;
    return (vfloat)((u + 0x7FFF + ((u >> 16) & 1)) & (int32_t)0xFFFF0000);
}

/* Logits of 16 heads (lanes) against 8 consecutive key rows (P pairs each), times scale. */
static inline void logits8_lanes(vfloat *out, const __m512i *q, const uint32_t *keys, int64_t P, float scale) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int64_t p = 0; p < P; p++) {
        const __m512bh qv = (__m512bh)_mm512_load_si512(q + p);
        a0 = _mm512_dpbf16_ps(a0, qv, (__m512bh)_mm512_set1_epi32((int)keys[p]));
        a1 = _mm512_dpbf16_ps(a1, qv, (__m512bh)_mm512_set1_epi32((int)keys[P + p]));
        a2 = _mm512_dpbf16_ps(a2, qv, (__m512bh)_mm512_set1_epi32((int)keys[2 * P + p]));
        a3 = _mm512_dpbf16_ps(a3, qv, (__m512bh)_mm512_set1_epi32((int)keys[3 * P + p]));
        a4 = _mm512_dpbf16_ps(a4, qv, (__m512bh)_mm512_set1_epi32((int)keys[4 * P + p]));
        a5 = _mm512_dpbf16_ps(a5, qv, (__m512bh)_mm512_set1_epi32((int)keys[5 * P + p]));
        a6 = _mm512_dpbf16_ps(a6, qv, (__m512bh)_mm512_set1_epi32((int)keys[6 * P + p]));
        a7 = _mm512_dpbf16_ps(a7, qv, (__m512bh)_mm512_set1_epi32((int)keys[7 * P + p]));
    }
    out[0] = (vfloat)a0 * scale, out[1] = (vfloat)a1 * scale, out[2] = (vfloat)a2 * scale, out[3] = (vfloat)a3 * scale;
    out[4] = (vfloat)a4 * scale, out[5] = (vfloat)a5 * scale, out[6] = (vfloat)a6 * scale, out[7] = (vfloat)a7 * scale;
}

static inline vfloat logits1_lanes(const __m512i *q, const uint32_t *key, int64_t P, float scale) {
    __m512 a = _mm512_setzero_ps();
    for (int64_t p = 0; p < P; p++)
        a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_load_si512(q + p), (__m512bh)_mm512_set1_epi32((int)key[p]));
    return (vfloat)a * scale;
}

/* acc[4 heads][4 vectors] += sum over key pairs i of the heads' weight pairs wp[i][.] times the
 * value pairs vp[i][.]; acc and vp in the interleaved order of attend_span_lanes. */
static inline void mix_pairs_4x4(float *acc, int64_t D, const uint32_t *wp, int64_t wstride, const __m512i *vp,
                                 int64_t vstride, int64_t pairs) {
    __m512 a[4][4];
    for (int h = 0; h < 4; h++)
        for (int x = 0; x < 4; x++) a[h][x] = _mm512_load_ps(acc + h * D + x * VW);
    for (int64_t i = 0; i < pairs; i++) {
        const __m512i *v = vp + i * vstride;
        const __m512bh v0 = (__m512bh)_mm512_load_si512(v), v1 = (__m512bh)_mm512_load_si512(v + 1),
                       v2 = (__m512bh)_mm512_load_si512(v + 2), v3 = (__m512bh)_mm512_load_si512(v + 3);
        for (int h = 0; h < 4; h++) {
            const __m512bh w = (__m512bh)_mm512_set1_epi32((int)wp[i * wstride + h]);
            a[h][0] = _mm512_dpbf16_ps(a[h][0], w, v0);
            a[h][1] = _mm512_dpbf16_ps(a[h][1], w, v1);
            a[h][2] = _mm512_dpbf16_ps(a[h][2], w, v2);
            a[h][3] = _mm512_dpbf16_ps(a[h][3], w, v3);
        }
    }
    for (int h = 0; h < 4; h++)
        for (int x = 0; x < 4; x++) _mm512_store_ps(acc + h * D + x * VW, a[h][x]);
}

/* Lane L of interleaved vector x of a row holds d = 32 (x / 2) + 8 (L / 4) + 4 (x % 2) + L % 4: the
 * order _mm512_unpacklo/hi_epi16 leave two rows in. */
static inline int64_t interleaved_dim(int64_t x, int64_t lane) { return 32 * (x / 2) + 8 * (lane / 4) + 4 * (x % 2) + lane % 4; }

/* attend_span for use_head_lanes: the same keys in the same chunks, into s (reset here). qp from
 * pack_query_pairs, 64-byte aligned. */
__attribute__((noinline)) static void attend_span_lanes(Softmax *s, const uint32_t *qp, int64_t G, int64_t D,
                                                        const uint16_t *kh, const uint16_t *vh, const int64_t *rg,
                                                        int64_t R, int64_t from, int64_t to, float scale) {
    const int64_t HV = G / VW, P = D / 2, DV = D / VW;
    vfloat w[CHUNK][MAX_GROUPS / VW] __attribute__((aligned(64))); /* logits, then weights: [key][head vector] */
    uint32_t wp[CHUNK / 2][MAX_GROUPS] __attribute__((aligned(64))); /* bfloat16 weight pairs [key pair][head] */
    __m512i vp[CHUNK / 2][MAX_DIM / VW];                              /* rows 2i, 2i+1 of V interleaved */
    float acc[MAX_GROUPS * MAX_DIM] __attribute__((aligned(64)));     /* [head][D], interleaved order */
    vfloat m[MAX_GROUPS / VW], l[MAX_GROUPS / VW];
    for (int64_t hv = 0; hv < HV; hv++) m[hv] = splat(-INFINITY), l[hv] = splat(0.0f);
    memset(acc, 0, sizeof(float) * G * D);
    int64_t offset = 0;
    for (int64_t r = 0; r < R && offset < to; r++) {
        const int64_t a = rg[2 * r], len = rg[2 * r + 1] - a;
        if (len <= 0) continue;
        const int64_t lo = from > offset ? from : offset, hi = to < offset + len ? to : offset + len;
        for (int64_t start = lo; start < hi; start += CHUNK) {
            const int64_t n = hi - start < CHUNK ? hi - start : CHUNK, row = a + (start - offset), pairs = (n + 1) / 2;
            const uint32_t *k32 = (const uint32_t *)(kh + row * D); /* D even: rows of P pairs */
            for (int64_t hv = 0; hv < HV; hv++) {
                const __m512i *q = (const __m512i *)(qp + hv * P * VW);
                vfloat block[8];
                int64_t j = 0;
                for (; j + 8 <= n; j += 8) {
                    logits8_lanes(block, q, k32 + j * P, P, scale);
                    for (int i = 0; i < 8; i++) w[j + i][hv] = block[i];
                }
                for (; j < n; j++) w[j][hv] = logits1_lanes(q, k32 + j * P, P, scale);
                /* online softmax, 16 heads at a time */
                vfloat peak = m[hv];
                for (j = 0; j < n; j++) peak = (vfloat)_mm512_max_ps((__m512)peak, (__m512)w[j][hv]);
                const vfloat c = exp_v(m[hv] - peak); /* 1 where the peak held, 0 from -inf */
                l[hv] *= c;
                for (int64_t i = 0; i < VW; i++)
                    if (c[i] != 1.0f)
                        for (int64_t d = 0; d < D; d++) acc[(hv * VW + i) * D + d] *= c[i];
                m[hv] = peak;
                vfloat sum = {0};
                for (int64_t i = 0; i < pairs; i++) {
                    const vfloat e0 = round_bf16_v(exp_v(w[2 * i][hv] - peak)),
                                 e1 = 2 * i + 1 < n ? round_bf16_v(exp_v(w[2 * i + 1][hv] - peak)) : splat(0.0f);
                    sum += e0 + e1;
                    const vuint pair = ((vuint)e0 >> 16) | ((vuint)e1 & 0xFFFF0000u); /* e0 low, e1 high */
                    memcpy(&wp[i][hv * VW], &pair, sizeof pair);
                }
                l[hv] += sum;
            }
            const __m512i zero = _mm512_setzero_si512();
            for (int64_t i = 0; i < pairs; i++) { /* V rows 2i and 2i+1 (zeros past n), interleaved */
                const uint16_t *ra = vh + (row + 2 * i) * D, *rb = ra + D;
                for (int64_t x = 0; x < DV / 2; x++) {
                    const __m512i va = _mm512_loadu_si512(ra + 32 * x),
                                  vb = 2 * i + 1 < n ? _mm512_loadu_si512(rb + 32 * x) : zero;
                    vp[i][2 * x] = _mm512_unpacklo_epi16(va, vb);
                    vp[i][2 * x + 1] = _mm512_unpackhi_epi16(va, vb);
                }
            }
            for (int64_t g = 0; g < G; g += 4)
                for (int64_t x = 0; x < DV; x += 4)
                    mix_pairs_4x4(acc + g * D + x * VW, D, &wp[0][g], MAX_GROUPS, &vp[0][x], MAX_DIM / VW, pairs);
        }
        offset += len;
    }
    for (int64_t g = 0; g < G; g++) {
        s->m[g] = m[g / VW][g % VW];
        s->l[g] = l[g / VW][g % VW];
        for (int64_t x = 0; x < DV; x++)
            for (int64_t lane = 0; lane < VW; lane++) s->acc[g * D + interleaved_dim(x, lane)] = acc[g * D + x * VW + lane];
    }
}
#endif

/* One query (qf: [G][D] float32, already scaled) over keys [from, to) of its ranges taken one
 * after another, into s (reset first), widening bfloat16 to float32. */
__attribute__((noinline)) static void attend_span_f32(Softmax *s, const float *qf, int64_t G, int64_t D, const void *kh,
                                                      const void *vh, int bf16, const int64_t *rg, int64_t R,
                                                      int64_t from, int64_t to) {
    float w[MAX_GROUPS][CHUNK] __attribute__((aligned(64)));
    float kbuf[CHUNK * MAX_DIM], vbuf[CHUNK * MAX_DIM];
    softmax_reset(s, G, D);
    int64_t offset = 0; /* keys in the ranges before range r */
    for (int64_t r = 0; r < R && offset < to; r++) {
        const int64_t a = rg[2 * r], len = rg[2 * r + 1] - a;
        if (len <= 0) continue;
        const int64_t lo = from > offset ? from : offset, hi = to < offset + len ? to : offset + len;
        for (int64_t start = lo; start < hi; start += CHUNK) {
            const int64_t n = hi - start < CHUNK ? hi - start : CHUNK, row = a + (start - offset);
            const float *kc = as_f32(kh, bf16, row * D, n * D, kbuf);
            for (int64_t g = 0; g < G; g++) {
                for (int64_t j = 0; j < n; j++) w[g][j] = dot(qf + g * D, kc + j * D, D);
                for (int64_t j = n; j < CHUNK; j++) w[g][j] = -INFINITY; /* whole vectors below */
            }
            for (int64_t g = 0; g < G; g++) { /* online softmax, chunk by chunk */
                float peak = s->m[g];
                for (int64_t j = 0; j < n; j++) peak = w[g][j] > peak ? w[g][j] : peak;
                if (peak > s->m[g]) {
                    const float c = s->m[g] == -INFINITY ? 0.0f : expf(s->m[g] - peak);
                    s->l[g] *= c;
                    for (int64_t d = 0; d < D; d++) s->acc[g * D + d] *= c;
                    s->m[g] = peak;
                }
                vfloat sum = {0};
                for (int64_t j = 0; j < CHUNK; j += VW) {
                    const vfloat e = exp_v(load_v(&w[g][j]) - peak);
                    store_v(&w[g][j], e);
                    sum += e;
                }
                s->l[g] += sum_v(sum);
            }
            const float *vc = as_f32(vh, bf16, row * D, n * D, vbuf);
            for (int64_t g = 0; g < G; g++) mix_rows(s->acc + g * D, w[g], vc, n, D);
        }
        offset += len;
    }
}

/* A span of one query as prepare_query gave it: its pairs (qp) for use_head_lanes, else qf. Each
 * path's buffers live in its own frame, so a task's stack holds only the one that runs. */
static void attend_span(Softmax *s, const float *qf, const uint32_t *qp, int64_t G, int64_t D, const void *kh,
                        const void *vh, int bf16, const int64_t *rg, int64_t R, int64_t from, int64_t to, float scale) {
#ifdef HEAD_LANES
    if (qp) {
        attend_span_lanes(s, qp, G, D, kh, vh, rg, R, from, to, scale);
        return;
    }
#endif
    (void)qp, (void)scale;
    attend_span_f32(s, qf, G, D, kh, vh, bf16, rg, R, from, to);
}

static int64_t ranges_length(const int64_t *rg, int64_t R) {
    int64_t total = 0;
    for (int64_t r = 0; r < R; r++)
        if (rg[2 * r + 1] > rg[2 * r]) total += rg[2 * r + 1] - rg[2 * r];
    return total;
}

static void load_query(float *qf, const void *q, int bf16, int64_t h, int64_t t, int64_t G, int64_t T, int64_t D,
                       float scale) {
    float scratch[MAX_DIM];
    for (int64_t g = 0; g < G; g++) {
        const float *row = as_f32(q, bf16, ((h * G + g) * T + t) * D, D, scratch);
        for (int64_t d = 0; d < D; d++) qf[g * D + d] = row[d] * scale;
    }
}

/* A query as attend_span takes it: its pairs (returned) for use_head_lanes, else qf. */
static const uint32_t *prepare_query(float *qf, uint32_t *qp, const void *q, int bf16, int64_t h, int64_t t, int64_t G,
                                     int64_t T, int64_t D, float scale) {
    if (use_head_lanes(bf16, G, D)) {
        pack_query_pairs(qp, q, h, t, G, T, D);
        return qp;
    }
    load_query(qf, q, bf16, h, t, G, T, D, scale);
    return NULL;
}

static void store_output(void *out, int bf16, const Softmax *s, int64_t h, int64_t t, int64_t G, int64_t T,
                         int64_t D) {
    for (int64_t g = 0; g < G; g++) {
        const float inv = s->l[g] > 0.0f ? 1.0f / s->l[g] : 0.0f;
        const int64_t at = ((h * G + g) * T + t) * D;
        for (int64_t d = 0; d < D; d++) {
            const float x = s->acc[g * D + d] * inv;
            if (bf16)
                ((uint16_t *)out)[at + d] = f32_to_bf16(x);
            else
                ((float *)out)[at + d] = x;
        }
    }
}

static int attend_ranges(const void *q, const void *k, const void *v, void *out, const int64_t *ranges, int bf16,
                         int64_t hkv, int64_t G, int64_t T, int64_t D, int64_t R, int64_t head_stride, float scale,
                         int threads) {
    if (G > MAX_GROUPS || D > MAX_DIM) return 1;
    const int elem = bf16 ? 2 : 4;
    const int64_t pairs = hkv * T;
    if (pairs == 0) return 0;
    int64_t spans = 1; /* the most spans any query has */
    for (int64_t i = 0; i < pairs; i++) {
        const int64_t n = (ranges_length(ranges + i * R * 2, R) + SPAN - 1) / SPAN;
        spans = n > spans ? n : spans;
    }
    if (pairs >= 2 * threads || spans == 1) { /* enough pairs to share out: each thread whole pairs */
        int failed = 0;
        _Pragma("omp parallel num_threads(threads) reduction(|:failed)") {
            Softmax *total = malloc(sizeof(Softmax)), *part = malloc(sizeof(Softmax));
            float *qf = malloc(sizeof(float) * MAX_GROUPS * MAX_DIM);
            uint32_t *qp = aligned_alloc(64, sizeof(uint32_t) * MAX_GROUPS * MAX_DIM / 2);
            if (!total || !part || !qf || !qp) failed = 1;
            _Pragma("omp for schedule(dynamic)") for (int64_t i = 0; i < pairs; i++) {
                if (failed) continue;
                const int64_t h = i / T, t = i % T;
                const int64_t *rg = ranges + i * R * 2;
                const uint32_t *pairs_of_q = prepare_query(qf, qp, q, bf16, h, t, G, T, D, scale);
                softmax_reset(total, G, D);
                const int64_t n = ranges_length(rg, R);
                for (int64_t from = 0; from < n; from += SPAN) { /* the same spans as below, merged in order */
                    attend_span(part, qf, pairs_of_q, G, D, (const char *)k + h * head_stride * elem,
                                (const char *)v + h * head_stride * elem, bf16, rg, R, from,
                                from + SPAN < n ? from + SPAN : n, scale);
                    softmax_merge(total, part, G, D);
                }
                store_output(out, bf16, total, h, t, G, T, D);
            }
            free(total);
            free(part);
            free(qf);
            free(qp);
        }
        return failed ? 2 : 0;
    }
    /* Few pairs (decode): every (pair, span) is a task; the spans are merged in order after. */
    Softmax *parts = malloc(sizeof(Softmax) * pairs * spans);
    if (!parts) return 2;
    _Pragma("omp parallel for schedule(dynamic) num_threads(threads)") for (int64_t task = 0; task < pairs * spans;
                                                                             task++) {
        const int64_t i = task / spans, from = (task % spans) * SPAN, h = i / T, t = i % T;
        const int64_t *rg = ranges + i * R * 2;
        const int64_t n = ranges_length(rg, R);
        float qf[MAX_GROUPS * MAX_DIM];
        uint32_t qp[MAX_GROUPS * MAX_DIM / 2] __attribute__((aligned(64)));
        const uint32_t *pairs_of_q = prepare_query(qf, qp, q, bf16, h, t, G, T, D, scale);
        attend_span(&parts[task], qf, pairs_of_q, G, D, (const char *)k + h * head_stride * elem,
                    (const char *)v + h * head_stride * elem, bf16, rg, R, from, from + SPAN < n ? from + SPAN : n,
                    scale);
    }
    _Pragma("omp parallel for num_threads(threads)") for (int64_t i = 0; i < pairs; i++) {
        /* Span 0 as it stands: merging it into a reset state, as the serial path does, changes no bit
         * (l * 0 + l0 * e^0, acc * 0 + acc0 * e^0); then the others in order, as above. */
        Softmax *total = &parts[i * spans];
        for (int64_t p = 1; p < spans; p++) softmax_merge(total, &parts[i * spans + p], G, D);
        store_output(out, bf16, total, i / T, i % T, G, T, D);
    }
    free(parts);
    return 0;
}

int infllm_attend_ranges_f32(const float *q, const float *k, const float *v, float *out, const int64_t *ranges,
                             int64_t hkv, int64_t groups, int64_t tokens, int64_t dim, int64_t n_ranges,
                             int64_t head_stride, float scale, int threads) {
    return attend_ranges(q, k, v, out, ranges, 0, hkv, groups, tokens, dim, n_ranges, head_stride, scale, threads);
}

int infllm_attend_ranges_bf16(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out,
                              const int64_t *ranges, int64_t hkv, int64_t groups, int64_t tokens, int64_t dim,
                              int64_t n_ranges, int64_t head_stride, float scale, int threads) {
    return attend_ranges(q, k, v, out, ranges, 1, hkv, groups, tokens, dim, n_ranges, head_stride, scale, threads);
}

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
 * Scores in float32. Returns 0, 1 for shapes it does not take, 2 when out of memory.
 *
 * Three steps per (head group, query) pair: each head's log-sum-exp (head_lse), the kernels'
 * scores summed over the group (kernel_scores), the blocks (choose_blocks). With fewer pairs than
 * threads can share (decode), the steps run one after another over all pairs, the first per head
 * and the second per slice of kernels, so that both threads work; the numbers are the same.
 */
typedef struct {
    const void *q, *c1, *c2;
    int bf16;
    int64_t hkv, G, T, D, n1, c1_stride, n2, c2_stride, q_start, size1, stride1, size2, stride2, block_size,
        init_blocks, local_blocks, n_blocks, keep;
    float scale;
} Selection;

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

#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define HAVE_SHUFFLE 1
#endif
#endif

#ifdef HAVE_SHUFFLE
/* Lane i of the result: the sum of the lanes of x[i]. Sixteen sums in 15 shuffle-and-add steps,
 * where one at a time costs a reduction each. */
static inline vfloat sum_lanes16(const vfloat *x) {
    vfloat a[8], b[4], c[2];
    for (int i = 0; i < 8; i++)
        a[i] = __builtin_shufflevector(x[2 * i], x[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
               __builtin_shufflevector(x[2 * i], x[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30,
                                       31);
    for (int i = 0; i < 4; i++)
        b[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
               __builtin_shufflevector(a[2 * i], a[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30,
                                       31);
    for (int i = 0; i < 2; i++)
        c[i] = __builtin_shufflevector(b[2 * i], b[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
               __builtin_shufflevector(b[2 * i], b[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30,
                                       31);
    return __builtin_shufflevector(c[0], c[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           __builtin_shufflevector(c[0], c[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
#endif

/* Logits of query head qg (scaled) against m <= VW rows (float32, stride D); -inf past m. */
static inline vfloat logits_v(const float *qg, const float *rows, int64_t m, int64_t D) {
    vfloat out;
#ifdef HAVE_SHUFFLE
    if (D % VW == 0) {
        vfloat partial[VW];
        for (int64_t j = 0; j < VW; j++) {
            vfloat s = {0};
            if (j < m)
                for (int64_t d = 0; d < D; d += VW) s += load_v(qg + d) * load_v(rows + j * D + d);
            partial[j] = s;
        }
        out = sum_lanes16(partial);
    } else
#endif
        for (int64_t j = 0; j < VW; j++) out[j] = j < m ? dot(qg, rows + j * D, D) : 0.0f;
    for (int64_t j = m; j < VW; j++) out[j] = -INFINITY;
    return out;
}

#ifdef HEAD_LANES
/* head_lse for use_head_lanes: lse[0:16] of the 16 heads whose pairs are qp, over n keys (bfloat16
 * rows of D). Online over blocks of 8 keys: the sum is rescaled when a lane's peak rises. */
static void head_lse_lanes(const uint32_t *qp, const uint16_t *keys, int64_t n, int64_t D, float scale, float *lse) {
    const int64_t P = D / 2;
    const __m512i *q = (const __m512i *)qp;
    vfloat peak = splat(-INFINITY), sum = {0}, x[8];
    for (int64_t j = 0; j < n; j += 8) {
        const int64_t m = n - j < 8 ? n - j : 8;
        if (m == 8)
            logits8_lanes(x, q, (const uint32_t *)(keys + j * D), P, scale);
        else
            for (int64_t i = 0; i < 8; i++)
                x[i] = i < m ? logits1_lanes(q, (const uint32_t *)(keys + (j + i) * D), P, scale) : splat(-INFINITY);
        vfloat top = x[0];
        for (int i = 1; i < 8; i++) top = (vfloat)_mm512_max_ps((__m512)top, (__m512)x[i]);
        top = (vfloat)_mm512_max_ps((__m512)top, (__m512)peak);
        sum *= exp_v(peak - top); /* 1 where the peak held, 0 from -inf */
        peak = top;
        for (int i = 0; i < 8; i++) sum += exp_v(x[i] - peak);
    }
    for (int64_t i = 0; i < VW; i++) lse[i] = peak[i] == -INFINITY ? 0.0f : peak[i] + logf(sum[i]);
}

/* kernel_scores for use_head_lanes over kernels [j0, j1), the first `end` of them visible: each
 * kernel's heads are the lanes of one vector per 16 heads; 16 kernels' lanes are summed at once. */
static void kernel_scores_lanes(const Selection *a, const uint32_t *qp, const float *lse, int64_t h, int64_t end,
                                int64_t j0, int64_t j1, float *score) {
    const int64_t D = a->D, P = D / 2, HV = a->G / VW;
    const uint16_t *c1 = (const uint16_t *)a->c1 + h * a->c1_stride;
    for (int64_t j = j0; j < j1; j += VW) {
        vfloat total[VW], x[8];
        for (int64_t i = 0; i < VW; i++) total[i] = splat(0.0f);
        for (int64_t hv = 0; hv < HV && j < end; hv++) {
            const __m512i *q = (const __m512i *)(qp + hv * P * VW);
            const vfloat lse_v = load_v(lse + hv * VW), cap = splat(MAX_EXPONENT);
            for (int64_t i0 = 0; i0 < VW && j + i0 < end; i0 += 8) {
                const int64_t m = end - (j + i0) < 8 ? end - (j + i0) : 8;
                if (m == 8)
                    logits8_lanes(x, q, (const uint32_t *)(c1 + (j + i0) * D), P, a->scale);
                else
                    for (int64_t i = 0; i < m; i++) x[i] = logits1_lanes(q, (const uint32_t *)(c1 + (j + i0 + i) * D), P, a->scale);
                for (int64_t i = 0; i < m; i++) total[i0 + i] += exp_v(min_v(x[i] - lse_v, cap));
            }
        }
#ifdef HAVE_SHUFFLE
        const vfloat sums = sum_lanes16(total);
#else
        vfloat sums;
        for (int64_t i = 0; i < VW; i++) sums[i] = sum_v(total[i]);
#endif
        for (int64_t i = 0; i < VW && j + i < j1; i++) score[j + i] = j + i < end ? sums[i] : 0.0f;
    }
}
#endif

/* lse[g] for heads g0 <= g < g1: each head's log-sum-exp over the coarse kernels it sees, or over
 * C1 when exact or before any C2; online over blocks of VW kernels, each block read once for all
 * the heads. qf: [G][D], scaled. */
__attribute__((noinline)) static void head_lse(const Selection *a, const float *qf, const uint32_t *qp, int64_t h,
                                               int64_t vis1, int64_t vis2, int64_t g0, int64_t g1, float *lse) {
    const void *keys = vis2 ? a->c2 : a->c1;
    const int64_t n = vis2 ? vis2 : vis1, head_at = h * (vis2 ? a->c2_stride : a->c1_stride), D = a->D;
#ifdef HEAD_LANES
    if (qp) { /* g0, g1: multiples of 16 */
        for (int64_t hv = g0 / VW; hv < g1 / VW; hv++)
            head_lse_lanes(qp + hv * (D / 2) * VW, (const uint16_t *)keys + head_at, n, D, a->scale, lse + hv * VW);
        return;
    }
#endif
    (void)qp;
    float peak[MAX_GROUPS], sum[MAX_GROUPS], scratch[VW * MAX_DIM];
    for (int64_t g = g0; g < g1; g++) peak[g] = -INFINITY, sum[g] = 0.0f;
    for (int64_t j0 = 0; j0 < n; j0 += VW) {
        const int64_t m = n - j0 < VW ? n - j0 : VW;
        const float *rows = as_f32(keys, a->bf16, head_at + j0 * D, m * D, scratch);
        for (int64_t g = g0; g < g1; g++) { /* online: rescale the sum when the peak rises */
            const vfloat x = logits_v(qf + g * D, rows, m, D);
            const float top = max_v(x);
            if (top > peak[g]) {
                sum[g] = peak[g] == -INFINITY ? 0.0f : sum[g] * expf(peak[g] - top);
                peak[g] = top;
            }
            sum[g] += sum_v(exp_v(x - peak[g]));
        }
    }
    for (int64_t g = g0; g < g1; g++) /* nothing visible: every probability is 0 anyway */
        lse[g] = peak[g] == -INFINITY ? 0.0f : peak[g] + logf(sum[g]);
}

/* score[j] for kernels j in [j0, j1) (j0 a multiple of VW): the group's sum of exp(logit - lse),
 * capped as in the torch path; 0 for kernels the query does not see. qf: [G][D], scaled. */
__attribute__((noinline)) static void kernel_scores(const Selection *a, const float *qf, const uint32_t *qp,
                                                    const float *lse, int64_t h, int64_t vis1, int64_t j0, int64_t j1,
                                                    float *score) {
    const int64_t D = a->D, end = j1 < vis1 ? j1 : vis1;
#ifdef HEAD_LANES
    if (qp) {
        kernel_scores_lanes(a, qp, lse, h, end, j0, j1, score);
        return;
    }
#endif
    (void)qp;
    float scratch[VW * MAX_DIM];
    for (int64_t j = j0; j < j1; j += VW) {
        vfloat total = {0};
        if (j < end) {
            const int64_t m = end - j < VW ? end - j : VW;
            const float *rows = as_f32(a->c1, a->bf16, h * a->c1_stride + j * D, m * D, scratch);
            for (int64_t g = 0; g < a->G; g++)
                total += exp_v(min_v(logits_v(qf + g * D, rows, m, D) - lse[g], splat(MAX_EXPONENT)));
        }
        for (int64_t i = 0; i < VW && j + i < j1; i++) score[j + i] = total[i];
    }
}

/* The blocks of pair (h, t) from its kernel scores: forced ones, the best by score, empty slots. */
static void choose_blocks(const Selection *a, int64_t h, int64_t t, const float *score, Pick *heap, int64_t *chosen,
                          float *values) {
    const int64_t per_block = a->block_size / a->stride1, pad = a->size1 / a->stride1 - 1;
    const int64_t pos = a->q_start + t, q_block = pos / a->block_size, keep = a->keep;
    int64_t *out_i = chosen + (h * a->T + t) * keep;
    float *out_v = values + (h * a->T + t) * keep;
    int64_t filled = 0, heap_n = 0;
    const int64_t local_from = q_block - a->local_blocks;
    for (int64_t k = 0; k < a->n_blocks && filled < keep; k++) { /* forced, ascending */
        if ((k < a->init_blocks || k >= local_from) && k <= q_block) {
            out_i[filled] = k;
            out_v[filled++] = INFINITY;
        }
    }
    const int64_t want = keep - filled;
    for (int64_t k = a->init_blocks; k < a->n_blocks && k < local_from && want > 0; k++) {
        int64_t lo = k * per_block - pad, hi = k * per_block + per_block;
        if (lo < 0) lo = 0;
        if (hi > a->n1) hi = a->n1;
        float best = -INFINITY;
        for (int64_t j = lo; j < hi; j++) best = score[j] > best ? score[j] : best;
        if (best == -INFINITY) continue;
        Pick p = {best, k};
        if (heap_n < want) {
            heap[heap_n] = p;
            heap_sift_up(heap, heap_n++);
        } else if (pick_worse(heap[0], p)) {
            heap[0] = p;
            heap_sift_down(heap, heap_n, 0);
        }
    }
    for (int64_t i = 1; i < heap_n; i++) { /* best first: insertion sort, n <= keep */
        Pick p = heap[i];
        int64_t b = i;
        for (; b > 0 && pick_worse(heap[b - 1], p); b--) heap[b] = heap[b - 1];
        heap[b] = p;
    }
    for (int64_t i = 0; i < heap_n; i++) {
        out_i[filled] = heap[i].i;
        out_v[filled++] = heap[i].v;
    }
    for (int64_t k = 0; k < a->n_blocks && filled < keep; k++) { /* empty slots: -inf */
        int taken = 0;
        for (int64_t i = 0; i < filled && !taken; i++) taken = out_i[i] == k;
        if (!taken) {
            out_i[filled] = k;
            out_v[filled++] = -INFINITY;
        }
    }
}

static void pair_visibility(const Selection *a, int64_t t, int64_t *vis1, int64_t *vis2) {
    const int64_t pos = a->q_start + t;
    *vis1 = visible_kernels(pos, a->n1, a->size1, a->stride1);
    *vis2 = a->n2 ? visible_kernels(pos, a->n2, a->size2, a->stride2) : 0;
}

#define SLICE 256 /* kernels per task when the decode path shares one pair's scores out */

static int select_blocks(const Selection *a, int64_t *chosen, float *values, int threads) {
    if (a->D > MAX_DIM || a->G > MAX_GROUPS || a->keep > a->n_blocks) return 1;
    const int64_t pairs = a->hkv * a->T, G = a->G, D = a->D, n1 = a->n1;
    if (pairs == 0) return 0;
    int failed = 0;
    if (pairs >= 2 * threads) {
        _Pragma("omp parallel num_threads(threads) reduction(|:failed)") {
            float *score = malloc(sizeof(float) * (n1 + VW)), *qf = malloc(sizeof(float) * G * D);
            uint32_t *qp = aligned_alloc(64, sizeof(uint32_t) * MAX_GROUPS * MAX_DIM / 2);
            Pick *heap = malloc(sizeof(Pick) * (a->keep + 1));
            float lse[MAX_GROUPS];
            if (!score || !qf || !qp || !heap) failed = 1;
            _Pragma("omp for schedule(dynamic)") for (int64_t i = 0; i < pairs; i++) {
                if (failed) continue;
                const int64_t h = i / a->T, t = i % a->T;
                int64_t vis1, vis2;
                pair_visibility(a, t, &vis1, &vis2);
                const uint32_t *pairs_of_q = prepare_query(qf, qp, a->q, a->bf16, h, t, G, a->T, D, a->scale);
                head_lse(a, qf, pairs_of_q, h, vis1, vis2, 0, G, lse);
                kernel_scores(a, qf, pairs_of_q, lse, h, vis1, 0, n1, score);
                choose_blocks(a, h, t, score, heap, chosen, values);
            }
            free(score);
            free(qf);
            free(qp);
            free(heap);
        }
        return failed ? 2 : 0;
    }
    /* Few pairs (decode): the same three steps, each spread over both threads. */
    const int64_t slices = (n1 + SLICE - 1) / SLICE > 0 ? (n1 + SLICE - 1) / SLICE : 1;
    float *score = malloc(sizeof(float) * pairs * (n1 + VW)), *qf = malloc(sizeof(float) * pairs * G * D);
    float *lse = malloc(sizeof(float) * pairs * G);
    const int64_t qp_size = (sizeof(uint32_t) * pairs * G * D / 2 + 63) / 64 * 64; /* aligned_alloc's rule */
    uint32_t *qp = aligned_alloc(64, qp_size); /* [pair][G * D / 2]: 64-byte aligned when use_head_lanes */
    const uint32_t **pairs_of_q = malloc(sizeof(uint32_t *) * pairs);
    Pick *heaps = malloc(sizeof(Pick) * pairs * (a->keep + 1));
    if (!score || !qf || !lse || !qp || !pairs_of_q || !heaps) failed = 1;
    const int64_t width = use_head_lanes(a->bf16, G, D) ? VW : 1; /* heads per head_lse task */
    if (!failed) {
        _Pragma("omp parallel num_threads(threads)") {
            _Pragma("omp for") for (int64_t i = 0; i < pairs; i++)
                pairs_of_q[i] = prepare_query(qf + i * G * D, qp + i * G * D / 2, a->q, a->bf16, i / a->T, i % a->T, G,
                                              a->T, D, a->scale);
            _Pragma("omp for schedule(dynamic)") for (int64_t task = 0; task < pairs * (G / width); task++) {
                const int64_t i = task / (G / width), g = task % (G / width) * width;
                int64_t vis1, vis2;
                pair_visibility(a, i % a->T, &vis1, &vis2);
                head_lse(a, qf + i * G * D, pairs_of_q[i], i / a->T, vis1, vis2, g, g + width, lse + i * G);
            }
            _Pragma("omp for schedule(dynamic)") for (int64_t task = 0; task < pairs * slices; task++) {
                const int64_t i = task / slices, j0 = (task % slices) * SLICE;
                int64_t vis1, vis2;
                pair_visibility(a, i % a->T, &vis1, &vis2);
                kernel_scores(a, qf + i * G * D, pairs_of_q[i], lse + i * G, i / a->T, vis1, j0,
                              j0 + SLICE < n1 ? j0 + SLICE : n1, score + i * (n1 + VW));
            }
            _Pragma("omp for") for (int64_t i = 0; i < pairs; i++)
                choose_blocks(a, i / a->T, i % a->T, score + i * (n1 + VW), heaps + i * (a->keep + 1), chosen, values);
        }
    }
    free(score);
    free(qf);
    free(lse);
    free(qp);
    free(pairs_of_q);
    free(heaps);
    return failed ? 2 : 0;
}

#define SELECT_ENTRY(NAME, T, BF16)                                                                             \
    int NAME(const T *q, const T *c1, const T *c2, int64_t *chosen, float *values, int64_t hkv, int64_t groups,  \
             int64_t tokens, int64_t dim, int64_t n1, int64_t c1_head_stride, int64_t n2, int64_t c2_head_stride, \
             int64_t q_start, int64_t size1, int64_t stride1, int64_t size2, int64_t stride2, int64_t block_size, \
             int64_t init_blocks, int64_t local_blocks, int64_t n_blocks, int64_t keep, float scale,             \
             int threads) {                                                                                      \
        const Selection a = {q,          c1,           c2,          BF16,           hkv,        groups,          \
                             tokens,     dim,          n1,          c1_head_stride, n2,         c2_head_stride,  \
                             q_start,    size1,        stride1,     size2,          stride2,    block_size,      \
                             init_blocks, local_blocks, n_blocks,   keep,           scale};                      \
        return select_blocks(&a, chosen, values, threads);                                                       \
    }

SELECT_ENTRY(infllm_select_blocks_f32, float, 0)
SELECT_ENTRY(infllm_select_blocks_bf16, uint16_t, 1)

/* 1 when bfloat16 groups of 16 or 32 heads run on AVX512-BF16 dot products (use_head_lanes). */
int infllm_bf16_dot_products(void) {
#ifdef HEAD_LANES
    return 1;
#else
    return 0;
#endif
}
