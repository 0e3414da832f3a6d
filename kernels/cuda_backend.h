/* dualparal: the CUDA backend.
 *
 * Users reach it through dp_backend_new ("cuda" / "cuda:N"); this header is
 * the constructor plus a few GPU-only helpers for tests and benchmarks.
 *
 * One backend = one device, one CUDA stream (created non-blocking), one
 * cuBLASLt handle and workspace.  Every operation is queued on the stream and
 * returns at once; ops->sync() waits for the stream and reports the sticky
 * error.  Every CUDA / cuBLAS return code and the launch status of every
 * kernel are checked: a failure records DP_ERROR_DEVICE (DP_ERROR_NOMEM for
 * a failed allocation) in the backend, later operations become no-ops, and
 * nothing aborts.  Not thread safe: one host thread drives one backend.
 *
 * dtypes: act_dtype = weight_dtype = BF16.  Accepted dtypes per op (anything
 * else records DP_ERROR_UNSUPPORTED):
 * - to_device / to_host / copy: F32, BF16 and F16 on either side, converted
 *   with round to nearest even (to_device and to_host convert on the host).
 * - fill: F32, BF16, F16.
 * - linear: x, w F32 / BF16 / F16 (non-BF16 operands are converted to BF16 in
 *   a scratch buffer first: weights should be stored as BF16); bias NULL or
 *   [N] in F32 / BF16 / F16 (converted to the output dtype when it differs,
 *   so a BF16 bias with a BF16 output costs nothing, an F32 bias one tiny
 *   conversion kernel); y BF16 or F32.
 *   BF16 tensor cores, FP32 accumulation, bias and GELU-tanh fused in the
 *   cuBLASLt epilogue; SiLU runs as a separate element-wise pass.
 * - layer_norm, layer_norm_modulate, rms_norm: x and y F32 / BF16 / F16 in any
 *   pairing (the model uses F32 residual -> BF16 activations); w, b, shift,
 *   scale any of the three; statistics in FP32.
 * - rope_3d: x BF16 / F32 / F16 in place; angles computed on the host in
 *   double and kept as an FP32 cos/sin table on the device (small cache).
 * - gelu_tanh, silu, add, mul, axpby, gated_add, upsample_nearest2x,
 *   patchify, unpatchify: each tensor any of the three dtypes, FP32 arithmetic.
 * - attention: q, k, v, o BF16 (FP32 online softmax and accumulation on BF16
 *   tensor cores, mma.sync m16n8k16; with DP_CUDA_ATTN_WGMMA selected, on
 *   compute capability 9.0 and head dim 128 without bias, wgmma with TMA
 *   loads); head dims up to 128 with d % 8 == 0
 *   (padded tiles of 32 / 64 / 128); Lq and Lk independent; key_len
 *   masks keys >= key_len; bias F32 [H, Lq, Lk] is added to the scaled
 *   scores.  Other dtypes or alignments run a slow generic FP32 kernel.
 * - conv3d: x, w F32 / BF16 / F16, y BF16 or F32, bias any or NULL: im2col
 *   in BF16 (chunked so the column buffer stays under 256 MiB) and a
 *   cuBLASLt GEMM with FP32 accumulation.
 * - channel_rms_norm: x, y, gamma F32 / BF16 / F16, FP32 statistics.
 * - copy_cols, transpose: any dtype, the same on both sides (raw copies).
 */
#ifndef DUALPARAL_CUDA_BACKEND_H
#define DUALPARAL_CUDA_BACKEND_H

#include "dualparal/backend.h"

G_BEGIN_DECLS

/* A backend on GPU `device`; NULL with DP_ERROR_DEVICE when CUDA has no such
 * device (or no GPU at all) or a handle cannot be created. */
dp_backend *dp_cuda_backend_new (int device, GError **error);

/* Registers the CUDA device provider (core device.h) from a program that
 * links the CUDA code directly (GPU tests, dualparal-bench); the module
 * libdualparal-cuda.so does the same when libdualparal opens it. */
void dp_cuda_register (void);

/* Number of CUDA devices; 0 when there is no usable driver or GPU (never an
 * error: tests use it to skip). */
int dp_cuda_device_count (void);

/* Bytes of device memory currently allocated through be->ops->alloc, and the
 * highest value since creation or the last reset (benchmarks: peak memory).
 * be must be a CUDA backend. */
size_t dp_cuda_backend_allocated_bytes (dp_backend *be);
size_t dp_cuda_backend_peak_bytes (dp_backend *be);
void dp_cuda_backend_reset_peak (dp_backend *be);

/* Device name and properties in one line ("NVIDIA H200, 132 SMs, cc 9.0, ...");
 * newly allocated string. */
char *dp_cuda_backend_describe (dp_backend *be);

/* Elapsed milliseconds of queued work, measured with CUDA events on the
 * backend's stream: dp_cuda_timer_start() records a start event,
 * dp_cuda_timer_stop() records a stop event, waits for it and returns the
 * time between them (a negative value and a sticky error on failure). */
void dp_cuda_timer_start (dp_backend *be);
double dp_cuda_timer_stop (dp_backend *be);

/* Variants of the flash-attention kernel (tests and benchmarks run each;
 * the default is the fastest one measured, see docs/performance-notes-gpu.txt). */
typedef enum {
  DP_CUDA_ATTN_W4_R16 = 0, /* 4 warps x 16 query rows (64 per block), Q in registers */
  DP_CUDA_ATTN_W8_R16 = 1, /* 8 warps x 16 query rows (128 per block), Q in registers */
  DP_CUDA_ATTN_W4_R32 = 2, /* 4 warps x 32 query rows (128 per block), Q in shared memory */
  /* Hopper (compute capability 9.0): wgmma + TMA, producer / consumer
   * warpgroups (cuda_attention_sm90.cu); head dim 128 without bias only,
   * other calls (and other GPUs) run DP_CUDA_ATTN_W4_R32. */
  DP_CUDA_ATTN_WGMMA = 3,
} dp_cuda_attention_variant;
/* The portable default (mma.sync, any GPU of compute capability 8.0+). */
#define DP_CUDA_ATTN_DEFAULT DP_CUDA_ATTN_W4_R32

/* Selects the kernel for later attention calls (a value out of range
 * selects the device's default: DP_CUDA_ATTN_WGMMA on Hopper, else
 * DP_CUDA_ATTN_DEFAULT; DP_CUDA_ATTENTION=mma in the environment makes the
 * mma.sync kernel the default everywhere). */
void dp_cuda_backend_set_attention_variant (dp_backend *be, dp_cuda_attention_variant variant);
/* The device's default variant (what a new backend starts with). */
dp_cuda_attention_variant dp_cuda_backend_default_attention_variant (dp_backend *be);
/* Whether the wgmma kernel can run on this device. */
gboolean dp_cuda_backend_has_wgmma_attention (dp_backend *be);
/* The variant the last attention call actually ran (after fallbacks: the
 * bias path reports DP_CUDA_ATTN_W4_R16), or -1 for the generic FP32 kernel
 * or before any call.  Tests use it to prove which kernel they checked. */
int dp_cuda_backend_last_attention_variant (dp_backend *be);

/* How conv3d runs (issue 22): im2col + cuBLASLt GEMMs in BF16 (the default,
 * any input), or cuDNN (F32 inputs, symmetric paddings; libcudnn.so.9 is
 * opened at run time; other calls still take im2col).  A new backend starts
 * with DP_CUDA_CONV from the environment ("cudnn" or "im2col"), else im2col. */
typedef enum {
  DP_CUDA_CONV_IM2COL = 0,
  DP_CUDA_CONV_CUDNN = 1,
} dp_cuda_conv_impl;

/* FALSE with *why (free it) when cuDNN is asked for and cannot be used
 * (built without cudnn.h, libcudnn.so.9 not found or incomplete). */
gboolean dp_cuda_backend_set_conv (dp_backend *be, dp_cuda_conv_impl impl, char **why);
/* Whether the last conv3d call ran through cuDNN (tests prove the path). */
gboolean dp_cuda_backend_last_conv_was_cudnn (dp_backend *be);

/* ---- internal: for the device transport (nccl_transport.h) -------------- */

/* Whether be is a CUDA backend (any backend may be passed). */
gboolean dp_cuda_backend_is_cuda (const dp_backend *be);
/* The CUDA device index of a CUDA backend. */
int dp_cuda_backend_device (dp_backend *be);
/* The backend's compute stream (a cudaStream_t; void * keeps this header
 * free of CUDA types): every operation of the backend is queued there.
 * The transport records events on it and makes it wait on events, from the
 * thread that drives the backend; the stream stays the backend's. */
void *dp_cuda_backend_stream (dp_backend *be);

G_END_DECLS

#endif
