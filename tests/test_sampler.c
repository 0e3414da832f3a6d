/* Schedules and samplers against diffusers (tools/make_sampler_golden.py,
 * tests/data/sampler/).
 *
 * Tolerances:
 * - timesteps: exactly diffusers' values (UniPC integers, Euler float32);
 * - sigmas: |diff| <= 1e-7 (diffusers keeps float32 sigmas; ours are the same
 *   float32 values, so the measured difference is 0);
 * - samples: relative L2 error of every x_i <= 1e-5 (float32 tensors; the C
 *   code expands each update into axpby chains with float64 coefficients
 *   where diffusers evaluates them in float32).
 */
#include <math.h>
#include <string.h>

#include <glib/gstdio.h>
#include <json-glib/json-glib.h>

#include "dualparal/safetensors.h"
#include "dualparal/sampler.h"

#include "test_util.h"

#define SIGMA_TOL 1e-7
#define SAMPLE_REL_TOL 1e-5

static JsonParser *cases_parser;
static JsonObject *cases;
static dp_safetensors *golden;

static char *
data_path (const char *name)
{
  return dp_test_data_path ("sampler", name, NULL);
}

static void
load_data (void)
{
  GError *err = NULL;
  char *path = data_path ("cases.json");
  cases_parser = dp_test_parse_json (path);
  cases = json_node_get_object (json_parser_get_root (cases_parser));
  g_free (path);
  path = data_path ("golden.safetensors");
  golden = dp_safetensors_open (path, &err);
  g_assert_no_error (err);
  g_free (path);
}

static dp_tensor
golden_get (const char *prefix, const char *what)
{
  char *name = g_strdup_printf ("%s.%s", prefix, what);
  dp_tensor t;
  GError *err = NULL;
  g_assert_true (dp_safetensors_get (golden, name, -1, NULL, &t, &err));
  g_assert_no_error (err);
  g_assert_cmpint (t.dtype, ==, DP_F32);
  g_free (name);
  return t;
}

/* Schedule vs golden: timesteps exact, sigmas within SIGMA_TOL; returns the
 * largest sigma difference. */
static double
check_schedule (const dp_schedule *sched, const char *prefix)
{
  dp_tensor gs = golden_get (prefix, "sigmas"), gt = golden_get (prefix, "timesteps");
  g_assert_cmpint (dp_tensor_nelem (&gs), ==, sched->steps + 1);
  g_assert_cmpint (dp_tensor_nelem (&gt), ==, sched->steps);
  const float *s = gs.data, *t = gt.data;
  double worst = 0.0;
  for (int i = 0; i <= sched->steps; i++) {
    worst = MAX (worst, fabs (sched->sigmas[i] - s[i]));
    if (fabs (sched->sigmas[i] - s[i]) > SIGMA_TOL)
      g_error ("%s: sigma %d is %.9g, diffusers %.9g", prefix, i, sched->sigmas[i], s[i]);
  }
  for (int i = 0; i < sched->steps; i++)
    if (sched->timesteps[i] != t[i])
      g_error ("%s: timestep %d is %.9g, diffusers %.9g", prefix, i, sched->timesteps[i], t[i]);
  return worst;
}

static void
settings_from_case (JsonObject *c, dp_sampler_settings *s)
{
  GError *err = NULL;
  dp_sampler_kind kind;
  g_assert_true (dp_sampler_kind_parse (json_object_get_string_member (c, "kind"), &kind, &err));
  g_assert_no_error (err);
  dp_sampler_settings_init (s, kind, json_object_get_double_member (c, "shift"));
  s->num_train_timesteps = (int) json_object_get_int_member (c, "num_train_timesteps");
  s->solver_order = (int) json_object_get_int_member (c, "solver_order");
  s->variant = strcmp (json_object_get_string_member (c, "solver_type"), "bh1") == 0 ? DP_UNIPC_BH1
                                                                                       : DP_UNIPC_BH2;
  s->lower_order_final = json_object_get_boolean_member (c, "lower_order_final");
  s->final_sigma_min = strcmp (json_object_get_string_member (c, "final_sigmas_type"), "sigma_min") == 0;
}

static dp_schedule *
schedule_from_case (JsonObject *c)
{
  dp_sampler_settings s;
  settings_from_case (c, &s);
  GError *err = NULL;
  dp_schedule *sched;
  JsonNode *sig = json_object_get_member (c, "sigmas");
  if (JSON_NODE_HOLDS_NULL (sig)) {
    sched = dp_schedule_new (&s, (int) json_object_get_int_member (c, "steps"), &err);
  } else {
    JsonArray *a = json_node_get_array (sig);
    int n = (int) json_array_get_length (a);
    double *v = g_new (double, n);
    for (int i = 0; i < n; i++)
      v[i] = json_array_get_double_element (a, i);
    sched = dp_schedule_new_sigmas (&s, v, n, &err);
    g_free (v);
  }
  g_assert_no_error (err);
  g_assert_nonnull (sched);
  return sched;
}

/* A trajectory in flight: sampler, sample and golden data of one case. */
typedef struct {
  const char *name;
  dp_sampler *s;
  dp_tensor x;          /* backend sample */
  dp_tensor gx, gv;     /* golden x [N+1, ...], v [N, ...] */
  int64_t nelem;
  double worst;
} run;

static void
run_init (run *r, dp_backend *be, JsonObject *c)
{
  GError *err = NULL;
  memset (r, 0, sizeof *r);
  r->name = json_object_get_string_member (c, "name");
  dp_schedule *sched = schedule_from_case (c);
  double sig_err = check_schedule (sched, r->name);
  JsonArray *sh = json_object_get_array_member (c, "shape");
  int ndim = (int) json_array_get_length (sh);
  int64_t shape[DP_MAX_DIMS];
  for (int d = 0; d < ndim; d++)
    shape[d] = json_array_get_int_element (sh, d);
  r->s = dp_sampler_new (be, sched, ndim, shape, &err);
  g_assert_no_error (err);
  dp_schedule_free (sched); /* the sampler keeps its own copy */
  r->x = dp_backend_tensor_new (be, DP_F32, ndim, shape);
  r->nelem = dp_tensor_nelem (&r->x);
  r->gx = golden_get (r->name, "x");
  r->gv = golden_get (r->name, "v");
  int n = dp_sampler_num_steps (r->s);
  g_assert_cmpint (dp_tensor_nelem (&r->gx), ==, (n + 1) * r->nelem);
  g_assert_cmpint (dp_tensor_nelem (&r->gv), ==, n * r->nelem);
  dp_tensor x0 = dp_tensor_view (r->gx.data, DP_F32, ndim, shape);
  be->ops->to_device (be, &r->x, &x0);
  g_assert_true (sig_err <= SIGMA_TOL);
}

/* One step with the recorded velocity, compared with diffusers' x_{i+1}. */
static void
run_step (run *r, dp_backend *be)
{
  GError *err = NULL;
  int i = dp_sampler_step_index (r->s);
  dp_tensor gt = golden_get (r->name, "timesteps");
  g_assert_cmpfloat (dp_sampler_timestep (r->s, i), ==, ((const float *) gt.data)[i]);
  dp_tensor vh = dp_tensor_view ((float *) r->gv.data + i * r->nelem, DP_F32, r->x.ndim, r->x.shape);
  dp_tensor v = dp_backend_tensor_new (be, DP_F32, r->x.ndim, r->x.shape);
  be->ops->to_device (be, &v, &vh);
  g_assert_true (dp_sampler_step (r->s, &r->x, &v, &err));
  g_assert_no_error (err);
  dp_backend_tensor_free (be, &v);
  g_assert_cmpint (dp_sampler_step_index (r->s), ==, i + 1);

  dp_tensor host = dp_tensor_new_host (DP_F32, r->x.ndim, r->x.shape);
  be->ops->to_host (be, &host, &r->x);
  g_assert_true (be->ops->sync (be, &err));
  g_assert_no_error (err);
  const float *want = (const float *) r->gx.data + (i + 1) * r->nelem;
  double e = dp_test_rel_l2 (host.data, want, r->nelem);
  r->worst = MAX (r->worst, e);
  if (!(e <= SAMPLE_REL_TOL))
    g_error ("%s: x_%d relative L2 error %.3g > %.0e", r->name, i + 1, e, SAMPLE_REL_TOL);
  dp_tensor_free (&host);
}

static void
run_clear (run *r, dp_backend *be)
{
  dp_backend_tensor_free (be, &r->x);
  dp_sampler_free (r->s);
}

/* Every golden trajectory, step by step. */
static void
test_trajectories (void)
{
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  g_assert_no_error (err);
  JsonArray *list = json_object_get_array_member (cases, "trajectories");
  g_assert_cmpuint (json_array_get_length (list), >=, 10);
  double worst_all = 0;
  for (guint k = 0; k < json_array_get_length (list); k++) {
    run r;
    run_init (&r, be, json_array_get_object_element (list, k));
    while (!dp_sampler_finished (r.s))
      run_step (&r, be);
    /* A finished sampler refuses another step. */
    g_assert_false (dp_sampler_step (r.s, &r.x, &r.x, &err));
    g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
    g_clear_error (&err);
    g_test_message ("%-28s %2d steps: max rel L2 %.3g", r.name, dp_sampler_num_steps (r.s), r.worst);
    worst_all = MAX (worst_all, r.worst);
    run_clear (&r, be);
  }
  g_test_message ("all trajectories: max rel L2 %.3g (tolerance %.0e)", worst_all, SAMPLE_REL_TOL);
  dp_backend_free (be);
}

static JsonObject *
find_case (const char *name)
{
  JsonArray *list = json_object_get_array_member (cases, "trajectories");
  for (guint k = 0; k < json_array_get_length (list); k++) {
    JsonObject *c = json_array_get_object_element (list, k);
    if (strcmp (json_object_get_string_member (c, "name"), name) == 0)
      return c;
  }
  g_error ("no case %s", name);
  return NULL;
}

/* Blocks in flight: several samplers stepped in turn (as the DualParal queue
 * does) keep independent histories and still match diffusers. */
static void
test_interleaved (void)
{
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  g_assert_no_error (err);
  const char *names[] = { "unipc_s3_n10", "unipc_s5_n10", "euler_s3_n10", "unipc_o1_s3_n12" };
  run r[G_N_ELEMENTS (names)];
  for (guint k = 0; k < G_N_ELEMENTS (names); k++)
    run_init (&r[k], be, find_case (names[k]));
  gboolean busy = TRUE;
  while (busy) {
    busy = FALSE;
    for (guint k = 0; k < G_N_ELEMENTS (names); k++)
      if (!dp_sampler_finished (r[k].s)) {
        run_step (&r[k], be);
        busy = TRUE;
      }
  }
  for (guint k = 0; k < G_N_ELEMENTS (names); k++)
    run_clear (&r[k], be);
  dp_backend_free (be);
}

/* ---- a backend that counts allocations -------------------------------- */

static const dp_backend_ops *cpu_ops;
static int alloc_count;

static void *
counting_alloc (dp_backend *be, size_t nbytes)
{
  alloc_count++;
  return cpu_ops->alloc (be, nbytes);
}

/* History is allocated by dp_sampler_new only; reset replays identically. */
static void
test_no_step_allocation_and_reset (void)
{
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  g_assert_no_error (err);
  cpu_ops = be->ops;
  dp_backend_ops counting = *cpu_ops;
  counting.alloc = counting_alloc;
  be->ops = &counting;

  JsonObject *c = find_case ("unipc_s3_n50");
  run r;
  alloc_count = 0;
  run_init (&r, be, c);
  /* 4 history tensors + the sample allocated by run_init. */
  g_assert_cmpint (alloc_count, ==, 5);
  dp_tensor v = dp_backend_tensor_new (be, DP_F32, r.x.ndim, r.x.shape);
  dp_tensor first_pass = dp_tensor_new_host (DP_F32, r.x.ndim, r.x.shape);
  for (int pass = 0; pass < 2; pass++) {
    dp_tensor x0 = dp_tensor_view (r.gx.data, DP_F32, r.x.ndim, r.x.shape);
    be->ops->to_device (be, &r.x, &x0);
    int before = alloc_count;
    for (int i = 0; i < dp_sampler_num_steps (r.s); i++) {
      dp_tensor vh = dp_tensor_view ((float *) r.gv.data + i * r.nelem, DP_F32, r.x.ndim, r.x.shape);
      be->ops->to_device (be, &v, &vh);
      g_assert_true (dp_sampler_step (r.s, &r.x, &v, &err));
      g_assert_no_error (err);
    }
    g_assert_cmpint (alloc_count, ==, before);
    g_assert_true (dp_sampler_finished (r.s));
    dp_tensor host = dp_tensor_new_host (DP_F32, r.x.ndim, r.x.shape);
    be->ops->to_host (be, &host, &r.x);
    if (pass == 0)
      memcpy (first_pass.data, host.data, dp_tensor_nbytes (&host));
    else
      g_assert_cmpmem (host.data, dp_tensor_nbytes (&host), first_pass.data, dp_tensor_nbytes (&host));
    dp_tensor_free (&host);
    dp_sampler_reset (r.s);
    g_assert_cmpint (dp_sampler_step_index (r.s), ==, 0);
  }
  /* Euler keeps no history. */
  dp_sampler_settings s;
  dp_sampler_settings_init (&s, DP_SAMPLER_EULER, 3.0);
  dp_schedule *sched = dp_schedule_new (&s, 4, &err);
  g_assert_no_error (err);
  int before = alloc_count;
  dp_sampler *e = dp_sampler_new (be, sched, r.x.ndim, r.x.shape, &err);
  g_assert_no_error (err);
  g_assert_cmpint (alloc_count, ==, before);
  g_assert_cmpint (dp_sampler_get_kind (e), ==, DP_SAMPLER_EULER);
  dp_sampler_free (e);
  dp_schedule_free (sched);

  dp_tensor_free (&first_pass);
  dp_backend_tensor_free (be, &v);
  run_clear (&r, be);
  be->ops = cpu_ops;
  dp_backend_free (be);
}

/* Wrong tensors are refused before anything is queued. */
static void
test_step_errors (void)
{
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  g_assert_no_error (err);
  dp_sampler_settings s;
  dp_sampler_settings_init (&s, DP_SAMPLER_UNIPC, 3.0);
  dp_schedule *sched = dp_schedule_new (&s, 3, &err);
  g_assert_no_error (err);
  int64_t shape[2] = { 4, 8 }, other[2] = { 4, 7 };
  dp_sampler *sm = dp_sampler_new (be, sched, 2, shape, &err);
  g_assert_no_error (err);
  g_assert_cmpfloat (dp_sampler_sigma (sm, 3), ==, 0.0);
  g_assert_cmpfloat (dp_sampler_timestep (sm, 0), ==, 999.0);
  g_assert_true (dp_sampler_schedule (sm)->steps == 3);

  dp_tensor x = dp_backend_tensor_new (be, DP_F32, 2, shape);
  dp_tensor bad = dp_backend_tensor_new (be, DP_F32, 2, other);
  dp_tensor half = dp_backend_tensor_new (be, DP_F16, 2, shape);
  g_assert_false (dp_sampler_step (sm, &x, &bad, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_SHAPE);
  g_assert_nonnull (strstr (err->message, "[4, 7]"));
  g_clear_error (&err);
  g_assert_false (dp_sampler_step (sm, &half, &x, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_SHAPE);
  g_clear_error (&err);
  g_assert_cmpint (dp_sampler_step_index (sm), ==, 0);
  /* A backend error raised before the step is reported, not ignored. */
  dp_backend_fail (be, DP_ERROR_DEVICE, "simulated failure");
  g_assert_false (dp_sampler_step (sm, &x, &x, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_DEVICE);
  g_clear_error (&err);
  g_clear_error (&be->error);

  int64_t empty[1] = { 0 };
  g_assert_null (dp_sampler_new (be, sched, 1, empty, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);

  dp_backend_tensor_free (be, &x);
  dp_backend_tensor_free (be, &bad);
  dp_backend_tensor_free (be, &half);
  dp_sampler_free (sm);
  dp_schedule_free (sched);
  dp_backend_free (be);
}

/* Schedule-only cases: many step counts and shifts, both kinds. */
static void
test_schedules (void)
{
  JsonArray *list = json_object_get_array_member (cases, "schedules");
  g_assert_cmpuint (json_array_get_length (list), >=, 50);
  double worst = 0;
  for (guint k = 0; k < json_array_get_length (list); k++) {
    JsonObject *c = json_array_get_object_element (list, k);
    dp_sampler_kind kind;
    GError *err = NULL;
    const char *kname = json_object_get_string_member (c, "kind");
    g_assert_true (dp_sampler_kind_parse (kname, &kind, &err));
    double shift = json_object_get_double_member (c, "shift");
    int steps = (int) json_object_get_int_member (c, "steps");
    dp_sampler_settings s;
    dp_sampler_settings_init (&s, kind, shift);
    dp_schedule *sched = dp_schedule_new (&s, steps, &err);
    g_assert_no_error (err);
    char *prefix = g_strdup_printf ("sched.%s.s%g.n%d", kname, shift, steps);
    worst = MAX (worst, check_schedule (sched, prefix));
    g_free (prefix);
    dp_schedule_free (sched);
  }
  g_test_message ("%u schedules: timesteps exact, max sigma diff %.3g", json_array_get_length (list), worst);
  /* WAN-NOTES: s = 3, N = 50 gives 999, 993, 986. */
  dp_sampler_settings s;
  dp_sampler_settings_init (&s, DP_SAMPLER_UNIPC, 3.0);
  dp_schedule *sched = dp_schedule_new (&s, 50, NULL);
  g_assert_cmpfloat (sched->timesteps[0], ==, 999);
  g_assert_cmpfloat (sched->timesteps[1], ==, 993);
  g_assert_cmpfloat (sched->timesteps[2], ==, 986);
  g_assert_cmpfloat (sched->sigmas[50], ==, 0);
  dp_schedule_free (sched);
}

/* ---- scheduler_config.json ------------------------------------------------- */

static void
test_config_files (void)
{
  GError *err = NULL;
  char *wan = data_path ("wan"), *euler = data_path ("euler");
  dp_sampler_settings s, want;

  g_assert_true (dp_sampler_settings_load (&s, wan, DP_SAMPLER_UNIPC, &err));
  g_assert_no_error (err);
  dp_sampler_settings_init (&want, DP_SAMPLER_UNIPC, 3.0);
  g_assert_cmpmem (&s, sizeof s, &want, sizeof want);
  /* The schedule from the file is the golden Wan run's. */
  dp_schedule *sched = dp_schedule_new (&s, 50, &err);
  g_assert_no_error (err);
  check_schedule (sched, "unipc_s3_n50");
  dp_schedule_free (sched);

  /* Euler from Wan's UniPC config: the flow shift carries over. */
  g_assert_true (dp_sampler_settings_load (&s, wan, DP_SAMPLER_EULER, &err));
  g_assert_no_error (err);
  g_assert_cmpint (s.kind, ==, DP_SAMPLER_EULER);
  g_assert_cmpfloat (s.shift, ==, 3.0);
  g_assert_cmpint (s.num_train_timesteps, ==, 1000);
  sched = dp_schedule_new (&s, 50, &err);
  check_schedule (sched, "euler_s3_n50");
  dp_schedule_free (sched);

  /* A FlowMatchEulerDiscreteScheduler config: "shift". */
  g_assert_true (dp_sampler_settings_load (&s, euler, DP_SAMPLER_EULER, &err));
  g_assert_no_error (err);
  g_assert_cmpfloat (s.shift, ==, 5.0);
  sched = dp_schedule_new (&s, 10, &err);
  check_schedule (sched, "euler_s5_n10");
  dp_schedule_free (sched);
  g_assert_true (dp_sampler_settings_load (&s, euler, DP_SAMPLER_UNIPC, &err));
  dp_sampler_settings_init (&want, DP_SAMPLER_UNIPC, 5.0);
  g_assert_cmpmem (&s, sizeof s, &want, sizeof want);

  /* Missing directory. */
  g_assert_false (dp_sampler_settings_load (&s, "/nonexistent/model", DP_SAMPLER_UNIPC, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_MISSING);
  g_assert_nonnull (strstr (err->message, "scheduler_config.json"));
  g_clear_error (&err);
  g_free (wan);
  g_free (euler);
}

/* Writes json into <tmp>/scheduler/scheduler_config.json and loads it. */
static gboolean
load_text (const char *tmp, const char *json, dp_sampler_kind kind, dp_sampler_settings *s,
           GError **error)
{
  char *dir = g_build_filename (tmp, "scheduler", NULL);
  g_assert_cmpint (g_mkdir_with_parents (dir, 0755), ==, 0);
  char *path = g_build_filename (dir, "scheduler_config.json", NULL);
  g_assert_true (g_file_set_contents (path, json, -1, NULL));
  gboolean ok = dp_sampler_settings_load (s, tmp, kind, error);
  g_unlink (path);
  g_rmdir (dir);
  g_free (path);
  g_free (dir);
  return ok;
}

#define UNIPC_HEAD "{\"_class_name\": \"UniPCMultistepScheduler\", \"num_train_timesteps\": 1000, "
#define FLOW_KEYS "\"prediction_type\": \"flow_prediction\", \"use_flow_sigmas\": true"

static void
test_config_errors (void)
{
  char *tmp = dp_test_make_tmp_dir ("dp-sampler-XXXXXX");
  dp_sampler_settings s;
  GError *err = NULL;

  /* The minimal valid config: defaults are Wan's. */
  g_assert_true (load_text (tmp, UNIPC_HEAD FLOW_KEYS ", \"flow_shift\": 5}", DP_SAMPLER_UNIPC, &s, &err));
  g_assert_no_error (err);
  g_assert_cmpfloat (s.shift, ==, 5.0);
  g_assert_true (load_text (tmp, UNIPC_HEAD FLOW_KEYS ", \"solver_type\": \"bh1\", \"solver_order\": 1, "
                            "\"final_sigmas_type\": \"sigma_min\", \"lower_order_final\": false}",
                            DP_SAMPLER_UNIPC, &s, &err));
  g_assert_no_error (err);
  g_assert_cmpint (s.variant, ==, DP_UNIPC_BH1);
  g_assert_cmpint (s.solver_order, ==, 1);
  g_assert_true (s.final_sigma_min);
  g_assert_false (s.lower_order_final);

  static const struct {
    const char *json;
    int code;
    const char *key; /* must appear in the message */
  } bad[] = {
    { UNIPC_HEAD "\"use_flow_sigmas\": true}", DP_ERROR_UNSUPPORTED, "prediction_type" },
    { UNIPC_HEAD "\"prediction_type\": \"epsilon\", \"use_flow_sigmas\": true}", DP_ERROR_UNSUPPORTED,
      "epsilon" },
    { UNIPC_HEAD "\"prediction_type\": \"flow_prediction\"}", DP_ERROR_UNSUPPORTED, "use_flow_sigmas" },
    { UNIPC_HEAD FLOW_KEYS ", \"solver_order\": 3}", DP_ERROR_UNSUPPORTED, "solver_order" },
    { UNIPC_HEAD FLOW_KEYS ", \"solver_type\": \"dpm\"}", DP_ERROR_UNSUPPORTED, "solver_type" },
    { UNIPC_HEAD FLOW_KEYS ", \"final_sigmas_type\": \"one\"}", DP_ERROR_UNSUPPORTED, "final_sigmas_type" },
    { UNIPC_HEAD FLOW_KEYS ", \"lower_order_final\": false}", DP_ERROR_UNSUPPORTED, "lower_order_final" },
    { UNIPC_HEAD FLOW_KEYS ", \"predict_x0\": false}", DP_ERROR_UNSUPPORTED, "predict_x0" },
    { UNIPC_HEAD FLOW_KEYS ", \"disable_corrector\": [3]}", DP_ERROR_UNSUPPORTED, "disable_corrector" },
    { UNIPC_HEAD FLOW_KEYS ", \"use_karras_sigmas\": true}", DP_ERROR_UNSUPPORTED, "use_karras_sigmas" },
    { UNIPC_HEAD FLOW_KEYS ", \"thresholding\": true}", DP_ERROR_UNSUPPORTED, "thresholding" },
    { UNIPC_HEAD FLOW_KEYS ", \"use_dynamic_shifting\": true}", DP_ERROR_UNSUPPORTED, "use_dynamic_shifting" },
    { UNIPC_HEAD FLOW_KEYS ", \"shift_terminal\": 0.1}", DP_ERROR_UNSUPPORTED, "shift_terminal" },
    { UNIPC_HEAD FLOW_KEYS ", \"flow_shift\": \"three\"}", DP_ERROR_FORMAT, "flow_shift" },
    { UNIPC_HEAD FLOW_KEYS ", \"flow_shift\": -1.0}", DP_ERROR_INVALID, "shift" },
    { UNIPC_HEAD FLOW_KEYS ", \"solver_order\": 2.5}", DP_ERROR_FORMAT, "solver_order" },
    { "{\"_class_name\": \"UniPCMultistepScheduler\", \"num_train_timesteps\": 0, " FLOW_KEYS "}",
      DP_ERROR_FORMAT, "num_train_timesteps" },
    { "{\"_class_name\": \"DDIMScheduler\"}", DP_ERROR_UNSUPPORTED, "DDIMScheduler" },
    { "{\"num_train_timesteps\": 1000}", DP_ERROR_MISSING, "_class_name" },
    { "{\"_class_name\": \"FlowMatchEulerDiscreteScheduler\", \"use_dynamic_shifting\": true}",
      DP_ERROR_UNSUPPORTED, "use_dynamic_shifting" },
    { "{\"_class_name\": \"FlowMatchEulerDiscreteScheduler\", \"invert_sigmas\": true}",
      DP_ERROR_UNSUPPORTED, "invert_sigmas" },
    { "{\"_class_name\": \"FlowMatchEulerDiscreteScheduler\", \"stochastic_sampling\": true}",
      DP_ERROR_UNSUPPORTED, "stochastic_sampling" },
    { "[1, 2]", DP_ERROR_FORMAT, "object" },
    { "{\"_class_name\": ", DP_ERROR_FORMAT, "JSON" },
  };
  for (guint k = 0; k < G_N_ELEMENTS (bad); k++) {
    if (load_text (tmp, bad[k].json, DP_SAMPLER_UNIPC, &s, &err))
      g_error ("config accepted: %s", bad[k].json);
    g_assert_error (err, DP_ERROR, bad[k].code);
    if (!strstr (err->message, bad[k].key))
      g_error ("message \"%s\" does not name %s", err->message, bad[k].key);
    g_assert_nonnull (strstr (err->message, "scheduler_config.json"));
    g_clear_error (&err);
  }
  /* lower_order_final false is fine for Euler (UniPC-only keys are ignored). */
  g_assert_true (load_text (tmp, UNIPC_HEAD FLOW_KEYS ", \"lower_order_final\": false}", DP_SAMPLER_EULER,
                            &s, &err));
  g_assert_no_error (err);
  g_rmdir (tmp);
  g_free (tmp);
}

/* Bad schedule requests. */
static void
test_schedule_errors (void)
{
  GError *err = NULL;
  dp_sampler_settings s;
  dp_sampler_settings_init (&s, DP_SAMPLER_UNIPC, 3.0);
  g_assert_null (dp_schedule_new (&s, 0, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  g_assert_null (dp_schedule_new (&s, DP_SAMPLER_MAX_STEPS + 1, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);

  const double rising[] = { 0.5, 0.7 }, too_big[] = { 1.5, 0.5 }, with_nan[] = { 0.9, NAN };
  const double zero[] = { 0.5, 0.0 };
  g_assert_null (dp_schedule_new_sigmas (&s, rising, 2, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_assert_nonnull (strstr (err->message, "decrease"));
  g_clear_error (&err);
  s.shift = 1.0;
  g_assert_null (dp_schedule_new_sigmas (&s, too_big, 2, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_assert_nonnull (strstr (err->message, "(0, 1)"));
  g_clear_error (&err);
  g_assert_null (dp_schedule_new_sigmas (&s, zero, 2, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  g_assert_null (dp_schedule_new_sigmas (&s, with_nan, 2, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  /* Euler takes any decreasing finite list, including a last sigma of 0. */
  s.kind = DP_SAMPLER_EULER;
  dp_schedule *sched = dp_schedule_new_sigmas (&s, zero, 2, &err);
  g_assert_no_error (err);
  g_assert_cmpfloat (sched->timesteps[0], ==, 500.0f);
  dp_schedule_free (sched);

  /* Settings checked whoever filled them. */
  dp_sampler_settings_init (&s, DP_SAMPLER_UNIPC, 0.0);
  g_assert_null (dp_schedule_new (&s, 10, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  dp_sampler_settings_init (&s, DP_SAMPLER_UNIPC, 3.0);
  s.solver_order = 3;
  g_assert_null (dp_schedule_new (&s, 10, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_UNSUPPORTED);
  g_clear_error (&err);
  s.solver_order = 2;
  s.lower_order_final = FALSE;
  g_assert_null (dp_schedule_new (&s, 10, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_UNSUPPORTED);
  g_clear_error (&err);

  dp_sampler_kind kind;
  g_assert_true (dp_sampler_kind_parse ("UniPC", &kind, NULL));
  g_assert_cmpint (kind, ==, DP_SAMPLER_UNIPC);
  g_assert_cmpstr (dp_sampler_kind_name (DP_SAMPLER_EULER), ==, "euler");
  g_assert_false (dp_sampler_kind_parse ("ddim", &kind, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
}

/* UniPC bh1 into sigma 0 (diffusers returns NaN there, so no golden data):
 * the last step returns the corrected x0 prediction, finite. */
static void
test_bh1_final_zero (void)
{
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  dp_sampler_settings s;
  dp_sampler_settings_init (&s, DP_SAMPLER_UNIPC, 3.0);
  s.variant = DP_UNIPC_BH1;
  dp_schedule *sched = dp_schedule_new (&s, 6, &err);
  g_assert_no_error (err);
  int64_t shape[1] = { 8 };
  dp_sampler *sm = dp_sampler_new (be, sched, 1, shape, &err);
  g_assert_no_error (err);
  dp_tensor x = dp_backend_tensor_new (be, DP_F32, 1, shape), v = dp_backend_tensor_new (be, DP_F32, 1, shape);
  float *xd = x.data, *vd = v.data;
  for (int j = 0; j < 8; j++)
    xd[j] = 0.3f * j - 1.0f;
  /* A model that always predicts x0 = 0.25: v = (x - 0.25) / sigma. */
  for (int i = 0; i < 6; i++) {
    double sg = dp_sampler_sigma (sm, i);
    for (int j = 0; j < 8; j++)
      vd[j] = (float) ((xd[j] - 0.25) / sg);
    g_assert_true (dp_sampler_step (sm, &x, &v, &err));
    g_assert_no_error (err);
  }
  /* With a constant x0 prediction every UniPC update is exact. */
  for (int j = 0; j < 8; j++)
    g_assert_cmpfloat_with_epsilon (xd[j], 0.25f, 1e-5);
  dp_backend_tensor_free (be, &x);
  dp_backend_tensor_free (be, &v);
  dp_sampler_free (sm);
  dp_schedule_free (sched);
  dp_backend_free (be);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  load_data ();
  g_test_add_func ("/sampler/schedules", test_schedules);
  g_test_add_func ("/sampler/trajectories", test_trajectories);
  g_test_add_func ("/sampler/interleaved", test_interleaved);
  g_test_add_func ("/sampler/no-step-allocation-and-reset", test_no_step_allocation_and_reset);
  g_test_add_func ("/sampler/step-errors", test_step_errors);
  g_test_add_func ("/sampler/config-files", test_config_files);
  g_test_add_func ("/sampler/config-errors", test_config_errors);
  g_test_add_func ("/sampler/schedule-errors", test_schedule_errors);
  g_test_add_func ("/sampler/bh1-final-zero", test_bh1_final_zero);
  int rc = g_test_run ();
  dp_safetensors_close (golden);
  g_object_unref (cases_parser);
  return rc;
}
