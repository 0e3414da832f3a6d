/* dualparal: a model component's weights on a backend.
 *
 * dp_weights wraps the safetensors files of one component (transformer/,
 * vae/, text_encoder/) and hands out tensors in backend memory, converted to
 * the dtype the caller asks for.  It owns every backend allocation it makes
 * and frees them in dp_weights_free().  On a host backend, an F32 tensor that
 * the file already stores as F32 (and suitably aligned) is borrowed straight
 * from the mmap: no copy, so a 22 GB checkpoint is paged in on use rather
 * than read up front.
 */
#ifndef DUALPARAL_WEIGHTS_H
#define DUALPARAL_WEIGHTS_H

#include "dualparal/backend.h"
#include "dualparal/safetensors.h"

G_BEGIN_DECLS

typedef struct dp_weights dp_weights;

/* Takes ownership of st. */
dp_weights *dp_weights_new (dp_backend *be, dp_safetensors *st);
void dp_weights_free (dp_weights *w);
const dp_safetensors *dp_weights_file (const dp_weights *w);

/* The tensor `name`, checked against shape (ndim dims), in dtype, in backend
 * memory.  Errors name the tensor (missing, wrong shape, out of memory). */
gboolean dp_weights_get (dp_weights *w, const char *name, dp_dtype dtype, int ndim,
                         const int64_t *shape, dp_tensor *out, GError **error);
/* Bytes of backend memory the weights hold (borrowed mmap pages not counted). */
size_t dp_weights_bytes (const dp_weights *w);

G_END_DECLS

#endif
