/* The classic text-to-video pipeline behind the generator API, against
 * diffusers' WanPipeline on a tiny random-weight model (tests/data/pipeline,
 * made by tools/make_pipeline_golden.py: 48x32 pixels, 9 frames = 3 latent
 * frames of 4x6, text length 32, the initial noise given to both sides).
 *
 * Tolerances (fp32 on both sides; measured values in brackets):
 * - token ids equal;
 * - text context rel. L2 <= 1e-5 per entry, the umT5 golden test's budget
 *   (1.1e-6);
 * - latents after every sampler step rel. L2 <= 1e-5, UniPC and Euler (the
 *   issue asks 1e-4; worst step 1.4e-6);
 * - float frames rel. L2 <= 1e-5 (6.5e-7);
 * - uint8 frames: every value within 1 level, and >= 99.9% exactly equal
 *   (rounding at .5 may flip; 99.988% to 99.998% exact).
 * Wan2.2 T2V-A14B, two experts (tests/data/wan22, tools/make_wan22_golden.py:
 * transformer/ and transformer_2/ with other weights, boundary_ratio 0.9, the
 * same prompts, size and noise), the same tolerances: which expert ran each
 * step equals diffusers' (forward hooks), latents after every step rel. L2
 * 9.5e-7 (UniPC, guidance_scale_2 3) and 2.1e-6 (Euler, guidance_scale_2 not
 * given), uint8 frames 99.993% exact, worst difference 1; the boundary moved
 * just past the timestep of step 1 makes step 1 run the other expert, whose
 * latents are then 0.39 away (rel. L2): a wrong switch step fails.
 * Wan2.2 TI2V-5B as text-to-video (tests/data/ti2v, tools/make_ti2v_golden.py:
 * expand_timesteps, 48 channels, the Wan2.2 VAE; 64x64, 9 frames = 3 latent
 * frames of 4x4), the same tolerances: latents after every step rel. L2
 * 9.0e-7 (UniPC) and 1.05e-6 (Euler), text context 1.3e-6, uint8 frames
 * 99.997% exact, worst difference 1; without "_dualparal" hints it runs at
 * 1280x704, 24 fps; a TI2V index over Wan2.1 parts, a non-boolean
 * expand_timesteps and TI2V with two experts are refused.
 * Also: the frames come as 1, then blocks of 4, in order; the seeded noise
 * path and reruns are deterministic; cancel from another thread, before a
 * run and from the frame callback; bad settings and broken model
 * directories give the right error code and a message naming the problem. */
#include <math.h>
#include <string.h>

#include <glib/gstdio.h>
#include <json-glib/json-glib.h>

#include "dualparal/backend.h"
#include "dualparal/generator.h"
#include "dualparal/rng.h"
#include "dualparal/safetensors.h"
#include "dualparal/tokenizer.h"
#include "generator_private.h"
#include "test_util.h"

#define CONTEXT_TOL 1e-5
#define LATENT_TOL 1e-5
#define VIDEO_TOL 1e-5
#define FRAMES_EXACT_MIN 0.999

/* ------------------------------------------------------------ helpers */

typedef struct {
  JsonParser *parser;
  JsonObject *root;
  dp_safetensors *golden;
  char *model_dir;
} golden_data;

/* set: a folder of tests/data ("pipeline": Wan2.1, tools/make_pipeline_golden.py;
 * "wan22": two experts, tools/make_wan22_golden.py), model: its model folder. */
static void
golden_open_set (golden_data *g, const char *set, const char *model)
{
  GError *err = NULL;
  char *path = dp_test_data_path (set, "cases.json", NULL);
  g->parser = dp_test_parse_json (path);
  g->root = json_node_get_object (json_parser_get_root (g->parser));
  g_free (path);
  path = dp_test_data_path (set, "golden.safetensors", NULL);
  g->golden = dp_safetensors_open (path, &err);
  g_assert_no_error (err);
  g_free (path);
  g->model_dir = dp_test_data_path (set, model, NULL);
}

static void
golden_open (golden_data *g)
{
  golden_open_set (g, "pipeline", "tiny-wan");
}

static void
golden_close (golden_data *g)
{
  g_object_unref (g->parser);
  dp_safetensors_close (g->golden);
  g_free (g->model_dir);
}

static JsonObject *
golden_case (golden_data *g, const char *name)
{
  JsonArray *cases = json_object_get_array_member (g->root, "cases");
  for (guint i = 0; i < json_array_get_length (cases); i++) {
    JsonObject *c = json_array_get_object_element (cases, i);
    if (strcmp (json_object_get_string_member (c, "name"), name) == 0)
      return c;
  }
  g_assert_not_reached ();
  return NULL;
}

static dp_tensor
golden_tensor (golden_data *g, const char *name)
{
  GError *err = NULL;
  dp_tensor t;
  g_assert_true (dp_safetensors_load (g->golden, name, DP_F32, -1, NULL, &t, &err));
  g_assert_no_error (err);
  return t;
}

/* The golden run's settings: the model's native size and text length (from
 * model_index.json), the prompts of cases.json. */
static void
golden_params (golden_data *g, dp_generator_params *p)
{
  dp_generator_params_init (p);
  p->model_dir = g->model_dir;
  p->prompt = json_object_get_string_member (g->root, "prompt");
  p->negative_prompt = json_object_get_string_member (g->root, "negative_prompt");
  p->num_frames = (int) json_object_get_int_member (g->root, "num_frames");
  p->steps = 3;
}

static dp_generator *
generator_new_ok (const dp_generator_params *p)
{
  GError *err = NULL;
  dp_generator *gen = dp_generator_new (p, &err);
  g_assert_no_error (err);
  g_assert_nonnull (gen);
  return gen;
}

/* Frames as delivered. */
typedef struct {
  int width, height;
  int64_t expected_total;
  GByteArray *rgb;
  int64_t frames;
  int calls;
  int first_block;      /* frames in the first delivery */
  int stop_after_calls; /* > 0: return FALSE on that call */
} sink;

static void
sink_init (sink *s, dp_generator *gen)
{
  memset (s, 0, sizeof *s);
  dp_generator_get_size (gen, &s->width, &s->height);
  s->expected_total = dp_generator_num_frames (gen);
  s->rgb = g_byte_array_new ();
}

static void
sink_clear (sink *s)
{
  g_byte_array_unref (s->rgb);
}

static gboolean
sink_frames (const uint8_t *rgb, int n, int64_t first, const dp_progress *p, void *data)
{
  sink *s = data;
  g_assert_cmpint (first, ==, s->frames); /* in order, no gaps */
  g_assert_cmpint (n, >=, 1);
  g_assert_cmpint (n, ==, s->calls == 0 ? 1 : 4); /* 1, then blocks of 4 */
  g_assert_nonnull (p);
  g_assert_cmpint (p->frames_done, ==, first + n);
  g_assert_cmpint (p->frames_total, ==, s->expected_total);
  g_assert_cmpint (p->blocks_in_flight, ==, 1);
  g_assert_cmpfloat (p->block_seconds, >=, 0.0);
  if (s->calls == 0)
    s->first_block = n;
  g_byte_array_append (s->rgb, rgb, (guint) ((size_t) n * s->width * s->height * 3));
  s->frames += n;
  s->calls++;
  return s->stop_after_calls <= 0 || s->calls < s->stop_after_calls;
}

/* ------------------------------------------------------------ golden */

static void
test_tokens (void)
{
  golden_data g;
  GError *err = NULL;
  golden_open (&g);
  dp_tokenizer *tok = dp_tokenizer_load (g.model_dir, &err);
  g_assert_no_error (err);
  const int text_len = (int) json_object_get_int_member (g.root, "text_len");
  const char *prompts[2] = { "prompt", "negative_prompt" };
  const char *keys[2] = { "ids_cond", "ids_uncond" };
  int32_t *ids = g_new (int32_t, text_len);

  for (int k = 0; k < 2; k++) {
    JsonArray *want = json_object_get_array_member (g.root, keys[k]);
    int n = dp_tokenizer_encode (tok, json_object_get_string_member (g.root, prompts[k]), text_len,
                                 ids, &err);
    g_assert_no_error (err);
    g_assert_cmpint (n, ==, (int) json_array_get_length (want));
    for (int i = 0; i < n; i++)
      g_assert_cmpint (ids[i], ==, (int) json_array_get_int_element (want, i));
    for (int i = n; i < text_len; i++)
      g_assert_cmpint (ids[i], ==, dp_tokenizer_pad_id (tok));
  }
  g_free (ids);
  dp_tokenizer_free (tok);
  golden_close (&g);
}

typedef struct {
  golden_data *g;
  const char *name;
  gboolean guided;
  int steps_seen;
  int64_t video_frames;
  dp_tensor want_latents; /* [N, C, F, h, w] */
  dp_tensor want_video;   /* [F, H, W, 3] in [0, 1], or data NULL */
  float *video;           /* the run's float frames as [F, H, W, 3] in [0, 1] */
  int W, H;
  double worst_latent, worst_context[2];
  JsonArray *experts;     /* the expert diffusers ran at each step, or NULL (one) */
} golden_run;

static void
trace_context (const dp_tensor *context, const int *n_tokens, void *data)
{
  golden_run *r = data;
  const char *keys[2] = { "embeds.cond", "embeds.uncond" };
  const char *ids[2] = { "ids_cond", "ids_uncond" };
  g_assert_cmpint (context->ndim, ==, 3);
  g_assert_cmpint (context->shape[0], ==, r->guided ? 2 : 1);
  for (int b = 0; b < context->shape[0]; b++) {
    dp_tensor want = golden_tensor (r->g, keys[b]);
    const size_t n = (size_t) context->shape[1] * context->shape[2];
    g_assert_cmpint (dp_tensor_nelem (&want), ==, n);
    g_assert_cmpint (n_tokens[b], ==,
                     (int) json_array_get_length (json_object_get_array_member (r->g->root, ids[b])));
    r->worst_context[b] = dp_test_rel_l2 ((const float *) context->data + b * n, want.data, n);
    /* The padding rows are exactly zero on both sides. */
    for (size_t i = (size_t) n_tokens[b] * context->shape[2]; i < n; i++)
      g_assert_cmpfloat (((const float *) context->data)[b * n + i], ==, 0.0f);
    dp_tensor_free (&want);
  }
}

static void
trace_step (int i, const dp_tensor *latents, int expert, void *data)
{
  golden_run *r = data;
  const size_t n = dp_tensor_nelem (latents);
  g_assert_cmpint (i, ==, r->steps_seen);
  g_assert_cmpint (i, <, r->want_latents.shape[0]);
  g_assert_cmpint (n * r->want_latents.shape[0], ==, dp_tensor_nelem (&r->want_latents));
  g_assert_cmpint (expert, ==, r->experts ? json_array_get_int_element (r->experts, i) : 0);
  double e = dp_test_rel_l2 (latents->data, (const float *) r->want_latents.data + i * n, n);
  g_test_message ("%s: step %d latents relative L2 %.3g", r->name, i, e);
  r->worst_latent = MAX (r->worst_latent, e);
  r->steps_seen++;
}

static void
trace_video (const float *video, int n, int64_t first, void *data)
{
  golden_run *r = data;
  const size_t hw = (size_t) r->H * r->W;
  for (int f = 0; f < n; f++)
    for (size_t p = 0; p < hw; p++)
      for (int c = 0; c < 3; c++) {
        float v = video[((size_t) c * n + f) * hw + p] * 0.5f + 0.5f;
        r->video[((first + f) * hw + p) * 3 + c] = CLAMP (v, 0.0f, 1.0f);
      }
  r->video_frames = first + n;
}

/* data: "CASE" (Wan2.1, tests/data/pipeline), "wan22/CASE" (two experts) or
 * "ti2v/CASE" (per-token timesteps, the Wan2.2 VAE). */
static void
test_golden (gconstpointer data)
{
  const char *name = data;
  golden_data g;
  if (g_str_has_prefix (name, "wan22/")) {
    name += strlen ("wan22/");
    golden_open_set (&g, "wan22", "tiny-wan22");
  } else if (g_str_has_prefix (name, "ti2v/")) {
    name += strlen ("ti2v/");
    golden_open_set (&g, "ti2v", "tiny-ti2v");
  } else {
    golden_open (&g);
  }
  JsonObject *c = golden_case (&g, name);
  dp_generator_params p;
  GError *err = NULL;
  char key[64];

  golden_params (&g, &p);
  p.steps = (int) json_object_get_int_member (c, "steps");
  p.guidance_scale = json_object_get_double_member (c, "guidance");
  if (json_object_has_member (c, "guidance_2") && !json_object_get_null_member (c, "guidance_2"))
    p.guidance_scale_2 = json_object_get_double_member (c, "guidance_2");
  g_assert_true (dp_sampler_kind_parse (json_object_get_string_member (c, "sampler"), &p.sampler,
                                        &err));
  /* flow_shift 0: the scheduler config's flow_shift, the shift of both cases. */
  g_assert_cmpfloat (json_object_get_double_member (c, "shift"), ==, 3.0);
  dp_generator *gen = generator_new_ok (&p);

  /* Native size and text length come from model_index.json's "_dualparal". */
  int W, H;
  dp_generator_get_size (gen, &W, &H);
  g_assert_cmpint (W, ==, json_object_get_int_member (g.root, "width"));
  g_assert_cmpint (H, ==, json_object_get_int_member (g.root, "height"));
  g_assert_cmpint (dp_generator_text_len (gen), ==, json_object_get_int_member (g.root, "text_len"));
  g_assert_cmpint (dp_generator_fps (gen), ==, json_object_get_int_member (g.root, "fps"));
  /* Size steps: VAE scale x patch, 8 x 2 (Wan2.1, A14B) or 16 x 2 (TI2V). */
  int step_w, step_h;
  dp_generator_get_size_step (gen, &step_w, &step_h);
  g_assert_cmpint (step_w, ==, g_str_has_prefix (data, "ti2v/") ? 32 : 16);
  g_assert_cmpint (step_h, ==, step_w);

  golden_run r = { &g, name, p.guidance_scale > 1.0 };
  if (json_object_has_member (c, "experts"))
    r.experts = json_object_get_array_member (c, "experts");
  r.W = W;
  r.H = H;
  g_snprintf (key, sizeof key, "%s.latents", name);
  r.want_latents = golden_tensor (&g, key);
  g_snprintf (key, sizeof key, "%s.video", name);
  if (dp_safetensors_contains (g.golden, key))
    r.want_video = golden_tensor (&g, key);
  r.video = g_new0 (float, (size_t) p.num_frames * H * W * 3);
  dp_tensor noise = golden_tensor (&g, "noise");
  dp_classic_trace trace = { trace_context, trace_step, trace_video, &r };
  sink s;
  sink_init (&s, gen);

  g_assert_true (dp_generator_run_traced (gen, &noise, &trace, sink_frames, &s, &err));
  g_assert_no_error (err);
  g_assert_cmpint (r.steps_seen, ==, p.steps);
  g_assert_cmpint (s.frames, ==, p.num_frames);
  g_assert_cmpint (s.first_block, ==, 1);
  g_assert_cmpint (r.video_frames, ==, p.num_frames);

  g_test_message ("%s: context relative L2 cond %.3g uncond %.3g; worst step latents %.3g", name,
                  r.worst_context[0], r.worst_context[1], r.worst_latent);
  g_assert_cmpfloat (r.worst_context[0], <=, CONTEXT_TOL);
  g_assert_cmpfloat (r.worst_context[1], <=, CONTEXT_TOL);
  g_assert_cmpfloat (r.worst_latent, <=, LATENT_TOL);

  /* uint8 frames (the Wan2.2 data keeps them for one case). */
  g_snprintf (key, sizeof key, "%s.frames", name);
  const size_t nvals = (size_t) p.num_frames * H * W * 3;
  dp_tensor want = { 0 };
  if (!dp_safetensors_contains (g.golden, key))
    goto no_frames;
  want = golden_tensor (&g, key);
  g_assert_cmpint (dp_tensor_nelem (&want), ==, nvals);
  g_assert_cmpint (s.rgb->len, ==, nvals);
  size_t exact = 0;
  int worst = 0;
  for (size_t i = 0; i < nvals; i++) {
    int d = abs ((int) s.rgb->data[i] - (int) ((const float *) want.data)[i]);
    worst = MAX (worst, d);
    exact += d == 0;
  }
  g_test_message ("%s: uint8 frames %.5f%% exact, worst difference %d", name,
                  100.0 * exact / nvals, worst);
  g_assert_cmpint (worst, <=, 1);
  g_assert_cmpfloat ((double) exact / nvals, >=, FRAMES_EXACT_MIN);

no_frames:
  if (r.want_video.data) {
    double e = dp_test_rel_l2 (r.video, r.want_video.data, nvals);
    g_test_message ("%s: float frames relative L2 %.3g", name, e);
    g_assert_cmpfloat (e, <=, VIDEO_TOL);
  }

  dp_tensor_free (&want);
  dp_tensor_free (&noise);
  dp_tensor_free (&r.want_latents);
  dp_tensor_free (&r.want_video);
  g_free (r.video);
  sink_clear (&s);
  dp_generator_free (gen);
  golden_close (&g);
}

/* ------------------------------------------------------------ seeded runs */

/* dp_generator_run draws its noise with Philox from the seed: the same as
 * passing that noise in; reruns give the same frames; another seed others. */
static void
test_seeded (void)
{
  golden_data g;
  golden_open (&g);
  dp_generator_params p;
  GError *err = NULL;
  golden_params (&g, &p);
  p.seed = 1234;
  p.steps = 2;
  dp_generator *gen = generator_new_ok (&p);
  sink a, b, c, d;

  sink_init (&a, gen);
  g_assert_true (dp_generator_run (gen, sink_frames, &a, &err));
  g_assert_no_error (err);
  sink_init (&b, gen);
  g_assert_true (dp_generator_run (gen, sink_frames, &b, &err));
  g_assert_no_error (err);
  g_assert_cmpint (a.rgb->len, ==, b.rgb->len);
  g_assert_cmpmem (a.rgb->data, a.rgb->len, b.rgb->data, b.rgb->len);

  int64_t shape[4];
  dp_generator_latent_shape (gen, shape);
  dp_tensor noise = dp_tensor_new_host (DP_F32, 4, shape);
  dp_rng_latent_noise (p.seed, DP_CLASSIC_NOISE_STREAM, 0, (int) shape[1], (int) shape[0],
                       (int) shape[2], (int) shape[3], noise.data);
  sink_init (&c, gen);
  g_assert_true (dp_generator_run_traced (gen, &noise, NULL, sink_frames, &c, &err));
  g_assert_no_error (err);
  g_assert_cmpmem (a.rgb->data, a.rgb->len, c.rgb->data, c.rgb->len);
  dp_tensor_free (&noise);
  dp_generator_free (gen);

  p.seed = 1235;
  gen = generator_new_ok (&p);
  sink_init (&d, gen);
  g_assert_true (dp_generator_run (gen, sink_frames, &d, &err));
  g_assert_no_error (err);
  g_assert_cmpint (a.rgb->len, ==, d.rgb->len);
  g_assert_true (memcmp (a.rgb->data, d.rgb->data, a.rgb->len) != 0);

  sink_clear (&a);
  sink_clear (&b);
  sink_clear (&c);
  sink_clear (&d);
  dp_generator_free (gen);
  golden_close (&g);
}

/* ------------------------------------------------------------ cancel */

typedef struct {
  dp_generator *gen;
  GMutex lock;
  GCond cond;
  int steps;           /* steps finished */
  gboolean cancelled;  /* the main thread has called cancel */
  sink frames;
  gboolean ok;
  GError *error;
  gint64 returned_at;
} cancel_run;

/* On the run's thread: after the first step, wait until the main thread
 * has cancelled, so the check before the next step must see it. */
static void
cancel_on_step (const dp_step_progress *p, void *data)
{
  cancel_run *c = data;
  g_assert_cmpint (p->steps_total, ==, 3);
  g_assert_cmpfloat (p->step_seconds, >=, 0.0);
  g_mutex_lock (&c->lock);
  c->steps = p->step;
  g_cond_broadcast (&c->cond);
  while (!c->cancelled)
    g_cond_wait (&c->cond, &c->lock);
  g_mutex_unlock (&c->lock);
}

static gpointer
cancel_thread (gpointer data)
{
  cancel_run *c = data;
  c->ok = dp_generator_run (c->gen, sink_frames, &c->frames, &c->error);
  c->returned_at = g_get_monotonic_time ();
  return NULL;
}

static void
test_cancel_thread (void)
{
  golden_data g;
  golden_open (&g);
  dp_generator_params p;
  golden_params (&g, &p);
  cancel_run c = { 0 };
  c.gen = generator_new_ok (&p);
  g_mutex_init (&c.lock);
  g_cond_init (&c.cond);
  sink_init (&c.frames, c.gen);
  dp_generator_set_step_callback (c.gen, cancel_on_step, &c);

  GThread *t = g_thread_new ("run", cancel_thread, &c);
  g_mutex_lock (&c.lock);
  while (c.steps < 1)
    g_cond_wait (&c.cond, &c.lock);
  dp_generator_cancel (c.gen);
  gint64 cancelled_at = g_get_monotonic_time ();
  c.cancelled = TRUE;
  g_cond_broadcast (&c.cond);
  g_mutex_unlock (&c.lock);
  g_thread_join (t);

  g_assert_false (c.ok);
  g_assert_error (c.error, DP_ERROR, DP_ERROR_CANCELLED);
  g_test_message ("cancelled: %s (returned %.1f ms after the cancel)", c.error->message,
                  (c.returned_at - cancelled_at) / 1e3);
  g_assert_nonnull (strstr (c.error->message, "step 2 of 3"));
  g_assert_cmpint (c.steps, ==, 1); /* no step after the cancel */
  g_assert_cmpint (c.frames.frames, ==, 0);
  g_assert_cmpint (c.returned_at - cancelled_at, <, 2 * G_USEC_PER_SEC);
  g_clear_error (&c.error);
  sink_clear (&c.frames);

  /* The request is used up: the next run goes through. */
  dp_generator_set_step_callback (c.gen, NULL, NULL);
  sink_init (&c.frames, c.gen);
  GError *err = NULL;
  g_assert_true (dp_generator_run (c.gen, sink_frames, &c.frames, &err));
  g_assert_no_error (err);
  g_assert_cmpint (c.frames.frames, ==, p.num_frames);
  sink_clear (&c.frames);

  dp_generator_free (c.gen);
  g_mutex_clear (&c.lock);
  g_cond_clear (&c.cond);
  golden_close (&g);
}

static void
count_step (const dp_step_progress *p, void *data)
{
  (*(int *) data)++;
}

/* A cancel while idle applies to the next run, which stops before any work. */
static void
test_cancel_before_run (void)
{
  golden_data g;
  golden_open (&g);
  dp_generator_params p;
  golden_params (&g, &p);
  dp_generator *gen = generator_new_ok (&p);
  GError *err = NULL;
  int steps = 0;
  sink s;

  dp_generator_set_step_callback (gen, count_step, &steps);
  dp_generator_cancel (gen);
  sink_init (&s, gen);
  g_assert_false (dp_generator_run (gen, sink_frames, &s, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_CANCELLED);
  g_test_message ("%s", err->message);
  g_clear_error (&err);
  g_assert_cmpint (steps, ==, 0);
  g_assert_cmpint (s.frames, ==, 0);
  sink_clear (&s);
  dp_generator_free (gen);
  golden_close (&g);
}

/* The frame callback stops the run: DP_ERROR_CANCELLED, what was delivered
 * stays delivered. */
static void
test_callback_stop (void)
{
  golden_data g;
  golden_open (&g);
  dp_generator_params p;
  golden_params (&g, &p);
  dp_generator *gen = generator_new_ok (&p);
  GError *err = NULL;
  sink s;

  sink_init (&s, gen);
  s.stop_after_calls = 2;
  g_assert_false (dp_generator_run (gen, sink_frames, &s, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_CANCELLED);
  g_test_message ("%s", err->message);
  g_clear_error (&err);
  g_assert_cmpint (s.calls, ==, 2);
  g_assert_cmpint (s.frames, ==, 5);
  sink_clear (&s);
  dp_generator_free (gen);
  golden_close (&g);
}

/* ------------------------------------------------------------ bad settings */

typedef enum {
  BAD_FRAMES_EVEN,
  BAD_FRAMES_ZERO,
  BAD_FRAMES_ENDLESS,
  BAD_FRAMES_TOO_MANY,
  BAD_WIDTH,
  BAD_ONE_SIZE,
  BAD_STEPS,
  BAD_GUIDANCE,
  BAD_GUIDANCE_NAN,
  BAD_SHIFT_NAN,
  BAD_ENGINE,
  BAD_DEVICES_LIST,
  BAD_DEVICE_NAME,
  BAD_DEVICE_EMPTY,
  BAD_DEVICE_CUDA,
  BAD_TEXT_LEN,
  BAD_PROMPT_NULL,
  BAD_PROMPT_UTF8,
  BAD_NEGATIVE_UTF8,
  BAD_MODEL_NULL,
  BAD_MODEL_ABSENT,
  BAD_SAMPLER,
} bad_setting;

typedef struct {
  bad_setting what;
  int code;
  const char *needle;
} bad_case;

static const bad_case bad_cases[] = {
  { BAD_FRAMES_EVEN, DP_ERROR_INVALID, "num_frames 8" },
  { BAD_FRAMES_ZERO, DP_ERROR_INVALID, "num_frames 0" },
  { BAD_FRAMES_ENDLESS, DP_ERROR_UNSUPPORTED, "DualParal engine" },
  { BAD_FRAMES_TOO_MANY, DP_ERROR_INVALID, "too many" },
  { BAD_WIDTH, DP_ERROR_INVALID, "multiple of 16" },
  { BAD_ONE_SIZE, DP_ERROR_INVALID, "Size 48x0" },
  { BAD_STEPS, DP_ERROR_INVALID, "steps 0" },
  { BAD_GUIDANCE, DP_ERROR_INVALID, "guidance_scale 0.5" },
  { BAD_GUIDANCE_NAN, DP_ERROR_INVALID, "guidance_scale" },
  { BAD_SHIFT_NAN, DP_ERROR_INVALID, "flow_shift" },
  { BAD_ENGINE, DP_ERROR_INVALID, "context frames" },
  { BAD_DEVICES_LIST, DP_ERROR_UNSUPPORTED, "lists 2 devices" },
  { BAD_DEVICE_NAME, DP_ERROR_INVALID, "\"tpu\" is not a device" },
  { BAD_DEVICE_EMPTY, DP_ERROR_INVALID, "empty" },
  { BAD_DEVICE_CUDA, -1, "cuda" },
  { BAD_TEXT_LEN, DP_ERROR_INVALID, "text_len" },
  { BAD_PROMPT_NULL, DP_ERROR_INVALID, "prompt" },
  { BAD_PROMPT_UTF8, DP_ERROR_INVALID, "UTF-8" },
  { BAD_NEGATIVE_UTF8, DP_ERROR_INVALID, "negative prompt" },
  { BAD_MODEL_NULL, DP_ERROR_INVALID, "model" },
  { BAD_MODEL_ABSENT, DP_ERROR_MISSING, "no-such-model" },
  { BAD_SAMPLER, DP_ERROR_INVALID, "sampler" },
};

static void
test_bad_settings (void)
{
  golden_data g;
  golden_open (&g);

  for (size_t i = 0; i < G_N_ELEMENTS (bad_cases); i++) {
    const bad_case *bc = &bad_cases[i];
    dp_generator_params p;
    GError *err = NULL;

    golden_params (&g, &p);
    switch (bc->what) {
      case BAD_FRAMES_EVEN: p.num_frames = 8; break;
      case BAD_FRAMES_ZERO: p.num_frames = 0; break;
      case BAD_FRAMES_ENDLESS: p.num_frames = -1; break;
      case BAD_FRAMES_TOO_MANY: p.num_frames = 4 * 1024 + 1; break;
      case BAD_WIDTH: p.width = 40; p.height = 32; break;
      case BAD_ONE_SIZE: p.width = 48; p.height = 0; break;
      case BAD_STEPS: p.steps = 0; break;
      case BAD_GUIDANCE: p.guidance_scale = 0.5; break;
      case BAD_GUIDANCE_NAN: p.guidance_scale = NAN; break;
      case BAD_SHIFT_NAN: p.flow_shift = NAN; break;
      case BAD_ENGINE: /* DualParal with a context longer than the block */
        p.engine = DP_ENGINE_DUALPARAL; p.block_frames = 2; p.context_frames = 3; break;
      case BAD_DEVICES_LIST: p.devices = "0,1"; break;
      case BAD_DEVICE_NAME: p.devices = "tpu"; break;
      case BAD_DEVICE_EMPTY: p.devices = "cpu,"; break;
      case BAD_DEVICE_CUDA: p.devices = "cuda:0"; break;
      case BAD_TEXT_LEN: p.text_len = -3; break;
      case BAD_PROMPT_NULL: p.prompt = NULL; break;
      case BAD_PROMPT_UTF8: p.prompt = "caf\xc3"; break;
      case BAD_NEGATIVE_UTF8: p.negative_prompt = "\xff"; break;
      case BAD_MODEL_NULL: p.model_dir = NULL; break;
      case BAD_MODEL_ABSENT: p.model_dir = "/nonexistent/no-such-model"; break;
      case BAD_SAMPLER: p.sampler = (dp_sampler_kind) 7; break;
    }
    dp_generator *gen = dp_generator_new (&p, &err);
    if (bc->what == BAD_DEVICE_CUDA && dp_backend_have_cuda ()) {
      /* With CUDA built in, a present GPU runs it; without one: DEVICE. */
      dp_generator_free (gen);
      g_clear_error (&err);
      continue;
    }
    g_assert_null (gen);
    g_assert_nonnull (err);
    g_test_message ("case %d: %s", (int) bc->what, err->message);
    g_assert_true (err->domain == DP_ERROR);
    if (bc->code >= 0)
      g_assert_cmpint (err->code, ==, bc->code);
    else
      g_assert_cmpint (err->code, ==, DP_ERROR_UNSUPPORTED);
    g_assert_nonnull (strstr (err->message, bc->needle));
    g_clear_error (&err);
  }
  golden_close (&g);
}

/* ------------------------------------------------------------ bad models */

/* Replaces the first occurrence of `from` in the file by `to`. */
static void
edit_file (const char *path, const char *from, const char *to)
{
  GError *err = NULL;
  char *data = dp_test_read_file (path, NULL);
  char *at = strstr (data, from);
  g_assert_nonnull (at);
  *at = '\0';
  char *edited = g_strconcat (data, to, at + strlen (from), NULL);
  g_assert_true (g_file_set_contents (path, edited, -1, &err));
  g_assert_no_error (err);
  g_free (edited);
  g_free (data);
}

static void
truncate_file (const char *path, double keep)
{
  GError *err = NULL;
  gsize len;
  char *data = dp_test_read_file (path, &len);
  g_assert_true (g_file_set_contents (path, data, (gssize) (len * keep), &err));
  g_assert_no_error (err);
  g_free (data);
}

typedef enum {
  BROKEN_NO_INDEX,
  BROKEN_INDEX_JSON,
  BROKEN_INDEX_CLASS,
  BROKEN_INDEX_WAN22,
  BROKEN_INDEX_TI2V,
  BROKEN_INDEX_TI2V_TYPE,
  BROKEN_INDEX_TI2V_EXPERTS,
  BROKEN_INDEX_S2V,
  BROKEN_INDEX_ANIMATE,
  BROKEN_HINT,
  BROKEN_HINT_BLOCK,
  BROKEN_NO_VAE,
  BROKEN_NO_TEXT_ENCODER,
  BROKEN_NO_SPIECE,
  BROKEN_NO_SCHEDULER_CONFIG,
  BROKEN_DIT_CONFIG,
  BROKEN_DIT_CONFIG_TYPE,
  BROKEN_VAE_CONFIG,
  BROKEN_SCHEDULER_CONFIG,
  BROKEN_DIT_SHARD,
  BROKEN_TEXT_SHARD,
  BROKEN_VAE_SHARD,
} broken_model;

typedef struct {
  broken_model what;
  int code;
  const char *needle; /* in the message */
} broken_case;

static const broken_case broken_cases[] = {
  { BROKEN_NO_INDEX, DP_ERROR_MISSING, "model_index.json" },
  { BROKEN_INDEX_JSON, DP_ERROR_FORMAT, "model_index.json" },
  { BROKEN_INDEX_CLASS, DP_ERROR_UNSUPPORTED, "WanImageToVideoPipeline" },
  { BROKEN_INDEX_WAN22, DP_ERROR_FORMAT, "\"transformer_2\" (the low-noise expert) is not" },
  /* TI2V-5B announced over Wan2.1 parts: its latents need the Wan2.2 VAE. */
  { BROKEN_INDEX_TI2V, DP_ERROR_FORMAT, "is not the Wan2.2 VAE" },
  { BROKEN_INDEX_TI2V_TYPE, DP_ERROR_FORMAT, "\"expand_timesteps\" is not true or false" },
  { BROKEN_INDEX_TI2V_EXPERTS, DP_ERROR_UNSUPPORTED, "both \"boundary_ratio\"" },
  { BROKEN_INDEX_S2V, DP_ERROR_UNSUPPORTED, "S2V" },
  { BROKEN_INDEX_ANIMATE, DP_ERROR_UNSUPPORTED, "Animate is not supported" },
  { BROKEN_HINT, DP_ERROR_FORMAT, "\"text_len\"" },
  { BROKEN_HINT_BLOCK, DP_ERROR_FORMAT, "\"block_frames\"" },
  { BROKEN_NO_VAE, DP_ERROR_MISSING, "vae/" },
  { BROKEN_NO_TEXT_ENCODER, DP_ERROR_MISSING, "text_encoder/" },
  { BROKEN_NO_SPIECE, DP_ERROR_MISSING, "spiece.model" },
  { BROKEN_NO_SCHEDULER_CONFIG, DP_ERROR_MISSING, "scheduler_config.json" },
  { BROKEN_DIT_CONFIG, DP_ERROR_SHAPE, "transformer" },
  { BROKEN_DIT_CONFIG_TYPE, DP_ERROR_FORMAT, "num_layers" },
  /* A residual (Wan2.2) VAE config over Wan2.1 weights: the Wan2.2 upsampler is missing. */
  { BROKEN_VAE_CONFIG, DP_ERROR_MISSING, "decoder.up_blocks.0.upsampler.resample.1.weight" },
  { BROKEN_SCHEDULER_CONFIG, DP_ERROR_UNSUPPORTED, "prediction_type" },
  { BROKEN_DIT_SHARD, -1, "diffusion_pytorch_model.safetensors" },
  { BROKEN_TEXT_SHARD, -1, "model.safetensors" },
  { BROKEN_VAE_SHARD, -1, "diffusion_pytorch_model.safetensors" },
};

static void
test_bad_models (void)
{
  golden_data g;
  golden_open (&g);
  char *tmp = dp_test_make_tmp_dir ("dp-pipeline-XXXXXX");

  for (size_t i = 0; i < G_N_ELEMENTS (broken_cases); i++) {
    const broken_case *bc = &broken_cases[i];
    char *dir = g_build_filename (tmp, "model", NULL);
    dp_generator_params p;
    GError *err = NULL;

#define IN(...) g_build_filename (dir, __VA_ARGS__, NULL)
    dp_test_copy_tree (g.model_dir, dir);
    char *path = NULL;
    switch (bc->what) {
      case BROKEN_NO_INDEX:
        path = IN ("model_index.json");
        g_unlink (path);
        break;
      case BROKEN_INDEX_JSON:
        path = IN ("model_index.json");
        edit_file (path, "{", "[{");
        break;
      case BROKEN_INDEX_CLASS:
        path = IN ("model_index.json");
        edit_file (path, "\"WanPipeline\"", "\"WanImageToVideoPipeline\"");
        break;
      case BROKEN_INDEX_WAN22:
        /* Two experts announced, the second one not named. */
        path = IN ("model_index.json");
        edit_file (path, "\"boundary_ratio\": null", "\"boundary_ratio\": 0.875");
        break;
      case BROKEN_INDEX_TI2V:
        path = IN ("model_index.json");
        edit_file (path, "\"expand_timesteps\": false", "\"expand_timesteps\": true");
        break;
      case BROKEN_INDEX_TI2V_TYPE:
        path = IN ("model_index.json");
        edit_file (path, "\"expand_timesteps\": false", "\"expand_timesteps\": \"yes\"");
        break;
      case BROKEN_INDEX_TI2V_EXPERTS:
        path = IN ("model_index.json");
        edit_file (path, "\"expand_timesteps\": false", "\"expand_timesteps\": true");
        edit_file (path, "\"boundary_ratio\": null", "\"boundary_ratio\": 0.875");
        break;
      case BROKEN_INDEX_S2V:
        path = IN ("model_index.json");
        edit_file (path, "\"WanPipeline\"", "\"WanSpeechToVideoPipeline\"");
        break;
      case BROKEN_INDEX_ANIMATE:
        path = IN ("model_index.json");
        edit_file (path, "\"WanPipeline\"", "\"WanAnimatePipeline\"");
        break;
      case BROKEN_HINT:
        path = IN ("model_index.json");
        edit_file (path, "\"text_len\": 32", "\"text_len\": \"32\"");
        break;
      case BROKEN_HINT_BLOCK:
        path = IN ("model_index.json");
        edit_file (path, "\"text_len\": 32", "\"text_len\": 32, \"block_frames\": 0");
        break;
      case BROKEN_NO_VAE:
        path = IN ("vae");
        dp_test_remove_tree (path);
        break;
      case BROKEN_NO_TEXT_ENCODER:
        path = IN ("text_encoder");
        dp_test_remove_tree (path);
        break;
      case BROKEN_NO_SPIECE:
        /* Neither tokenizer file: tokenizer.json is read first, spiece.model
         * when it is absent. */
        path = IN ("tokenizer", "tokenizer.json");
        g_unlink (path);
        g_free (path);
        path = IN ("tokenizer", "spiece.model");
        g_unlink (path);
        break;
      case BROKEN_NO_SCHEDULER_CONFIG:
        path = IN ("scheduler", "scheduler_config.json");
        g_unlink (path);
        break;
      case BROKEN_DIT_CONFIG:
        /* A config that does not match the weights. */
        path = IN ("transformer", "config.json");
        edit_file (path, "\"ffn_dim\": 48", "\"ffn_dim\": 64");
        break;
      case BROKEN_DIT_CONFIG_TYPE:
        path = IN ("transformer", "config.json");
        edit_file (path, "\"num_layers\": 2", "\"num_layers\": \"two\"");
        break;
      case BROKEN_VAE_CONFIG:
        path = IN ("vae", "config.json");
        edit_file (path, "\"is_residual\": false", "\"is_residual\": true");
        break;
      case BROKEN_SCHEDULER_CONFIG:
        path = IN ("scheduler", "scheduler_config.json");
        edit_file (path, "\"flow_prediction\"", "\"epsilon\"");
        break;
      case BROKEN_DIT_SHARD:
        path = IN ("transformer", "diffusion_pytorch_model.safetensors");
        truncate_file (path, 0.6);
        break;
      case BROKEN_TEXT_SHARD:
        path = IN ("text_encoder", "model.safetensors");
        truncate_file (path, 0.9);
        break;
      case BROKEN_VAE_SHARD:
        path = IN ("vae", "diffusion_pytorch_model.safetensors");
        truncate_file (path, 0.3);
        break;
    }
#undef IN

    golden_params (&g, &p);
    p.model_dir = dir;
    dp_generator *gen = dp_generator_new (&p, &err);
    g_assert_null (gen);
    g_assert_nonnull (err);
    g_test_message ("broken model %d: %s", (int) bc->what, err->message);
    g_assert_true (err->domain == DP_ERROR);
    if (bc->code >= 0)
      g_assert_cmpint (err->code, ==, bc->code);
    else /* a corrupt file: malformed or unreadable */
      g_assert_true (err->code == DP_ERROR_FORMAT || err->code == DP_ERROR_IO);
    g_assert_nonnull (strstr (err->message, bc->needle));
    g_clear_error (&err);

    dp_test_remove_tree (dir);
    g_free (path);
    g_free (dir);
  }
  g_rmdir (tmp);
  g_free (tmp);
  golden_close (&g);
}

/* ------------------------------------------------------------ Wan2.2 two experts */

typedef struct {
  dp_tensor want;  /* [N, C, F, h, w] diffusers' latents after each step (boundary 900) */
  double err[8];   /* relative L2 per step */
  int experts[8];
  int steps;
} switch_run;

static void
switch_step (int i, const dp_tensor *latents, int expert, void *data)
{
  switch_run *r = data;
  const size_t n = dp_tensor_nelem (latents);
  g_assert_cmpint (i, <, 8);
  r->err[i] = dp_test_rel_l2 (latents->data, (const float *) r->want.data + i * n, n);
  r->experts[i] = expert;
  r->steps = i + 1;
}

/* The switch step matters: the golden UniPC case has a timestep equal to the
 * boundary (t = 900 at step 1, boundary_ratio 0.9), which transformer/ runs
 * (t >= boundary).  With the boundary moved just above it (0.9001), step 1 runs
 * transformer_2/: step 0 still matches diffusers, step 1 is far off, so a
 * wrong expert at a single step fails the golden test.  0.8999 leaves every
 * step's expert, and the latents, as they were. */
static void
test_wan22_switch (void)
{
  golden_data g;
  golden_open_set (&g, "wan22", "tiny-wan22");
  JsonObject *c = golden_case (&g, "a22_unipc");
  char *tmp = dp_test_make_tmp_dir ("dp-pipeline-XXXXXX");
  char *dir = g_build_filename (tmp, "model", NULL);
  char *index = g_build_filename (dir, "model_index.json", NULL);
  const struct {
    const char *ratio;
    int experts[4];
    gboolean matches;
  } cases[] = {
    { "0.9001", { 0, 1, 1, 1 }, FALSE },
    { "0.8999", { 0, 0, 1, 1 }, TRUE },
  };

  for (size_t k = 0; k < G_N_ELEMENTS (cases); k++) {
    dp_generator_params p;
    GError *err = NULL;
    char *ratio = g_strdup_printf ("\"boundary_ratio\": %s", cases[k].ratio);

    dp_test_copy_tree (g.model_dir, dir);
    edit_file (index, "\"boundary_ratio\": 0.9", ratio);
    golden_params (&g, &p);
    p.model_dir = dir;
    p.steps = 4;
    p.guidance_scale = json_object_get_double_member (c, "guidance");
    p.guidance_scale_2 = json_object_get_double_member (c, "guidance_2");
    dp_generator *gen = generator_new_ok (&p);
    switch_run r = { golden_tensor (&g, "a22_unipc.latents") };
    dp_tensor noise = golden_tensor (&g, "noise");
    dp_classic_trace trace = { NULL, switch_step, NULL, &r };
    sink s;
    sink_init (&s, gen);
    g_assert_true (dp_generator_run_traced (gen, &noise, &trace, sink_frames, &s, &err));
    g_assert_no_error (err);
    g_assert_cmpint (r.steps, ==, 4);
    for (int i = 0; i < 4; i++) {
      g_test_message ("boundary_ratio %s: step %d expert %d, latents relative L2 to diffusers' (0.9) %.3g",
                      cases[k].ratio, i, r.experts[i], r.err[i]);
      g_assert_cmpint (r.experts[i], ==, cases[k].experts[i]);
    }
    g_assert_cmpfloat (r.err[0], <=, LATENT_TOL);
    if (cases[k].matches)
      g_assert_cmpfloat (r.err[3], <=, LATENT_TOL);
    else /* the wrong expert at step 1 alone: far beyond the tolerance */
      g_assert_cmpfloat (r.err[1], >, 1000 * LATENT_TOL);
    dp_tensor_free (&r.want);
    dp_tensor_free (&noise);
    sink_clear (&s);
    dp_generator_free (gen);
    dp_test_remove_tree (dir);
    g_free (ratio);
  }
  g_free (index);
  g_free (dir);
  g_rmdir (tmp);
  g_free (tmp);
  golden_close (&g);
}

/* What a two-expert model refuses, and the guidance_scale_2 setting's rules. */
static void
test_wan22_bad (void)
{
  golden_data g, g21;
  golden_open_set (&g, "wan22", "tiny-wan22");
  golden_open (&g21);
  char *tmp = dp_test_make_tmp_dir ("dp-pipeline-XXXXXX");
  char *dir = g_build_filename (tmp, "model", NULL);
  const struct {
    const char *file, *from, *to; /* an edit of the model (file NULL: none; to NULL: remove file) */
    double guidance, guidance_2;
    gboolean wan21;
    int code;
    const char *needle;
  } cases[] = {
    { "transformer_2", NULL, NULL, 5, 0, FALSE, DP_ERROR_MISSING, "no transformer_2/" },
    { "transformer_2/config.json", "\"num_layers\": 2", "\"num_layers\": 3", 5, 0, FALSE, DP_ERROR_SHAPE,
      "is not shaped like transformer/" },
    { "model_index.json", "\"boundary_ratio\": 0.9", "\"boundary_ratio\": 1.5", 5, 0, FALSE, DP_ERROR_FORMAT,
      "\"boundary_ratio\" 1.5 is not valid" },
    { "model_index.json", "\"boundary_ratio\": 0.9", "\"boundary_ratio\": \"0.9\"", 5, 0, FALSE,
      DP_ERROR_FORMAT, "is not a number" },
    { "transformer_2/diffusion_pytorch_model.safetensors", NULL, NULL, 5, 0, FALSE, DP_ERROR_MISSING,
      "Transformer 2 (the low-noise expert)" },
    { NULL, NULL, NULL, 5, 0.5, FALSE, DP_ERROR_INVALID, "guidance_scale_2 0.5" },
    { NULL, NULL, NULL, 1, 3, FALSE, DP_ERROR_INVALID, "needs guidance_scale above 1" },
    { NULL, NULL, NULL, 5, 3, TRUE, DP_ERROR_INVALID, "has one transformer" },
  };

  for (size_t k = 0; k < G_N_ELEMENTS (cases); k++) {
    dp_generator_params p;
    GError *err = NULL;

    dp_test_copy_tree (cases[k].wan21 ? g21.model_dir : g.model_dir, dir);
    if (cases[k].file) {
      char *path = g_build_filename (dir, cases[k].file, NULL);
      if (cases[k].from)
        edit_file (path, cases[k].from, cases[k].to);
      else if (g_file_test (path, G_FILE_TEST_IS_DIR))
        dp_test_remove_tree (path);
      else
        g_unlink (path);
      g_free (path);
    }
    golden_params (&g, &p);
    p.model_dir = dir;
    p.guidance_scale = cases[k].guidance;
    p.guidance_scale_2 = cases[k].guidance_2;
    dp_generator *gen = dp_generator_new (&p, &err);
    g_assert_null (gen);
    g_assert_nonnull (err);
    g_test_message ("wan22 bad case %d: %s", (int) k, err->message);
    g_assert_true (err->domain == DP_ERROR);
    g_assert_cmpint (err->code, ==, cases[k].code);
    g_assert_nonnull (strstr (err->message, cases[k].needle));
    g_clear_error (&err);
    dp_test_remove_tree (dir);
  }
  g_free (dir);
  g_rmdir (tmp);
  g_free (tmp);
  golden_close (&g);
  golden_close (&g21);
}

/* DP_ENGINE_AUTO: classic for a short video on one device, DualParal for
 * endless video, for several devices, when P or C is asked for, and for a
 * video longer than the window model_index.json names (block_frames P,
 * context_frames C), whose P and C it then uses; the caller's P and C win. */
static void
test_auto_engine (void)
{
  golden_data g;
  golden_open (&g);
  char *tmp = dp_test_make_tmp_dir ("dp-pipeline-XXXXXX");
  char *dir = g_build_filename (tmp, "model", NULL);
  dp_test_copy_tree (g.model_dir, dir);
  char *index = g_build_filename (dir, "model_index.json", NULL);
  /* P 1, C 1: a window of 3 latent frames, 9 video frames. */
  edit_file (index, "\"text_len\": 32", "\"text_len\": 32, \"block_frames\": 1, \"context_frames\": 1");

  const struct {
    gboolean hinted;
    int frames;
    const char *devices;
    int block, context; /* asked for */
    dp_engine_kind want;
    int want_block, want_context;
  } cases[] = {
    { FALSE, 9, "cpu", 0, 0, DP_ENGINE_CLASSIC, 0, 0 },
    { FALSE, -1, "cpu", 0, 0, DP_ENGINE_DUALPARAL, 0, 0 },
    { FALSE, 9, "cpu,cpu", 0, 0, DP_ENGINE_DUALPARAL, 0, 0 },
    { TRUE, 9, "cpu", 0, 0, DP_ENGINE_CLASSIC, 0, 0 },       /* within the window */
    { TRUE, 13, "cpu", 0, 0, DP_ENGINE_DUALPARAL, 1, 1 },    /* 4 latent frames > 3 */
    { TRUE, 13, "cpu", 2, 1, DP_ENGINE_DUALPARAL, 2, 1 },    /* the caller's P and C */
    { FALSE, 9, "cpu", 2, 0, DP_ENGINE_DUALPARAL, 2, 0 },    /* asking for blocks */
  };
  for (size_t i = 0; i < G_N_ELEMENTS (cases); i++) {
    dp_generator_params p;
    golden_params (&g, &p);
    p.model_dir = cases[i].hinted ? dir : g.model_dir;
    p.engine = DP_ENGINE_AUTO;
    p.num_frames = cases[i].frames;
    p.devices = cases[i].devices;
    p.block_frames = cases[i].block;
    p.context_frames = cases[i].context;
    dp_generator *gen = generator_new_ok (&p);
    int block = -1, context = -1;
    g_test_message ("auto engine case %zu", i);
    g_assert_cmpint (dp_generator_engine (gen, &block, &context), ==, cases[i].want);
    g_assert_cmpint (block, ==, cases[i].want_block);
    g_assert_cmpint (context, ==, cases[i].want_context);
    dp_generator_free (gen);
  }
  dp_test_remove_tree (dir);
  g_rmdir (tmp);
  g_free (index);
  g_free (dir);
  g_free (tmp);
  golden_close (&g);
}

/* Sets every element of tensor `name` (F32 or F16) of a safetensors file to
 * NaN, in place. */
static void
poison_tensor (const char *path, const char *name)
{
  GError *err = NULL;
  gsize len;
  char *data = dp_test_read_file (path, &len);
  uint64_t header_len;
  memcpy (&header_len, data, 8);
  JsonParser *parser = json_parser_new ();
  g_assert_true (json_parser_load_from_data (parser, data + 8, (gssize) header_len, &err));
  g_assert_no_error (err);
  JsonObject *t = json_object_get_object_member (json_node_get_object (json_parser_get_root (parser)), name);
  g_assert_nonnull (t);
  const char *dtype = json_object_get_string_member (t, "dtype");
  JsonArray *off = json_object_get_array_member (t, "data_offsets");
  char *begin = data + 8 + header_len + json_array_get_int_element (off, 0);
  const char *end = data + 8 + header_len + json_array_get_int_element (off, 1);
  if (g_str_equal (dtype, "F32")) {
    for (float *x = (float *) begin; (char *) x < end; x++)
      *x = NAN;
  } else {
    g_assert_cmpstr (dtype, ==, "F16");
    for (uint16_t *x = (uint16_t *) begin; (char *) x < end; x++)
      *x = 0x7e00; /* a quiet NaN */
  }
  g_assert_true (g_file_set_contents (path, data, (gssize) len, &err));
  g_assert_no_error (err);
  g_object_unref (parser);
  g_free (data);
}

/* NaN weights end the run with DP_ERROR_NUMERIC naming where the NaN came
 * from (issue 17: they gave exit 0 and a black video), in both engines. */
static void
test_nonfinite (void)
{
  static const struct {
    const char *file, *tensor;
    dp_engine_kind engine;
    const char *needle;
  } cases[] = {
    { "transformer", "proj_out.bias", DP_ENGINE_CLASSIC, "the model produced NaN at step 1 of 3 (" },
    { "transformer", "proj_out.bias", DP_ENGINE_DUALPARAL, "the model produced NaN at step 1 of 3 of block 0" },
    { "vae", "decoder.conv_out.bias", DP_ENGINE_CLASSIC, "the VAE produced NaN decoding latent frame 0" },
    { "vae", "decoder.conv_out.bias", DP_ENGINE_DUALPARAL, "the VAE produced NaN decoding latent frame 0" },
  };
  golden_data g;
  golden_open (&g);
  char *tmp = dp_test_make_tmp_dir ("dp-pipeline-XXXXXX");
  char *dir = g_build_filename (tmp, "model", NULL);
  for (size_t i = 0; i < G_N_ELEMENTS (cases); i++) {
    dp_test_copy_tree (g.model_dir, dir);
    char *file = g_build_filename (dir, cases[i].file, "diffusion_pytorch_model.safetensors", NULL);
    poison_tensor (file, cases[i].tensor);
    dp_generator_params p;
    dp_generator_params_init (&p);
    p.model_dir = dir;
    p.prompt = "a red ball";
    p.num_frames = 5;
    p.steps = 3;
    p.engine = cases[i].engine;
    dp_generator *gen = generator_new_ok (&p);
    sink s;
    sink_init (&s, gen);
    GError *err = NULL;
    g_assert_false (dp_generator_run (gen, sink_frames, &s, &err));
    g_test_message ("%s: %s", cases[i].tensor, err ? err->message : "(no error)");
    g_assert_error (err, DP_ERROR, DP_ERROR_NUMERIC);
    g_assert_nonnull (strstr (err->message, cases[i].needle));
    g_assert_cmpint (s.frames, ==, 0);
    g_clear_error (&err);
    sink_clear (&s);
    dp_generator_free (gen);
    dp_test_remove_tree (dir);
    g_free (file);
  }
  g_rmdir (tmp);
  g_free (dir);
  g_free (tmp);
  golden_close (&g);
}

static void
collect_warning (const char *message, void *data)
{
  g_ptr_array_add (data, g_strdup (message));
}

/* A prompt longer than the text length is cut, and the run says so. */
static void
test_truncation_warning (void)
{
  golden_data g;
  golden_open (&g);
  GString *longer = g_string_new ("a red ball");
  for (int i = 0; i < 40; i++)
    g_string_append (longer, " moving right");
  const char *prompts[] = { "a red ball", longer->str };
  for (int i = 0; i < 2; i++) {
    dp_generator_params p;
    dp_generator_params_init (&p);
    p.model_dir = g.model_dir;
    p.prompt = prompts[i];
    p.num_frames = 1;
    p.steps = 1;
    dp_generator *gen = generator_new_ok (&p);
    GPtrArray *warnings = g_ptr_array_new_with_free_func (g_free);
    dp_generator_set_warning_callback (gen, collect_warning, warnings);
    sink s;
    sink_init (&s, gen);
    GError *err = NULL;
    g_assert_true (dp_generator_run (gen, sink_frames, &s, &err));
    g_assert_no_error (err);
    g_assert_cmpuint (warnings->len, ==, i);
    if (i == 1) {
      g_test_message ("%s", (char *) warnings->pdata[0]);
      g_assert_true (g_str_has_prefix (warnings->pdata[0], "the prompt has "));
      g_assert_nonnull (strstr (warnings->pdata[0], "tokens (EOS included), more than the text length 32"));
    }
    sink_clear (&s);
    g_ptr_array_unref (warnings);
    dp_generator_free (gen);
  }
  g_string_free (longer, TRUE);
  golden_close (&g);
}

/* A TI2V-5B directory without "_dualparal" hints: its native 1280 x 704 at
 * 24 fps (DP_GENERATOR_TI2V_*), not Wan2.1's 832 x 480 at 16; a size that
 * is not a multiple of 32 (VAE 16 x patch 2) is refused. */
static void
test_ti2v_defaults (void)
{
  golden_data g;
  golden_open_set (&g, "ti2v", "tiny-ti2v");
  GError *err = NULL;
  char *tmp = dp_test_make_tmp_dir ("dp-pipeline-XXXXXX");
  char *dir = g_build_filename (tmp, "model", NULL);
  dp_test_copy_tree (g.model_dir, dir);
  char *index = g_build_filename (dir, "model_index.json", NULL);
  edit_file (index, "\"_dualparal\"", "\"_unused\"");
  dp_generator_params p;
  golden_params (&g, &p);
  p.model_dir = dir;
  p.width = p.height = 0;
  p.num_frames = 5;
  dp_generator *gen = generator_new_ok (&p);
  int W, H;
  dp_generator_get_size (gen, &W, &H);
  g_assert_cmpint (W, ==, DP_GENERATOR_TI2V_WIDTH);
  g_assert_cmpint (H, ==, DP_GENERATOR_TI2V_HEIGHT);
  g_assert_cmpint (dp_generator_fps (gen), ==, DP_GENERATOR_TI2V_FPS);
  int step_w, step_h;
  dp_generator_get_size_step (gen, &step_w, &step_h);
  g_assert_cmpint (step_w, ==, 32);
  g_assert_cmpint (step_h, ==, 32);
  dp_generator_free (gen);
  p.width = 48;
  p.height = 64;
  g_assert_null (dp_generator_new (&p, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_assert_nonnull (strstr (err->message, "multiple of 32"));
  g_clear_error (&err);
  dp_test_remove_tree (tmp);
  g_free (index);
  g_free (dir);
  g_free (tmp);
  golden_close (&g);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/pipeline/tokens", test_tokens);
  g_test_add_data_func ("/pipeline/golden/unipc_g5", "unipc_g5", test_golden);
  g_test_add_data_func ("/pipeline/golden/euler_g5", "euler_g5", test_golden);
  g_test_add_data_func ("/pipeline/golden/unipc_g1", "unipc_g1", test_golden);
  g_test_add_data_func ("/pipeline/wan22/a22_unipc", "wan22/a22_unipc", test_golden);
  g_test_add_data_func ("/pipeline/wan22/a22_euler", "wan22/a22_euler", test_golden);
  g_test_add_func ("/pipeline/wan22/switch", test_wan22_switch);
  g_test_add_data_func ("/pipeline/ti2v/ti2v_unipc", "ti2v/ti2v_unipc", test_golden);
  g_test_add_data_func ("/pipeline/ti2v/ti2v_euler", "ti2v/ti2v_euler", test_golden);
  g_test_add_func ("/pipeline/ti2v/defaults", test_ti2v_defaults);
  g_test_add_func ("/pipeline/wan22/bad", test_wan22_bad);
  g_test_add_func ("/pipeline/seeded", test_seeded);
  g_test_add_func ("/pipeline/cancel/thread", test_cancel_thread);
  g_test_add_func ("/pipeline/cancel/before-run", test_cancel_before_run);
  g_test_add_func ("/pipeline/cancel/callback", test_callback_stop);
  g_test_add_func ("/pipeline/bad-settings", test_bad_settings);
  g_test_add_func ("/pipeline/bad-models", test_bad_models);
  g_test_add_func ("/pipeline/auto-engine", test_auto_engine);
  g_test_add_func ("/pipeline/non-finite", test_nonfinite);
  g_test_add_func ("/pipeline/truncation-warning", test_truncation_warning);
  return g_test_run ();
}
