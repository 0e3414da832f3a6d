/* CPU backend: element-wise activations (GELU tanh, SiLU). */
#include "cpu/backend_cpu.h"
#include "cpu/cpu_act.h"

static gboolean
check_unary (dp_backend *be, const char *op, dp_tensor *y, const dp_tensor *x)
{
  if (!dp_cpu_check_f32 (be, op, x) || !dp_cpu_check_f32 (be, op, y))
    return FALSE;
  if (dp_tensor_nelem (x) != dp_tensor_nelem (y)) {
    char bx[64], by[64];
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: y %s and x %s differ in element count", op,
                     dp_shape_str (y, by, sizeof by), dp_shape_str (x, bx, sizeof bx));
    return FALSE;
  }
  return TRUE;
}

typedef struct {
  const float *x;
  float *y;
} unary_job;

static void
gelu_range (void *ctx, int64_t i0, int64_t i1, int worker)
{
  const unary_job *j = ctx;
  for (int64_t i = i0; i < i1; i++)
    j->y[i] = dp_cpu_gelu_tanh_1 (j->x[i]);
}

static void
silu_range (void *ctx, int64_t i0, int64_t i1, int worker)
{
  const unary_job *j = ctx;
  for (int64_t i = i0; i < i1; i++)
    j->y[i] = dp_cpu_silu_1 (j->x[i]);
}

void
dp_cpu_gelu_tanh (dp_backend *be, dp_tensor *y, const dp_tensor *x)
{
  if (!check_unary (be, "gelu_tanh", y, x))
    return;
  const int64_t n = dp_tensor_nelem (x);
  unary_job job = { x->data, y->data };
  dp_cpu_for (be, n > DP_CPU_PAR_MIN, n, gelu_range, &job);
}

void
dp_cpu_silu (dp_backend *be, dp_tensor *y, const dp_tensor *x)
{
  if (!check_unary (be, "silu", y, x))
    return;
  const int64_t n = dp_tensor_nelem (x);
  unary_job job = { x->data, y->data };
  dp_cpu_for (be, n > DP_CPU_PAR_MIN, n, silu_range, &job);
}
