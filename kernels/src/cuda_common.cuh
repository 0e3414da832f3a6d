/* Device-side helpers shared by the CUDA backend's kernels (CUDA C++ only). */
#ifndef DP_CUDA_COMMON_CUH
#define DP_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "cuda_priv.h"

/* Element i of a tensor whose dtype is only known at run time, as float.
 * The dtype is uniform across a launch, so the branch costs little next to
 * the memory access of these memory-bound kernels. */
__device__ __forceinline__ float
dp_ld (const void *p, int dt, int64_t i)
{
  if (dt == DP_F32)
    return ((const float *) p)[i];
  if (dt == DP_BF16)
    return __bfloat162float (((const __nv_bfloat16 *) p)[i]);
  return __half2float (((const __half *) p)[i]);
}

/* Stores v as element i, rounding to nearest even for BF16 / F16. */
__device__ __forceinline__ void
dp_st (void *p, int dt, int64_t i, float v)
{
  if (dt == DP_F32)
    ((float *) p)[i] = v;
  else if (dt == DP_BF16)
    ((__nv_bfloat16 *) p)[i] = __float2bfloat16_rn (v);
  else
    ((__half *) p)[i] = __float2half_rn (v);
}

__device__ __forceinline__ float
dp_gelu_tanh_f (float x)
{
  const float k = 0.7978845608028654f; /* sqrt(2/pi) */
  return 0.5f * x * (1.0f + tanhf (k * (x + 0.044715f * x * x * x)));
}

__device__ __forceinline__ float
dp_silu_f (float x)
{
  return x / (1.0f + __expf (-x));
}

/* act is a dp_act value, uniform across the launch. */
__device__ __forceinline__ float
dp_act_f (float x, int act)
{
  return act == DP_ACT_GELU_TANH ? dp_gelu_tanh_f (x) : act == DP_ACT_SILU ? dp_silu_f (x) : x;
}

/* Four consecutive elements as floats, one vector access (16 bytes of F32,
 * 8 of BF16): p must be aligned to four elements. */
__device__ __forceinline__ void
dp_ld4 (const float *p, float v[4])
{
  const float4 t = *(const float4 *) p;
  v[0] = t.x;
  v[1] = t.y;
  v[2] = t.z;
  v[3] = t.w;
}

__device__ __forceinline__ void
dp_ld4 (const __nv_bfloat16 *p, float v[4])
{
  const uint2 t = *(const uint2 *) p;
  const float2 a = __bfloat1622float2 (*(const __nv_bfloat162 *) &t.x);
  const float2 b = __bfloat1622float2 (*(const __nv_bfloat162 *) &t.y);
  v[0] = a.x;
  v[1] = a.y;
  v[2] = b.x;
  v[3] = b.y;
}

__device__ __forceinline__ void
dp_st4 (float *p, const float v[4])
{
  *(float4 *) p = make_float4 (v[0], v[1], v[2], v[3]);
}

__device__ __forceinline__ void
dp_st4 (__nv_bfloat16 *p, const float v[4])
{
  __nv_bfloat162 a = __floats2bfloat162_rn (v[0], v[1]), b = __floats2bfloat162_rn (v[2], v[3]);
  uint2 t;
  t.x = *(const uint32_t *) &a;
  t.y = *(const uint32_t *) &b;
  *(uint2 *) p = t;
}

/* Whether p is aligned to n bytes. */
__host__ __device__ __forceinline__ bool
dp_aligned (const void *p, unsigned n)
{
  return ((uintptr_t) p & (n - 1)) == 0;
}

#define DP_GRID_STRIDE(i, n) \
  for (int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
       i += (int64_t) gridDim.x * blockDim.x)

/* Sum of v over the 32 lanes of a warp; every lane gets the result. */
__device__ __forceinline__ float
dp_warp_sum (float v)
{
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync (0xffffffffu, v, o);
  return v;
}

/* Block-wide sum of v over blockDim.x threads (a multiple of 32, at most
 * 1024); every thread gets the result.  shm: 32 floats. */
__device__ __forceinline__ float
dp_block_sum (float v, float *shm)
{
  v = dp_warp_sum (v);
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads (); /* shm may still be read by a previous call */
  if (lane == 0)
    shm[warp] = v;
  __syncthreads ();
  int nwarps = blockDim.x >> 5;
  return dp_warp_sum (lane < nwarps ? shm[lane] : 0.0f);
}

/* Where token l's angles start in the table, for each of the three parts
 * of a head's pairs (offsets already less the part's first pair index, so
 * pair p reads table[offset + p]): found once per token, not per pair. */
struct dp_rope_token {
  int t_off, h_off, w_off;
};

__device__ __forceinline__ dp_rope_token
dp_rope_token_of (const dp_cuda_rope_args &ra, int l)
{
  const int w = l % ra.width, h = (l / ra.width) % ra.height, f = l / (ra.width * ra.height);
  const int w_pairs = ra.half_d - ra.t_pairs - ra.h_pairs, base_h = ra.frames * ra.t_pairs;
  dp_rope_token t;
  t.t_off = f * ra.t_pairs;
  t.h_off = base_h + h * ra.h_pairs - ra.t_pairs;
  t.w_off = base_h + ra.height * ra.h_pairs + w * w_pairs - ra.t_pairs - ra.h_pairs;
  return t;
}

/* cos / sin of pair p (of a head) of the token. */
__device__ __forceinline__ float2
dp_rope_angle (const dp_cuda_rope_args &ra, const dp_rope_token &t, int p)
{
  const int off = p < ra.t_pairs ? t.t_off : p < ra.t_pairs + ra.h_pairs ? t.h_off : t.w_off;
  return ra.table[off + p];
}

/* Rotates the pair v[0], v[1] by the angle whose cos / sin is cs. */
__device__ __forceinline__ void
dp_rope_rotate (float2 cs, float *v)
{
  const float a = v[0], b = v[1];
  v[0] = a * cs.x - b * cs.y;
  v[1] = a * cs.y + b * cs.x;
}

#endif
