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

void
dp_cpu_gelu_tanh (dp_backend *be, dp_tensor *y, const dp_tensor *x)
{
  if (!check_unary (be, "gelu_tanh", y, x))
    return;
  const int64_t n = dp_tensor_nelem (x);
  const float *xd = x->data;
  float *yd = y->data;
#pragma omp parallel for schedule(static) num_threads(dp_cpu_threads (be)) if (n > DP_CPU_PAR_MIN)
  for (int64_t i = 0; i < n; i++)
    yd[i] = dp_cpu_gelu_tanh_1 (xd[i]);
}

void
dp_cpu_silu (dp_backend *be, dp_tensor *y, const dp_tensor *x)
{
  if (!check_unary (be, "silu", y, x))
    return;
  const int64_t n = dp_tensor_nelem (x);
  const float *xd = x->data;
  float *yd = y->data;
#pragma omp parallel for schedule(static) num_threads(dp_cpu_threads (be)) if (n > DP_CPU_PAR_MIN)
  for (int64_t i = 0; i < n; i++)
    yd[i] = dp_cpu_silu_1 (xd[i]);
}
