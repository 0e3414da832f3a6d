/* CUDA backend: construction, memory, copies, scratch, sync and the
 * operation table.  The maths live in the .cu / cuda_gemm.c files. */
#include "cuda_priv.h"

#include <string.h>

#define DP_CUDA_LT_WORKSPACE (32u << 20)

/* ---- error checks ------------------------------------------------------- */

gboolean
dp_cuda_ok (dp_backend *be, cudaError_t err, const char *what)
{
  if (err == cudaSuccess)
    return TRUE;
  dp_backend_fail (be, err == cudaErrorMemoryAllocation ? DP_ERROR_NOMEM : DP_ERROR_DEVICE,
                   "%s: %s (%s)", what, cudaGetErrorString (err), cudaGetErrorName (err));
  return FALSE;
}

gboolean
dp_cuda_launched (dp_backend *be, const char *what)
{
  return dp_cuda_ok (be, cudaGetLastError (), what);
}

gboolean
dp_cublas_ok (dp_backend *be, cublasStatus_t st, const char *what)
{
  if (st == CUBLAS_STATUS_SUCCESS)
    return TRUE;
  dp_backend_fail (be, st == CUBLAS_STATUS_ALLOC_FAILED ? DP_ERROR_NOMEM : DP_ERROR_DEVICE,
                   "%s: cuBLAS status %d (%s)", what, (int) st, cublasLtGetStatusString (st));
  return FALSE;
}

gboolean
dp_cuda_check (dp_backend *be, const char *op, const dp_tensor *t, const char *what)
{
  if (dp_backend_failed (be))
    return FALSE;
  /* Every op checks a tensor before queueing work: make the backend's device
   * current for the calling thread (cheap when it already is). */
  cudaSetDevice (dp_cuda_of (be)->device);
  if (t == NULL) {
    dp_backend_fail (be, DP_ERROR_INVALID, "%s: %s is NULL", op, what);
    return FALSE;
  }
  if (t->dtype != DP_F32 && t->dtype != DP_BF16 && t->dtype != DP_F16) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "%s: %s has unknown dtype %d", op, what, (int) t->dtype);
    return FALSE;
  }
  if (t->ndim < 0 || t->ndim > DP_MAX_DIMS) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: %s has %d dimensions", op, what, t->ndim);
    return FALSE;
  }
  for (int i = 0; i < t->ndim; i++)
    if (t->shape[i] < 0) {
      dp_backend_fail (be, DP_ERROR_SHAPE, "%s: %s has a negative dimension", op, what);
      return FALSE;
    }
  if (!t->data && dp_tensor_nelem (t) > 0) {
    dp_backend_fail (be, DP_ERROR_INVALID, "%s: %s has no data", op, what);
    return FALSE;
  }
  return TRUE;
}

gboolean
dp_cuda_check_count (dp_backend *be, const char *op, const dp_tensor *a, const dp_tensor *b)
{
  if (dp_tensor_nelem (a) != dp_tensor_nelem (b)) {
    char sa[64], sb[64];
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: element counts differ (%s vs %s)", op,
                     dp_shape_str (a, sa, sizeof sa), dp_shape_str (b, sb, sizeof sb));
    return FALSE;
  }
  return TRUE;
}

unsigned
dp_cuda_grid (dp_backend *be, int64_t n, unsigned threads)
{
  int64_t blocks = (n + threads - 1) / threads;
  int64_t cap = (int64_t) MAX (dp_cuda_of (be)->sm_count, 1) * 16;
  return (unsigned) CLAMP (blocks, 1, cap);
}

/* ---- memory ------------------------------------------------------------- */

static void *
cuda_alloc (dp_backend *be, size_t nbytes)
{
  dp_cuda *c = dp_cuda_of (be);
  if (dp_backend_failed (be))
    return NULL;
  cudaSetDevice (c->device);
  void *p = NULL;
  cudaError_t err = cudaMalloc (&p, MAX (nbytes, 1));
  if (err != cudaSuccess) {
    (void) cudaGetLastError (); /* an allocation failure is not sticky in CUDA */
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo (&free_b, &total_b);
    dp_backend_fail (be, err == cudaErrorMemoryAllocation ? DP_ERROR_NOMEM : DP_ERROR_DEVICE,
                     "cannot allocate %zu bytes of device memory (%zu of %zu free): %s", nbytes,
                     free_b, total_b, cudaGetErrorString (err));
    return NULL;
  }
  g_hash_table_insert (c->allocs, p, GSIZE_TO_POINTER (MAX (nbytes, 1)));
  c->allocated += MAX (nbytes, 1);
  c->peak = MAX (c->peak, c->allocated);
  return p;
}

/* Page-locked host memory (backend.h host_alloc): portable, so the copies of
 * every backend (stream) of this process run from it asynchronously.  A
 * failure is not sticky: the caller falls back to pageable memory. */
static void *
cuda_host_alloc (dp_backend *be, size_t nbytes)
{
  dp_cuda *c = dp_cuda_of (be);
  if (dp_backend_failed (be))
    return NULL;
  cudaSetDevice (c->device);
  void *p = NULL;
  cudaError_t err = cudaHostAlloc (&p, MAX (nbytes, 1), cudaHostAllocPortable);
  if (err != cudaSuccess) {
    (void) cudaGetLastError ();
    g_debug ("cudaHostAlloc (%zu bytes): %s; using pageable memory", nbytes, cudaGetErrorString (err));
    return NULL;
  }
  return p;
}

static void
cuda_host_free (dp_backend *be, void *ptr)
{
  if (!ptr)
    return;
  /* The callers free it after the copies that use it have completed (sync). */
  dp_cuda_ok (be, cudaFreeHost (ptr), "cudaFreeHost");
}

static void
cuda_free (dp_backend *be, void *ptr)
{
  dp_cuda *c = dp_cuda_of (be);
  if (!ptr)
    return;
  gpointer size;
  cudaSetDevice (c->device);
  if (g_hash_table_steal_extended (c->allocs, ptr, NULL, &size))
    c->allocated -= GPOINTER_TO_SIZE (size);
  /* cudaFree waits for queued work that may still use ptr. */
  cudaError_t err = cudaFree (ptr);
  if (err != cudaSuccess)
    dp_cuda_ok (be, err, "cudaFree");
}

void *
dp_cuda_scratch (dp_backend *be, size_t nbytes)
{
  dp_cuda *c = dp_cuda_of (be);
  if (dp_backend_failed (be))
    return NULL;
  nbytes = MAX (nbytes, 256);
  if (nbytes <= c->scratch_size)
    return c->scratch;
  if (c->scratch) {
    /* Queued kernels may still read the old buffer: cudaFree synchronizes. */
    if (!dp_cuda_ok (be, cudaFree (c->scratch), "cudaFree (scratch)"))
      return NULL;
    c->scratch = NULL;
    c->scratch_size = 0;
  }
  size_t want = nbytes + nbytes / 4; /* some headroom against many small growths */
  cudaError_t err = cudaMalloc (&c->scratch, want);
  if (err != cudaSuccess) {
    (void) cudaGetLastError ();
    c->scratch = NULL;
    dp_backend_fail (be, DP_ERROR_NOMEM, "cannot allocate %zu bytes of device scratch memory: %s",
                     want, cudaGetErrorString (err));
    return NULL;
  }
  c->scratch_size = want;
  return c->scratch;
}

/* ---- copies ------------------------------------------------------------- */

static void
cuda_to_device (dp_backend *be, dp_tensor *dst, const dp_tensor *src)
{
  dp_cuda *c = dp_cuda_of (be);
  if (!dp_cuda_check (be, "to_device", dst, "dst") || !dp_cuda_check (be, "to_device", src, "src")
      || !dp_cuda_check_count (be, "to_device", dst, src))
    return;
  int64_t n = dp_tensor_nelem (src);
  if (n == 0)
    return;
  size_t nbytes = dp_tensor_nbytes (dst);
  if (src->dtype == dst->dtype) {
    /* From pageable memory the copy is staged before this returns, so the
     * caller may reuse src at once. */
    dp_cuda_ok (be, cudaMemcpyAsync (dst->data, src->data, nbytes, cudaMemcpyHostToDevice, c->stream),
                "to_device: cudaMemcpyAsync");
    return;
  }
  /* Convert on the host (round to nearest even, like dp_convert everywhere),
   * then upload; the temporary can go as soon as the copy is staged. */
  void *tmp = g_try_malloc (nbytes);
  if (!tmp) {
    dp_backend_fail (be, DP_ERROR_NOMEM, "to_device: cannot allocate %zu bytes of host memory", nbytes);
    return;
  }
  dp_convert (tmp, dst->dtype, src->data, src->dtype, n);
  dp_cuda_ok (be, cudaMemcpyAsync (dst->data, tmp, nbytes, cudaMemcpyHostToDevice, c->stream),
              "to_device: cudaMemcpyAsync");
  /* Staging of pageable memory is complete on return; the stream sync makes
   * that independent of the driver's staging policy for converted uploads. */
  dp_cuda_ok (be, cudaStreamSynchronize (c->stream), "to_device: cudaStreamSynchronize");
  g_free (tmp);
}

static void
cuda_to_host (dp_backend *be, dp_tensor *dst, const dp_tensor *src)
{
  dp_cuda *c = dp_cuda_of (be);
  if (!dp_cuda_check (be, "to_host", dst, "dst") || !dp_cuda_check (be, "to_host", src, "src")
      || !dp_cuda_check_count (be, "to_host", dst, src))
    return;
  int64_t n = dp_tensor_nelem (src);
  if (n == 0)
    return;
  size_t nbytes = dp_tensor_nbytes (src);
  if (src->dtype == dst->dtype) {
    dp_cuda_ok (be, cudaMemcpyAsync (dst->data, src->data, nbytes, cudaMemcpyDeviceToHost, c->stream),
                "to_host: cudaMemcpyAsync");
    return;
  }
  void *tmp = g_try_malloc (nbytes);
  if (!tmp) {
    dp_backend_fail (be, DP_ERROR_NOMEM, "to_host: cannot allocate %zu bytes of host memory", nbytes);
    return;
  }
  if (dp_cuda_ok (be, cudaMemcpyAsync (tmp, src->data, nbytes, cudaMemcpyDeviceToHost, c->stream),
                  "to_host: cudaMemcpyAsync")
      && dp_cuda_ok (be, cudaStreamSynchronize (c->stream), "to_host: cudaStreamSynchronize"))
    dp_convert (dst->data, dst->dtype, tmp, src->dtype, n);
  g_free (tmp);
}

static void
cuda_copy (dp_backend *be, dp_tensor *dst, const dp_tensor *src)
{
  dp_cuda *c = dp_cuda_of (be);
  if (!dp_cuda_check (be, "copy", dst, "dst") || !dp_cuda_check (be, "copy", src, "src")
      || !dp_cuda_check_count (be, "copy", dst, src))
    return;
  int64_t n = dp_tensor_nelem (src);
  if (n == 0 || dst->data == src->data)
    return;
  if (src->dtype == dst->dtype)
    dp_cuda_ok (be, cudaMemcpyAsync (dst->data, src->data, dp_tensor_nbytes (src),
                                     cudaMemcpyDeviceToDevice, c->stream),
                "copy: cudaMemcpyAsync");
  else
    dp_cuda_convert (be, dst->data, dst->dtype, src->data, src->dtype, n);
}

static gboolean
cuda_sync (dp_backend *be, GError **error)
{
  dp_cuda *c = dp_cuda_of (be);
  if (!dp_backend_failed (be)) {
    cudaSetDevice (c->device);
    dp_cuda_ok (be, cudaStreamSynchronize (c->stream), "cudaStreamSynchronize");
    if (!dp_backend_failed (be))
      dp_cuda_ok (be, cudaGetLastError (), "pending CUDA error");
  }
  return dp_backend_check (be, error);
}

static void
cuda_destroy (dp_backend *be)
{
  dp_cuda *c = dp_cuda_of (be);
  if (c) {
    cudaSetDevice (c->device);
    dp_cuda_cudnn_release (c);
    if (c->stream)
      cudaStreamSynchronize (c->stream);
    dp_cuda_rope_cache_free (be);
    dp_cuda_gemm_plans_free (be);
    if (c->allocs) {
      /* Memory the user forgot: release it with the backend. */
      GHashTableIter it;
      gpointer ptr;
      g_hash_table_iter_init (&it, c->allocs);
      while (g_hash_table_iter_next (&it, &ptr, NULL))
        cudaFree (ptr);
      g_hash_table_destroy (c->allocs);
    }
    if (c->scratch)
      cudaFree (c->scratch);
    if (c->lt_workspace)
      cudaFree (c->lt_workspace);
    if (c->lt)
      cublasLtDestroy (c->lt);
    if (c->timer_start)
      cudaEventDestroy (c->timer_start);
    if (c->timer_stop)
      cudaEventDestroy (c->timer_stop);
    if (c->stream)
      cudaStreamDestroy (c->stream);
    (void) cudaGetLastError ();
    g_free (c);
  }
  g_clear_error (&be->error);
  g_free (be);
}

static const dp_backend_ops cuda_ops = {
  .alloc = cuda_alloc,
  .free = cuda_free,
  .host_alloc = cuda_host_alloc,
  .host_free = cuda_host_free,
  .to_device = cuda_to_device,
  .to_host = cuda_to_host,
  .copy = cuda_copy,
  .fill = dp_cuda_fill,
  .sync = cuda_sync,
  .destroy = cuda_destroy,
  .linear = dp_cuda_linear,
  .layer_norm = dp_cuda_layer_norm,
  .layer_norm_modulate = dp_cuda_layer_norm_modulate,
  .rms_norm = dp_cuda_rms_norm,
  .rope_3d = dp_cuda_rope_3d,
  .rms_norm_rope_3d = dp_cuda_rms_norm_rope_3d,
  .gelu_tanh = dp_cuda_gelu_tanh,
  .silu = dp_cuda_silu,
  .attention = dp_cuda_attention,
  .conv3d = dp_cuda_conv3d,
  .upsample_nearest2x = dp_cuda_upsample_nearest2x,
  .add = dp_cuda_add,
  .mul = dp_cuda_mul,
  .axpby = dp_cuda_axpby,
  .gated_add = dp_cuda_gated_add,
  .linear_gated_add = dp_cuda_linear_gated_add,
  .patchify = dp_cuda_patchify,
  .unpatchify = dp_cuda_unpatchify,
  .channel_rms_norm = dp_cuda_channel_rms_norm,
  .copy_cols = dp_cuda_copy_cols,
  .transpose = dp_cuda_transpose,
};

int
dp_cuda_device_count (void)
{
  int n = 0;
  if (cudaGetDeviceCount (&n) != cudaSuccess) {
    (void) cudaGetLastError ();
    return 0;
  }
  return n;
}

static gboolean
init_fail (GError **error, const char *what, cudaError_t err)
{
  g_set_error (error, DP_ERROR, DP_ERROR_DEVICE, "cuda: %s: %s (%s)", what, cudaGetErrorString (err),
               cudaGetErrorName (err));
  (void) cudaGetLastError ();
  return FALSE;
}

dp_backend *
dp_cuda_backend_new (int device, GError **error)
{
  int count = 0;
  cudaError_t err = cudaGetDeviceCount (&count);
  if (err != cudaSuccess) {
    init_fail (error, "no usable CUDA driver or GPU (cudaGetDeviceCount)", err);
    return NULL;
  }
  if (device < 0 || device >= count) {
    g_set_error (error, DP_ERROR, DP_ERROR_DEVICE, "cuda: device %d does not exist (%d CUDA device%s)",
                 device, count, count == 1 ? "" : "s");
    return NULL;
  }
  if ((err = cudaSetDevice (device)) != cudaSuccess) {
    init_fail (error, "cudaSetDevice", err);
    return NULL;
  }
  struct cudaDeviceProp prop;
  if ((err = cudaGetDeviceProperties (&prop, device)) != cudaSuccess) {
    init_fail (error, "cudaGetDeviceProperties", err);
    return NULL;
  }
  if (prop.major < 8) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                 "cuda: device %d (%s) has compute capability %d.%d; BF16 tensor cores need 8.0 or newer",
                 device, prop.name, prop.major, prop.minor);
    return NULL;
  }

  dp_backend *be = g_new0 (dp_backend, 1);
  dp_cuda *c = g_new0 (dp_cuda, 1);
  be->priv = c;
  be->ops = &cuda_ops;
  g_snprintf (c->name, sizeof c->name, "cuda:%d", device);
  be->name = c->name;
  be->act_dtype = DP_BF16;
  be->weight_dtype = DP_BF16;
  be->host_memory = FALSE;
  c->device = device;
  c->sm_count = prop.multiProcessorCount;
  c->cc_major = prop.major;
  c->cc_minor = prop.minor;
  c->smem_optin = prop.sharedMemPerBlockOptin;
  c->total_mem = prop.totalGlobalMem;
  g_strlcpy (c->device_name, prop.name, sizeof c->device_name);
  c->allocs = g_hash_table_new (g_direct_hash, g_direct_equal);
  c->attention_last = -1;

  cublasStatus_t st;
  if ((err = cudaStreamCreateWithFlags (&c->stream, cudaStreamNonBlocking)) != cudaSuccess)
    init_fail (error, "cudaStreamCreate", err);
  else if ((err = cudaEventCreate (&c->timer_start)) != cudaSuccess
           || (err = cudaEventCreate (&c->timer_stop)) != cudaSuccess)
    init_fail (error, "cudaEventCreate", err);
  else if ((err = cudaMalloc (&c->lt_workspace, DP_CUDA_LT_WORKSPACE)) != cudaSuccess)
    init_fail (error, "cudaMalloc (cuBLASLt workspace)", err);
  else if ((st = cublasLtCreate (&c->lt)) != CUBLAS_STATUS_SUCCESS)
    g_set_error (error, DP_ERROR, DP_ERROR_DEVICE, "cuda: cublasLtCreate: %s", cublasLtGetStatusString (st));
  else {
    c->lt_workspace_size = DP_CUDA_LT_WORKSPACE;
    c->attention_variant = dp_cuda_backend_default_attention_variant (be);
    const char *conv = g_getenv ("DP_CUDA_CONV");
    if (conv && g_strcmp0 (conv, "cudnn") == 0) {
      char *why = NULL;
      if (!dp_cuda_backend_set_conv (be, DP_CUDA_CONV_CUDNN, &why)) {
        g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "cuda: DP_CUDA_CONV=cudnn: %s", why);
        g_free (why);
        cuda_destroy (be);
        return NULL;
      }
    } else if (conv && g_strcmp0 (conv, "im2col") != 0 && conv[0]) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "cuda: DP_CUDA_CONV=%s: use cudnn or im2col", conv);
      cuda_destroy (be);
      return NULL;
    }
    return be;
  }
  cuda_destroy (be);
  return NULL;
}

size_t
dp_cuda_backend_allocated_bytes (dp_backend *be)
{
  return dp_cuda_of (be)->allocated;
}

size_t
dp_cuda_backend_peak_bytes (dp_backend *be)
{
  return dp_cuda_of (be)->peak;
}

void
dp_cuda_backend_reset_peak (dp_backend *be)
{
  dp_cuda *c = dp_cuda_of (be);
  c->peak = c->allocated;
}

char *
dp_cuda_backend_describe (dp_backend *be)
{
  dp_cuda *c = dp_cuda_of (be);
  int driver = 0, runtime = 0;
  cudaDriverGetVersion (&driver);
  cudaRuntimeGetVersion (&runtime);
  return g_strdup_printf ("%s (%s), %d SMs, cc %d.%d, %.1f GiB, driver %d, runtime %d, cuBLASLt %zu",
                          c->device_name, c->name, c->sm_count, c->cc_major, c->cc_minor,
                          c->total_mem / 1073741824.0, driver, runtime, cublasLtGetVersion ());
}

void
dp_cuda_timer_start (dp_backend *be)
{
  dp_cuda *c = dp_cuda_of (be);
  if (!dp_backend_failed (be))
    dp_cuda_ok (be, cudaEventRecord (c->timer_start, c->stream), "cudaEventRecord");
}

double
dp_cuda_timer_stop (dp_backend *be)
{
  dp_cuda *c = dp_cuda_of (be);
  float ms = -1.0f;
  if (dp_backend_failed (be))
    return -1.0;
  if (dp_cuda_ok (be, cudaEventRecord (c->timer_stop, c->stream), "cudaEventRecord")
      && dp_cuda_ok (be, cudaEventSynchronize (c->timer_stop), "cudaEventSynchronize")
      && dp_cuda_ok (be, cudaEventElapsedTime (&ms, c->timer_start, c->timer_stop), "cudaEventElapsedTime"))
    return ms;
  return -1.0;
}

/* Whether a backend on a Hopper GPU starts with the wgmma attention kernel.
 * TRUE since it passed tests/test_gpu_ops (/gpu/attention_wgmma, rel L2
 * 1.4-2.3e-3 against the CPU) on an H200, where it ran at 611-684 TFLOP/s
 * against 302-310 for the mma.sync kernel (docs/performance.md).
 * DP_CUDA_ATTENTION=mma (or =wgmma) in the environment overrides the
 * default; tests and benchmarks select a kernel with
 * dp_cuda_backend_set_attention_variant (). */
#define DP_CUDA_WGMMA_BY_DEFAULT TRUE

dp_cuda_attention_variant
dp_cuda_backend_default_attention_variant (dp_backend *be)
{
  const char *env = g_getenv ("DP_CUDA_ATTENTION");
  gboolean want = env ? g_strcmp0 (env, "wgmma") == 0 : DP_CUDA_WGMMA_BY_DEFAULT;
  return want && dp_cuda_attention_wgmma_available (be) ? DP_CUDA_ATTN_WGMMA : DP_CUDA_ATTN_DEFAULT;
}

gboolean
dp_cuda_backend_has_wgmma_attention (dp_backend *be)
{
  return dp_cuda_attention_wgmma_available (be);
}

int
dp_cuda_backend_last_attention_variant (dp_backend *be)
{
  return dp_cuda_of (be)->attention_last;
}

void
dp_cuda_backend_set_attention_variant (dp_backend *be, dp_cuda_attention_variant variant)
{
  dp_cuda_of (be)->attention_variant = variant >= DP_CUDA_ATTN_W4_R16 && variant <= DP_CUDA_ATTN_WGMMA
                                         ? variant
                                         : dp_cuda_backend_default_attention_variant (be);
}

gboolean
dp_cuda_backend_is_cuda (const dp_backend *be)
{
  return be != NULL && be->ops == &cuda_ops;
}

int
dp_cuda_backend_device (dp_backend *be)
{
  return dp_cuda_of (be)->device;
}

void *
dp_cuda_backend_stream (dp_backend *be)
{
  return (void *) dp_cuda_of (be)->stream;
}

gboolean
dp_cuda_backend_set_conv (dp_backend *be, dp_cuda_conv_impl impl, char **why)
{
  if (impl == DP_CUDA_CONV_CUDNN && !dp_cuda_cudnn_available (why))
    return FALSE;
  dp_cuda_of (be)->conv_impl = impl == DP_CUDA_CONV_CUDNN ? DP_CUDA_CONV_CUDNN : DP_CUDA_CONV_IM2COL;
  return TRUE;
}

gboolean
dp_cuda_backend_last_conv_was_cudnn (dp_backend *be)
{
  return dp_cuda_of (be)->conv_last_cudnn;
}
