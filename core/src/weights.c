/* Weights of one component, uploaded (or borrowed) on demand. */
#include "dualparal/weights.h"

#include <string.h>

struct dp_weights {
  dp_backend *be;
  dp_safetensors *st;
  GPtrArray *allocations; /* backend pointers to free */
  size_t bytes;
};

dp_weights *
dp_weights_new (dp_backend *be, dp_safetensors *st)
{
  dp_weights *w = g_new0 (dp_weights, 1);
  w->be = be;
  w->st = st;
  w->allocations = g_ptr_array_new ();
  return w;
}

void
dp_weights_free (dp_weights *w)
{
  if (!w)
    return;
  for (guint i = 0; i < w->allocations->len; i++)
    w->be->ops->free (w->be, g_ptr_array_index (w->allocations, i));
  g_ptr_array_unref (w->allocations);
  dp_safetensors_close (w->st);
  g_free (w);
}

const dp_safetensors *
dp_weights_file (const dp_weights *w)
{
  return w->st;
}

size_t
dp_weights_bytes (const dp_weights *w)
{
  return w->bytes;
}

gboolean
dp_weights_get (dp_weights *w, const char *name, dp_dtype dtype, int ndim, const int64_t *shape,
                dp_tensor *out, GError **error)
{
  dp_tensor file;
  if (!dp_safetensors_get (w->st, name, ndim, shape, &file, error))
    return FALSE;
  if (w->be->host_memory && file.dtype == dtype && ((uintptr_t) file.data % dp_dtype_size (dtype)) == 0) {
    *out = file; /* borrowed from the read-only mapping: callers never write weights */
    return TRUE;
  }
  dp_tensor t = dp_tensor_view (NULL, dtype, file.ndim, file.shape);
  t.data = w->be->ops->alloc (w->be, MAX (dp_tensor_nbytes (&t), 1));
  if (!t.data) {
    GError *err = NULL;
    dp_backend_check (w->be, &err);
    g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "weight %s: %s", name, err ? err->message : "out of memory");
    g_clear_error (&err);
    return FALSE;
  }
  g_ptr_array_add (w->allocations, t.data);
  w->bytes += dp_tensor_nbytes (&t);
  if ((uintptr_t) file.data % dp_dtype_size (file.dtype) != 0) {
    /* A file not written by the standard writers may leave a tensor unaligned:
     * convert from an aligned copy. */
    dp_tensor aligned = dp_tensor_new_host (file.dtype, file.ndim, file.shape);
    memcpy (aligned.data, file.data, dp_tensor_nbytes (&file));
    w->be->ops->to_device (w->be, &t, &aligned);
    dp_tensor_free (&aligned);
  } else {
    w->be->ops->to_device (w->be, &t, &file);
  }
  if (!dp_backend_check (w->be, error))
    return FALSE;
  *out = t;
  return TRUE;
}
