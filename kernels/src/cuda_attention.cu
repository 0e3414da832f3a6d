/* CUDA backend: softmax attention.
 *
 * Fast path (q, k, v, o BF16, d % 8 == 0, d <= 128, 16-byte aligned): a
 * flash-attention forward of our own, FlashAttention-2 style.
 * - Block = 4 warps = 64 query rows of one (batch, head) (or 8 warps = 128
 *   rows); each warp owns 16 rows and keeps its Q fragments and its O
 *   accumulator (FP32) in registers for the whole key loop.  A third
 *   variant gives each of 4 warps 32 rows (FlashAttention-2's split, Q
 *   re-read from shared memory).  dp_cuda_backend_set_attention_variant()
 *   picks one; the bias path always uses the first.
 * - Keys / values stream through shared memory in tiles of 64 rows, double
 *   buffered with cp.async (the load of tile j+1 overlaps the maths of tile
 *   j); rows padded by 8 elements so ldmatrix is free of bank conflicts.
 * - S = Q K^T and O += P V on BF16 tensor cores (mma.sync m16n8k16, FP32
 *   accumulation, portable to sm_80+); online softmax in FP32 in the log2
 *   domain (exp2 of scale * log2(e) * s - running max).
 * - Head dims are padded to a tile of 32, 64 or 128 (zero-filled columns add
 *   nothing to q.k and are not stored), so test models with d = 16 / 24 / 32
 *   / 64 take the same path.
 * - key_len masks keys >= key_len; an optional F32 bias [H, Lq, Lk] is read
 *   per score (umT5's relative position bias: a slower template variant).
 * Layout: q / o [B, Lq, H, d], k / v [B, Lk, H, d] read in place (row
 * stride H * d): no transposes.
 *
 * Anything else (F32 / F16 tensors, d > 128, odd alignments) runs a generic
 * FP32 kernel: one block per query row, correct but slow. */
#include "cuda_common.cuh"

#include <math.h>

#define LOG2E 1.4426950408889634f

/* ---- PTX wrappers -------------------------------------------------------- */

__device__ __forceinline__ uint32_t
smem_u32 (const void *p)
{
  return (uint32_t) __cvta_generic_to_shared (p);
}

/* 16 bytes global -> shared; src_bytes 0 writes zeros (out-of-range rows). */
__device__ __forceinline__ void
cp_async_16 (void *smem, const void *gmem, int src_bytes)
{
  asm volatile ("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32 (smem)), "l"(gmem),
                "r"(src_bytes));
}

__device__ __forceinline__ void
cp_async_commit ()
{
  asm volatile ("cp.async.commit_group;\n" ::);
}

template <int N>
__device__ __forceinline__ void
cp_async_wait ()
{
  asm volatile ("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void
ldmatrix_x4 (uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, const void *p)
{
  asm volatile ("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                : "r"(smem_u32 (p)));
}

__device__ __forceinline__ void
ldmatrix_x4_trans (uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, const void *p)
{
  asm volatile ("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                : "r"(smem_u32 (p)));
}

/* d[0..3] += A (16x16, row) * B (16x8, col), BF16 in, FP32 accumulate. */
__device__ __forceinline__ void
mma_bf16 (float *d, const uint32_t *a, uint32_t b0, uint32_t b1)
{
  asm volatile ("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                "{%8, %9}, {%0, %1, %2, %3};\n"
                : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t
pack_bf16 (float lo, float hi)
{
  __nv_bfloat162 v = __floats2bfloat162_rn (lo, hi);
  return *(uint32_t *) &v;
}

/* ---- the flash kernel ---------------------------------------------------- */

struct flash_params {
  const __nv_bfloat16 *q, *k, *v;
  __nv_bfloat16 *o;
  const float *bias; /* [H, Lq, Lk] or NULL */
  int H, Lq, Lk, d, kv_len;
  float scale_log2; /* scale * log2(e) */
};

#define FA_BN 64
#define FA_PAD 8

template <int HD>
static constexpr size_t
flash_smem_bytes ()
{
  return (size_t) 4 * FA_BN * (HD + FA_PAD) * sizeof (__nv_bfloat16);
}

/* Copies rows [row0, row0 + ROWS) x [0, HD) of a [rows, H, d] tensor (row
 * stride `stride` elements, base at the head) into a padded smem tile;
 * rows >= nvalid and columns >= d become zeros. */
template <int HD, int ROWS, int THREADS>
__device__ __forceinline__ void
load_tile (__nv_bfloat16 *tile, const __nv_bfloat16 *base, int64_t stride, int row0, int nvalid, int d)
{
  constexpr int CHUNKS = HD / 8; /* 16-byte chunks per row */
  constexpr int STRIDE = HD + FA_PAD;
#pragma unroll
  for (int c = threadIdx.x; c < ROWS * CHUNKS; c += THREADS) {
    int r = c / CHUNKS, col = (c % CHUNKS) * 8;
    bool valid = r < nvalid && col < d;
    const __nv_bfloat16 *src = valid ? base + (int64_t) (row0 + r) * stride + col : base;
    cp_async_16 (tile + r * STRIDE + col, src, valid ? 16 : 0);
  }
}

/* WARPS warps of 16 query rows each: BM = 16 * WARPS rows per block (64 or
 * 128; with 128 the Q tile fills both stage-1 buffers while it is staged). */
template <int HD, int WARPS, bool BIAS>
__global__ void __launch_bounds__ (WARPS * 32, 8 / WARPS)
flash_fwd_kernel (const flash_params p)
{
  constexpr int BM = 16 * WARPS, THREADS = 32 * WARPS;
  constexpr int STRIDE = HD + FA_PAD;
  constexpr int KT = HD / 16;      /* k16 steps over the head dim */
  constexpr int NT = FA_BN / 8;    /* n8 tiles of scores per key tile */
  constexpr int DT = HD / 8;       /* n8 tiles of the output */
  extern __shared__ __align__ (16) __nv_bfloat16 smem[];
  /* Stage s: keys at smem + s * 2 * TILE, values right after them. */
  constexpr int TILE = FA_BN * STRIDE;
  __nv_bfloat16 *Qs = smem + 2 * TILE; /* Q is staged where stage 1's keys go later */

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t4 = lane & 3, mi = lane >> 3, r8 = lane & 7;
  const int q0 = blockIdx.x * BM;
  const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const int64_t stride = (int64_t) p.H * p.d;
  const __nv_bfloat16 *qg = p.q + ((int64_t) b * p.Lq * p.H + h) * p.d;
  const __nv_bfloat16 *kg = p.k + ((int64_t) b * p.Lk * p.H + h) * p.d;
  const __nv_bfloat16 *vg = p.v + ((int64_t) b * p.Lk * p.H + h) * p.d;
  const int n_tiles = (p.kv_len + FA_BN - 1) / FA_BN;

  load_tile<HD, BM, THREADS> (Qs, qg, stride, q0, p.Lq - q0, p.d);
  load_tile<HD, FA_BN, THREADS> (smem, kg, stride, 0, p.kv_len, p.d);
  load_tile<HD, FA_BN, THREADS> (smem + TILE, vg, stride, 0, p.kv_len, p.d);
  cp_async_commit ();
  cp_async_wait<0> ();
  __syncthreads ();

  /* This warp's 16 query rows as A fragments, kept in registers. */
  const int m0 = warp * 16;
  uint32_t qf[KT][4];
#pragma unroll
  for (int kk = 0; kk < KT; kk++)
    ldmatrix_x4 (qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3],
                 Qs + (m0 + r8 + (mi & 1) * 8) * STRIDE + kk * 16 + (mi >> 1) * 8);
  __syncthreads (); /* Qs (stage 1's keys) is reused from the first prefetch on */

  float acc[DT][4];
#pragma unroll
  for (int i = 0; i < DT; i++)
    acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
  float row_max[2] = { -INFINITY, -INFINITY }, row_sum[2] = { 0.0f, 0.0f };

  for (int j = 0; j < n_tiles; j++) {
    const int stage = j & 1;
    if (j + 1 < n_tiles) {
      int k1 = (j + 1) * FA_BN;
      __nv_bfloat16 *next = smem + (stage ^ 1) * 2 * TILE;
      load_tile<HD, FA_BN, THREADS> (next, kg, stride, k1, p.kv_len - k1, p.d);
      load_tile<HD, FA_BN, THREADS> (next + TILE, vg, stride, k1, p.kv_len - k1, p.d);
    }
    cp_async_commit (); /* possibly empty: keeps the group count uniform */
    cp_async_wait<1> ();
    __syncthreads ();
    const __nv_bfloat16 *K = smem + stage * 2 * TILE, *V = K + TILE;

    /* S = Q K^T for 16 rows x 64 keys. */
    float s[NT][4];
#pragma unroll
    for (int i = 0; i < NT; i++)
      s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KT; kk++) {
#pragma unroll
      for (int n2 = 0; n2 < NT / 2; n2++) {
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4 (b0, b1, b2, b3, K + (n2 * 16 + r8 + (mi >> 1) * 8) * STRIDE + kk * 16 + (mi & 1) * 8);
        mma_bf16 (s[2 * n2], qf[kk], b0, b1);
        mma_bf16 (s[2 * n2 + 1], qf[kk], b2, b3);
      }
    }

    /* Scale into the log2 domain, bias, mask the keys past kv_len. */
    const int key0 = j * FA_BN;
    const bool tail = key0 + FA_BN > p.kv_len;
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int key = key0 + nt * 8 + 2 * t4 + (e & 1);
        float val = s[nt][e] * p.scale_log2;
        if (BIAS) {
          int qrow = q0 + m0 + g + (e >> 1) * 8;
          if (qrow < p.Lq && key < p.kv_len)
            val += p.bias[((int64_t) h * p.Lq + qrow) * p.Lk + key] * LOG2E;
        }
        if (tail && key >= p.kv_len)
          val = -INFINITY;
        s[nt][e] = val;
      }

    /* Online softmax for rows g (r = 0) and g + 8 (r = 1); the 4 threads of
     * a quad share a row. */
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < NT; nt++)
        mx = fmaxf (mx, fmaxf (s[nt][2 * r], s[nt][2 * r + 1]));
      mx = fmaxf (mx, __shfl_xor_sync (0xffffffffu, mx, 1));
      mx = fmaxf (mx, __shfl_xor_sync (0xffffffffu, mx, 2));
      float m_new = fmaxf (row_max[r], mx);
      float m_use = m_new == -INFINITY ? 0.0f : m_new; /* all masked so far */
      float alpha = exp2f (row_max[r] - m_use);
      row_max[r] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < NT; nt++) {
        float p0 = exp2f (s[nt][2 * r] - m_use), p1 = exp2f (s[nt][2 * r + 1] - m_use);
        s[nt][2 * r] = p0;
        s[nt][2 * r + 1] = p1;
        sum += p0 + p1;
      }
      row_sum[r] = row_sum[r] * alpha + sum;
#pragma unroll
      for (int dt = 0; dt < DT; dt++) {
        acc[dt][2 * r] *= alpha;
        acc[dt][2 * r + 1] *= alpha;
      }
    }

    /* O += P V: the score accumulators become A fragments directly. */
#pragma unroll
    for (int kk = 0; kk < FA_BN / 16; kk++) {
      uint32_t a[4] = { pack_bf16 (s[2 * kk][0], s[2 * kk][1]), pack_bf16 (s[2 * kk][2], s[2 * kk][3]),
                        pack_bf16 (s[2 * kk + 1][0], s[2 * kk + 1][1]),
                        pack_bf16 (s[2 * kk + 1][2], s[2 * kk + 1][3]) };
#pragma unroll
      for (int d2 = 0; d2 < DT / 2; d2++) {
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4_trans (b0, b1, b2, b3, V + (kk * 16 + r8 + (mi & 1) * 8) * STRIDE + d2 * 16 + (mi >> 1) * 8);
        mma_bf16 (acc[2 * d2], a, b0, b1);
        mma_bf16 (acc[2 * d2 + 1], a, b2, b3);
      }
    }
    __syncthreads (); /* this stage is refilled by the next iteration's prefetch */
  }

  /* Normalize and store rows g and g + 8 of this warp. */
  __nv_bfloat16 *og = p.o + ((int64_t) b * p.Lq * p.H + h) * p.d;
#pragma unroll
  for (int r = 0; r < 2; r++) {
    float l = row_sum[r];
    l += __shfl_xor_sync (0xffffffffu, l, 1);
    l += __shfl_xor_sync (0xffffffffu, l, 2);
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    int row = q0 + m0 + g + r * 8;
    if (row < p.Lq) {
#pragma unroll
      for (int dt = 0; dt < DT; dt++) {
        int col = dt * 8 + 2 * t4;
        if (col < p.d)
          *(__nv_bfloat162 *) (og + row * stride + col) =
            __floats2bfloat162_rn (acc[dt][2 * r] * inv, acc[dt][2 * r + 1] * inv);
      }
    }
  }
}

template <int HD, int WARPS, bool BIAS>
static void
launch_flash (dp_backend *be, const flash_params &p, int B)
{
  dp_cuda *c = dp_cuda_of (be);
  const size_t smem = flash_smem_bytes<HD> ();
  if (smem > c->smem_optin) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "attention: %zu bytes of shared memory needed, device has %zu", smem,
                     c->smem_optin);
    return;
  }
  if (!dp_cuda_ok (be, cudaFuncSetAttribute (flash_fwd_kernel<HD, WARPS, BIAS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             (int) smem),
                   "attention: cudaFuncSetAttribute"))
    return;
  constexpr int BM = 16 * WARPS;
  dim3 grid ((p.Lq + BM - 1) / BM, B * p.H);
  flash_fwd_kernel<HD, WARPS, BIAS><<<grid, WARPS * 32, smem, c->stream>>> (p);
  dp_cuda_launched (be, "attention (flash kernel)");
}

/* FlashAttention-2's split: 4 warps of 32 query rows each (two m16 tiles per
 * warp, BM = 128).  Every K / V fragment read from shared memory feeds two
 * MMAs instead of one, which halves the shared-memory traffic per FLOP of
 * the 16-row kernel above (its limit on Hopper); Q no longer fits in
 * registers next to the 32-row accumulators, so its fragments are re-read
 * from a shared-memory tile of its own for each key tile.  No bias variant. */
#define M32_BM 128

template <int HD>
static constexpr size_t
flash_m32_smem_bytes ()
{
  return (size_t) (M32_BM + 4 * FA_BN) * (HD + FA_PAD) * sizeof (__nv_bfloat16);
}

template <int HD>
__global__ void __launch_bounds__ (128, 2)
flash_fwd_m32_kernel (const flash_params p)
{
  constexpr int STRIDE = HD + FA_PAD;
  constexpr int KT = HD / 16, NT = FA_BN / 8, DT = HD / 8;
  constexpr int TILE = FA_BN * STRIDE;
  extern __shared__ __align__ (16) __nv_bfloat16 smem[];
  __nv_bfloat16 *Qs = smem;                      /* [128][STRIDE] */
  __nv_bfloat16 *KV = smem + M32_BM * STRIDE;    /* stage s: K at KV + 2 s TILE, V after it */

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t4 = lane & 3, mi = lane >> 3, r8 = lane & 7;
  const int q0 = blockIdx.x * M32_BM;
  const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const int64_t stride = (int64_t) p.H * p.d;
  const __nv_bfloat16 *qg = p.q + ((int64_t) b * p.Lq * p.H + h) * p.d;
  const __nv_bfloat16 *kg = p.k + ((int64_t) b * p.Lk * p.H + h) * p.d;
  const __nv_bfloat16 *vg = p.v + ((int64_t) b * p.Lk * p.H + h) * p.d;
  const int n_tiles = (p.kv_len + FA_BN - 1) / FA_BN;

  load_tile<HD, M32_BM, 128> (Qs, qg, stride, q0, p.Lq - q0, p.d);
  load_tile<HD, FA_BN, 128> (KV, kg, stride, 0, p.kv_len, p.d);
  load_tile<HD, FA_BN, 128> (KV + TILE, vg, stride, 0, p.kv_len, p.d);
  cp_async_commit ();

  const int m0 = warp * 32;
  float acc[2][DT][4];
#pragma unroll
  for (int mt = 0; mt < 2; mt++)
#pragma unroll
    for (int i = 0; i < DT; i++)
      acc[mt][i][0] = acc[mt][i][1] = acc[mt][i][2] = acc[mt][i][3] = 0.0f;
  float row_max[2][2] = { { -INFINITY, -INFINITY }, { -INFINITY, -INFINITY } };
  float row_sum[2][2] = { { 0.0f, 0.0f }, { 0.0f, 0.0f } };

  for (int j = 0; j < n_tiles; j++) {
    const int stage = j & 1;
    if (j + 1 < n_tiles) {
      int k1 = (j + 1) * FA_BN;
      __nv_bfloat16 *next = KV + (stage ^ 1) * 2 * TILE;
      load_tile<HD, FA_BN, 128> (next, kg, stride, k1, p.kv_len - k1, p.d);
      load_tile<HD, FA_BN, 128> (next + TILE, vg, stride, k1, p.kv_len - k1, p.d);
    }
    cp_async_commit ();
    cp_async_wait<1> ();
    __syncthreads ();
    const __nv_bfloat16 *K = KV + stage * 2 * TILE, *V = K + TILE;

    float s[2][NT][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
      for (int i = 0; i < NT; i++)
        s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KT; kk++) {
      uint32_t qa[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; mt++)
        ldmatrix_x4 (qa[mt][0], qa[mt][1], qa[mt][2], qa[mt][3],
                     Qs + (m0 + mt * 16 + r8 + (mi & 1) * 8) * STRIDE + kk * 16 + (mi >> 1) * 8);
#pragma unroll
      for (int n2 = 0; n2 < NT / 2; n2++) {
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4 (b0, b1, b2, b3, K + (n2 * 16 + r8 + (mi >> 1) * 8) * STRIDE + kk * 16 + (mi & 1) * 8);
#pragma unroll
        for (int mt = 0; mt < 2; mt++) {
          mma_bf16 (s[mt][2 * n2], qa[mt], b0, b1);
          mma_bf16 (s[mt][2 * n2 + 1], qa[mt], b2, b3);
        }
      }
    }

    const int key0 = j * FA_BN;
    const bool tail = key0 + FA_BN > p.kv_len;
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
      for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          int key = key0 + nt * 8 + 2 * t4 + (e & 1);
          float val = s[mt][nt][e] * p.scale_log2;
          s[mt][nt][e] = tail && key >= p.kv_len ? -INFINITY : val;
        }

#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
      for (int r = 0; r < 2; r++) {
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
          mx = fmaxf (mx, fmaxf (s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
        mx = fmaxf (mx, __shfl_xor_sync (0xffffffffu, mx, 1));
        mx = fmaxf (mx, __shfl_xor_sync (0xffffffffu, mx, 2));
        float m_new = fmaxf (row_max[mt][r], mx);
        float m_use = m_new == -INFINITY ? 0.0f : m_new;
        float alpha = exp2f (row_max[mt][r] - m_use);
        row_max[mt][r] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
          float p0 = exp2f (s[mt][nt][2 * r] - m_use), p1 = exp2f (s[mt][nt][2 * r + 1] - m_use);
          s[mt][nt][2 * r] = p0;
          s[mt][nt][2 * r + 1] = p1;
          sum += p0 + p1;
        }
        row_sum[mt][r] = row_sum[mt][r] * alpha + sum;
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
          acc[mt][dt][2 * r] *= alpha;
          acc[mt][dt][2 * r + 1] *= alpha;
        }
      }

#pragma unroll
    for (int kk = 0; kk < FA_BN / 16; kk++) {
      uint32_t a[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; mt++) {
        a[mt][0] = pack_bf16 (s[mt][2 * kk][0], s[mt][2 * kk][1]);
        a[mt][1] = pack_bf16 (s[mt][2 * kk][2], s[mt][2 * kk][3]);
        a[mt][2] = pack_bf16 (s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        a[mt][3] = pack_bf16 (s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int d2 = 0; d2 < DT / 2; d2++) {
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4_trans (b0, b1, b2, b3, V + (kk * 16 + r8 + (mi & 1) * 8) * STRIDE + d2 * 16 + (mi >> 1) * 8);
#pragma unroll
        for (int mt = 0; mt < 2; mt++) {
          mma_bf16 (acc[mt][2 * d2], a[mt], b0, b1);
          mma_bf16 (acc[mt][2 * d2 + 1], a[mt], b2, b3);
        }
      }
    }
    __syncthreads ();
  }

  __nv_bfloat16 *og = p.o + ((int64_t) b * p.Lq * p.H + h) * p.d;
#pragma unroll
  for (int mt = 0; mt < 2; mt++)
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float l = row_sum[mt][r];
      l += __shfl_xor_sync (0xffffffffu, l, 1);
      l += __shfl_xor_sync (0xffffffffu, l, 2);
      float inv = l > 0.0f ? 1.0f / l : 0.0f;
      int row = q0 + m0 + mt * 16 + g + r * 8;
      if (row < p.Lq) {
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
          int col = dt * 8 + 2 * t4;
          if (col < p.d)
            *(__nv_bfloat162 *) (og + row * stride + col) =
              __floats2bfloat162_rn (acc[mt][dt][2 * r] * inv, acc[mt][dt][2 * r + 1] * inv);
        }
      }
    }
}

template <int HD>
static void
launch_flash_m32 (dp_backend *be, const flash_params &p, int B)
{
  dp_cuda *c = dp_cuda_of (be);
  const size_t smem = flash_m32_smem_bytes<HD> ();
  if (smem > c->smem_optin) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "attention: %zu bytes of shared memory needed, device has %zu", smem,
                     c->smem_optin);
    return;
  }
  if (!dp_cuda_ok (be, cudaFuncSetAttribute (flash_fwd_m32_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             (int) smem),
                   "attention: cudaFuncSetAttribute"))
    return;
  dim3 grid ((p.Lq + M32_BM - 1) / M32_BM, B * p.H);
  flash_fwd_m32_kernel<HD><<<grid, 128, smem, c->stream>>> (p);
  dp_cuda_launched (be, "attention (flash kernel, 32 rows per warp)");
}

template <int HD>
static void
launch_flash_hd (dp_backend *be, const flash_params &p, int B)
{
  /* The bias variant (umT5, short sequences) keeps the 64-row blocks.  The
   * wgmma kernel (cuda_attention_sm90.cu) takes head dim 128 without bias on
   * compute capability 9.0; elsewhere its variant means the best portable one. */
  dp_cuda *c = dp_cuda_of (be);
  int variant = c->attention_variant;
  if (variant == DP_CUDA_ATTN_WGMMA) {
    if (HD == 128 && p.d == 128 && !p.bias && p.scale_log2 > 0.0f && dp_cuda_attention_wgmma_available (be)) {
      c->attention_last = DP_CUDA_ATTN_WGMMA;
      dp_cuda_attention_wgmma (be, p.o, p.q, p.k, p.v, B, p.H, p.Lq, p.Lk, p.kv_len, p.scale_log2);
      return;
    }
    variant = DP_CUDA_ATTN_W4_R32;
  }
  if (p.bias) {
    c->attention_last = DP_CUDA_ATTN_W4_R16;
    launch_flash<HD, 4, true> (be, p, B);
  } else if (variant == DP_CUDA_ATTN_W4_R32) {
    c->attention_last = DP_CUDA_ATTN_W4_R32;
    launch_flash_m32<HD> (be, p, B);
  } else if (variant == DP_CUDA_ATTN_W8_R16) {
    c->attention_last = DP_CUDA_ATTN_W8_R16;
    launch_flash<HD, 8, false> (be, p, B);
  } else {
    c->attention_last = DP_CUDA_ATTN_W4_R16;
    launch_flash<HD, 4, false> (be, p, B);
  }
}

/* ---- generic path -------------------------------------------------------- */

#define GEN_THREADS 128
#define GEN_DIMS 4 /* output dims per thread: d <= 512 */

__device__ __forceinline__ float
block_max (float v, float *shm)
{
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf (v, __shfl_xor_sync (0xffffffffu, v, o));
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads ();
  if (lane == 0)
    shm[warp] = v;
  __syncthreads ();
  v = lane < (int) (blockDim.x >> 5) ? shm[lane] : -INFINITY;
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf (v, __shfl_xor_sync (0xffffffffu, v, o));
  return v;
}

/* One block per (query row, batch * head); keys in chunks of 128, one score
 * per thread, then each thread accumulates its output dims over the chunk. */
__global__ void __launch_bounds__ (GEN_THREADS)
attention_generic_kernel (void *o, int odt, const void *q, int qdt, const void *k, int kdt, const void *v, int vdt,
                          const float *bias, int H, int Lq, int Lk, int d, int kv_len, float scale)
{
  extern __shared__ float gsm[]; /* q row [d], probabilities [128], reduction [32] */
  float *qs = gsm, *ps = gsm + d, *red = ps + GEN_THREADS;
  const int qrow = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, tid = threadIdx.x;
  const int64_t stride = (int64_t) H * d;
  const int64_t qoff = ((int64_t) b * Lq + qrow) * stride + (int64_t) h * d;
  const int64_t kbase = (int64_t) b * Lk * stride + (int64_t) h * d;
  for (int i = tid; i < d; i += GEN_THREADS)
    qs[i] = dp_ld (q, qdt, qoff + i) * scale;
  __syncthreads ();
  float acc[GEN_DIMS] = { 0.0f, 0.0f, 0.0f, 0.0f };
  float m = -INFINITY, l = 0.0f;
  for (int k0 = 0; k0 < kv_len; k0 += GEN_THREADS) {
    int key = k0 + tid;
    float sc = -INFINITY;
    if (key < kv_len) {
      float dot = 0.0f;
      for (int i = 0; i < d; i++)
        dot += qs[i] * dp_ld (k, kdt, kbase + key * stride + i);
      sc = dot;
      if (bias)
        sc += bias[((int64_t) h * Lq + qrow) * Lk + key];
    }
    float cmax = block_max (sc, red);
    float m_new = fmaxf (m, cmax);
    float alpha = expf (m - m_new); /* m_new is finite: the chunk has a key */
    float pr = key < kv_len ? expf (sc - m_new) : 0.0f;
    ps[tid] = pr;
    float csum = dp_block_sum (pr, red);
    l = l * alpha + csum;
    m = m_new;
    __syncthreads ();
    int nk = min (GEN_THREADS, kv_len - k0);
#pragma unroll
    for (int i = 0; i < GEN_DIMS; i++) {
      int dd = tid + i * GEN_THREADS;
      if (dd < d) {
        float a = acc[i] * alpha;
        for (int j = 0; j < nk; j++)
          a += ps[j] * dp_ld (v, vdt, kbase + (int64_t) (k0 + j) * stride + dd);
        acc[i] = a;
      }
    }
    __syncthreads ();
  }
  float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
  for (int i = 0; i < GEN_DIMS; i++) {
    int dd = tid + i * GEN_THREADS;
    if (dd < d)
      dp_st (o, odt, qoff + dd, acc[i] * inv);
  }
}

/* ---- entry --------------------------------------------------------------- */

extern "C" void
dp_cuda_attention (dp_backend *be, dp_tensor *o, const dp_tensor *q, const dp_tensor *k, const dp_tensor *v,
                   const dp_attn_params *p)
{
  const char *op = "attention";
  if (!dp_cuda_check (be, op, o, "o") || !dp_cuda_check (be, op, q, "q") || !dp_cuda_check (be, op, k, "k")
      || !dp_cuda_check (be, op, v, "v"))
    return;
  if (!p) {
    dp_backend_fail (be, DP_ERROR_INVALID, "%s: no parameters", op);
    return;
  }
  char sq[64], sk[64], sv[64], so[64];
  if (q->ndim != 4 || k->ndim != 4 || !dp_tensor_same_shape (k, v) || !dp_tensor_same_shape (q, o)
      || k->shape[0] != q->shape[0] || k->shape[2] != q->shape[2] || k->shape[3] != q->shape[3]) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: q %s, k %s, v %s, o %s: expected q/o [B, Lq, H, d], k/v [B, Lk, H, d]",
                     op, dp_shape_str (q, sq, sizeof sq), dp_shape_str (k, sk, sizeof sk),
                     dp_shape_str (v, sv, sizeof sv), dp_shape_str (o, so, sizeof so));
    return;
  }
  const int64_t B = q->shape[0], Lq = q->shape[1], H = q->shape[2], d = q->shape[3], Lk = k->shape[1];
  if (B * H > 65535 || Lq > G_MAXINT32 / 2 || Lk > G_MAXINT32 / 2) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "%s: shape q %s k %s too large", op, dp_shape_str (q, sq, sizeof sq),
                     dp_shape_str (k, sk, sizeof sk));
    return;
  }
  if (p->key_len < 0 || p->key_len > Lk) {
    dp_backend_fail (be, DP_ERROR_INVALID, "%s: key_len %d outside [0, %" G_GINT64_FORMAT "]", op, p->key_len, Lk);
    return;
  }
  const int kv_len = p->key_len ? p->key_len : (int) Lk;
  const float *bias = NULL;
  if (p->bias) {
    if (!dp_cuda_check (be, op, p->bias, "bias"))
      return;
    if (p->bias->dtype != DP_F32 || dp_tensor_nelem (p->bias) != H * Lq * Lk) {
      char sb[64];
      dp_backend_fail (be, DP_ERROR_SHAPE, "%s: bias %s %s, expected F32 [%" G_GINT64_FORMAT ", %" G_GINT64_FORMAT
                       ", %" G_GINT64_FORMAT "]",
                       op, dp_dtype_name (p->bias->dtype), dp_shape_str (p->bias, sb, sizeof sb), H, Lq, Lk);
      return;
    }
    bias = (const float *) p->bias->data;
  }
  if (B == 0 || Lq == 0 || H == 0 || d == 0)
    return;
  if (kv_len == 0) {
    dp_backend_fail (be, DP_ERROR_INVALID, "%s: no keys (Lk = 0)", op);
    return;
  }

  const bool fast = q->dtype == DP_BF16 && k->dtype == DP_BF16 && v->dtype == DP_BF16 && o->dtype == DP_BF16
                    && d % 8 == 0 && d <= 128 && dp_aligned (q->data, 16) && dp_aligned (k->data, 16)
                    && dp_aligned (v->data, 16) && dp_aligned (o->data, 16);
  if (fast) {
    flash_params fp;
    fp.q = (const __nv_bfloat16 *) q->data;
    fp.k = (const __nv_bfloat16 *) k->data;
    fp.v = (const __nv_bfloat16 *) v->data;
    fp.o = (__nv_bfloat16 *) o->data;
    fp.bias = bias;
    fp.H = (int) H;
    fp.Lq = (int) Lq;
    fp.Lk = (int) Lk;
    fp.d = (int) d;
    fp.kv_len = kv_len;
    fp.scale_log2 = p->scale * LOG2E;
    if (d <= 32)
      launch_flash_hd<32> (be, fp, (int) B);
    else if (d <= 64)
      launch_flash_hd<64> (be, fp, (int) B);
    else
      launch_flash_hd<128> (be, fp, (int) B);
    return;
  }
  if (d > GEN_THREADS * GEN_DIMS) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "%s: head dim %" G_GINT64_FORMAT " > %d", op, d,
                     GEN_THREADS * GEN_DIMS);
    return;
  }
  dp_cuda_of (be)->attention_last = -1;
  size_t smem = ((size_t) d + GEN_THREADS + 32) * sizeof (float);
  dim3 grid ((unsigned) Lq, (unsigned) (B * H));
  attention_generic_kernel<<<grid, GEN_THREADS, smem, dp_cuda_of (be)->stream>>> (
    o->data, o->dtype, q->data, q->dtype, k->data, k->dtype, v->data, v->dtype, bias, (int) H, (int) Lq, (int) Lk,
    (int) d, kv_len, p->scale);
  dp_cuda_launched (be, "attention (generic kernel)");
}
