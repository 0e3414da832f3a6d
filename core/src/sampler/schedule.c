/* Sampler settings (from diffusers scheduler configs) and noise schedules,
 * computed with the same float64 / float32 steps as diffusers and numpy so
 * that sigmas and integer timesteps come out bit for bit the same. */
#include "dualparal/sampler.h"

#include <math.h>
#include <string.h>

/* Products whose rounding must happen before the following addition: a
 * compiler allowed to contract a * b + c into an FMA (GCC's default in GNU C
 * mode on targets with FMA, e.g. aarch64) would round once instead of twice
 * and could move a timestep across an integer boundary.  The volatile store
 * forces the rounding numpy performs. */
static inline double
rounded_mul (double a, double b)
{
  volatile double p = a * b;
  return p;
}

static inline float
rounded_mulf (float a, float b)
{
  volatile float p = a * b;
  return p;
}

const char *
dp_sampler_kind_name (dp_sampler_kind kind)
{
  switch (kind) {
  case DP_SAMPLER_UNIPC:
    return "unipc";
  case DP_SAMPLER_EULER:
    return "euler";
  }
  return "unknown";
}

gboolean
dp_sampler_kind_parse (const char *name, dp_sampler_kind *out, GError **error)
{
  if (name && g_ascii_strcasecmp (name, "unipc") == 0) {
    *out = DP_SAMPLER_UNIPC;
    return TRUE;
  }
  if (name && g_ascii_strcasecmp (name, "euler") == 0) {
    *out = DP_SAMPLER_EULER;
    return TRUE;
  }
  g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "unknown sampler \"%s\" (expected unipc or euler)",
               name ? name : "(null)");
  return FALSE;
}

void
dp_sampler_settings_init (dp_sampler_settings *s, dp_sampler_kind kind, double shift)
{
  memset (s, 0, sizeof *s);
  s->kind = kind;
  s->num_train_timesteps = 1000;
  s->shift = shift;
  s->solver_order = 2;
  s->variant = DP_UNIPC_BH2;
  s->lower_order_final = TRUE;
  s->final_sigma_min = FALSE;
}

/* Checks a settings struct whoever filled it; prefix names the source. */
static gboolean
settings_check (const dp_sampler_settings *s, const char *prefix, GError **error)
{
  if (s->kind != DP_SAMPLER_UNIPC && s->kind != DP_SAMPLER_EULER) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "%s: unknown sampler kind %d", prefix, (int) s->kind);
    return FALSE;
  }
  if (s->num_train_timesteps < 2 || s->num_train_timesteps > 1000000) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "%s: num_train_timesteps %d is out of range [2, 1000000]", prefix,
                 s->num_train_timesteps);
    return FALSE;
  }
  if (!isfinite (s->shift) || s->shift <= 0.0) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "%s: the flow shift must be a positive number, got %g",
                 prefix, s->shift);
    return FALSE;
  }
  if (s->kind == DP_SAMPLER_UNIPC) {
    if (s->solver_order != 1 && s->solver_order != 2) {
      g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                   "%s: UniPC solver_order %d is not supported (1 or 2)", prefix, s->solver_order);
      return FALSE;
    }
    if (s->variant != DP_UNIPC_BH1 && s->variant != DP_UNIPC_BH2) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "%s: unknown UniPC variant %d", prefix,
                   (int) s->variant);
      return FALSE;
    }
    /* A second-order predictor into sigma 0 divides by lambda = infinity:
     * diffusers returns NaN there, so refuse rather than imitate. */
    if (s->solver_order == 2 && !s->lower_order_final && !s->final_sigma_min) {
      g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                   "%s: UniPC with solver_order 2, lower_order_final false and final_sigmas_type "
                   "\"zero\" is not supported (the last step's second-order update is undefined at "
                   "sigma 0; set lower_order_final true)", prefix);
      return FALSE;
    }
  }
  return TRUE;
}

/* ---- settings from scheduler_config.json --------------------------------- */

static const char *
config_string_or (const dp_config *cfg, const char *key, const char *def, GError **error)
{
  if (!dp_config_has (cfg, key))
    return def;
  return dp_config_string (cfg, key, error);
}

static gboolean
unsupported (const dp_config *cfg, const char *key, const char *what, GError **error)
{
  g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "%s: \"%s\": %s", dp_config_path (cfg), key, what);
  return FALSE;
}

/* Options that must be off (absent, null or false). */
static gboolean
require_false (const dp_config *cfg, const char *key, GError **error)
{
  gboolean v = FALSE;
  if (!dp_config_bool_or (cfg, key, FALSE, &v, error))
    return FALSE;
  if (v)
    return unsupported (cfg, key, "true is not supported", error);
  return TRUE;
}

/* Options that must be absent or null. */
static gboolean
require_absent (const dp_config *cfg, const char *key, GError **error)
{
  if (dp_config_has (cfg, key))
    return unsupported (cfg, key, "only null is supported", error);
  return TRUE;
}

static gboolean
read_unipc_keys (dp_sampler_settings *s, const dp_config *cfg, GError **error)
{
  const char *path = dp_config_path (cfg);

  if (!dp_config_double_or (cfg, "flow_shift", 1.0, &s->shift, error))
    return FALSE;

  /* diffusers' default prediction_type is epsilon: a config without the key
   * does not describe a flow-matching model. */
  const char *pred = config_string_or (cfg, "prediction_type", "epsilon", error);
  if (!pred)
    return FALSE;
  if (strcmp (pred, "flow_prediction") != 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                 "%s: \"prediction_type\" is \"%s\"; only flow_prediction (Wan) is supported", path, pred);
    return FALSE;
  }
  gboolean flow_sigmas = FALSE, predict_x0 = TRUE;
  if (!dp_config_bool_or (cfg, "use_flow_sigmas", FALSE, &flow_sigmas, error) ||
      !dp_config_bool_or (cfg, "predict_x0", TRUE, &predict_x0, error))
    return FALSE;
  if (!flow_sigmas)
    return unsupported (cfg, "use_flow_sigmas", "must be true for a flow-prediction model", error);
  if (!predict_x0)
    return unsupported (cfg, "predict_x0", "false is not supported with flow_prediction", error);

  int64_t order = 2;
  if (!dp_config_int_or (cfg, "solver_order", 2, &order, error))
    return FALSE;
  if (order != 1 && order != 2) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                 "%s: \"solver_order\" %" G_GINT64_FORMAT " is not supported (1 or 2)", path, order);
    return FALSE;
  }
  s->solver_order = (int) order;

  const char *type = config_string_or (cfg, "solver_type", "bh2", error);
  if (!type)
    return FALSE;
  if (strcmp (type, "bh1") == 0)
    s->variant = DP_UNIPC_BH1;
  else if (strcmp (type, "bh2") == 0 || strcmp (type, "midpoint") == 0 ||
           strcmp (type, "heun") == 0 || strcmp (type, "logrho") == 0)
    s->variant = DP_UNIPC_BH2; /* diffusers maps these three to bh2 */
  else {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                 "%s: \"solver_type\" \"%s\" is not supported (bh1 or bh2)", path, type);
    return FALSE;
  }

  if (!dp_config_bool_or (cfg, "lower_order_final", TRUE, &s->lower_order_final, error))
    return FALSE;

  const char *final = config_string_or (cfg, "final_sigmas_type", "zero", error);
  if (!final)
    return FALSE;
  if (strcmp (final, "zero") == 0)
    s->final_sigma_min = FALSE;
  else if (strcmp (final, "sigma_min") == 0)
    s->final_sigma_min = TRUE;
  else {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                 "%s: \"final_sigmas_type\" \"%s\" is not supported (zero or sigma_min)", path, final);
    return FALSE;
  }

  if (dp_config_has (cfg, "disable_corrector")) {
    int64_t steps[64];
    int n = 0;
    if (!dp_config_int_array (cfg, "disable_corrector", steps, G_N_ELEMENTS (steps), &n, error))
      return FALSE;
    if (n > 0)
      return unsupported (cfg, "disable_corrector", "only an empty list is supported", error);
  }
  return require_false (cfg, "thresholding", error) &&
         require_false (cfg, "use_karras_sigmas", error) &&
         require_false (cfg, "use_exponential_sigmas", error) &&
         require_false (cfg, "use_beta_sigmas", error) &&
         require_false (cfg, "use_dynamic_shifting", error) &&
         require_absent (cfg, "shift_terminal", error) &&
         require_absent (cfg, "solver_p", error);
}

static gboolean
read_euler_keys (dp_sampler_settings *s, const dp_config *cfg, GError **error)
{
  if (!dp_config_double_or (cfg, "shift", 1.0, &s->shift, error))
    return FALSE;
  return require_false (cfg, "use_dynamic_shifting", error) &&
         require_false (cfg, "use_karras_sigmas", error) &&
         require_false (cfg, "use_exponential_sigmas", error) &&
         require_false (cfg, "use_beta_sigmas", error) &&
         require_false (cfg, "invert_sigmas", error) &&
         require_false (cfg, "stochastic_sampling", error) &&
         require_absent (cfg, "shift_terminal", error);
}

gboolean
dp_sampler_settings_from_config (dp_sampler_settings *s, const dp_config *cfg, dp_sampler_kind kind,
                                 GError **error)
{
  const char *path = dp_config_path (cfg);
  dp_sampler_settings_init (s, kind, 1.0);

  if (!dp_config_has (cfg, "_class_name")) {
    g_set_error (error, DP_ERROR, DP_ERROR_MISSING,
                 "%s: missing key \"_class_name\" (expected UniPCMultistepScheduler or "
                 "FlowMatchEulerDiscreteScheduler)", path);
    return FALSE;
  }
  const char *cls = dp_config_string (cfg, "_class_name", error);
  if (!cls)
    return FALSE;

  int64_t train_steps = 1000;
  if (!dp_config_int_or (cfg, "num_train_timesteps", 1000, &train_steps, error))
    return FALSE;
  if (train_steps < 2 || train_steps > 1000000) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                 "%s: \"num_train_timesteps\" %" G_GINT64_FORMAT " is out of range [2, 1000000]", path,
                 train_steps);
    return FALSE;
  }
  s->num_train_timesteps = (int) train_steps;

  gboolean ok;
  if (strcmp (cls, "UniPCMultistepScheduler") == 0)
    ok = read_unipc_keys (s, cfg, error);
  else if (strcmp (cls, "FlowMatchEulerDiscreteScheduler") == 0)
    ok = read_euler_keys (s, cfg, error);
  else {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                 "%s: scheduler class \"%s\" is not supported (UniPCMultistepScheduler or "
                 "FlowMatchEulerDiscreteScheduler)", path, cls);
    return FALSE;
  }
  if (!ok)
    return FALSE;
  return settings_check (s, path, error);
}

gboolean
dp_sampler_settings_load (dp_sampler_settings *s, const char *model_dir, dp_sampler_kind kind,
                          GError **error)
{
  char *path = g_build_filename (model_dir, "scheduler", "scheduler_config.json", NULL);
  dp_config *cfg = dp_config_load (path, error);
  g_free (path);
  if (!cfg)
    return FALSE;
  gboolean ok = dp_sampler_settings_from_config (s, cfg, kind, error);
  dp_config_free (cfg);
  return ok;
}

/* ---- schedules ------------------------------------------------------------ */

/* numpy.linspace(start, stop, num)[k] for endpoint=True in float64:
 * k * step + start with step = (stop - start) / (num - 1), the last element
 * exactly stop (numpy 1.20 and later). */
static double
np_linspace_at (double start, double stop, int num, int k)
{
  if (num == 1)
    return start;
  if (k == num - 1)
    return stop;
  double delta = stop - start;
  double step = delta / (num - 1);
  if (step == 0.0) /* numpy's denormal path */
    return rounded_mul ((double) k / (num - 1), delta) + start;
  return rounded_mul ((double) k, step) + start;
}

/* s * sigma / (1 + (s - 1) * sigma), in numpy's float64 operation order. */
static double
shift_f64 (double s, double sigma)
{
  return (s * sigma) / (1.0 + rounded_mul (s - 1.0, sigma));
}

/* The same in float32 (torch / numpy float32 arrays with Python scalars). */
static float
shift_f32 (double s, float sigma)
{
  float a = rounded_mulf ((float) s, sigma);
  float b = rounded_mulf ((float) (s - 1.0), sigma);
  return a / (1.0f + b);
}

static dp_schedule *
schedule_alloc (const dp_sampler_settings *s, int steps)
{
  dp_schedule *sched = g_new0 (dp_schedule, 1);
  sched->settings = *s;
  sched->steps = steps;
  sched->sigmas = g_new0 (double, steps + 1);
  sched->timesteps = g_new0 (double, steps);
  return sched;
}

void
dp_schedule_free (dp_schedule *sched)
{
  if (!sched)
    return;
  g_free (sched->sigmas);
  g_free (sched->timesteps);
  g_free (sched);
}

/* UniPC from float64 step sigmas (already shifted): the sigma_0 rule, integer
 * timesteps from float64, float32 sigmas, the final sigma. */
static void
unipc_finish (dp_schedule *sched, double *sig64)
{
  int n = sched->steps;
  const double T = sched->settings.num_train_timesteps;
  /* Keeps log(1 - sigma_0) finite (diffusers' eps, same test). */
  if (fabs (sig64[0] - 1.0) < 1e-6)
    sig64[0] -= 1e-6;
  for (int i = 0; i < n; i++) {
    sched->timesteps[i] = (double) (int64_t) (sig64[i] * T); /* torch .to(int64) truncates */
    sched->sigmas[i] = (float) sig64[i];
  }
  sched->sigmas[n] = sched->settings.final_sigma_min ? (double) (float) sig64[n - 1] : 0.0;
}

/* Step sigmas must be usable by the sampler's arithmetic. */
static gboolean
schedule_check (const dp_schedule *sched, GError **error)
{
  gboolean unipc = sched->settings.kind == DP_SAMPLER_UNIPC;
  for (int i = 0; i < sched->steps; i++) {
    double sg = sched->sigmas[i];
    if (!isfinite (sg) || (unipc && (sg <= 0.0 || sg >= 1.0))) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                   "%s schedule: sigma %d is %.9g after the shift; %s", dp_sampler_kind_name (sched->settings.kind), i, sg,
                   unipc ? "UniPC needs step sigmas in (0, 1)" : "sigmas must be finite");
      return FALSE;
    }
    if (i > 0 && !(sg < sched->sigmas[i - 1])) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                   "%s schedule: sigmas must decrease strictly, but sigma %d = %.9g follows %.9g",
                   dp_sampler_kind_name (sched->settings.kind), i, sg, sched->sigmas[i - 1]);
      return FALSE;
    }
  }
  return TRUE;
}

static gboolean
steps_check (int steps, GError **error)
{
  if (steps < 1 || steps > DP_SAMPLER_MAX_STEPS) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "the number of steps must be in [1, %d], got %d",
                 DP_SAMPLER_MAX_STEPS, steps);
    return FALSE;
  }
  return TRUE;
}

dp_schedule *
dp_schedule_new (const dp_sampler_settings *s, int steps, GError **error)
{
  if (!settings_check (s, "sampler settings", error) || !steps_check (steps, error))
    return NULL;
  dp_schedule *sched = schedule_alloc (s, steps);
  const int T = s->num_train_timesteps;

  if (s->kind == DP_SAMPLER_UNIPC) {
    /* linspace(1, 1/T, N + 1)[:-1], shifted, all float64. */
    double *sig64 = g_new (double, steps);
    for (int i = 0; i < steps; i++)
      sig64[i] = shift_f64 (s->shift, np_linspace_at (1.0, 1.0 / T, steps + 1, i));
    unipc_finish (sched, sig64);
    g_free (sig64);
  } else {
    /* FlowMatchEulerDiscreteScheduler: its constructor shifts the training
     * sigmas T/T .. 1/T in float32 and keeps the ends as sigma_max/min; the
     * N sigmas are then spaced linearly between them in float64 and shifted
     * a second time (diffusers' behaviour, reproduced on purpose). */
    float sigma_max = shift_f32 (s->shift, (float) T / (float) T);
    float sigma_min = shift_f32 (s->shift, 1.0f / (float) T);
    double t0 = (double) sigma_max * T, t1 = (double) sigma_min * T;
    for (int i = 0; i < steps; i++) {
      double sg = shift_f64 (s->shift, np_linspace_at (t0, t1, steps, i) / T);
      float sg32 = (float) sg;
      sched->sigmas[i] = sg32;
      sched->timesteps[i] = rounded_mulf (sg32, (float) T);
    }
    sched->sigmas[steps] = 0.0;
  }
  if (!schedule_check (sched, error)) {
    dp_schedule_free (sched);
    return NULL;
  }
  return sched;
}

dp_schedule *
dp_schedule_new_sigmas (const dp_sampler_settings *s, const double *sigmas, int n, GError **error)
{
  if (!settings_check (s, "sampler settings", error) || !steps_check (n, error))
    return NULL;
  if (!sigmas) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "explicit sigma list is NULL");
    return NULL;
  }
  dp_schedule *sched = schedule_alloc (s, n);
  const int T = s->num_train_timesteps;

  if (s->kind == DP_SAMPLER_UNIPC) {
    double *sig64 = g_new (double, n);
    for (int i = 0; i < n; i++)
      sig64[i] = shift_f64 (s->shift, sigmas[i]);
    unipc_finish (sched, sig64);
    g_free (sig64);
  } else {
    for (int i = 0; i < n; i++) {
      float sg32 = shift_f32 (s->shift, (float) sigmas[i]);
      sched->sigmas[i] = sg32;
      sched->timesteps[i] = rounded_mulf (sg32, (float) T);
    }
    sched->sigmas[n] = 0.0;
  }
  if (!schedule_check (sched, error)) {
    dp_schedule_free (sched);
    return NULL;
  }
  return sched;
}
