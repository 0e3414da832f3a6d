/* CUDA backend internals shared by its files (C and CUDA C++).
 *
 * cuda_backend.c  the table, memory, streams, copies, scratch, error checks
 * cuda_gemm.c     cuBLASLt GEMMs (plan cache), linear
 * cuda_elementwise.cu  conversions, fill, activations, adds, layouts,
 *                 copy_cols, transpose
 * cuda_norm.cu    layer_norm, layer_norm_modulate, rms_norm, channel_rms_norm
 * cuda_rope.cu    rope_3d (host-side angle tables, device rotation)
 * cuda_attention.cu  flash attention (mma.sync) + generic fallback
 * cuda_conv3d.cu  im2col + GEMM
 */
#ifndef DP_CUDA_PRIV_H
#define DP_CUDA_PRIV_H

#include <cuda_runtime_api.h>
#include <cublasLt.h>

#include "cuda_backend.h"

G_BEGIN_DECLS

/* One cached RoPE cos/sin table (cuda_rope.cu). */
typedef struct {
  int frames, height, width, head_dim;
  float theta;
  int *frame_pos;   /* host copy, frames entries (the cache key) */
  float2 *table;    /* device: (frames + height + width) * (head_dim / 2) */
  size_t table_bytes;
} dp_cuda_rope_table;

#define DP_CUDA_ROPE_CACHE 4

/* What a kernel needs to rotate the rows of x [B, L, heads, 2 half_d] for
 * one grid: the angle table (device, from the cache above) and the grid's
 * sizes; pairs [0, t_pairs) of a head turn with the frame position, the
 * next h_pairs with the row, the rest with the column. */
typedef struct {
  const float2 *table;
  int L, heads, half_d, t_pairs, h_pairs;
  int frames, height, width;
} dp_cuda_rope_args;

typedef struct {
  int device;
  char name[32];
  cudaStream_t stream;
  cublasLtHandle_t lt;
  void *lt_workspace;
  size_t lt_workspace_size;
  int sm_count;
  int cc_major, cc_minor;
  size_t smem_optin;        /* max dynamic shared memory per block (opt-in) */
  char device_name[256];
  size_t total_mem;

  /* Scratch: one device buffer reused by every op (stream order keeps uses
   * apart); grows on demand (cudaFree synchronizes the device first). */
  void *scratch;
  size_t scratch_size;

  /* Memory accounting: pointer -> size of every live alloc(). */
  GHashTable *allocs;
  size_t allocated, peak;

  GHashTable *gemm_plans;   /* key string -> dp_cuda_gemm_plan (cuda_gemm.c) */

  dp_cuda_rope_table rope[DP_CUDA_ROPE_CACHE];
  int rope_next;

  cudaEvent_t timer_start, timer_stop;

  int conv_impl;            /* dp_cuda_conv_impl */
  gboolean conv_last_cudnn; /* the last conv3d ran through cuDNN */
  void *cudnn;              /* cudnnHandle_t, made on the first cuDNN conv */
  int attention_variant;    /* dp_cuda_attention_variant */
  int attention_last;       /* the variant the last attention call ran, -1: generic */
} dp_cuda;

static inline dp_cuda *
dp_cuda_of (dp_backend *be)
{
  return (dp_cuda *) be->priv;
}

/* FALSE (recording a sticky DP_ERROR_DEVICE / DP_ERROR_NOMEM naming `what`)
 * when err is not cudaSuccess. */
gboolean dp_cuda_ok (dp_backend *be, cudaError_t err, const char *what);
/* cudaGetLastError() after a kernel launch. */
gboolean dp_cuda_launched (dp_backend *be, const char *what);
gboolean dp_cublas_ok (dp_backend *be, cublasStatus_t st, const char *what);

/* Scratch memory of at least nbytes (256-byte aligned), valid until the next
 * call; NULL with a sticky error on failure. */
void *dp_cuda_scratch (dp_backend *be, size_t nbytes);

/* Argument checks, each FALSE with a sticky error naming op (and returning
 * FALSE at once when the backend already failed). */
gboolean dp_cuda_check (dp_backend *be, const char *op, const dp_tensor *t, const char *what);
gboolean dp_cuda_check_count (dp_backend *be, const char *op, const dp_tensor *a,
                              const dp_tensor *b);

/* Launch geometry for grid-stride element-wise kernels. */
unsigned dp_cuda_grid (dp_backend *be, int64_t n, unsigned threads);

/* ---- cuda_elementwise.cu ------------------------------------------------ */
/* n elements src (sdt) -> dst (ddt) on the stream. */
void dp_cuda_convert (dp_backend *be, void *dst, dp_dtype ddt, const void *src, dp_dtype sdt,
                      int64_t n);
void dp_cuda_fill_raw (dp_backend *be, void *dst, dp_dtype dt, float value, int64_t n);
/* y[r, c] += bias[r] for y [rows, cols] (conv3d bias per output channel). */
void dp_cuda_add_row_bias (dp_backend *be, void *y, dp_dtype ydt, const void *bias,
                           dp_dtype bdt, int64_t rows, int64_t cols);
void dp_cuda_gate_weights_raw (dp_backend *be, void *w_out, float *bias_out, const void *w,
                               const void *bias, dp_dtype bias_dtype, const float *gate, int64_t N,
                               int64_t K);
void dp_cuda_silu_raw (dp_backend *be, void *y, dp_dtype ydt, const void *x, dp_dtype xdt,
                       int64_t n);

void dp_cuda_fill (dp_backend *be, dp_tensor *t, float value);
void dp_cuda_gelu_tanh (dp_backend *be, dp_tensor *y, const dp_tensor *x);
void dp_cuda_silu (dp_backend *be, dp_tensor *y, const dp_tensor *x);
void dp_cuda_add (dp_backend *be, dp_tensor *y, const dp_tensor *a, const dp_tensor *b);
void dp_cuda_mul (dp_backend *be, dp_tensor *y, const dp_tensor *a, const dp_tensor *b);
void dp_cuda_axpby (dp_backend *be, dp_tensor *y, float alpha, const dp_tensor *a, float beta,
                    const dp_tensor *b);
void dp_cuda_gated_add (dp_backend *be, dp_tensor *x, const dp_tensor *y, const dp_tensor *gate);
void dp_cuda_upsample_nearest2x (dp_backend *be, dp_tensor *y, const dp_tensor *x);
void dp_cuda_patchify (dp_backend *be, dp_tensor *tokens, const dp_tensor *x, int pt, int ph,
                       int pw);
void dp_cuda_unpatchify (dp_backend *be, dp_tensor *x, const dp_tensor *tokens, int pt, int ph,
                         int pw);
void dp_cuda_copy_cols (dp_backend *be, dp_tensor *dst, int64_t dst_col0, const dp_tensor *src,
                        int64_t src_col0, int64_t ncols);
void dp_cuda_transpose (dp_backend *be, dp_tensor *y, const dp_tensor *x);

/* ---- cuda_gemm.c -------------------------------------------------------- */
/* Column-major D[m, n] = op(A)[m, k] * op(B)[k, n] (+ bias[m]) with an
 * optional GELU-tanh epilogue, through cuBLASLt.  A and B must be BF16 (or
 * both F16); D F32 / BF16 / F16; bias NULL or of D's dtype.  ld* in
 * elements.  Returns FALSE (sticky error) on failure. */
gboolean dp_cuda_gemm (dp_backend *be, gboolean trans_a, gboolean trans_b, int64_t m, int64_t n,
                       int64_t k, const void *a, int64_t lda, const void *b, int64_t ldb,
                       dp_dtype ab_dtype, void *d, int64_t ldd, dp_dtype d_dtype,
                       const void *bias, gboolean gelu, gboolean accumulate);
void dp_cuda_gemm_plans_free (dp_backend *be);
void dp_cuda_linear (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                     const dp_tensor *bias, dp_act act);
void dp_cuda_linear_gated_add (dp_backend *be, dp_tensor *x, const dp_tensor *a, const dp_tensor *w,
                               const dp_tensor *bias, const dp_tensor *gate);

/* ---- cuda_norm.cu ------------------------------------------------------- */
void dp_cuda_layer_norm (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                         const dp_tensor *b, float eps);
void dp_cuda_layer_norm_modulate (dp_backend *be, dp_tensor *y, const dp_tensor *x,
                                  const dp_tensor *shift, const dp_tensor *scale, float eps);
void dp_cuda_rms_norm (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                       float eps);
void dp_cuda_channel_rms_norm (dp_backend *be, dp_tensor *y, const dp_tensor *x,
                               const dp_tensor *gamma, float eps, dp_act act);

/* ---- cuda_rope.cu ------------------------------------------------------- */
void dp_cuda_rope_3d (dp_backend *be, dp_tensor *x, const dp_rope_grid *grid);
/* Checks x [B, L, H, d] against the grid and fills ra (uploading the angle
 * table on a cache miss); FALSE with the backend error set on failure. */
gboolean dp_cuda_rope_prepare (dp_backend *be, const char *op, const dp_tensor *x, const dp_rope_grid *grid,
                               dp_cuda_rope_args *ra);
void dp_cuda_rms_norm_rope_3d (dp_backend *be, dp_tensor *x, const dp_tensor *w, float eps,
                               const dp_rope_grid *grid);
void dp_cuda_rope_cache_free (dp_backend *be);

/* ---- cuda_attention.cu -------------------------------------------------- */
void dp_cuda_attention (dp_backend *be, dp_tensor *o, const dp_tensor *q, const dp_tensor *k,
                        const dp_tensor *v, const dp_attn_params *p);

/* ---- cuda_attention_sm90.cu -------------------------------------------- */
/* Whether the wgmma / TMA kernel can run here (compute capability 9.0, the
 * driver's cuTensorMapEncodeTiled found, enough shared memory). */
gboolean dp_cuda_attention_wgmma_available (dp_backend *be);
/* o = softmax(scale q k^T) v for BF16 q / o [B, Lq, H, 128], k / v
 * [B, Lk, H, 128] (16-byte aligned), keys >= kv_len masked, scale_log2 =
 * scale * log2(e) > 0.
 * Queued on the stream; failures are sticky errors. */
void dp_cuda_attention_wgmma (dp_backend *be, void *o, const void *q, const void *k, const void *v, int B,
                              int H, int Lq, int Lk, int kv_len, float scale_log2);

/* ---- cuda_conv3d_cudnn.c -------------------------------------------------- */
/* Whether libcudnn could be opened (once per process); *why when not. */
gboolean dp_cuda_cudnn_available (char **why);
/* Destroys the backend's cuDNN handle (cuda_destroy). */
void dp_cuda_cudnn_release (dp_cuda *c);
/* Runs the conv through cuDNN: FALSE (nothing queued) when the call is not
 * one cuDNN takes here, TRUE when it ran or failed (a sticky error). */
gboolean dp_cuda_conv3d_cudnn (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                               const dp_tensor *bias, const dp_conv3d_params *p);

/* ---- cuda_conv3d.cu ----------------------------------------------------- */
void dp_cuda_conv3d (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                     const dp_tensor *bias, const dp_conv3d_params *p);

G_END_DECLS

#endif
