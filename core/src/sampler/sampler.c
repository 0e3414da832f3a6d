/* The sampler state of one trajectory: flow-matching Euler and UniPC
 * multistep (diffusers' UniPCMultistepScheduler.step with flow sigmas,
 * predict_x0, orders 1-2, bh1/bh2).
 *
 * Every tensor update is a linear combination of at most three tensors, so
 * it is written as a chain of ops->axpby on backend tensors; coefficients are
 * expanded on the host in float64.  Notation as in WAN-NOTES.md: alpha = 1 -
 * sigma, lambda = ln(alpha) - ln(sigma), h = lambda_to - lambda_from,
 * hh = -h (predict_x0), phi = expm1(hh), B = phi (bh2) or hh (bh1). */
#include "dualparal/sampler.h"

#include <math.h>
#include <string.h>

struct dp_sampler {
  dp_backend *be;
  dp_schedule sched;   /* own copies of the arrays */
  double *lambda;      /* lambda(sigma_i), i = 0..N (+inf at sigma 0) */
  int ndim;
  int64_t shape[DP_MAX_DIMS];
  int64_t nelem;
  int step;            /* next step to run */

  /* UniPC history (backend memory, F32, allocated once). */
  dp_tensor last;      /* corrected x_{i-1}: diffusers' last_sample */
  dp_tensor m[3];      /* x0 predictions; m[prev1] = m_{i-1}, m[prev2] = m_{i-2} */
  int prev1, prev2;
  int history;         /* x0 predictions held (diffusers' lower_order_nums, <= order) */
  int last_order;      /* order of the previous predictor (diffusers' this_order) */
};

dp_sampler_kind
dp_sampler_get_kind (const dp_sampler *s)
{
  return s->sched.settings.kind;
}

int
dp_sampler_num_steps (const dp_sampler *s)
{
  return s->sched.steps;
}

int
dp_sampler_step_index (const dp_sampler *s)
{
  return s->step;
}

gboolean
dp_sampler_finished (const dp_sampler *s)
{
  return s->step >= s->sched.steps;
}

double
dp_sampler_timestep (const dp_sampler *s, int i)
{
  g_return_val_if_fail (i >= 0 && i < s->sched.steps, NAN);
  return s->sched.timesteps[i];
}

double
dp_sampler_sigma (const dp_sampler *s, int i)
{
  g_return_val_if_fail (i >= 0 && i <= s->sched.steps, NAN);
  return s->sched.sigmas[i];
}

const dp_schedule *
dp_sampler_schedule (const dp_sampler *s)
{
  return &s->sched;
}

void
dp_sampler_reset (dp_sampler *s)
{
  s->step = 0;
  s->history = 0;
  s->last_order = 0;
  s->prev1 = 0;
  s->prev2 = 1;
}

void
dp_sampler_free (dp_sampler *s)
{
  if (!s)
    return;
  dp_backend_tensor_free (s->be, &s->last);
  for (int k = 0; k < 3; k++)
    dp_backend_tensor_free (s->be, &s->m[k]);
  g_free (s->sched.sigmas);
  g_free (s->sched.timesteps);
  g_free (s->lambda);
  g_free (s);
}

dp_sampler *
dp_sampler_new (dp_backend *be, const dp_schedule *sched, int ndim, const int64_t *shape,
                GError **error)
{
  g_return_val_if_fail (be != NULL && sched != NULL && shape != NULL, NULL);
  if (ndim < 1 || ndim > DP_MAX_DIMS) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "sampler: %d dimensions (1 to %d expected)", ndim,
                 DP_MAX_DIMS);
    return NULL;
  }
  int64_t nelem = 1;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] <= 0) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "sampler: dimension %d of the sample is %" G_GINT64_FORMAT,
                   d, shape[d]);
      return NULL;
    }
    nelem *= shape[d];
  }
  if (!dp_backend_check (be, error))
    return NULL;

  dp_sampler *s = g_new0 (dp_sampler, 1);
  s->be = be;
  s->sched = *sched;
  s->sched.sigmas = g_memdup2 (sched->sigmas, sizeof (double) * (sched->steps + 1));
  s->sched.timesteps = g_memdup2 (sched->timesteps, sizeof (double) * sched->steps);
  s->ndim = ndim;
  memcpy (s->shape, shape, sizeof (int64_t) * ndim);
  s->nelem = nelem;
  s->lambda = g_new (double, sched->steps + 1);
  for (int i = 0; i <= sched->steps; i++) {
    double sg = sched->sigmas[i];
    s->lambda[i] = log (1.0 - sg) - log (sg); /* +inf at sigma 0 */
  }
  dp_sampler_reset (s);

  if (sched->settings.kind == DP_SAMPLER_UNIPC) {
    s->last = dp_backend_tensor_new (be, DP_F32, ndim, shape);
    for (int k = 0; k < 3; k++)
      s->m[k] = dp_backend_tensor_new (be, DP_F32, ndim, shape);
    if (!dp_backend_check (be, error)) {
      g_prefix_error (error, "sampler history (4 x %" G_GINT64_FORMAT " floats): ", nelem);
      dp_sampler_free (s);
      return NULL;
    }
  }
  return s;
}

/* ---- steps ----------------------------------------------------------------- */

static void
euler_step (dp_sampler *s, dp_tensor *x, const dp_tensor *v)
{
  int i = s->step;
  /* diffusers: dt = sigma_{i+1} - sigma_i in float32, exact here then rounded once. */
  float dt = (float) (s->sched.sigmas[i + 1] - s->sched.sigmas[i]);
  s->be->ops->axpby (s->be, x, 1.0f, x, dt, v);
}

/* B(h) of the variant. */
static double
unipc_b (const dp_sampler *s, double hh)
{
  return s->sched.settings.variant == DP_UNIPC_BH2 ? expm1 (hh) : hh;
}

/* UniC: recomputes x_i into s->last from the stored corrected x_{i-1}
 * (s->last), m_{i-1}, m_{i-2} and the fresh m_i, with the previous
 * predictor's order.  diffusers' multistep_uni_c_bh_update. */
static void
unipc_correct (dp_sampler *s, const dp_tensor *m_i)
{
  dp_backend *be = s->be;
  int i = s->step;
  const double *sig = s->sched.sigmas, *lam = s->lambda;
  const dp_tensor *m1 = &s->m[s->prev1], *m2 = &s->m[s->prev2];

  double alpha = 1.0 - sig[i];
  double h = lam[i] - lam[i - 1];
  double hh = -h;
  double phi = expm1 (hh);
  double B = unipc_b (s, hh);

  /* x_i = (sig_i / sig_{i-1}) last - alpha phi m1
   *       - alpha B (rho0 D1 + rho_last (m_i - m1)),  D1 = (m2 - m1) / r. */
  double rho0 = 0.0, rho_last = 0.5, r = 1.0;
  if (s->last_order == 2) {
    r = (lam[i - 2] - lam[i - 1]) / h;
    /* rho solves [[1, 1], [r, 1]] rho = [b0, b1] with
     * b0 = (phi/hh - 1) / B and b1 = 2 ((phi/hh - 1)/hh - 1/2) / B. */
    double k1 = phi / hh - 1.0;
    double b0 = k1 / B;
    double b1 = (k1 / hh - 0.5) * 2.0 / B;
    rho0 = (b0 - b1) / (1.0 - r);
    rho_last = b0 - rho0;
  }
  double c_last = sig[i] / sig[i - 1];
  double c_m2 = -alpha * B * rho0 / r;
  double c_mi = -alpha * B * rho_last;
  double c_m1 = -alpha * phi - c_m2 - c_mi;

  be->ops->axpby (be, &s->last, (float) c_last, &s->last, (float) c_m1, m1);
  if (s->last_order == 2)
    be->ops->axpby (be, &s->last, 1.0f, &s->last, (float) c_m2, m2);
  be->ops->axpby (be, &s->last, 1.0f, &s->last, (float) c_mi, m_i);
}

/* UniP: x_{i+1} from the corrected x_i (s->last), m_i and m_{i-1}.
 * diffusers' multistep_uni_p_bh_update (order 2 uses rho = 1/2). */
static void
unipc_predict (dp_sampler *s, dp_tensor *x, const dp_tensor *m_i, int order)
{
  dp_backend *be = s->be;
  int i = s->step;
  const double *sig = s->sched.sigmas, *lam = s->lambda;

  if (sig[i + 1] == sig[i]) {
    /* final_sigmas_type sigma_min: the last step keeps the sample (h = 0). */
    be->ops->copy (be, x, &s->last);
    return;
  }
  double alpha = 1.0 - sig[i + 1];
  double h = lam[i + 1] - lam[i]; /* +inf into sigma 0: phi = -1, x = m_i */
  double hh = -h;
  double phi = expm1 (hh);

  /* x_{i+1} = (sig_{i+1} / sig_i) last - alpha phi m_i
   *           - [order 2] alpha B / 2 (m1 - m_i) / r. */
  double c_x = sig[i + 1] / sig[i];
  double c_mi = -alpha * phi;
  double c_m1 = 0.0;
  if (order == 2) {
    double B = unipc_b (s, hh);
    double r = (lam[i - 1] - lam[i]) / h;
    c_m1 = -alpha * B * 0.5 / r;
    c_mi -= c_m1;
  }
  be->ops->axpby (be, x, (float) c_x, &s->last, (float) c_mi, m_i);
  if (order == 2)
    be->ops->axpby (be, x, 1.0f, x, (float) c_m1, &s->m[s->prev1]);
}

static void
unipc_step (dp_sampler *s, dp_tensor *x, const dp_tensor *v)
{
  dp_backend *be = s->be;
  const dp_sampler_settings *set = &s->sched.settings;
  int i = s->step, n = s->sched.steps;

  /* The free slot of the three takes m_i = x_i - sigma_i v_i. */
  int cur = 3 - s->prev1 - s->prev2;
  dp_tensor *m_i = &s->m[cur];
  be->ops->axpby (be, m_i, 1.0f, x, (float) -s->sched.sigmas[i], v);

  if (i > 0)
    unipc_correct (s, m_i);
  else
    be->ops->copy (be, &s->last, x);

  int order = set->lower_order_final ? MIN (set->solver_order, n - i) : set->solver_order;
  order = MIN (order, s->history + 1); /* warm-up */
  unipc_predict (s, x, m_i, order);

  s->prev2 = s->prev1;
  s->prev1 = cur;
  if (s->history < set->solver_order)
    s->history++;
  s->last_order = order;
}

gboolean
dp_sampler_step (dp_sampler *s, dp_tensor *x, const dp_tensor *v, GError **error)
{
  g_return_val_if_fail (s != NULL && x != NULL && v != NULL, FALSE);
  if (s->step >= s->sched.steps) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "sampler: all %d steps are done", s->sched.steps);
    return FALSE;
  }
  if (x->dtype != DP_F32) {
    g_set_error (error, DP_ERROR, DP_ERROR_SHAPE, "sampler: the sample must be F32, got %s",
                 dp_dtype_name (x->dtype));
    return FALSE;
  }
  if (dp_tensor_nelem (x) != s->nelem || dp_tensor_nelem (v) != s->nelem) {
    char bx[64], bv[64];
    g_set_error (error, DP_ERROR, DP_ERROR_SHAPE,
                 "sampler: sample %s and velocity %s must have %" G_GINT64_FORMAT " elements",
                 dp_shape_str (x, bx, sizeof bx), dp_shape_str (v, bv, sizeof bv), s->nelem);
    return FALSE;
  }
  if (!dp_backend_check (s->be, error))
    return FALSE;

  if (s->sched.settings.kind == DP_SAMPLER_EULER)
    euler_step (s, x, v);
  else
    unipc_step (s, x, v);
  s->step++;
  /* Errors the backend could detect while queueing (shapes, dtypes). */
  return dp_backend_check (s->be, error);
}
