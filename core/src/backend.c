/* Backend selection, sticky errors and owned backend tensors. */
#include "dualparal/backend.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/backend_cpu.h"
#include "dualparal/device.h"

G_DEFINE_QUARK (dp-error-quark, dp_error)

gboolean
dp_backend_have_cuda (void)
{
  return dp_device_provider_get ("cuda", NULL) != NULL;
}

dp_backend *
dp_backend_new (const char *spec, GError **error)
{
  if (spec == NULL || g_strcmp0 (spec, "cpu") == 0)
    return dp_cpu_backend_new (0, error);
  if (g_str_has_prefix (spec, "cpu:")) {
    guint64 v = 0;
    if (!g_ascii_string_to_unsigned (spec + 4, 10, 1, DP_CPU_MAX_THREADS, &v, NULL)) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "bad device \"%s\": expected cpu or cpu:N with N "
                   "threads, 1 to %d", spec, DP_CPU_MAX_THREADS);
      return NULL;
    }
    return dp_cpu_backend_new ((int) v, error);
  }
  if (g_str_has_prefix (spec, "cuda")) {
    int device = 0;
    const char *rest = spec + 4;
    if (*rest == ':') {
      char *end = NULL;
      long v = strtol (rest + 1, &end, 10);
      if (end == rest + 1 || *end != '\0' || v < 0 || v > 1024) {
        g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "bad device \"%s\": expected cuda:N", spec);
        return NULL;
      }
      device = (int) v;
    } else if (*rest != '\0') {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "unknown backend \"%s\" (expected cpu or cuda:N)", spec);
      return NULL;
    }
    /* The CUDA backend is a module (kernels/), opened on this first
     * request: a CPU-only process never loads the CUDA libraries. */
    const dp_device_provider *p = dp_device_provider_get ("cuda", error);
    if (p == NULL) {
      g_prefix_error (error, "backend \"%s\": ", spec);
      return NULL;
    }
    return p->backend_new (device, error);
  }
  g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "unknown backend \"%s\" (expected cpu, cpu:N or cuda:N)", spec);
  return NULL;
}

void
dp_backend_free (dp_backend *be)
{
  if (be)
    be->ops->destroy (be);
}

void *
dp_backend_host_alloc (dp_backend *be, size_t nbytes, gboolean *pinned)
{
  void *p = be->ops->host_alloc ? be->ops->host_alloc (be, MAX (nbytes, 1)) : NULL;
  *pinned = p != NULL;
  return p ? p : g_try_malloc (MAX (nbytes, 1));
}

void
dp_backend_host_free (dp_backend *be, void *ptr, gboolean pinned)
{
  if (!ptr)
    return;
  if (pinned)
    be->ops->host_free (be, ptr);
  else
    g_free (ptr);
}

void
dp_backend_fail (dp_backend *be, dp_error_code code, const char *fmt, ...)
{
  if (be->error)
    return;
  va_list ap;
  va_start (ap, fmt);
  char *msg = g_strdup_vprintf (fmt, ap);
  va_end (ap);
  be->error = g_error_new (DP_ERROR, code, "%s: %s", be->name, msg);
  g_free (msg);
}

gboolean
dp_backend_check (dp_backend *be, GError **error)
{
  if (!be->error)
    return TRUE;
  if (error)
    *error = g_error_copy (be->error);
  return FALSE;
}

int64_t
dp_backend_find_nonfinite (dp_backend *be, const dp_tensor *t, float *host_scratch, float *value, GError **error)
{
  g_return_val_if_fail (t->dtype == DP_F32, -2);
  const int64_t n = dp_tensor_nelem (t);
  const float *x = t->data;
  if (!be->host_memory) {
    dp_tensor host = dp_tensor_view (host_scratch, DP_F32, t->ndim, t->shape);
    be->ops->to_host (be, &host, t);
    if (!be->ops->sync (be, error))
      return -2;
    x = host_scratch;
  } else if (!dp_backend_check (be, error)) {
    return -2;
  }
  /* isfinite() per element stops at the first bad one; the whole pass is a
   * few microseconds per MiB, next to a transformer step it is nothing. */
  for (int64_t i = 0; i < n; i++)
    if (!isfinite (x[i])) {
      if (value)
        *value = x[i];
      return i;
    }
  return -1;
}

const char *
dp_nonfinite_name (float value)
{
  return isnan (value) ? "NaN" : value > 0 ? "Inf" : "-Inf";
}

dp_tensor
dp_backend_tensor_new (dp_backend *be, dp_dtype dtype, int ndim, const int64_t *shape)
{
  dp_tensor t = dp_tensor_view (NULL, dtype, ndim, shape);
  t.data = be->ops->alloc (be, MAX (dp_tensor_nbytes (&t), 1));
  t.owned = FALSE; /* backend memory: released by dp_backend_tensor_free */
  return t;
}

void
dp_backend_tensor_free (dp_backend *be, dp_tensor *t)
{
  if (t->data)
    be->ops->free (be, t->data);
  memset (t, 0, sizeof *t);
}
