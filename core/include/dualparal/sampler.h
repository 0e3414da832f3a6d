/* dualparal: noise schedules and samplers for flow-matching models.
 *
 * Two samplers, numerically matched against diffusers:
 * - UniPC multistep (UniPCMultistepScheduler with use_flow_sigmas and
 *   prediction_type flow_prediction: Wan2.1's default), orders 1 and 2,
 *   variants bh2 (default) and bh1, predicting x0;
 * - flow-matching Euler (FlowMatchEulerDiscreteScheduler).
 *
 * Three objects:
 * - dp_sampler_settings: a plain struct, filled with Wan's defaults or read
 *   from a model's scheduler/scheduler_config.json; the caller may change any
 *   field (e.g. the shift) before building a schedule.
 * - dp_schedule: the sigmas and model timesteps of one run of N steps.
 *   Immutable once made; host memory.
 * - dp_sampler: the state of one denoising trajectory (one block in flight in
 *   the DualParal engine): a step counter and, for UniPC, its history, kept in
 *   backend memory.
 *
 * Conventions (flow matching): x_sigma = (1 - sigma) x0 + sigma noise, the
 * model predicts the velocity v = noise - x0, so x0 = x - sigma v.  sigma runs
 * from about 1 (pure noise) down to sigmas[N] (0 unless final_sigma_min).
 */
#ifndef DUALPARAL_SAMPLER_H
#define DUALPARAL_SAMPLER_H

#include "dualparal/backend.h"
#include "dualparal/config.h"
#include "dualparal/sampler_kind.h"

G_BEGIN_DECLS


/* UniPC's B(h): bh2 uses expm1(-h) (diffusers' default), bh1 uses -h. */
typedef enum {
  DP_UNIPC_BH2 = 0,
  DP_UNIPC_BH1 = 1,
} dp_unipc_variant;

/* Longest schedule accepted (a sanity bound for configs and callers). */
#define DP_SAMPLER_MAX_STEPS 10000

typedef struct {
  dp_sampler_kind kind;
  int num_train_timesteps;    /* 1000 for Wan: model timestep = sigma * this */
  double shift;               /* flow shift s: sigma -> s sigma / (1 + (s - 1) sigma);
                               * 3.0 for Wan at 480p, 5.0 at 720p */
  /* UniPC only (Euler ignores them): */
  int solver_order;           /* 1 or 2 (Wan: 2) */
  dp_unipc_variant variant;   /* Wan: bh2 */
  gboolean lower_order_final; /* order 1 at the last step (Wan: TRUE) */
  gboolean final_sigma_min;   /* final_sigmas_type "sigma_min": sigmas[N] = sigmas[N-1]
                               * (no final denoising); FALSE ("zero", Wan): sigmas[N] = 0 */
} dp_sampler_settings;


/* Wan2.1's settings (those of its diffusers scheduler_config.json) with the
 * given kind and shift. */
void dp_sampler_settings_init (dp_sampler_settings *s, dp_sampler_kind kind, double shift);

/* Settings for kind from a diffusers scheduler config (a loaded
 * scheduler_config.json).  Both UniPCMultistepScheduler configs (shift from
 * "flow_shift") and FlowMatchEulerDiscreteScheduler configs (shift from
 * "shift") are read, whichever kind is asked for: keys of the other
 * scheduler's class take Wan's defaults.  Settings this code does not
 * implement are errors naming the file and key (DP_ERROR_UNSUPPORTED):
 * prediction_type other than flow_prediction, use_flow_sigmas false,
 * predict_x0 false, solver_order > 2, karras/exponential/beta sigmas, dynamic
 * shifting, shift_terminal, thresholding, a non-empty disable_corrector,
 * solver_p, invert_sigmas, stochastic_sampling, lower_order_final false with
 * final_sigmas_type zero (diffusers' own result is NaN there). */
gboolean dp_sampler_settings_from_config (dp_sampler_settings *s, const dp_config *cfg,
                                          dp_sampler_kind kind, GError **error);
/* The same from <model_dir>/scheduler/scheduler_config.json. */
gboolean dp_sampler_settings_load (dp_sampler_settings *s, const char *model_dir,
                                   dp_sampler_kind kind, GError **error);

typedef struct {
  dp_sampler_settings settings;
  int steps;         /* N >= 1 */
  double *sigmas;    /* N + 1 values, each exactly a float32 (diffusers keeps them in
                      * float32); sigmas[N] is the final sigma */
  double *timesteps; /* N values: what the model is given at step i.  UniPC: whole
                      * numbers, (int64) (sigma_i * num_train_timesteps) evaluated in
                      * float64 before the float32 rounding of sigma_i, exactly as
                      * diffusers; Euler: float32 (sigma_i * num_train_timesteps) */
} dp_schedule;

/* The schedule of N steps, computed exactly as diffusers' set_timesteps(N):
 * UniPC: linspace(1, 1/T, N+1)[:N] in float64, shifted, sigma_0 -= 1e-6 when
 * within 1e-6 of 1, final sigma appended, rounded to float32;
 * Euler: linspace(T sigma_max, T sigma_min, N) / T with diffusers' (shifted)
 * float32 sigma_max and sigma_min, shifted again in float64 (as diffusers
 * does), rounded to float32, final sigma 0.
 * DP_ERROR_INVALID for steps outside [1, DP_SAMPLER_MAX_STEPS] or bad settings. */
dp_schedule *dp_schedule_new (const dp_sampler_settings *s, int steps, GError **error);

/* A schedule from an explicit list of n step sigmas (few-step distilled
 * checkpoints), as diffusers' set_timesteps(sigmas=...): the values are
 * shifted with settings->shift like computed ones (pass shift 1 to use them
 * as they are), then the final sigma is appended.  UniPC takes them in
 * float64 (and applies the sigma_0 -= 1e-6 rule); Euler rounds them to
 * float32 first and shifts in float32, as diffusers does.  After shifting the
 * values must be finite and strictly decreasing; UniPC also needs them in
 * (0, 1) (log(1 - sigma) and log(sigma) must be finite).  DP_ERROR_INVALID
 * otherwise. */
dp_schedule *dp_schedule_new_sigmas (const dp_sampler_settings *s, const double *sigmas, int n,
                                     GError **error);
void dp_schedule_free (dp_schedule *sched);

/* ---- one trajectory ------------------------------------------------------
 *
 * dp_sampler_step (s, x, v) runs step i = dp_sampler_step_index (s):
 *   before: x holds x_i, the sample the model was run on at timestep
 *           dp_sampler_timestep (s, i) (x_0 = the initial noise);
 *           v holds the model's velocity at (x_i, timestep i), guidance applied;
 *   after:  x holds x_{i+1} (in place), the step index is i + 1.
 * After step N - 1, x holds the final sample x_N (the clean latent when the
 * final sigma is 0).
 *
 * Euler: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v_i.
 * UniPC (diffusers' step()): m_i = x_i - sigma_i v_i (x0 prediction); for
 * i > 0 the corrector (UniC, of the order the predictor used at step i - 1)
 * recomputes x_i from the stored corrected x_{i-1} and m_{i-1}, m_{i-2}, m_i;
 * then the predictor (UniP, order min(solver_order, i + 1), and 1 at the last
 * step with lower_order_final) gives x_{i+1} from the corrected x_i, m_i,
 * m_{i-1}.  So x_{i+1} is the *uncorrected* prediction: the model runs on it,
 * and the next step corrects it.  See WAN-NOTES.md for the formulas.
 *
 * Scalar coefficients are computed on the host in float64 from the float32
 * sigmas; tensor updates go through the backend table (ops->axpby, ops->copy),
 * so the same code runs on every backend.  The UniPC history (the corrected
 * x_i and three x0 predictions, F32, each of the sample's shape) is allocated
 * once by dp_sampler_new in backend memory; a step allocates nothing.
 * Operations are queued (asynchronous on a GPU backend): x is final after
 * ops->sync.  x must be F32; v is any dtype the backend's axpby accepts with
 * F32 (the CPU backend: F32).  Both must have the sampler's element count, in
 * the sampler's backend memory.  v is only read, by operations queued in the
 * backend's order: later operations on the same backend may overwrite it. */
typedef struct dp_sampler dp_sampler;

/* A sampler over sched (copied: sched may be freed afterwards) for samples of
 * the given shape, with its history in be's memory (be must outlive it).
 * NULL with an error when the allocation fails or the shape is empty. */
dp_sampler *dp_sampler_new (dp_backend *be, const dp_schedule *sched, int ndim,
                            const int64_t *shape, GError **error);
/* Frees the history; NULL is fine. */
void dp_sampler_free (dp_sampler *s);
/* Back to step 0 with an empty history, keeping the buffers (to reuse one
 * sampler for the next block). */
void dp_sampler_reset (dp_sampler *s);

/* Runs the next step on x in place (see above).  FALSE with an error for a
 * wrong element count or dtype, a finished sampler (DP_ERROR_INVALID), or a
 * backend error (sticky, also one raised before the call). */
gboolean dp_sampler_step (dp_sampler *s, dp_tensor *x, const dp_tensor *v, GError **error);

dp_sampler_kind dp_sampler_get_kind (const dp_sampler *s);
/* N. */
int dp_sampler_num_steps (const dp_sampler *s);
/* The step the next dp_sampler_step runs, 0..N (N: finished). */
int dp_sampler_step_index (const dp_sampler *s);
gboolean dp_sampler_finished (const dp_sampler *s);
/* The model timestep of step i (0 <= i < N), to pass to the DiT. */
double dp_sampler_timestep (const dp_sampler *s, int i);
/* sigma_i, 0 <= i <= N (i = N: the final sigma). */
double dp_sampler_sigma (const dp_sampler *s, int i);
/* The schedule the sampler runs (owned by the sampler). */
const dp_schedule *dp_sampler_schedule (const dp_sampler *s);

G_END_DECLS

#endif
