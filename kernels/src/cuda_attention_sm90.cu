/* CUDA backend: a Hopper (sm_90a) flash-attention forward with wgmma and TMA.
 *
 * For q, k, v, o BF16 with head dim 128, no bias, scale > 0, on compute
 * capability 9.0; dp_cuda_attention() (cuda_attention.cu) picks it when the
 * attention variant is DP_CUDA_ATTN_WGMMA and falls back to the portable
 * mma.sync kernels otherwise.  The default on compute capability 9.0
 * (measured on an H200: 619-688 TFLOP/s at Wan2.1-1.3B shapes, see
 * docs/performance.md).
 *
 * Compiled for sm_90a with no spills and 32 HGMMA instructions in the SASS
 * (nvcc 13.0, ptxas -v: 168 registers at entry, consumers grow to 232 with
 * setmaxnreg, producer 40); tests/test_gpu_ops.c /gpu/attention_wgmma
 * compares it with the CPU and the mma.sync kernel.
 *
 * Design (FlashAttention-3's structure, simplified):
 * - CTA = 3 warpgroups, 128 query rows of one (batch, head).  Warpgroup 0 is
 *   the producer: one thread issues TMA bulk tensor copies
 *   (cp.async.bulk.tensor, 128-byte swizzle) of the Q tile once and of the
 *   K and V tiles (128 keys each) into a 2-stage ring, with an mbarrier per
 *   stage for "full" (transaction bytes) and one for "empty" (8 consumer
 *   warps arrive), separately for K and V so that a K stage is refilled as
 *   soon as its scores are computed.  It keeps 40 registers (setmaxnreg).
 * - Warpgroups 1 and 2 are consumers of 64 query rows each (232 registers):
 *   S = Q K^T with wgmma m64n128k16, both operands K-major in shared memory;
 *   online softmax in FP32 registers (log2 domain); P converted to BF16 in
 *   registers and O += P V with wgmma's A operand in registers and V read
 *   MN-major (imm-trans-b) from the same swizzled tile layout.
 * - Software pipelining inside a warpgroup: iteration j issues S_j = Q K_j^T
 *   and then O += P_{j-1} V_{j-1}, waits for S_j only, runs the softmax of
 *   S_j while the tensor cores still work on P_{j-1} V_{j-1}, then waits for
 *   that, rescales O and converts P_j.  The two consumer warpgroups
 *   interleave on the SM's tensor cores as well.
 * - Tails: TMA fills rows past Lq / Lk with zeros; keys >= kv_len (also the
 *   loaded ones in [key_len, Lk)) are masked to -inf in the last tile; rows
 *   >= Lq are not stored.
 * Shared memory (1024-byte aligned for the 128-byte swizzle atoms): Q 32 KB,
 * K 2 x 32 KB, V 2 x 32 KB, each tile stored as two [rows][64] halves of
 * 128-byte rows (the TMA box is 64 columns wide: the 128-byte swizzle span).
 *
 * Built only into the sm_90a image (the wgmma / setmaxnreg instructions do
 * not exist elsewhere); the compute_80 PTX gets an empty body that is never
 * launched. */
#include "cuda_common.cuh"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <math.h>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WG_DEVICE_CODE 1
#endif

#define WG_BM 128                          /* query rows per CTA */
#define WG_BN 128                          /* keys per tile: 96 or 128 */
#define WG_HD 128                          /* head dim */
#define WG_THREADS 384
#define WG_Q_BYTES (WG_BM * WG_HD * 2)     /* 32 KB: the Q tile */
#define WG_Q_HALF (WG_Q_BYTES / 2)         /* its 64-column halves */
#define WG_KV_BYTES (WG_BN * WG_HD * 2)    /* 24 KB: a K or V tile */
#define WG_KV_HALF (WG_KV_BYTES / 2)
#define WG_OFF_Q 0
#define WG_OFF_K(s) (WG_Q_BYTES + WG_KV_BYTES * (s))
#define WG_OFF_V(s) (WG_Q_BYTES + WG_KV_BYTES * (2 + (s)))
#define WG_OFF_BAR (WG_Q_BYTES + 4 * WG_KV_BYTES)
/* barriers: 0 Q full, 1 + s K full, 3 + s V full, 5 + s K empty, 7 + s V empty */
#define WG_SMEM_BYTES (WG_OFF_BAR + 128 + 1024) /* + slack to align the base */
#define WG_ST (WG_BN / 2)                  /* score accumulators per thread */
#define WG_PK (WG_BN / 16)                 /* k16 steps of P V */
#define WG_PRODUCER_REGS 40
#define WG_CONSUMER_REGS 232

struct wg_params {
  __nv_bfloat16 *o;
  int H, Lq, kv_len;
  float scale_log2; /* scale * log2(e), > 0 */
};

/* ---- PTX wrappers (sm_90a) ---------------------------------------------- */

#ifdef WG_DEVICE_CODE

__device__ __forceinline__ uint32_t
wg_smem_u32 (const void *p)
{
  return (uint32_t) __cvta_generic_to_shared (p);
}

__device__ __forceinline__ void
mbar_init (uint32_t bar, uint32_t count)
{
  asm volatile ("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void
mbar_expect_tx (uint32_t bar, uint32_t bytes)
{
  asm volatile ("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void
mbar_arrive (uint32_t bar)
{
  asm volatile ("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

/* Waits for the phase with the given parity to complete.  With WATCHDOG a
 * lost arrival (a bug) becomes a trap, i.e. a CUDA error, instead of a hang
 * (a legitimate wait lasts about one tile of work, a few microseconds; 2^24
 * spins are at least ~0.3 s).  Only the producer thread uses it:
 * a trap in the consumers' code makes ptxas give up their larger register
 * budget (setmaxnreg), and the producer's last wait covers them anyway. */
template <bool WATCHDOG>
__device__ __forceinline__ void
mbar_wait (uint32_t bar, uint32_t parity)
{
  uint32_t done = 0;
  for (uint32_t spins = 0; !done; spins++) {
    asm volatile ("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                  : "=r"(done)
                  : "r"(bar), "r"(parity)
                  : "memory");
    if (WATCHDOG && spins == (1u << 24))
      __trap ();
  }
}

/* A box of the 4-D tensor map (d, head, row, batch) into shared memory,
 * completing on bar. */
__device__ __forceinline__ void
tma_load (uint32_t dst, const CUtensorMap *map, int c0, int c1, int c2, int c3, uint32_t bar)
{
  asm volatile ("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
                "l"((uint64_t) map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
                : "memory");
}

__device__ __forceinline__ void
wgmma_fence ()
{
  asm volatile ("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void
wgmma_commit ()
{
  asm volatile ("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void
wgmma_wait ()
{
  asm volatile ("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

/* Keeps the compiler from moving accesses of these registers across the
 * surrounding wgmma issue / wait (the hardware reads and writes them
 * asynchronously in between). */
template <int N>
__device__ __forceinline__ void
fence_regs (float (&r)[N])
{
#pragma unroll
  for (int i = 0; i < N; i++)
    asm volatile ("" : "+f"(r[i])::"memory");
}

template <int N, int M>
__device__ __forceinline__ void
fence_regs (uint32_t (&r)[N][M])
{
#pragma unroll
  for (int i = 0; i < N; i++)
#pragma unroll
    for (int j = 0; j < M; j++)
      asm volatile ("" : "+r"(r[i][j])::"memory");
}

/* Shared-memory matrix descriptor (PTX ISA "Matrix Descriptor Format"):
 * start address, leading and stride byte offsets (all >> 4), 128-byte
 * swizzle (layout type 1 in bits 62-63).  Tiles are 1024-byte aligned so the
 * base offset field stays 0. */
__device__ __forceinline__ uint64_t
sw128_desc (uint32_t addr, uint32_t lbo, uint32_t sbo)
{
  return (uint64_t) ((addr & 0x3FFFF) >> 4) | (uint64_t) ((lbo & 0x3FFFF) >> 4) << 16
         | (uint64_t) ((sbo & 0x3FFFF) >> 4) << 32 | (uint64_t) 1 << 62;
}

/* K-major operand (rows of 64 BF16 = 128 bytes, 8-row atoms of 1024 bytes):
 * the leading offset is unused with swizzling (1 by convention), the stride
 * offset goes from one 8-row group to the next. */
__device__ __forceinline__ uint64_t
desc_k_major (uint32_t addr)
{
  return sw128_desc (addr, 16, 1024);
}

/* MN-major operand (V as B of P V: N = head dim contiguous): the leading
 * offset goes from one 64-column half of the tile to the other, the stride
 * offset from one group of 8 keys to the next. */
__device__ __forceinline__ uint64_t
desc_mn_major (uint32_t addr)
{
  return sw128_desc (addr, WG_KV_HALF, 1024);
}

/* d (+)= A B for a 64 x 96 x 16 step: A (64 x 16) and B (96 keys x 16)
 * both K-major in shared memory; scale_d 0 overwrites d. */
__device__ __forceinline__ void
wgmma_qk_ss (float (&d)[48], uint64_t desc_a, uint64_t desc_b, int scale_d)
{
  asm volatile (
    "{\n.reg .pred p;\nsetp.ne.b32 p, %50, 0;\n"
    "wgmma.mma_async.sync.aligned.m64n96k16.f32.bf16.bf16 "
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47}, "
    "%48, %49, p, 1, 1, 0, 0;\n}\n"
    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
      "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
      "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
    : "l"(desc_a), "l"(desc_b), "r"(scale_d)
    : "memory");
}

/* d (+)= A B for a 64 x 128 x 16 step: A (64 x 16) and B (128 keys x 16)
 * both K-major in shared memory; scale_d 0 overwrites d. */
__device__ __forceinline__ void
wgmma_qk_ss (float (&d)[64], uint64_t desc_a, uint64_t desc_b, int scale_d)
{
  asm volatile (
    "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
    "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
    "%64, %65, p, 1, 1, 0, 0;\n}\n"
    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
      "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
      "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
      "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
      "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
    : "l"(desc_a), "l"(desc_b), "r"(scale_d)
    : "memory");
}

/* d += A B for a 64 x 128 x 16 step: A (64 x 16) from registers (the
 * m16n8k16-style fragments of P), B from shared memory MN-major
 * (imm-trans-b 1: V stored [keys][d] with d contiguous). */
__device__ __forceinline__ void
wgmma_m64n128_rs_tb (float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b)
{
  asm volatile (
    "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
    "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
    "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
      "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
      "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
      "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
      "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
    : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1)
    : "memory");
}

/* S = Q K^T over the head dim: 8 k16 steps, 4 in each 64-column half. */
__device__ __forceinline__ void
gemm_qk (float (&s)[WG_ST], uint32_t q_addr, uint32_t k_addr)
{
  wgmma_fence ();
#pragma unroll
  for (int kk = 0; kk < WG_HD / 16; kk++) {
    const uint32_t col = (kk & 3) * 32; /* bytes into the 128-byte swizzled rows */
    wgmma_qk_ss (s, desc_k_major (q_addr + (kk >> 2) * WG_Q_HALF + col),
                 desc_k_major (k_addr + (kk >> 2) * WG_KV_HALF + col), kk > 0);
  }
  wgmma_commit ();
}

/* O += P V over the keys of a tile: k16 steps of 16 keys (2 KB of V). */
__device__ __forceinline__ void
gemm_pv (float (&o)[64], uint32_t (&pf)[WG_PK][4], uint32_t v_addr)
{
  wgmma_fence ();
#pragma unroll
  for (int kk = 0; kk < WG_PK; kk++)
    wgmma_m64n128_rs_tb (o, pf[kk], desc_mn_major (v_addr + kk * 2048));
  wgmma_commit ();
}

__device__ __forceinline__ uint32_t
wg_pack_bf16 (float lo, float hi)
{
  __nv_bfloat162 v = __floats2bfloat162_rn (lo, hi);
  return *(uint32_t *) &v;
}

/* Online softmax of one 64 x 128 score tile held as wgmma accumulators:
 * this thread has rows g (r = 0) and g + 8 (r = 1) of its warp's 16, values
 * s[4 j + 2 r + {0, 1}] at keys 8 j + 2 t4 + {0, 1}.  Masks keys >= kv_len,
 * turns s into unnormalised probabilities (FP32), updates the running max
 * and sum and returns the factors that rescale the old accumulator. */
__device__ __forceinline__ void
softmax_tile (float (&s)[WG_ST], float (&m_run)[2], float (&l_run)[2], float (&alpha)[2], int key0, int kv_len,
              int t4, float scale_log2)
{
  if (key0 + WG_BN > kv_len) {
#pragma unroll
    for (int j = 0; j < WG_BN / 8; j++)
#pragma unroll
      for (int e = 0; e < 4; e++)
        if (key0 + 8 * j + 2 * t4 + (e & 1) >= kv_len)
          s[4 * j + e] = -INFINITY;
  }
#pragma unroll
  for (int r = 0; r < 2; r++) {
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < WG_BN / 8; j++)
      mx = fmaxf (mx, fmaxf (s[4 * j + 2 * r], s[4 * j + 2 * r + 1]));
    mx = fmaxf (mx, __shfl_xor_sync (0xffffffffu, mx, 1));
    mx = fmaxf (mx, __shfl_xor_sync (0xffffffffu, mx, 2));
    const float m_new = fmaxf (m_run[r], mx);
    /* A tile always holds a valid key, so m_new is finite; the guard keeps
     * a fully masked row at zeros instead of NaN all the same. */
    const float m_scaled = m_new == -INFINITY ? 0.0f : m_new * scale_log2;
    alpha[r] = exp2f (m_run[r] * scale_log2 - m_scaled); /* 0 on the first tile */
    m_run[r] = m_new;
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < WG_BN / 8; j++) {
      const float p0 = exp2f (fmaf (s[4 * j + 2 * r], scale_log2, -m_scaled));
      const float p1 = exp2f (fmaf (s[4 * j + 2 * r + 1], scale_log2, -m_scaled));
      s[4 * j + 2 * r] = p0;
      s[4 * j + 2 * r + 1] = p1;
      sum += p0 + p1;
    }
    l_run[r] = l_run[r] * alpha[r] + sum;
  }
}

/* P (FP32 accumulator layout) -> BF16 A fragments, one [4] per 16 keys. */
__device__ __forceinline__ void
convert_p (uint32_t (&pf)[WG_PK][4], const float (&s)[WG_ST])
{
#pragma unroll
  for (int kk = 0; kk < WG_PK; kk++) {
    pf[kk][0] = wg_pack_bf16 (s[8 * kk + 0], s[8 * kk + 1]);
    pf[kk][1] = wg_pack_bf16 (s[8 * kk + 2], s[8 * kk + 3]);
    pf[kk][2] = wg_pack_bf16 (s[8 * kk + 4], s[8 * kk + 5]);
    pf[kk][3] = wg_pack_bf16 (s[8 * kk + 6], s[8 * kk + 7]);
  }
}

/* The two consumer warpgroups take turns issuing their GEMMs (named
 * barriers 1 and 2, FlashAttention-3's "ping-pong"): while one runs its
 * softmax the tensor cores work through the other's GEMMs, instead of both
 * warpgroups computing softmaxes at the same time with the tensor cores idle. */
__device__ __forceinline__ void
turn_wait (int cw)
{
  if (cw == 0)
    asm volatile ("bar.sync 1, 256;\n" ::: "memory");
  else
    asm volatile ("bar.sync 2, 256;\n" ::: "memory");
}

__device__ __forceinline__ void
turn_pass (int cw)
{
  if (cw == 0)
    asm volatile ("bar.arrive 2, 256;\n" ::: "memory");
  else
    asm volatile ("bar.arrive 1, 256;\n" ::: "memory");
}

/* Consumer iteration j >= 1: issue S_j = Q K_j^T and then O += P_{j-1}
 * V_{j-1} in one turn, wait for S_j, run its softmax (the P V GEMM may still
 * run), wait for the rest, rescale O and convert P_j to BF16. */
__device__ __forceinline__ void
consumer_step (int j, int n_tiles, int cw, float (&o)[64], float (&s)[WG_ST], uint32_t (&pf)[WG_PK][4],
               float (&m_run)[2], float (&l_run)[2], uint32_t q_addr, uint32_t bars, uint32_t base, int kv_len,
               int t4, int lane, float scale_log2)
{
  const int sk = j & 1, sv = (j - 1) & 1;
  float alpha[2];
  mbar_wait<false> (bars + 8u * (1 + sk), (j >> 1) & 1);
  mbar_wait<false> (bars + 8u * (3 + sv), ((j - 1) >> 1) & 1);
  turn_wait (cw);
  fence_regs (o);
  fence_regs (pf);
  gemm_qk (s, q_addr, base + WG_OFF_K (sk));
  gemm_pv (o, pf, base + WG_OFF_V (sv));
  if (cw == 0 || j + 1 < n_tiles) /* the last pass of warpgroup 2 would have no taker */
    turn_pass (cw);
  wgmma_wait<1> (); /* S_j done; P_{j-1} V_{j-1} may still run */
  fence_regs (s);
  if (lane == 0)
    mbar_arrive (bars + 8u * (5 + sk));
  softmax_tile (s, m_run, l_run, alpha, j * WG_BN, kv_len, t4, scale_log2);
  fence_regs (s);
  fence_regs (l_run);
  fence_regs (alpha);
  wgmma_wait<0> ();
  fence_regs (o);
  fence_regs (pf);
  if (lane == 0)
    mbar_arrive (bars + 8u * (7 + sv));
#pragma unroll
  for (int i = 0; i < 16; i++) {
    o[4 * i + 0] *= alpha[0];
    o[4 * i + 1] *= alpha[0];
    o[4 * i + 2] *= alpha[1];
    o[4 * i + 3] *= alpha[1];
  }
  convert_p (pf, s);
}

#endif /* WG_DEVICE_CODE */

__global__ void __launch_bounds__ (WG_THREADS, 1)
flash_wgmma_kernel (const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                    const __grid_constant__ CUtensorMap tm_v, const wg_params p)
{
#ifdef WG_DEVICE_CODE
  extern __shared__ uint8_t wg_smem[];
  const uint32_t base = (wg_smem_u32 (wg_smem) + 1023u) & ~1023u;
  const uint32_t bars = base + WG_OFF_BAR;
#define BAR(i) (bars + 8u * (i))
  const int tid = threadIdx.x, wg = tid >> 7, lane = tid & 31;
  const int q0 = blockIdx.x * WG_BM, bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const int n_tiles = (p.kv_len + WG_BN - 1) / WG_BN;

  if (tid == 0) {
    mbar_init (BAR (0), 1);
    for (int s = 0; s < 2; s++) {
      mbar_init (BAR (1 + s), 1);
      mbar_init (BAR (3 + s), 1);
      mbar_init (BAR (5 + s), 8); /* one arrival per consumer warp */
      mbar_init (BAR (7 + s), 8);
    }
    /* Make the initialised barriers visible to the async proxy (TMA). */
    asm volatile ("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;\n" ::: "memory");
  }
  __syncthreads ();

  if (wg == 0) {
    /* ---- producer ---- */
    asm volatile ("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(WG_PRODUCER_REGS));
    if (tid == 0) {
      asm volatile ("prefetch.tensormap [%0];\n" ::"l"((uint64_t) &tm_q) : "memory");
      asm volatile ("prefetch.tensormap [%0];\n" ::"l"((uint64_t) &tm_k) : "memory");
      asm volatile ("prefetch.tensormap [%0];\n" ::"l"((uint64_t) &tm_v) : "memory");
      mbar_expect_tx (BAR (0), WG_Q_BYTES);
      tma_load (base + WG_OFF_Q, &tm_q, 0, h, q0, b, BAR (0));
      tma_load (base + WG_OFF_Q + WG_Q_HALF, &tm_q, 64, h, q0, b, BAR (0));
      for (int j = 0; j < n_tiles; j++) {
        const int s = j & 1, k0 = j * WG_BN;
        const uint32_t parity = ((j >> 1) - 1) & 1; /* the previous use of stage s */
        if (j >= 2)
          mbar_wait<true> (BAR (5 + s), parity);
        mbar_expect_tx (BAR (1 + s), WG_KV_BYTES);
        tma_load (base + WG_OFF_K (s), &tm_k, 0, h, k0, b, BAR (1 + s));
        tma_load (base + WG_OFF_K (s) + WG_KV_HALF, &tm_k, 64, h, k0, b, BAR (1 + s));
        if (j >= 2)
          mbar_wait<true> (BAR (7 + s), parity);
        mbar_expect_tx (BAR (3 + s), WG_KV_BYTES);
        tma_load (base + WG_OFF_V (s), &tm_v, 0, h, k0, b, BAR (3 + s));
        tma_load (base + WG_OFF_V (s) + WG_KV_HALF, &tm_v, 64, h, k0, b, BAR (3 + s));
      }
      /* Stay until the consumers are done with the last tile (the watchdog
       * then also covers their waits). */
      mbar_wait<true> (BAR (7 + ((n_tiles - 1) & 1)), ((n_tiles - 1) >> 1) & 1);
    }
  } else {
    /* ---- consumers: 64 query rows each ---- */
    asm volatile ("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(WG_CONSUMER_REGS));
    const int cw = wg - 1, wl = (tid & 127) >> 5, g = lane >> 2, t4 = lane & 3;
    const uint32_t q_addr = base + WG_OFF_Q + cw * (64 * 128); /* rows 64 cw.. in each half */
    float o[64], s[WG_ST];
    uint32_t pf[WG_PK][4];
    float m_run[2] = { -INFINITY, -INFINITY }, l_run[2] = { 0.0f, 0.0f };
#pragma unroll
    for (int i = 0; i < 64; i++)
      o[i] = 0.0f;

    /* Tile 0: S_0 alone. */
    mbar_wait<false> (BAR (0), 0);
    mbar_wait<false> (BAR (1), 0);
    if (cw == 1)
      turn_pass (cw); /* warpgroup 1 (cw 0) takes the first turn */
    turn_wait (cw);
    gemm_qk (s, q_addr, base + WG_OFF_K (0));
    if (n_tiles > 1 || cw == 0)
      turn_pass (cw);
    wgmma_wait<0> ();
    fence_regs (s);
    if (lane == 0)
      mbar_arrive (BAR (5));
    {
      float alpha[2];
      softmax_tile (s, m_run, l_run, alpha, 0, p.kv_len, t4, p.scale_log2);
    }
    convert_p (pf, s);

    for (int j = 1; j < n_tiles; j++)
      consumer_step (j, n_tiles, cw, o, s, pf, m_run, l_run, q_addr, bars, base, p.kv_len, t4, lane, p.scale_log2);

    /* The last P V, outside the turns (nothing left to overlap with). */
    const int sv = (n_tiles - 1) & 1;
    mbar_wait<false> (BAR (3 + sv), ((n_tiles - 1) >> 1) & 1);
    fence_regs (o);
    fence_regs (pf);
    gemm_pv (o, pf, base + WG_OFF_V (sv));
    wgmma_wait<0> ();
    fence_regs (o);
    fence_regs (pf);
    if (lane == 0)
      mbar_arrive (BAR (7 + sv));

    /* Normalise and store rows g and g + 8 of this warp's 16. */
    const int64_t stride = (int64_t) p.H * WG_HD;
    __nv_bfloat16 *og = p.o + ((int64_t) b * p.Lq * p.H + h) * WG_HD;
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float l = l_run[r];
      l += __shfl_xor_sync (0xffffffffu, l, 1);
      l += __shfl_xor_sync (0xffffffffu, l, 2);
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      const int row = q0 + cw * 64 + wl * 16 + g + 8 * r;
      if (row < p.Lq) {
        __nv_bfloat16 *orow = og + (int64_t) row * stride + 2 * t4;
#pragma unroll
        for (int j = 0; j < 16; j++)
          *(__nv_bfloat162 *) (orow + 8 * j) = __floats2bfloat162_rn (o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
      }
    }
  }
#undef BAR
#endif /* WG_DEVICE_CODE */
}

/* ---- host side ---------------------------------------------------------- */

static PFN_cuTensorMapEncodeTiled_v12000
encode_fn (void)
{
  static gsize once = 0;
  static PFN_cuTensorMapEncodeTiled_v12000 fn = NULL;
  if (g_once_init_enter (&once)) {
    void *f = NULL;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    cudaError_t err = cudaGetDriverEntryPointByVersion ("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q);
#else
    cudaError_t err = cudaGetDriverEntryPoint ("cuTensorMapEncodeTiled", &f, cudaEnableDefault, &q);
#endif
    if (err != cudaSuccess || q != cudaDriverEntryPointSuccess)
      f = NULL;
    (void) cudaGetLastError ();
    fn = (PFN_cuTensorMapEncodeTiled_v12000) f;
    g_once_init_leave (&once, 1);
  }
  return fn;
}

extern "C" gboolean
dp_cuda_attention_wgmma_available (dp_backend *be)
{
  const dp_cuda *c = dp_cuda_of (be);
  return c->cc_major == 9 && c->cc_minor == 0 && c->smem_optin >= WG_SMEM_BYTES && encode_fn () != NULL;
}

/* [B, L, H, 128] BF16 as a 4-D tensor map (d, head, row, batch) with a box
 * of 64 columns x box_rows rows of one head, 128-byte swizzle, zero fill
 * out of bounds (the tails). */
static gboolean
make_map (dp_backend *be, CUtensorMap *map, const void *data, int64_t B, int64_t L, int64_t H, int box_rows,
          const char *what)
{
  const cuuint64_t dims[4] = { WG_HD, (cuuint64_t) H, (cuuint64_t) L, (cuuint64_t) B };
  /* byte strides of dims 1..3 (dim 0 is contiguous) */
  const cuuint64_t strides[3] = { WG_HD * 2, (cuuint64_t) H * WG_HD * 2, (cuuint64_t) L * H * WG_HD * 2 };
  const cuuint32_t box[4] = { 64, 1, (cuuint32_t) box_rows, 1 }, elem[4] = { 1, 1, 1, 1 };
  CUresult r = encode_fn () (map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, (void *) data, dims, strides, box, elem,
                             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    dp_backend_fail (be, DP_ERROR_DEVICE, "attention (wgmma): cuTensorMapEncodeTiled for %s failed (CUresult %d)",
                     what, (int) r);
    return FALSE;
  }
  return TRUE;
}

extern "C" void
dp_cuda_attention_wgmma (dp_backend *be, void *o, const void *q, const void *k, const void *v, int B, int H, int Lq,
                         int Lk, int kv_len, float scale_log2)
{
  dp_cuda *c = dp_cuda_of (be);
  CUtensorMap tq, tk, tv;
  if (!make_map (be, &tq, q, B, Lq, H, WG_BM, "q") || !make_map (be, &tk, k, B, Lk, H, WG_BN, "k")
      || !make_map (be, &tv, v, B, Lk, H, WG_BN, "v"))
    return;
  if (!dp_cuda_ok (be, cudaFuncSetAttribute (flash_wgmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             WG_SMEM_BYTES),
                   "attention (wgmma): cudaFuncSetAttribute"))
    return;
  wg_params p;
  p.o = (__nv_bfloat16 *) o;
  p.H = H;
  p.Lq = Lq;
  p.kv_len = kv_len;
  p.scale_log2 = scale_log2;
  dim3 grid ((unsigned) ((Lq + WG_BM - 1) / WG_BM), (unsigned) (B * H));
  flash_wgmma_kernel<<<grid, WG_THREADS, WG_SMEM_BYTES, c->stream>>> (tq, tk, tv, p);
  dp_cuda_launched (be, "attention (wgmma kernel)");
}
