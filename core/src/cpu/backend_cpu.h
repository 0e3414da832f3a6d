/* The CPU backend: F32 everywhere, CBLAS GEMMs, OpenMP threads.  Private to
 * the core: users create it with dp_backend_new ("cpu", ...). */
#ifndef DP_BACKEND_CPU_H
#define DP_BACKEND_CPU_H

#include "dualparal/backend.h"

G_BEGIN_DECLS

dp_backend *dp_cpu_backend_new (GError **error);

/* Operations, one file per family (cpu_*.c). */
void dp_cpu_linear (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                    const dp_tensor *bias, dp_act act);
void dp_cpu_layer_norm (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                        const dp_tensor *b, float eps);
void dp_cpu_layer_norm_modulate (dp_backend *be, dp_tensor *y, const dp_tensor *x,
                                 const dp_tensor *shift, const dp_tensor *scale, float eps);
void dp_cpu_rms_norm (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                      float eps);
void dp_cpu_rope_3d (dp_backend *be, dp_tensor *x, const dp_rope_grid *grid);
void dp_cpu_gelu_tanh (dp_backend *be, dp_tensor *y, const dp_tensor *x);
void dp_cpu_silu (dp_backend *be, dp_tensor *y, const dp_tensor *x);
void dp_cpu_attention (dp_backend *be, dp_tensor *o, const dp_tensor *q, const dp_tensor *k,
                       const dp_tensor *v, const dp_attn_params *p);
void dp_cpu_conv3d (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                    const dp_tensor *bias, const dp_conv3d_params *p);
void dp_cpu_upsample_nearest2x (dp_backend *be, dp_tensor *y, const dp_tensor *x);
void dp_cpu_add (dp_backend *be, dp_tensor *y, const dp_tensor *a, const dp_tensor *b);
void dp_cpu_mul (dp_backend *be, dp_tensor *y, const dp_tensor *a, const dp_tensor *b);
void dp_cpu_axpby (dp_backend *be, dp_tensor *y, float alpha, const dp_tensor *a, float beta,
                   const dp_tensor *b);
void dp_cpu_gated_add (dp_backend *be, dp_tensor *x, const dp_tensor *y, const dp_tensor *gate);
void dp_cpu_patchify (dp_backend *be, dp_tensor *tokens, const dp_tensor *x, int pt, int ph, int pw);
void dp_cpu_unpatchify (dp_backend *be, dp_tensor *x, const dp_tensor *tokens, int pt, int ph,
                        int pw);
/* cpu_vae_ops.c */
void dp_cpu_channel_rms_norm (dp_backend *be, dp_tensor *y, const dp_tensor *x,
                              const dp_tensor *gamma, float eps, dp_act act);
void dp_cpu_copy_cols (dp_backend *be, dp_tensor *dst, int64_t dst_col0, const dp_tensor *src,
                       int64_t src_col0, int64_t ncols);
void dp_cpu_transpose (dp_backend *be, dp_tensor *y, const dp_tensor *x);

/* Shared checks: FALSE (and a sticky error naming op) unless t is F32 with data. */
gboolean dp_cpu_check_f32 (dp_backend *be, const char *op, const dp_tensor *t);

G_END_DECLS

#endif
