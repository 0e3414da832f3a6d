/* dualparal: arena allocator.
 *
 * A forward pass must not allocate: every activation comes from an arena, a
 * single backend buffer handed out by bumping an offset.  Sizing is done once
 * by running the same allocation sequence on a *measuring* arena (no memory,
 * only counts), then creating a real arena of the measured peak.
 *
 *   dp_arena m; dp_arena_init_measure (&m);
 *   plan_forward (&m, ...);                  // same calls as the real pass
 *   dp_arena a; dp_arena_init (&a, be, dp_arena_peak (&m), &err);
 *
 * dp_arena_mark()/dp_arena_reset() release everything allocated after a mark
 * (stack discipline), so per-layer scratch is reused layer after layer.
 * Every allocation is aligned to DP_ARENA_ALIGN bytes.
 */
#ifndef DUALPARAL_ARENA_H
#define DUALPARAL_ARENA_H

#include "dualparal/tensor.h"

G_BEGIN_DECLS

#define DP_ARENA_ALIGN 256

typedef struct dp_backend dp_backend;

typedef struct {
  dp_backend *backend; /* owner of base; NULL for a measuring arena */
  uint8_t *base;       /* backend memory, NULL when measuring */
  size_t size;         /* capacity in bytes (0 when measuring: unbounded) */
  size_t used;         /* current offset */
  size_t peak;         /* highest offset reached */
  gboolean overflow;   /* an allocation did not fit (a sizing bug) */
} dp_arena;

/* A measuring arena: allocations return tensors with data == NULL. */
void dp_arena_init_measure (dp_arena *a);
/* A real arena of size bytes from be's memory. */
gboolean dp_arena_init (dp_arena *a, dp_backend *be, size_t size, GError **error);
void dp_arena_release (dp_arena *a);

/* A tensor of the given shape from the arena (borrowed: freed by reset/release).
 * On overflow returns a tensor with data == NULL and sets a->overflow. */
dp_tensor dp_arena_tensor (dp_arena *a, dp_dtype dtype, int ndim, const int64_t *shape);
void *dp_arena_bytes (dp_arena *a, size_t nbytes);

static inline size_t dp_arena_mark (const dp_arena *a) { return a->used; }
void dp_arena_reset (dp_arena *a, size_t mark);
static inline size_t dp_arena_peak (const dp_arena *a) { return a->peak; }

G_END_DECLS

#endif
