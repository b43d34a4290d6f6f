/*
 * InfLLM v2 sparse attention on NVIDIA GPUs (sm_80 and newer): stage 1 (block selection) and
 * stage 2 (attention over the selected blocks), as runtime/sparse_attention.py defines them; that
 * module's docstring has the definition and the torch path these kernels must match.
 *
 * Built by runtime/cuda_kernel.py with nvcc (on first use, or ahead of time) into a small shared
 * library with a C ABI, called through ctypes with raw device pointers and torch's current stream.
 * Workspaces are allocated by the caller through torch, so memory stays in torch's caching allocator.
 *
 * Layouts (element strides; every row of D values contiguous and 16-byte aligned):
 *   q, out      [Hkv][G][T][D]        query heads grouped by their KV head
 *   k, v        [Hkv][.][D]           row r of head h at h * head_stride + r * D (the KV cache in place)
 *   c1, c2      [Hkv][.][D]           compressed keys, head strides given
 *   lse_max/sum [S][Hkv][G][T] float  stage 1's log-sum-exp per query head, in S partial maxima and sums
 *   block_score [Hkv][T][NB]  float   stage 1's pooled scores (forced and future blocks left unset)
 *   chosen      [Hkv][T][K]   int64   selected blocks, best first, as select_blocks returns them:
 *   values      [Hkv][T][K]   float   +inf forced, a finite score, -inf an empty slot
 *
 * The kernels, in the order a forward runs them:
 *   1. lse_kernel          per query head: the log-sum-exp over the visible C2 keys (or C1 when
 *                          the LSE approximation is off or no C2 key is visible yet)
 *   2. block_score_kernel  C1 scores exp(q.c/sqrt(D) - lse) summed over the GQA group and
 *                          max-pooled into blocks, for a range of blocks per CTA; the score
 *                          matrix over all kernels never reaches global memory
 *   3. select_kernel       per (KV head, query): init and local blocks forced, future blocks out,
 *                          top-K by radix select, ties to the earlier block
 *   4. attend_kernel       per (query, KV head, split of its blocks): the G heads of the query's
 *                          group are the rows of a tensor-core tile (upstream's layout), online
 *                          softmax over its blocks, causal inside its own block
 *   5. combine_kernel      merges the splits (decode splits one query's blocks over many CTAs)
 * Matrix products use WMMA (16x16x16, bf16 or fp16 in, float32 accumulate); softmax statistics
 * are float32 throughout.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <mma.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

using namespace nvcuda;

namespace {

constexpr int WARPS = 4;
constexpr int THREADS = WARPS * 32;
constexpr int TILE = 64;          // keys (or compressed keys) per tile
constexpr int MAX_ROWS = 64;      // query rows per CTA in stage 1 (G * tokens), and G at most in stage 2
constexpr int HALF_PAD = 8;       // 16-bit elements of padding per shared row: rows stay 32-byte aligned
constexpr int FLOAT_PAD = 4;      // float padding per shared row
constexpr int BLOCKS_PER_CTA = 16;  // stage 1: blocks pooled by one CTA
constexpr int SELECT_THREADS = 256;
constexpr float MAX_EXPONENT = 80.0f;  // runtime/sparse_attention.py's MAX_EXPONENT
static_assert(TILE == 64, "the softmax steps give each lane of a warp two of a tile's columns");

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

__host__ __device__ __forceinline__ int round16(int x) { return (x + 15) / 16 * 16; }
__host__ __device__ __forceinline__ size_t align128(size_t x) { return (x + 127) / 128 * 128; }

// Compressed keys of `size` tokens every `stride` visible to a query at pos: those ending at or before it.
__device__ __forceinline__ int64_t visible_kernels(int64_t pos, int64_t n, int64_t size, int64_t stride) {
    if (pos < size - 1) return 0;
    const int64_t v = (pos - size + 1) / stride + 1;
    return v < n ? v : n;
}

__device__ __forceinline__ float warp_max(float x) {
    for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
    return x;
}
__device__ __forceinline__ float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

// Copies rows of D elements into shared memory (row stride ld), 16 bytes per thread and step;
// rows for which row_ptr gives nullptr are zero.
template <typename T, int D, typename RowPtr>
__device__ void load_rows(T *dst, int ld, int rows, RowPtr row_ptr) {
    constexpr int VEC = 16 / sizeof(T);
    constexpr int PER_ROW = D / VEC;
    for (int i = threadIdx.x; i < rows * PER_ROW; i += blockDim.x) {
        const int r = i / PER_ROW, c = (i % PER_ROW) * VEC;
        const T *src = row_ptr(r);
        const uint4 value = src ? *reinterpret_cast<const uint4 *>(src + c) : make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4 *>(dst + r * ld + c) = value;
    }
}

// s[M x TILE] = a[M x D] . b[TILE x D]^T, M a multiple of 16; the warps share the 16x16 tiles.
template <typename T, int D>
__device__ void rows_times_keys(const T *a, int ld_a, const T *b, int ld_b, float *s, int ld_s, int m) {
    constexpr int TILES_N = TILE / 16;
    for (int tile = threadIdx.x / 32; tile < (m / 16) * TILES_N; tile += blockDim.x / 32) {
        const int tm = tile / TILES_N, tn = tile % TILES_N;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
#pragma unroll
        for (int kk = 0; kk < D; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;  // b's rows are columns of b^T
            wmma::load_matrix_sync(fa, a + tm * 16 * ld_a + kk, ld_a);
            wmma::load_matrix_sync(fb, b + tn * 16 * ld_b + kk, ld_b);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(s + tm * 16 * ld_s + tn * 16, acc, ld_s, wmma::mem_row_major);
    }
}

// o[M x D] = p[M x TILE] . v[TILE x D], M a multiple of 16.
template <typename T, int D>
__device__ void probs_times_values(const T *p, int ld_p, const T *v, int ld_v, float *o, int ld_o, int m) {
    constexpr int TILES_N = D / 16;
    for (int tile = threadIdx.x / 32; tile < (m / 16) * TILES_N; tile += blockDim.x / 32) {
        const int tm = tile / TILES_N, tn = tile % TILES_N;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
#pragma unroll
        for (int kk = 0; kk < TILE; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
            wmma::load_matrix_sync(fa, p + tm * 16 * ld_p + kk, ld_p);
            wmma::load_matrix_sync(fb, v + kk * ld_v + tn * 16, ld_v);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(o + tm * 16 * ld_o + tn * 16, acc, ld_o, wmma::mem_row_major);
    }
}

}  // namespace

extern "C" {

// Arguments of infllm_cuda_select (mirrored by SelectArgs in runtime/cuda_kernel.py).
typedef struct {
    const void *q, *c1, *c2;
    float *lse_max, *lse_sum;  // [lse_splits][Hkv][G][T] workspaces
    float *block_score, *values;
    int64_t *chosen;
    int64_t hkv, groups, tokens, dim, lse_splits;
    int64_t n1, c1_head_stride, n2, c2_head_stride;  // n2 = 0: exact LSE over C1
    int64_t q_start, size1, stride1, size2, stride2;
    int64_t block_size, init_blocks, local_blocks, n_blocks, keep;
    float scale;
    int32_t dtype;  // 0 bfloat16, 1 float16
} InfllmSelectArgs;

// Arguments of infllm_cuda_attend (mirrored by AttendArgs in runtime/cuda_kernel.py).
typedef struct {
    const void *q, *k, *v;
    void *out;
    const int64_t *chosen;
    const float *values;
    float *part_out, *part_max, *part_sum;  // [splits][Hkv][G][T](x D); unused when splits == 1
    int64_t hkv, groups, tokens, dim, head_stride, q_start, block_size, keep, splits;
    float scale;
    int32_t dtype;
} InfllmAttendArgs;

}  // extern "C"

namespace {

// ---------------------------------------------------------------------------------------------
// Stage 1a: the log-sum-exp of each query head over its visible coarse keys (C2), or over its
// visible C1 keys when the approximation is off or it sees no C2 key yet. One CTA: one KV head,
// `per_cta` consecutive tokens (rows r = token * G + head) and every lse_splits-th key tile, so
// that a decode step spreads its keys over many CTAs; it writes its partial max and sum.
// ---------------------------------------------------------------------------------------------
template <typename T, int D>
__global__ void __launch_bounds__(THREADS) lse_kernel(InfllmSelectArgs a, int per_cta) {
    constexpr int LD = D + HALF_PAD, LDS = TILE + FLOAT_PAD;
    extern __shared__ __align__(128) unsigned char smem[];
    const int G = (int)a.groups, h = blockIdx.y, split = blockIdx.z, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t t0 = (int64_t)blockIdx.x * per_cta;
    const int rows = G * per_cta, m = round16(rows);
    T *qs = reinterpret_cast<T *>(smem);
    T *cs = reinterpret_cast<T *>(smem + align128(sizeof(T) * m * LD));
    float *s = reinterpret_cast<float *>(smem + align128(sizeof(T) * m * LD) + align128(sizeof(T) * TILE * LD));
    __shared__ float row_max[MAX_ROWS], row_sum[MAX_ROWS];
    __shared__ int row_count[MAX_ROWS], row_source[MAX_ROWS], most[2];

    const T *q = static_cast<const T *>(a.q);
    load_rows<T, D>(qs, LD, m, [&](int r) -> const T * {
        const int64_t t = t0 + r / G;
        return r < rows && t < a.tokens ? q + ((h * a.groups + r % G) * a.tokens + t) * D : nullptr;
    });
    if (threadIdx.x < 2) most[threadIdx.x] = 0;
    __syncthreads();
    for (int r = threadIdx.x; r < MAX_ROWS; r += blockDim.x) {
        const int64_t t = t0 + r / G;
        int count = 0, source = 0;
        if (r < rows && t < a.tokens) {
            const int64_t pos = a.q_start + t;
            const int64_t vis2 = a.n2 ? visible_kernels(pos, a.n2, a.size2, a.stride2) : 0;
            source = vis2 > 0 ? 1 : 0;
            count = (int)(vis2 > 0 ? vis2 : visible_kernels(pos, a.n1, a.size1, a.stride1));
            atomicMax(&most[source], count);
        }
        row_count[r] = count;
        row_source[r] = source;
        row_max[r] = -INFINITY;
        row_sum[r] = 0.0f;
    }
    __syncthreads();
    for (int source = 0; source < 2; source++) {
        const T *keys = static_cast<const T *>(source ? a.c2 : a.c1) + h * (source ? a.c2_head_stride : a.c1_head_stride);
        for (int j0 = split * TILE; j0 < most[source]; j0 += (int)a.lse_splits * TILE) {
            load_rows<T, D>(cs, LD, TILE, [&](int r) -> const T * {
                return j0 + r < most[source] ? keys + (int64_t)(j0 + r) * D : nullptr;
            });
            __syncthreads();
            rows_times_keys<T, D>(qs, LD, cs, LD, s, LDS, m);
            __syncthreads();
            for (int r = warp; r < rows; r += WARPS) {  // online log-sum-exp, a warp per row
                const int n = min(TILE, row_count[r] - j0);
                if (row_source[r] != source || n <= 0) continue;
                const float x0 = lane < n ? s[r * LDS + lane] * a.scale : -INFINITY;
                const float x1 = lane + 32 < n ? s[r * LDS + lane + 32] * a.scale : -INFINITY;
                const float peak = fmaxf(row_max[r], warp_max(fmaxf(x0, x1)));
                const float sum = warp_sum(expf(x0 - peak) + expf(x1 - peak));
                __syncwarp();
                if (lane == 0) {
                    row_sum[r] = row_sum[r] * expf(row_max[r] - peak) + sum;
                    row_max[r] = peak;
                }
            }
            __syncthreads();
        }
    }
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        const int64_t t = t0 + r / G;
        if (t >= a.tokens) continue;
        const int64_t at = ((split * a.hkv + h) * a.groups + r % G) * a.tokens + t;
        a.lse_max[at] = row_max[r];
        a.lse_sum[at] = row_sum[r];
    }
}

// The log-sum-exp of one query head from the partial maxima and sums of stage 1a; 0 when it sees
// no key at all (every probability is 0 anyway).
__device__ float merged_lse(const InfllmSelectArgs &a, int64_t row) {
    const int64_t stride = a.hkv * a.groups * a.tokens;
    float peak = -INFINITY;
    for (int64_t sp = 0; sp < a.lse_splits; sp++) peak = fmaxf(peak, a.lse_max[sp * stride + row]);
    if (peak == -INFINITY) return 0.0f;
    float sum = 0.0f;
    for (int64_t sp = 0; sp < a.lse_splits; sp++) sum += a.lse_sum[sp * stride + row] * expf(a.lse_max[sp * stride + row] - peak);
    return peak + logf(sum);
}

// ---------------------------------------------------------------------------------------------
// Stage 1b: block scores. A CTA takes one KV head, `per_cta` tokens and BLOCKS_PER_CTA blocks:
// it scores the C1 keys overlapping those blocks (exp of the logit less the LSE, capped, summed
// over the group; 0 for a key the query cannot see yet) and keeps each block's max.
// ---------------------------------------------------------------------------------------------
template <typename T, int D>
__global__ void __launch_bounds__(THREADS) block_score_kernel(InfllmSelectArgs a, int per_cta) {
    constexpr int LD = D + HALF_PAD, LDS = TILE + FLOAT_PAD;
    extern __shared__ __align__(128) unsigned char smem[];
    const int G = (int)a.groups, h = blockIdx.y;
    const int64_t t0 = (int64_t)blockIdx.x * per_cta;
    const int64_t b0 = (int64_t)blockIdx.z * BLOCKS_PER_CTA;
    const int64_t last_t = min(t0 + per_cta, a.tokens) - 1;
    if (b0 > (a.q_start + last_t) / a.block_size) return;  // future blocks for every query here
    const int rows = G * per_cta, m = round16(rows);
    const int64_t per_block = a.block_size / a.stride1, pad = a.size1 / a.stride1 - 1;
    const int64_t j_lo = max((int64_t)0, b0 * per_block - pad);
    const int64_t j_hi = min(a.n1, (b0 + BLOCKS_PER_CTA) * per_block);
    const int span = (int)(BLOCKS_PER_CTA * per_block + pad);  // kernels one CTA may need
    T *qs = reinterpret_cast<T *>(smem);
    T *cs = reinterpret_cast<T *>(smem + align128(sizeof(T) * m * LD));
    float *s = reinterpret_cast<float *>(smem + align128(sizeof(T) * m * LD) + align128(sizeof(T) * TILE * LD));
    float *kscore = s + align128(sizeof(float) * m * LDS) / sizeof(float);  // [per_cta][span]
    __shared__ float row_lse[MAX_ROWS];
    __shared__ int64_t row_visible[MAX_ROWS];

    const T *q = static_cast<const T *>(a.q);
    const T *keys = static_cast<const T *>(a.c1) + h * a.c1_head_stride;
    load_rows<T, D>(qs, LD, m, [&](int r) -> const T * {
        const int64_t t = t0 + r / G;
        return r < rows && t < a.tokens ? q + ((h * a.groups + r % G) * a.tokens + t) * D : nullptr;
    });
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        const int64_t t = min(t0 + r / G, a.tokens - 1);
        row_lse[r] = merged_lse(a, (h * a.groups + r % G) * a.tokens + t);
        row_visible[r] = visible_kernels(a.q_start + t, a.n1, a.size1, a.stride1);
    }
    for (int64_t j0 = j_lo; j0 < j_hi; j0 += TILE) {
        __syncthreads();  // the previous tile's scores are consumed
        load_rows<T, D>(cs, LD, TILE, [&](int r) -> const T * {
            return j0 + r < j_hi ? keys + (j0 + r) * D : nullptr;
        });
        __syncthreads();
        rows_times_keys<T, D>(qs, LD, cs, LD, s, LDS, m);
        __syncthreads();
        const int n = (int)min((int64_t)TILE, j_hi - j0);
        for (int i = threadIdx.x; i < per_cta * n; i += blockDim.x) {
            const int tl = i / n, j = i % n;
            float sum = 0.0f;
            for (int g = 0; g < G; g++) {
                const int r = tl * G + g;
                if (j0 + j < row_visible[r]) sum += expf(fminf(s[r * LDS + j] * a.scale - row_lse[r], MAX_EXPONENT));
            }
            kscore[tl * span + (j0 + j - j_lo)] = sum;
        }
    }
    __syncthreads();
    const int64_t b_end = min(b0 + BLOCKS_PER_CTA, a.n_blocks);
    for (int i = threadIdx.x; i < per_cta * BLOCKS_PER_CTA; i += blockDim.x) {
        const int tl = i / BLOCKS_PER_CTA;
        const int64_t b = b0 + i % BLOCKS_PER_CTA, t = t0 + tl;
        if (b >= b_end || t >= a.tokens) continue;
        const int64_t lo = max(b * per_block - pad, j_lo), hi = min(b * per_block + per_block, j_hi);
        float best = -INFINITY;  // a block no kernel reaches scores -inf, as the torch path's padding
        for (int64_t j = lo; j < hi; j++) best = fmaxf(best, kscore[tl * span + (j - j_lo)]);
        a.block_score[(h * a.tokens + t) * a.n_blocks + b] = best;
    }
}

// Order-preserving map of a float to an unsigned key (larger float, larger key).
__device__ __forceinline__ uint32_t order_key(float x) {
    const uint32_t u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}

// ---------------------------------------------------------------------------------------------
// Stage 1c: the K best blocks of one (KV head, query), in the order of a stable descending sort
// (forced blocks first, ascending; then by score, ties to the earlier block; then empty slots).
// Radix select finds the K-th key in four 8-bit passes; the keys above it and the first of the
// keys equal to it are taken; each taken block's rank is the number of taken blocks better than it.
// ---------------------------------------------------------------------------------------------
__global__ void __launch_bounds__(SELECT_THREADS) select_kernel(InfllmSelectArgs a) {
    extern __shared__ __align__(128) unsigned char smem[];
    uint32_t *keys = reinterpret_cast<uint32_t *>(smem);                         // [n_blocks]
    uint32_t *taken_key = keys + a.n_blocks;                                     // [keep]
    int *taken_block = reinterpret_cast<int *>(taken_key + a.keep);              // [keep]
    __shared__ unsigned hist[256];
    __shared__ int equal_before[SELECT_THREADS];
    __shared__ uint32_t prefix, mask;
    __shared__ int remaining, n_taken;
    const int64_t t = blockIdx.x, h = blockIdx.y, nb = a.n_blocks;
    const int64_t pos = a.q_start + t, q_block = pos / a.block_size, local_from = q_block - a.local_blocks;
    const float *row = a.block_score + (h * a.tokens + t) * nb;
    for (int64_t b = threadIdx.x; b < nb; b += blockDim.x) {
        const float v = b > q_block ? -INFINITY : (b < a.init_blocks || b >= local_from) ? INFINITY : row[b];
        keys[b] = order_key(v);
    }
    if (threadIdx.x == 0) {
        prefix = 0;
        mask = 0;
        remaining = (int)a.keep;
        n_taken = 0;
    }
    __syncthreads();
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (int64_t b = threadIdx.x; b < nb; b += blockDim.x)
            if ((keys[b] & mask) == prefix) atomicAdd(&hist[(keys[b] >> shift) & 255u], 1u);
        __syncthreads();
        if (threadIdx.x == 0) {
            int above = 0;
            for (int digit = 255; digit >= 0; digit--) {
                if (above + (int)hist[digit] >= remaining) {
                    prefix |= (uint32_t)digit << shift;
                    mask |= 255u << shift;
                    remaining -= above;
                    break;
                }
                above += hist[digit];
            }
        }
        __syncthreads();
    }
    // `prefix` is now the K-th largest key; `remaining` of the keys equal to it are taken, lowest block first.
    const int64_t per_thread = (nb + blockDim.x - 1) / blockDim.x;
    const int64_t lo = threadIdx.x * per_thread, hi = min(nb, lo + per_thread);
    int equal = 0;
    for (int64_t b = lo; b < hi; b++) equal += keys[b] == prefix;
    equal_before[threadIdx.x] = equal;
    __syncthreads();
    if (threadIdx.x == 0) {  // exclusive prefix sum over the threads' contiguous ranges
        int run = 0;
        for (int i = 0; i < (int)blockDim.x; i++) {
            const int c = equal_before[i];
            equal_before[i] = run;
            run += c;
        }
    }
    __syncthreads();
    int equal_rank = equal_before[threadIdx.x];
    for (int64_t b = lo; b < hi; b++) {
        const uint32_t key = keys[b];
        bool take = key > prefix;
        if (key == prefix) take = equal_rank++ < remaining;
        if (take) {
            const int slot = atomicAdd(&n_taken, 1);
            taken_key[slot] = key;
            taken_block[slot] = (int)b;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n_taken; i += blockDim.x) {
        const uint32_t key = taken_key[i];
        const int block = taken_block[i];
        int rank = 0;
        for (int j = 0; j < n_taken; j++)
            rank += taken_key[j] > key || (taken_key[j] == key && taken_block[j] < block);
        a.chosen[(h * a.tokens + t) * a.keep + rank] = block;
        a.values[(h * a.tokens + t) * a.keep + rank] = key_value(key);
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 2: one CTA per (query, KV head, split). The G query heads of the group are the rows of
// the tiles (padded to 16); each selected block is read from the cache in tiles of 64 keys, up
// to the query itself (causal inside its own block; a short last block stops at the query).
// ---------------------------------------------------------------------------------------------
template <typename T, int D>
__global__ void __launch_bounds__(THREADS) attend_kernel(InfllmAttendArgs a) {
    constexpr int LD = D + HALF_PAD, LDP = TILE + HALF_PAD, LDS = TILE + FLOAT_PAD, LDO = D + FLOAT_PAD;
    extern __shared__ __align__(128) unsigned char smem[];
    const int G = (int)a.groups, m = round16(G), warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t t = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
    const int64_t pos = a.q_start + t;
    size_t offset = 0;
    auto carve = [&](size_t bytes) { unsigned char *p = smem + offset; offset += align128(bytes); return p; };
    T *qs = reinterpret_cast<T *>(carve(sizeof(T) * m * LD));
    T *ks = reinterpret_cast<T *>(carve(sizeof(T) * TILE * LD));
    T *vs = reinterpret_cast<T *>(carve(sizeof(T) * TILE * LD));
    T *ps = reinterpret_cast<T *>(carve(sizeof(T) * m * LDP));
    float *s = reinterpret_cast<float *>(carve(sizeof(float) * m * LDS));
    float *o = reinterpret_cast<float *>(carve(sizeof(float) * m * LDO));
    float *pv = reinterpret_cast<float *>(carve(sizeof(float) * m * LDO));
    __shared__ float row_max[MAX_ROWS], row_sum[MAX_ROWS], row_scale[MAX_ROWS];

    const T *q = static_cast<const T *>(a.q);
    const T *k = static_cast<const T *>(a.k) + h * a.head_stride;
    const T *v = static_cast<const T *>(a.v) + h * a.head_stride;
    load_rows<T, D>(qs, LD, m, [&](int r) -> const T * {
        return r < G ? q + ((h * a.groups + r) * a.tokens + t) * D : nullptr;
    });
    for (int i = threadIdx.x; i < m * LDO; i += blockDim.x) o[i] = 0.0f;
    for (int r = threadIdx.x; r < MAX_ROWS; r += blockDim.x) {
        row_max[r] = -INFINITY;
        row_sum[r] = 0.0f;
    }
    const int64_t per_split = (a.keep + a.splits - 1) / a.splits;
    const int64_t e_lo = split * per_split, e_hi = min(a.keep, e_lo + per_split);
    const int64_t *blocks = a.chosen + (h * a.tokens + t) * a.keep;
    const float *block_values = a.values + (h * a.tokens + t) * a.keep;
    for (int64_t e = e_lo; e < e_hi; e++) {
        if (block_values[e] == -INFINITY) continue;  // an empty slot
        const int64_t block_start = blocks[e] * a.block_size;
        const int64_t block_end = min(block_start + a.block_size, pos + 1);
        for (int64_t start = block_start; start < block_end; start += TILE) {
            const int n = (int)min((int64_t)TILE, block_end - start);
            __syncthreads();  // the previous tile is consumed
            load_rows<T, D>(ks, LD, TILE, [&](int r) -> const T * { return r < n ? k + (start + r) * D : nullptr; });
            load_rows<T, D>(vs, LD, TILE, [&](int r) -> const T * { return r < n ? v + (start + r) * D : nullptr; });
            __syncthreads();
            rows_times_keys<T, D>(qs, LD, ks, LD, s, LDS, m);
            __syncthreads();
            for (int r = warp; r < m; r += WARPS) {  // online softmax, a warp per row
                const float x0 = r < G && lane < n ? s[r * LDS + lane] * a.scale : -INFINITY;
                const float x1 = r < G && lane + 32 < n ? s[r * LDS + lane + 32] * a.scale : -INFINITY;
                if (r >= G) {  // padding rows: no weights
                    ps[r * LDP + lane] = ps[r * LDP + lane + 32] = from_float<T>(0.0f);
                    continue;
                }
                const float peak = fmaxf(row_max[r], warp_max(fmaxf(x0, x1)));
                const float w0 = expf(x0 - peak), w1 = expf(x1 - peak);  // 0 past the tile's keys
                ps[r * LDP + lane] = from_float<T>(w0);
                ps[r * LDP + lane + 32] = from_float<T>(w1);
                const float sum = warp_sum(w0 + w1);
                __syncwarp();
                if (lane == 0) {
                    row_scale[r] = expf(row_max[r] - peak);  // 0 on the first tile (max -inf)
                    row_sum[r] = row_sum[r] * row_scale[r] + sum;
                    row_max[r] = peak;
                }
            }
            __syncthreads();
            probs_times_values<T, D>(ps, LDP, vs, LD, pv, LDO, m);
            __syncthreads();
            for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
                const int r = i / D, d = i % D;
                o[r * LDO + d] = o[r * LDO + d] * row_scale[r] + pv[r * LDO + d];
            }
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
        const int r = i / D, d = i % D;
        const int64_t row = (h * a.groups + r) * a.tokens + t;
        if (a.splits == 1) {
            static_cast<T *>(a.out)[row * D + d] = from_float<T>(row_sum[r] > 0.0f ? o[r * LDO + d] / row_sum[r] : 0.0f);
        } else {
            const int64_t part = split * a.hkv * a.groups * a.tokens + row;
            a.part_out[part * D + d] = o[r * LDO + d];
            if (d == 0) {
                a.part_max[part] = row_max[r];
                a.part_sum[part] = row_sum[r];
            }
        }
    }
}

// Merges the splits of stage 2: out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s. One CTA per
// (query, query head), one thread per output element.
template <typename T>
__global__ void combine_kernel(InfllmAttendArgs a) {
    const int64_t t = blockIdx.x, hg = blockIdx.y;  // hg = h * G + g
    const int64_t row = hg * a.tokens + t, stride = a.hkv * a.groups * a.tokens;
    float peak = -INFINITY;
    for (int64_t sp = 0; sp < a.splits; sp++) peak = fmaxf(peak, a.part_max[sp * stride + row]);
    for (int d = threadIdx.x; d < a.dim; d += blockDim.x) {
        float num = 0.0f, den = 0.0f;
        for (int64_t sp = 0; sp < a.splits; sp++) {
            const float m = a.part_max[sp * stride + row];
            if (m == -INFINITY) continue;  // a split with no keys
            const float w = expf(m - peak);
            num += w * a.part_out[(sp * stride + row) * a.dim + d];
            den += w * a.part_sum[sp * stride + row];
        }
        static_cast<T *>(a.out)[row * a.dim + d] = from_float<T>(den > 0.0f ? num / den : 0.0f);
    }
}

// Per-thread error text for infllm_cuda_last_error.
thread_local char last_error[256] = "";

int fail(int code, const char *what, cudaError_t err = cudaSuccess) {
    snprintf(last_error, sizeof last_error, "%s%s%s", what, err != cudaSuccess ? ": " : "",
             err != cudaSuccess ? cudaGetErrorString(err) : "");
    return code;
}

// Launches `kernel` with `smem` bytes of dynamic shared memory, opting in above the 48 KB default.
template <typename... Params, typename... Args>
int launch(void (*kernel)(Params...), const char *name, dim3 grid, int threads, size_t smem, cudaStream_t stream,
           Args... args) {
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return 0;
    if (smem > 48 * 1024) {
        const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (err != cudaSuccess) return fail(3, name, err);
    }
    kernel<<<grid, threads, smem, stream>>>(args...);
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? 0 : fail(3, name, err);
}

template <typename T, int D>
int run_select(const InfllmSelectArgs &a, cudaStream_t stream) {
    constexpr int LD = D + HALF_PAD, LDS = TILE + FLOAT_PAD;
    const int per_cta = (int)min((int64_t)MAX_ROWS / a.groups, a.tokens);  // decode: one token, no empty rows
    const int m = round16((int)a.groups * per_cta);
    const size_t base = align128(sizeof(T) * m * LD) + align128(sizeof(T) * TILE * LD) + align128(sizeof(float) * m * LDS);
    const unsigned tiles = (unsigned)((a.tokens + per_cta - 1) / per_cta);
    int status = launch(lse_kernel<T, D>, "lse_kernel", dim3(tiles, (unsigned)a.hkv, (unsigned)a.lse_splits), THREADS,
                        base, stream, a, per_cta);
    if (status) return status;
    const int64_t span = (BLOCKS_PER_CTA * a.block_size / a.stride1) + a.size1 / a.stride1 - 1;
    const dim3 ranges(tiles, (unsigned)a.hkv, (unsigned)((a.n_blocks + BLOCKS_PER_CTA - 1) / BLOCKS_PER_CTA));
    status = launch(block_score_kernel<T, D>, "block_score_kernel", ranges, THREADS, base + sizeof(float) * per_cta * span,
                    stream, a, per_cta);
    if (status) return status;
    const size_t select_smem = sizeof(uint32_t) * (a.n_blocks + a.keep) + sizeof(int) * a.keep;
    return launch(select_kernel, "select_kernel", dim3((unsigned)a.tokens, (unsigned)a.hkv), SELECT_THREADS, select_smem,
                  stream, a);
}

template <typename T, int D>
int run_attend(const InfllmAttendArgs &a, cudaStream_t stream) {
    constexpr int LD = D + HALF_PAD, LDP = TILE + HALF_PAD, LDS = TILE + FLOAT_PAD, LDO = D + FLOAT_PAD;
    const int m = round16((int)a.groups);
    const size_t smem = align128(sizeof(T) * m * LD) + 2 * align128(sizeof(T) * TILE * LD) + align128(sizeof(T) * m * LDP) +
                        align128(sizeof(float) * m * LDS) + 2 * align128(sizeof(float) * m * LDO);
    const int status = launch(attend_kernel<T, D>, "attend_kernel", dim3((unsigned)a.tokens, (unsigned)a.hkv, (unsigned)a.splits),
                              THREADS, smem, stream, a);
    if (status || a.splits == 1) return status;
    return launch(combine_kernel<T>, "combine_kernel", dim3((unsigned)a.tokens, (unsigned)(a.hkv * a.groups)), (int)a.dim, 0,
                  stream, a);
}

// Shapes every kernel assumes; the Python side checks them too, with clearer messages.
bool supported(int64_t groups, int64_t dim, int32_t dtype) {
    return groups >= 1 && groups <= MAX_ROWS && (dim == 64 || dim == 128) && (dtype == 0 || dtype == 1);
}

}  // namespace

extern "C" {

// Stage 1 for T queries of one sequence: writes a->chosen and a->values ([Hkv][T][keep]).
// a->lse_max, a->lse_sum ([lse_splits][Hkv][G][T]) and a->block_score ([Hkv][T][n_blocks]) are workspaces. Returns 0, 1 for
// shapes it does not take, 3 for a CUDA error (infllm_cuda_last_error says which).
int infllm_cuda_select(const InfllmSelectArgs *a, void *stream) {
    if (!supported(a->groups, a->dim, a->dtype) || a->keep < 1 || a->keep > a->n_blocks || a->stride1 < 1 ||
        a->block_size < 1 || a->block_size % a->stride1 || a->size1 < a->stride1 || a->size1 % a->stride1 ||
        (a->n2 > 0 && a->stride2 < 1) || (a->n_blocks + BLOCKS_PER_CTA - 1) / BLOCKS_PER_CTA > 65535 || a->tokens < 1 || a->tokens > 2147483647LL || a->lse_splits < 1 ||
        a->lse_splits > 65535 || a->hkv > 65535)
        return fail(1, "unsupported shape");
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (a->dtype == 0) return a->dim == 64 ? run_select<__nv_bfloat16, 64>(*a, s) : run_select<__nv_bfloat16, 128>(*a, s);
    return a->dim == 64 ? run_select<__half, 64>(*a, s) : run_select<__half, 128>(*a, s);
}

// Stage 2: writes a->out ([Hkv][G][T][D]); with a->splits > 1 the part_* buffers are workspaces.
int infllm_cuda_attend(const InfllmAttendArgs *a, void *stream) {
    if (!supported(a->groups, a->dim, a->dtype) || a->splits < 1 || a->tokens < 1 || a->tokens > 2147483647LL ||
        a->splits > 65535)
        return fail(1, "unsupported shape");
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (a->dtype == 0) return a->dim == 64 ? run_attend<__nv_bfloat16, 64>(*a, s) : run_attend<__nv_bfloat16, 128>(*a, s);
    return a->dim == 64 ? run_attend<__half, 64>(*a, s) : run_attend<__half, 128>(*a, s);
}

const char *infllm_cuda_last_error(void) { return last_error; }

// The argument structs' layout, for runtime/cuda_kernel.py to check its ctypes mirrors against:
// sizeof, then the offset of every field in declaration order, of InfllmSelectArgs (which = 0) or
// InfllmAttendArgs (which = 1). Returns the number of values written (at most n).
#define OFFSETS(TYPE, ...) { sizeof(TYPE), __VA_ARGS__ }
#define AT(TYPE, F) offsetof(TYPE, F)
int infllm_cuda_layout(int which, int64_t *out, int n) {
    typedef InfllmSelectArgs S;
    typedef InfllmAttendArgs A;
    const size_t select[] = OFFSETS(S, AT(S, q), AT(S, c1), AT(S, c2), AT(S, lse_max), AT(S, lse_sum), AT(S, block_score),
        AT(S, values), AT(S, chosen), AT(S, hkv), AT(S, groups), AT(S, tokens), AT(S, dim), AT(S, lse_splits), AT(S, n1),
        AT(S, c1_head_stride), AT(S, n2), AT(S, c2_head_stride), AT(S, q_start), AT(S, size1), AT(S, stride1),
        AT(S, size2), AT(S, stride2), AT(S, block_size), AT(S, init_blocks), AT(S, local_blocks), AT(S, n_blocks),
        AT(S, keep), AT(S, scale), AT(S, dtype));
    const size_t attend[] = OFFSETS(A, AT(A, q), AT(A, k), AT(A, v), AT(A, out), AT(A, chosen), AT(A, values),
        AT(A, part_out), AT(A, part_max), AT(A, part_sum), AT(A, hkv), AT(A, groups), AT(A, tokens), AT(A, dim),
        AT(A, head_stride), AT(A, q_start), AT(A, block_size), AT(A, keep), AT(A, splits), AT(A, scale), AT(A, dtype));
    const size_t *values = which == 0 ? select : attend;
    const int count = which == 0 ? (int)(sizeof select / sizeof *select) : (int)(sizeof attend / sizeof *attend);
    int i = 0;
    for (; i < count && i < n; i++) out[i] = (int64_t)values[i];
    return i;
}

// The CUDA runtime this library was built with and the driver's version (both as 1000 * major + 10 * minor),
// and the number of devices the runtime sees (negative: the CUDA error code of the query).
int infllm_cuda_versions(int *runtime, int *driver) {
    cudaRuntimeGetVersion(runtime);
    cudaDriverGetVersion(driver);
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        fail(3, "cudaGetDeviceCount", err);
        return -(int)err;
    }
    return count;
}

}  // extern "C"
