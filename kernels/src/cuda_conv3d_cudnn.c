/* conv3d through cuDNN (issue 22), chosen with DP_CUDA_CONV=cudnn; the
 * im2col + cuBLASLt path of cuda_conv3d.cu stays the default and the
 * fallback.
 *
 * libcudnn is opened at run time (g_module_open of libcudnn.so.9, whose
 * shim exports the whole API and loads its sub-libraries itself), never
 * linked: the module and the programs start on machines without cuDNN, and
 * the GPU machine's copy (the one torch ships in its nvidia packages) is
 * found through LD_LIBRARY_PATH.  Only the header is needed to build
 * (meson: DP_HAVE_CUDNN_H).
 *
 * What it runs: x, w, y all F32 (the VAE's activations and weights), N = 1,
 * NCDHW, cross-correlation, symmetric paddings (the VAE's causal convs pass
 * pad_t 0 after concatenating their cache), CUDNN_DEFAULT_MATH (TF32 tensor
 * cores on Ampere and newer), the first algorithm of cuDNN's heuristic list
 * whose workspace cuDNN accepts, in the backend's scratch; then the bias
 * with dp_cuda_add_row_bias.  Anything else returns FALSE before queueing
 * work, and the caller runs im2col.  Every cuDNN status is checked: a
 * failure is a sticky DP_ERROR_DEVICE naming the call. */
#include "cuda_priv.h"

#include <gmodule.h>
#include <stdlib.h>
#include <string.h>

#ifdef DP_HAVE_CUDNN_H
#include <cudnn.h>

typedef struct {
  GModule *lib;
  const char *(*GetErrorString) (cudnnStatus_t);
  cudnnStatus_t (*Create) (cudnnHandle_t *);
  cudnnStatus_t (*Destroy) (cudnnHandle_t);
  cudnnStatus_t (*SetStream) (cudnnHandle_t, cudaStream_t);
  cudnnStatus_t (*CreateTensorDescriptor) (cudnnTensorDescriptor_t *);
  cudnnStatus_t (*DestroyTensorDescriptor) (cudnnTensorDescriptor_t);
  cudnnStatus_t (*SetTensorNdDescriptor) (cudnnTensorDescriptor_t, cudnnDataType_t, int, const int *, const int *);
  cudnnStatus_t (*CreateFilterDescriptor) (cudnnFilterDescriptor_t *);
  cudnnStatus_t (*DestroyFilterDescriptor) (cudnnFilterDescriptor_t);
  cudnnStatus_t (*SetFilterNdDescriptor) (cudnnFilterDescriptor_t, cudnnDataType_t, cudnnTensorFormat_t, int,
                                          const int *);
  cudnnStatus_t (*CreateConvolutionDescriptor) (cudnnConvolutionDescriptor_t *);
  cudnnStatus_t (*DestroyConvolutionDescriptor) (cudnnConvolutionDescriptor_t);
  cudnnStatus_t (*SetConvolutionNdDescriptor) (cudnnConvolutionDescriptor_t, int, const int *, const int *,
                                               const int *, cudnnConvolutionMode_t, cudnnDataType_t);
  cudnnStatus_t (*SetConvolutionMathType) (cudnnConvolutionDescriptor_t, cudnnMathType_t);
  cudnnStatus_t (*GetConvolutionForwardAlgorithm_v7) (cudnnHandle_t, cudnnTensorDescriptor_t,
                                                      cudnnFilterDescriptor_t, cudnnConvolutionDescriptor_t,
                                                      cudnnTensorDescriptor_t, int, int *,
                                                      cudnnConvolutionFwdAlgoPerf_t *);
  cudnnStatus_t (*GetConvolutionForwardWorkspaceSize) (cudnnHandle_t, cudnnTensorDescriptor_t,
                                                       cudnnFilterDescriptor_t, cudnnConvolutionDescriptor_t,
                                                       cudnnTensorDescriptor_t, cudnnConvolutionFwdAlgo_t,
                                                       size_t *);
  cudnnStatus_t (*ConvolutionForward) (cudnnHandle_t, const void *, cudnnTensorDescriptor_t, const void *,
                                       cudnnFilterDescriptor_t, const void *, cudnnConvolutionDescriptor_t,
                                       cudnnConvolutionFwdAlgo_t, void *, size_t, const void *,
                                       cudnnTensorDescriptor_t, void *);
} cudnn_api;

static cudnn_api api;
static char *api_error; /* why cuDNN could not be opened; NULL once it is */
static GOnce api_once = G_ONCE_INIT;

static gpointer
api_open (gpointer data)
{
  (void) data;
  const char *names[] = { "libcudnn.so.9", "libcudnn.so" };
  for (guint i = 0; i < G_N_ELEMENTS (names) && !api.lib; i++)
    api.lib = g_module_open (names[i], G_MODULE_BIND_LAZY | G_MODULE_BIND_LOCAL);
  if (!api.lib) {
    api_error = g_strdup_printf ("cannot open libcudnn.so.9 (set LD_LIBRARY_PATH to its folder): %s",
                                 g_module_error ());
    return NULL;
  }
  const struct {
    const char *name;
    gpointer *fn;
  } syms[] = {
#define SYM(x) { "cudnn" #x, (gpointer *) &api.x }
    SYM (GetErrorString), SYM (Create), SYM (Destroy), SYM (SetStream), SYM (CreateTensorDescriptor),
    SYM (DestroyTensorDescriptor), SYM (SetTensorNdDescriptor), SYM (CreateFilterDescriptor),
    SYM (DestroyFilterDescriptor), SYM (SetFilterNdDescriptor), SYM (CreateConvolutionDescriptor),
    SYM (DestroyConvolutionDescriptor), SYM (SetConvolutionNdDescriptor), SYM (SetConvolutionMathType),
    SYM (GetConvolutionForwardAlgorithm_v7), SYM (GetConvolutionForwardWorkspaceSize), SYM (ConvolutionForward),
#undef SYM
  };
  for (guint i = 0; i < G_N_ELEMENTS (syms); i++)
    if (!g_module_symbol (api.lib, syms[i].name, syms[i].fn) || !*syms[i].fn) {
      api_error = g_strdup_printf ("libcudnn has no %s: %s", syms[i].name, g_module_error ());
      g_module_close (api.lib);
      api.lib = NULL;
      return NULL;
    }
  return NULL;
}

static gboolean
cudnn_ok (dp_backend *be, cudnnStatus_t st, const char *what)
{
  if (st == CUDNN_STATUS_SUCCESS)
    return TRUE;
  dp_backend_fail (be, DP_ERROR_DEVICE, "conv3d (cuDNN): %s: %s", what, api.GetErrorString (st));
  return FALSE;
}

gboolean
dp_cuda_cudnn_available (char **why)
{
  g_once (&api_once, api_open, NULL);
  if (!api.lib && why)
    *why = g_strdup (api_error ? api_error : "cuDNN not opened");
  return api.lib != NULL;
}

void
dp_cuda_cudnn_release (dp_cuda *c)
{
  if (c->cudnn) {
    api.Destroy ((cudnnHandle_t) c->cudnn);
    c->cudnn = NULL;
  }
}

gboolean
dp_cuda_conv3d_cudnn (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                      const dp_tensor *bias, const dp_conv3d_params *p)
{
  if (x->dtype != DP_F32 || w->dtype != DP_F32 || y->dtype != DP_F32 || p->pad_t_front != p->pad_t_back)
    return FALSE;
  if (x->shape[0] > G_MAXINT || x->shape[1] > G_MAXINT || x->shape[2] > G_MAXINT || x->shape[3] > G_MAXINT
      || dp_tensor_nelem (x) > G_MAXINT || dp_tensor_nelem (y) > G_MAXINT)
    return FALSE; /* cuDNN's int descriptors */
  if (!dp_cuda_cudnn_available (NULL))
    return FALSE;
  dp_cuda *c = dp_cuda_of (be);
  if (!c->cudnn) {
    cudnnHandle_t h = NULL;
    /* cudnnCreate binds the handle to the current device. */
    if (!dp_cuda_ok (be, cudaSetDevice (c->device), "conv3d (cuDNN): cudaSetDevice"))
      return TRUE;
    if (!cudnn_ok (be, api.Create (&h), "cudnnCreate"))
      return TRUE; /* the sticky error stands: the op has failed */
    c->cudnn = h;
  }
  cudnnHandle_t h = (cudnnHandle_t) c->cudnn;
  if (!cudnn_ok (be, api.SetStream (h, c->stream), "cudnnSetStream"))
    return TRUE;

  cudnnTensorDescriptor_t xd = NULL, yd = NULL;
  cudnnFilterDescriptor_t wd = NULL;
  cudnnConvolutionDescriptor_t cd = NULL;
  const int xdim[5] = { 1, (int) x->shape[0], (int) x->shape[1], (int) x->shape[2], (int) x->shape[3] };
  const int ydim[5] = { 1, (int) y->shape[0], (int) y->shape[1], (int) y->shape[2], (int) y->shape[3] };
  const int wdim[5] = { (int) w->shape[0], (int) w->shape[1], (int) w->shape[2], (int) w->shape[3],
                        (int) w->shape[4] };
  int xstr[5], ystr[5];
  xstr[4] = ystr[4] = 1;
  for (int i = 3; i >= 0; i--) {
    xstr[i] = xstr[i + 1] * xdim[i + 1];
    ystr[i] = ystr[i + 1] * ydim[i + 1];
  }
  const int pad[3] = { p->pad_t_front, p->pad_h, p->pad_w }, stride[3] = { p->stride_t, p->stride_h, p->stride_w };
  const int dil[3] = { 1, 1, 1 };
  gboolean ok = cudnn_ok (be, api.CreateTensorDescriptor (&xd), "cudnnCreateTensorDescriptor")
                && cudnn_ok (be, api.CreateTensorDescriptor (&yd), "cudnnCreateTensorDescriptor")
                && cudnn_ok (be, api.CreateFilterDescriptor (&wd), "cudnnCreateFilterDescriptor")
                && cudnn_ok (be, api.CreateConvolutionDescriptor (&cd), "cudnnCreateConvolutionDescriptor")
                && cudnn_ok (be, api.SetTensorNdDescriptor (xd, CUDNN_DATA_FLOAT, 5, xdim, xstr), "x descriptor")
                && cudnn_ok (be, api.SetTensorNdDescriptor (yd, CUDNN_DATA_FLOAT, 5, ydim, ystr), "y descriptor")
                && cudnn_ok (be, api.SetFilterNdDescriptor (wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, 5, wdim),
                             "w descriptor")
                && cudnn_ok (be, api.SetConvolutionNdDescriptor (cd, 3, pad, stride, dil, CUDNN_CROSS_CORRELATION,
                                                                 CUDNN_DATA_FLOAT), "convolution descriptor")
                && cudnn_ok (be, api.SetConvolutionMathType (cd, CUDNN_DEFAULT_MATH), "cudnnSetConvolutionMathType");
  cudnnConvolutionFwdAlgoPerf_t perf[8];
  int n_algos = 0;
  ok = ok && cudnn_ok (be, api.GetConvolutionForwardAlgorithm_v7 (h, xd, wd, cd, yd, 8, &n_algos, perf),
                       "cudnnGetConvolutionForwardAlgorithm_v7");
  /* The heuristics' order; the first one cuDNN can run with a workspace. */
  int pick = -1;
  size_t ws = 0;
  for (int i = 0; ok && i < n_algos && pick < 0; i++) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS)
      continue;
    if (api.GetConvolutionForwardWorkspaceSize (h, xd, wd, cd, yd, perf[i].algo, &ws) == CUDNN_STATUS_SUCCESS)
      pick = i;
  }
  if (ok && pick < 0) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "conv3d (cuDNN): no forward algorithm for x [%d, %d, %d, %d], "
                     "w [%d, %d, %d, %d, %d]", xdim[1], xdim[2], xdim[3], xdim[4], wdim[0], wdim[1], wdim[2],
                     wdim[3], wdim[4]);
    ok = FALSE;
  }
  void *work = NULL;
  if (ok && ws > 0 && !(work = dp_cuda_scratch (be, ws)))
    ok = FALSE;
  const float one = 1.0f, zero = 0.0f;
  ok = ok && cudnn_ok (be, api.ConvolutionForward (h, &one, xd, x->data, wd, w->data, cd, perf[pick].algo, work, ws,
                                                   &zero, yd, y->data), "cudnnConvolutionForward");
  if (cd)
    api.DestroyConvolutionDescriptor (cd);
  if (wd)
    api.DestroyFilterDescriptor (wd);
  if (yd)
    api.DestroyTensorDescriptor (yd);
  if (xd)
    api.DestroyTensorDescriptor (xd);
  if (ok && bias)
    dp_cuda_add_row_bias (be, y->data, y->dtype, bias->data, bias->dtype, y->shape[0], dp_tensor_nelem (y) / y->shape[0]);
  return TRUE;
}

#else /* no cudnn.h at build time */

gboolean
dp_cuda_cudnn_available (char **why)
{
  if (why)
    *why = g_strdup ("built without cudnn.h (meson found no cuDNN headers)");
  return FALSE;
}

void
dp_cuda_cudnn_release (dp_cuda *c)
{
  (void) c;
}

gboolean
dp_cuda_conv3d_cudnn (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                      const dp_tensor *bias, const dp_conv3d_params *p)
{
  (void) be, (void) y, (void) x, (void) w, (void) bias, (void) p;
  return FALSE;
}

#endif
