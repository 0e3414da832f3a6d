/* Bump allocator over one backend buffer (see arena.h). */
#include "dualparal/arena.h"
#include "dualparal/backend.h"

#include <string.h>

static size_t
align_up (size_t n)
{
  return (n + DP_ARENA_ALIGN - 1) & ~(size_t) (DP_ARENA_ALIGN - 1);
}

void
dp_arena_init_measure (dp_arena *a)
{
  memset (a, 0, sizeof *a);
}

gboolean
dp_arena_init (dp_arena *a, dp_backend *be, size_t size, GError **error)
{
  memset (a, 0, sizeof *a);
  size = align_up (MAX (size, 1));
  a->base = be->ops->alloc (be, size);
  if (!a->base)
    return dp_backend_check (be, error) && FALSE;
  a->backend = be;
  a->size = size;
  return TRUE;
}

void
dp_arena_release (dp_arena *a)
{
  if (a->backend && a->base)
    a->backend->ops->free (a->backend, a->base);
  memset (a, 0, sizeof *a);
}

void *
dp_arena_bytes (dp_arena *a, size_t nbytes)
{
  size_t need = align_up (nbytes);
  if (a->base && a->used + need > a->size) {
    a->overflow = TRUE;
    return NULL;
  }
  void *p = a->base ? a->base + a->used : NULL;
  a->used += need;
  a->peak = MAX (a->peak, a->used);
  return p;
}

dp_tensor
dp_arena_tensor (dp_arena *a, dp_dtype dtype, int ndim, const int64_t *shape)
{
  dp_tensor t = dp_tensor_view (NULL, dtype, ndim, shape);
  t.data = dp_arena_bytes (a, dp_tensor_nbytes (&t));
  return t;
}

void
dp_arena_reset (dp_arena *a, size_t mark)
{
  g_return_if_fail (mark <= a->used);
  a->used = mark;
}
