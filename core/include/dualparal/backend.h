/* dualparal: the backend interface.
 *
 * A backend is a table of operations over tensors that live in its memory.
 * The model code (Wan DiT, VAE, umT5) is written once against this table; the
 * CPU backend (core/src/cpu/) and the CUDA backend (kernels/) implement it.
 *
 * Conventions, for every operation:
 * - Tensors are contiguous, row-major, shape[0] outermost (tensor.h).  Views
 *   (dp_tensor_view/slice0 on backend memory) are fine.
 * - Operations may run asynchronously (CUDA stream order).  Results become
 *   visible to the host through to_host() followed by sync().
 * - Errors are sticky, like CUDA's: an operation that fails (bad shapes, an
 *   unsupported dtype, a CUDA/cuBLAS error, out of memory) records the first
 *   error in the backend and later operations become no-ops.  dp_backend_check()
 *   or ops->sync() report it as a GError.  Nothing aborts the process.
 * - dtypes: the CPU backend computes in F32 only.  A GPU backend states what
 *   it accepts per op; the model code allocates activations in
 *   backend->act_dtype, weights in backend->weight_dtype, and keeps the
 *   residual stream, norms' statistics, modulation vectors and RoPE angles in F32.
 * - "rows" means all leading dimensions flattened; the op works along the last.
 */
#ifndef DUALPARAL_BACKEND_H
#define DUALPARAL_BACKEND_H

#include "dualparal/error.h"
#include "dualparal/tensor.h"

G_BEGIN_DECLS


typedef struct dp_backend dp_backend;

typedef enum {
  DP_ACT_NONE = 0,
  DP_ACT_GELU_TANH, /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
  DP_ACT_SILU,      /* x / (1 + exp(-x)) */
} dp_act;

/* Wan 3D rotary embedding of a token grid.  Tokens are ordered (f, h, w)
 * row-major, frames * height * width of them.  The head dimension d is split
 * into time / height / width parts: dh = dw = 2 * (d / 6), dt = d - dh - dw
 * (44/42/42 for d = 128).  Each part rotates interleaved pairs
 * (x[2i], x[2i+1]) by angle pos * theta^(-2i / d_part), with pos the frame
 * position (frame_pos[f], chosen by the caller) for the time part and the row
 * / column index for the others. */
typedef struct {
  int frames, height, width;
  const int *frame_pos; /* host array, length frames */
  float theta;          /* 10000 for Wan */
} dp_rope_grid;

/* Softmax attention: o = softmax(scale * q k^T + bias) v, per batch and head.
 * q [B, Lq, H, d], k and v [B, Lk, H, d], o [B, Lq, H, d]. */
typedef struct {
  float scale;            /* 1/sqrt(d) for Wan, 1 for umT5 */
  int key_len;            /* keys [0, key_len) are attended; 0 means all Lk */
  const dp_tensor *bias;  /* optional additive F32 bias [H, Lq, Lk] (umT5), else NULL */
} dp_attn_params;

/* Conv3d over one sample: x [Cin, T, H, W], w [Cout, Cin, kt, kh, kw],
 * bias [Cout] or NULL, y [Cout, To, Ho, Wo] with
 * To = (T + pad_t_front + pad_t_back - kt) / stride_t + 1 (same for H, W with
 * symmetric pad_h / pad_w).  Padding is zeros; a causal conv uses
 * pad_t_front = kt - 1, pad_t_back = 0 (or concatenates its cached frames in
 * front and uses no time padding). */
typedef struct {
  int stride_t, stride_h, stride_w;
  int pad_t_front, pad_t_back, pad_h, pad_w;
} dp_conv3d_params;

typedef struct {
  /* memory -------------------------------------------------------------- */
  /* nbytes of backend memory; NULL (and a sticky error) on failure. */
  void *(*alloc) (dp_backend *be, size_t nbytes);
  void (*free) (dp_backend *be, void *ptr);
  /* Host -> backend: src is a host tensor (any dtype), dst a backend tensor
   * with the same element count; converts to dst->dtype. */
  void (*to_device) (dp_backend *be, dp_tensor *dst, const dp_tensor *src);
  /* Backend -> host: converts to dst->dtype.  Valid after sync(). */
  void (*to_host) (dp_backend *be, dp_tensor *dst, const dp_tensor *src);
  /* Backend -> backend copy with the same element count, converting dtype. */
  void (*copy) (dp_backend *be, dp_tensor *dst, const dp_tensor *src);
  void (*fill) (dp_backend *be, dp_tensor *t, float value);
  /* Waits for all queued work; returns FALSE with the sticky error if any. */
  gboolean (*sync) (dp_backend *be, GError **error);
  void (*destroy) (dp_backend *be);

  /* maths --------------------------------------------------------------- */
  /* y = act(x w^T + bias): x [M, K] (rows), w [N, K] (PyTorch Linear layout),
   * bias [N] or NULL, y [M, N]. */
  void (*linear) (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                  const dp_tensor *bias, dp_act act);
  /* Row-wise LayerNorm (biased variance): y = (x - mean) / sqrt(var + eps) * w + b.
   * w and b are [D] or NULL (no affine).  y may alias x. */
  void (*layer_norm) (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                      const dp_tensor *b, float eps);
  /* y = LN(x) * (1 + scale) + shift, LN without affine.  x and y [B, L, D];
   * shift and scale F32 [B, D] (one modulation per batch entry).  y may alias x. */
  void (*layer_norm_modulate) (dp_backend *be, dp_tensor *y, const dp_tensor *x,
                               const dp_tensor *shift, const dp_tensor *scale, float eps);
  /* Row-wise RMSNorm: y = x / sqrt(mean(x^2) + eps) * w; w [D] or NULL.  y may alias x. */
  void (*rms_norm) (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                    float eps);
  /* In place on x [B, L, H, d] with L = frames * height * width. */
  void (*rope_3d) (dp_backend *be, dp_tensor *x, const dp_rope_grid *grid);
  /* Optional (NULL: callers run rms_norm, then rope_3d): Wan's q / k norm
   * and RoPE in one pass, in place on x [B, L, H, d]: each token's H * d
   * values are RMS-normalised together (times w [H * d] F32, or NULL), then
   * rotated as rope_3d does. */
  void (*rms_norm_rope_3d) (dp_backend *be, dp_tensor *x, const dp_tensor *w, float eps,
                            const dp_rope_grid *grid);
  /* Element-wise activations; y may alias x. */
  void (*gelu_tanh) (dp_backend *be, dp_tensor *y, const dp_tensor *x);
  void (*silu) (dp_backend *be, dp_tensor *y, const dp_tensor *x);
  void (*attention) (dp_backend *be, dp_tensor *o, const dp_tensor *q, const dp_tensor *k,
                     const dp_tensor *v, const dp_attn_params *p);
  void (*conv3d) (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                  const dp_tensor *bias, const dp_conv3d_params *p);
  /* Nearest-neighbour 2x in H and W: x [C, T, H, W] -> y [C, T, 2H, 2W]. */
  void (*upsample_nearest2x) (dp_backend *be, dp_tensor *y, const dp_tensor *x);
  /* Element-wise, same element counts; y may alias a or b. */
  void (*add) (dp_backend *be, dp_tensor *y, const dp_tensor *a, const dp_tensor *b);
  void (*mul) (dp_backend *be, dp_tensor *y, const dp_tensor *a, const dp_tensor *b);
  /* y = alpha * a + beta * b (samplers, guidance); y may alias a or b. */
  void (*axpby) (dp_backend *be, dp_tensor *y, float alpha, const dp_tensor *a, float beta,
                 const dp_tensor *b);
  /* x += gate * y: x and y [B, L, D], gate F32 [B, D] or NULL (plain residual add). */
  void (*gated_add) (dp_backend *be, dp_tensor *x, const dp_tensor *y, const dp_tensor *gate);
  /* Optional (NULL: callers run linear, then gated_add): the projection
   * that ends a residual branch, in one pass over x,
   *   x += gate * (a w^T + bias):
   * x F32 [M, N] (rows), a [M, K], w [N, K], bias [N] or NULL, gate F32
   * [N] (one gate for every row) or NULL (plain residual add). */
  void (*linear_gated_add) (dp_backend *be, dp_tensor *x, const dp_tensor *a, const dp_tensor *w,
                            const dp_tensor *bias, const dp_tensor *gate);
  /* Patch rearrangement of a latent video for the DiT:
   * x [C, F, H, W] -> tokens [(F/pt)(H/ph)(W/pw), C*pt*ph*pw], token order
   * (f, h, w) row-major, column (c, kt, kh, kw) row-major (= Conv3d weight
   * flattening, so patch embedding is a linear layer on these rows). */
  void (*patchify) (dp_backend *be, dp_tensor *tokens, const dp_tensor *x, int pt, int ph, int pw);
  /* Inverse of the Wan head's layout: tokens [Fp*Hp*Wp, pt*ph*pw*C] with column
   * (kt*ph*pw + kh*pw + kw)*C + c -> x [C, Fp*pt, Hp*ph, Wp*pw]. */
  void (*unpatchify) (dp_backend *be, dp_tensor *x, const dp_tensor *tokens, int pt, int ph,
                      int pw);

  /* Added for the VAE decoder (channel-first [C, T, H, W] activations). ---- */
  /* RMS normalisation over dimension 0: x is viewed as [C, L] (C = x->shape[0],
   * L = nelem / C) and for every column l
   *   y[c, l] = act (x[c, l] / max (||x[:, l]||_2, eps) * sqrt (C) * gamma[c])
   * (diffusers WanRMS_norm: F.normalize over channels, eps 1e-12).  gamma has
   * C elements (any shape) or is NULL (ones); act is DP_ACT_NONE or an
   * activation fused after the norm (the VAE's resnets use SiLU).  y has x's
   * element count and may alias x. */
  void (*channel_rms_norm) (dp_backend *be, dp_tensor *y, const dp_tensor *x,
                            const dp_tensor *gamma, float eps, dp_act act);
  /* Column-block copy between two 2-D views with the same number of rows
   * R = dst->shape[0] = src->shape[0] and row lengths nelem / R:
   *   dst[r, dst_col0 + j] = src[r, src_col0 + j]   for r < R, j < ncols.
   * Same dtype on both sides (no conversion; cudaMemcpy2DAsync does exactly
   * this).  Concatenates and slices along a non-leading dimension, e.g. the
   * time axis of [C, T, H, W] seen as [C, T*H*W].  dst must not overlap src. */
  void (*copy_cols) (dp_backend *be, dp_tensor *dst, int64_t dst_col0, const dp_tensor *src,
                     int64_t src_col0, int64_t ncols);
  /* Optional (NULL: ordinary host memory): page-locked host memory that
   * to_host / to_device copy to and from asynchronously, at full bus speed,
   * for every backend of the device (CUDA: cudaHostAlloc, portable).  NULL
   * when none is left; not a sticky error (callers fall back to malloc:
   * dp_backend_host_alloc). */
  void *(*host_alloc) (dp_backend *be, size_t nbytes);
  void (*host_free) (dp_backend *be, void *ptr);
  /* 2-D transpose: x viewed as [A, B] (A = x->shape[0], B = nelem / A) gives
   * y[b, a] = x[a, b]; y has the same element count (its shape is the
   * caller's, e.g. [B, A]) and dtype, and must not alias x. */
  void (*transpose) (dp_backend *be, dp_tensor *y, const dp_tensor *x);
} dp_backend_ops;

struct dp_backend {
  const dp_backend_ops *ops;
  const char *name;      /* "cpu", "cuda:0" */
  dp_dtype act_dtype;    /* dtype of activations fed to linear / attention */
  dp_dtype weight_dtype; /* dtype weights are stored in on this backend */
  gboolean host_memory;  /* tensors are host-addressable (the CPU backend) */
  GError *error;         /* first error (sticky), NULL while healthy */
  void *priv;            /* backend state */
};

/* "cpu", "cpu:N", "cuda" (device 0) or "cuda:N".  NULL with an error when
 * the spec is unknown, the CUDA module or its libraries cannot be loaded
 * (DP_ERROR_UNSUPPORTED, device.h), or the device is missing.
 * "cpu:N" runs every operation on N threads (1..1024); "cpu" on the CPUs
 * the process may use (OMP_NUM_THREADS when set, else sched_getaffinity's
 * count).  The threads belong to the backend: two CPU backends used from two
 * threads (DualParal's "cpu,cpu" stages) each have their own pool. */
dp_backend *dp_backend_new (const char *spec, GError **error);
void dp_backend_free (dp_backend *be);
/* A CPU backend's thread count; 0 for other backends. */
int dp_backend_threads (const dp_backend *be);

/* OpenBLAS's own thread pool (docs/architecture.md, "The CPU backend").
 * The CPU backend threads with its own pool and runs OpenBLAS
 * single-threaded, but OpenBLAS's pthreads build starts a pool when it is
 * loaded, whose threads spin for about 0.1 s, unless OPENBLAS_NUM_THREADS
 * is set; it reads the variable only then.  dp_openblas_quiet_env () sets
 * OPENBLAS_NUM_THREADS=1 when unset; it only works before OpenBLAS is
 * loaded: from the constructor of a shared object linked with
 * -z initfirst (the GStreamer plugin does this), or in a program through
 * dp_openblas_quiet_reexec ().  Uses libc alone; idempotent. */
void dp_openblas_quiet_env (void);
/* For a program's main (): when OPENBLAS_NUM_THREADS is unset, sets it and
 * executes the program again (/proc/self/exe, same arguments) so that
 * OpenBLAS reads it; returns when it is set, or when the new execution
 * fails (the program then runs with OpenBLAS's default).  Marks the
 * environment (DUALPARAL_OPENBLAS_ENV) so that it never executes twice. */
void dp_openblas_quiet_reexec (char **argv);
/* Whether the CUDA device module (kernels/, libdualparal-cuda.so) loads:
 * this installation has it and its CUDA libraries (not whether a GPU is
 * present).  The first call may open it (device.h). */
gboolean dp_backend_have_cuda (void);

/* Records the first error; later calls keep the first.  For implementations. */
void dp_backend_fail (dp_backend *be, dp_error_code code, const char *fmt, ...) G_GNUC_PRINTF (3, 4);
static inline gboolean dp_backend_failed (const dp_backend *be) { return be->error != NULL; }
/* Copies the sticky error into *error; FALSE when there is one. */
gboolean dp_backend_check (dp_backend *be, GError **error);

/* Index of the first NaN or Inf among the elements of t (F32, in be's
 * memory), -1 when all are finite, -2 with *error when reading t failed.
 * A backend without host memory copies t into host_scratch (the caller's,
 * nelem (t) floats) and syncs; a host backend reads t in place (and does not
 * touch host_scratch, which may then be NULL).  *value (may be NULL) gets the
 * element found. */
int64_t dp_backend_find_nonfinite (dp_backend *be, const dp_tensor *t, float *host_scratch, float *value,
                                   GError **error);
/* "NaN", "Inf" or "-Inf" for a non-finite value. */
const char *dp_nonfinite_name (float value);

/* Owned backend tensor (free with dp_backend_tensor_free). */
/* Host memory for copies from and to be: page-locked when the backend offers
 * it (host_alloc) and has some left, else g_try_malloc; *pinned says which
 * (give it back to dp_backend_host_free).  NULL when neither has nbytes. */
void *dp_backend_host_alloc (dp_backend *be, size_t nbytes, gboolean *pinned);
void dp_backend_host_free (dp_backend *be, void *ptr, gboolean pinned);
dp_tensor dp_backend_tensor_new (dp_backend *be, dp_dtype dtype, int ndim, const int64_t *shape);
void dp_backend_tensor_free (dp_backend *be, dp_tensor *t);

G_END_DECLS

#endif
