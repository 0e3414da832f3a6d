/* dualparal: the error domain of every GError the library sets (public:
 * an application matches these codes; installed with generator.h). */
#ifndef DUALPARAL_ERROR_H
#define DUALPARAL_ERROR_H

#include <glib.h>

G_BEGIN_DECLS

#define DP_ERROR (dp_error_quark ())
GQuark dp_error_quark (void);

typedef enum {
  DP_ERROR_FAILED,      /* generic */
  DP_ERROR_IO,          /* cannot open / read / map a file */
  DP_ERROR_FORMAT,      /* malformed file (safetensors, json, config) */
  DP_ERROR_MISSING,     /* a required tensor / file / key is absent */
  DP_ERROR_SHAPE,       /* a tensor has the wrong shape or dtype */
  DP_ERROR_UNSUPPORTED, /* valid but not supported (dtype, size, option) */
  DP_ERROR_NOMEM,       /* allocation failed (host or device) */
  DP_ERROR_DEVICE,      /* CUDA / cuBLAS / NCCL failure */
  DP_ERROR_INVALID,     /* bad argument or setting */
  DP_ERROR_CANCELLED,   /* stopped on request */
  DP_ERROR_NUMERIC,     /* the model produced NaN or Inf (broken weights, overflow) */
} dp_error_code;

G_END_DECLS

#endif
