/* dualparal: the sampler kinds a generator offers (public: part of
 * dp_generator_params; the samplers themselves are private, sampler.h). */
#ifndef DUALPARAL_SAMPLER_KIND_H
#define DUALPARAL_SAMPLER_KIND_H

#include <glib.h>

#include "dualparal/error.h"

G_BEGIN_DECLS

typedef enum {
  DP_SAMPLER_UNIPC = 0, /* UniPC multistep, diffusers UniPCMultistepScheduler */
  DP_SAMPLER_EULER = 1, /* flow-matching Euler, diffusers FlowMatchEulerDiscreteScheduler */
} dp_sampler_kind;

/* "unipc" / "euler". */
const char *dp_sampler_kind_name (dp_sampler_kind kind);
/* Parses "unipc" or "euler" (case-insensitive); DP_ERROR_INVALID otherwise. */
gboolean dp_sampler_kind_parse (const char *name, dp_sampler_kind *out, GError **error);

G_END_DECLS

#endif
