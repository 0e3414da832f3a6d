/* dualparal: the DualParal engine as the generator runs it (generate.h). */
#include "engine/generate.h"

#include "dist/cluster.h"
#include "dist/dist.h"

#include <string.h>

struct dp_dualparal_pipe {
  int n_stages;
  dp_backend *backends[DP_ENGINE_MAX_STAGES]; /* [0] borrowed, the others owned (threads) */
  dp_engine *engine;
  dp_cluster *cluster;     /* stages 1.. in worker processes; NULL: threads */
  dp_transport *transport; /* stage 0's socket transport (with a cluster) */
  int64_t latent_frames;
  int steps;
};

int
dp_dualparal_count_devices (const char *devices)
{
  if (!devices || !*devices)
    return 0;
  int n = 1;
  for (const char *c = devices; *c; c++)
    n += *c == ',';
  return n;
}

/* "cpu", "cuda", "cuda:N" or "N" -> a backend spec. */
static char *
device_spec (const char *item, GError **error)
{
  char *s = g_strstrip (g_strdup (item));
  if (g_ascii_isdigit (s[0])) {
    guint64 v;
    if (!g_ascii_string_to_unsigned (s, 10, 0, 1024, &v, NULL)) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "device \"%s\" is not cpu, cuda:N or a GPU number", s);
      g_free (s);
      return NULL;
    }
    char *spec = g_strdup_printf ("cuda:%" G_GUINT64_FORMAT, v);
    g_free (s);
    return spec;
  }
  return s;
}

/* Number of processes of a launcher's job (its WORLD_SIZE). */
static int
launcher_world_size (GError **error)
{
  dp_launch_env env;
  if (!dp_launch_env_read (&env, error)) {
    g_prefix_error (error, "processes \"launcher\": ");
    return 0;
  }
  const int n = env.world_size;
  dp_launch_env_clear (&env);
  if (n < 2)
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "processes \"launcher\": WORLD_SIZE is %d; a pipeline over processes needs 2 or more", n);
  return n < 2 ? 0 : n;
}

dp_dualparal_pipe *
dp_dualparal_pipe_new (const dp_dualparal_config *cfg, GError **error)
{
  const gboolean threads = cfg->processes == DP_PROCESSES_THREADS;
  const int n = cfg->processes == DP_PROCESSES_LAUNCHER ? launcher_world_size (error)
                                                        : dp_dualparal_count_devices (cfg->devices ? cfg->devices : "cpu");
  if (n == 0 && cfg->processes == DP_PROCESSES_LAUNCHER)
    return NULL;
  if (n < 1 || n > DP_ENGINE_MAX_STAGES) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "devices \"%s\": the DualParal engine runs 1 to %d stages",
                 cfg->devices, DP_ENGINE_MAX_STAGES);
    return NULL;
  }
  dp_dualparal_pipe *pipe = g_new0 (dp_dualparal_pipe, 1);
  pipe->n_stages = n;
  pipe->backends[0] = cfg->be0;
  char **items = g_strsplit (cfg->devices ? cfg->devices : "cpu", ",", -1);
  for (int r = 1; r < n && threads; r++) {
    char *spec = device_spec (items[r], error);
    if (spec)
      pipe->backends[r] = dp_backend_new (spec, error);
    if (!pipe->backends[r])
      g_prefix_error (error, "DualParal stage %d: ", r);
    g_free (spec);
    if (!pipe->backends[r]) {
      g_strfreev (items);
      dp_dualparal_pipe_free (pipe);
      return NULL;
    }
  }

  int P = cfg->block_frames > 0 ? cfg->block_frames : DP_DUALPARAL_DEFAULT_BLOCK_FRAMES;
  int C = cfg->context_frames > 0 ? cfg->context_frames : DP_DUALPARAL_DEFAULT_CONTEXT_FRAMES;
  if (cfg->context_frames <= 0)
    C = MIN (C, P);
  dp_schedule *sched = dp_schedule_new (cfg->settings, cfg->steps, error);
  if (!sched) {
    g_strfreev (items);
    dp_dualparal_pipe_free (pipe);
    return NULL;
  }
  char *dir2 = cfg->two_experts ? g_build_filename (cfg->model_dir, "transformer_2", NULL) : NULL;
  dp_engine_params p = {
    .block_frames = P, .context_frames = C, .latent_frames = cfg->latent_frames,
    .latent_height = cfg->latent_height, .latent_width = cfg->latent_width, .schedule = sched,
    .guidance = cfg->guidance, .seed = cfg->seed, .noise_stream = DP_ENGINE_NOISE_STREAM,
    .expert2_dir = dir2, .boundary = cfg->boundary, .guidance_2 = cfg->guidance_2,
    .per_token_time = cfg->per_token_time,
  };
  char *dir = g_build_filename (cfg->model_dir, "transformer", NULL);
  if (threads) {
    pipe->engine = dp_engine_new (dir, pipe->backends, n, NULL, &p, error);
  } else {
    /* Stage 0 here first (it checks the settings against the model), then
     * the workers. */
    /* NCCL between GPUs, sockets otherwise; DUALPARAL_TRANSPORT chooses
     * (rank 0 tells the workers which). */
    pipe->transport = dp_transport_new_process (n, 0, cfg->be0, cfg->wire_bf16, g_getenv ("DUALPARAL_TRANSPORT"), error);
    if (pipe->transport)
      pipe->engine = dp_engine_new_stage (dir, cfg->be0, n, 0, pipe->transport, &p, error);
    if (pipe->engine) {
      /* Spawned workers get the device specs of the list (rank 0's is
       * entry 0, the generator's own). */
      char **specs = g_new0 (char *, n + 1);
      for (int r = 0; r < n; r++)
        specs[r] = cfg->processes == DP_PROCESSES_SPAWN ? device_spec (items[r], NULL) : g_strdup ("");
      dp_cluster_config cc = {
        .processes = cfg->processes, .world_size = n, .devices = specs, .model_dir = cfg->model_dir,
        .transport = pipe->transport, .params = &p, .hidden_bf16 = cfg->wire_bf16, .warn = cfg->warn,
        .warn_data = cfg->warn_data,
      };
      for (int r = 0; r < n; r++)
        if (!specs[r])
          specs[r] = g_strdup ("cpu");
      pipe->cluster = dp_cluster_new (&cc, error);
      g_strfreev (specs);
      if (pipe->cluster)
        dp_cluster_set_engine (pipe->cluster, pipe->engine);
    }
  }
  g_strfreev (items);
  g_free (dir);
  g_free (dir2);
  dp_schedule_free (sched);
  if (!pipe->engine || (!threads && !pipe->cluster)) {
    g_prefix_error (error, "DualParal engine: ");
    dp_dualparal_pipe_free (pipe);
    return NULL;
  }
  pipe->latent_frames = cfg->latent_frames;
  pipe->steps = cfg->steps;
  return pipe;
}

void
dp_dualparal_pipe_free (dp_dualparal_pipe *pipe)
{
  if (!pipe)
    return;
  /* The workers go first: they hold connections to stage 0. */
  dp_cluster_free (pipe->cluster);
  dp_engine_free (pipe->engine);
  if (pipe->transport)
    dp_transport_free (pipe->transport);
  for (int r = 1; r < pipe->n_stages; r++)
    if (pipe->backends[r])
      dp_backend_free (pipe->backends[r]);
  g_free (pipe);
}

dp_engine *
dp_dualparal_pipe_engine (dp_dualparal_pipe *pipe)
{
  return pipe->engine;
}

/* The DiT context: host F32 [B, text_len, d], the prompt then (guided) the
 * negative prompt, as the classic pipeline makes it. */
static gboolean
encode_context (const dp_dualparal_job *job, const char *prompt, const char *negative, dp_tensor *context,
                GError **error)
{
  const int B = job->guided ? 2 : 1;
  const int d = dp_umt5_holder_config (job->text_encoder)->d_model;
  const char *texts[2] = { prompt, negative ? negative : "" };
  dp_umt5 *t5 = dp_umt5_holder_acquire (job->text_encoder, error);
  if (!t5) {
    g_prefix_error (error, "Loading the text encoder: ");
    return FALSE;
  }
  *context = dp_tensor_new_host (DP_F32, 3, (int64_t[]){ B, job->text_len, d });
  gboolean ok = TRUE;
  for (int b = 0; ok && b < B; b++) {
    dp_tensor embeds = { 0 };
    if (job->cancel && g_atomic_int_get (job->cancel)) {
      g_set_error (error, DP_ERROR, DP_ERROR_CANCELLED, "Generation cancelled while encoding the prompts");
      ok = FALSE;
    } else if (!dp_umt5_encode_prompt (t5, job->tokenizer, texts[b], job->text_len, &embeds, NULL, error)) {
      g_prefix_error (error, "Encoding the %s: ", b ? "negative prompt" : "prompt");
      ok = FALSE;
    } else {
      memcpy ((float *) context->data + (size_t) b * job->text_len * d, embeds.data,
              (size_t) job->text_len * d * sizeof (float));
    }
    dp_tensor_free (&embeds);
  }
  dp_umt5_holder_release (job->text_encoder);
  if (!ok)
    dp_tensor_free (context);
  return ok;
}

/* The text settings a block enters with. */
typedef struct {
  char *prompt, *negative;
  double guidance;
} texts;

static void
texts_clear (texts *t)
{
  g_clear_pointer (&t->prompt, g_free);
  g_clear_pointer (&t->negative, g_free);
}

static gboolean
texts_equal (const texts *a, const texts *b)
{
  return g_strcmp0 (a->prompt, b->prompt) == 0 && g_strcmp0 (a->negative, b->negative) == 0 &&
         a->guidance == b->guidance;
}

typedef struct {
  dp_dualparal_pipe *pipe;
  const dp_dualparal_job *job;
  int64_t frames_done, frames_total;
  gint64 last_block_us, last_iteration_us;
  int64_t last_block;   /* blocks done when the current block's frames began, -1 before */
  double block_seconds; /* from the previous block's first frames to this one's */
  int temporal_scale;

  /* Prompt changes (block_cond, on stage 0's thread). */
  texts target;               /* what the newest conditioning says */
  dp_engine_cond *target_cond;/* its encoding */
  dp_engine_cond *last_cond;  /* the newest block's conditioning (a blend during a transition) */
  dp_engine_cond *from_cond;  /* a transition's start */
  int64_t trans_block;        /* the transition's first block, -1: none */
  int trans_len;              /* K */
  guint64 serial_seen;        /* state->serial already taken */
  int next_line;              /* schedule lines already taken */
} run_state;

/* First video frame of a block. */
static int64_t
block_video_frame (const run_state *s, int64_t block)
{
  const int64_t latent = dp_block_schedule_block_first (dp_engine_get_schedule (s->pipe->engine), block);
  return latent == 0 ? 0 : 1 + (latent - 1) * s->temporal_scale;
}

/* dp_engine_output.block_cond: takes the schedule's lines whose frame has
 * come and the last dp_generator_set_prompt () since the previous block;
 * a new target is encoded here, on stage 0's thread between two passes
 * (the text encoder lives on stage 0's backend, which only this thread
 * drives), and blended in over K blocks. */
static gboolean block_cond (run_state *s, int64_t block, dp_engine_cond **cond, GError **error);

/* dp_engine_output.block_cond; with worker processes, each block's word
 * goes to them too, changed or not (they wait for it). */
static gboolean
on_block_cond (int64_t block, dp_engine_cond **cond, void *data, GError **error)
{
  run_state *s = data;
  if (!block_cond (s, block, cond, error))
    return FALSE;
  return !s->pipe->cluster || dp_cluster_send_cond (s->pipe->cluster, block, *cond, error);
}

static gboolean
block_cond (run_state *s, int64_t block, dp_engine_cond **cond, GError **error)
{
  const dp_dualparal_job *job = s->job;
  const int64_t frame = block_video_frame (s, block);
  gboolean changed = FALSE, scheduled = FALSE;
  texts want = { 0 };
  int K;

  g_mutex_lock (&job->state->lock);
  while (s->next_line < job->n_schedule && job->schedule[s->next_line].frame <= frame) {
    g_free (job->state->prompt);
    job->state->prompt = g_strdup (job->schedule[s->next_line].prompt);
    s->next_line++;
    changed = scheduled = TRUE;
  }
  if (job->state->serial != s->serial_seen) {
    s->serial_seen = job->state->serial;
    changed = TRUE;
    scheduled = FALSE;
  }
  if (changed) {
    want.prompt = g_strdup (job->state->prompt);
    want.negative = g_strdup (job->state->negative_prompt);
    want.guidance = job->state->guidance;
  }
  K = job->state->transition_blocks;
  g_mutex_unlock (&job->state->lock);

  if (changed) {
    const gboolean same = texts_equal (&want, &s->target) && s->trans_block < 0;
    const gint64 t0 = g_get_monotonic_time ();
    if (!same) {
      dp_tensor ctx;
      if (!encode_context (job, want.prompt, want.negative, &ctx, error)) {
        texts_clear (&want);
        return FALSE;
      }
      dp_engine_cond *c = dp_engine_cond_new (&ctx, want.guidance, error);
      dp_tensor_free (&ctx);
      if (!c) {
        texts_clear (&want);
        return FALSE;
      }
      dp_engine_cond_unref (s->target_cond);
      s->target_cond = c;
      dp_engine_cond_unref (s->from_cond);
      s->from_cond = dp_engine_cond_ref (s->last_cond);
      s->trans_block = block;
      s->trans_len = K;
    }
    texts_clear (&s->target);
    s->target = want;
    if (job->prompt_cb) {
      const int64_t full = same ? block : s->trans_block + s->trans_len;
      dp_engine_stats st;
      dp_engine_get_stats (s->pipe->engine, &st);
      dp_prompt_change pc = {
        .prompt = s->target.prompt, .negative_prompt = s->target.negative, .guidance_scale = s->target.guidance,
        .block = block, .first_frame = frame, .full_block = full, .full_frame = block_video_frame (s, full),
        .transition_blocks = same ? 0 : s->trans_len, .scheduled = scheduled,
        .encode_seconds = same ? 0.0 : (g_get_monotonic_time () - t0) / 1e6,
        .pass_seconds = st.stage[0].passes > 0 ? st.stage[0].busy_seconds / st.stage[0].passes : 0.0,
      };
      job->prompt_cb (&pc, job->prompt_data);
    }
  }
  if (s->trans_block < 0)
    return TRUE;
  /* Block i of a transition (0..K-1) gets (i+1)/(K+1) of the new
   * context; block K the new one itself. */
  const int64_t i = block - s->trans_block;
  dp_engine_cond *c;
  if (i < s->trans_len) {
    c = dp_engine_cond_blend (s->from_cond, s->target_cond, (double) (i + 1) / (s->trans_len + 1), error);
    if (!c)
      return FALSE;
  } else {
    c = dp_engine_cond_ref (s->target_cond);
    s->trans_block = -1;
    g_clear_pointer (&s->from_cond, dp_engine_cond_unref);
  }
  dp_engine_cond_unref (s->last_cond);
  s->last_cond = dp_engine_cond_ref (c);
  *cond = c;
  return TRUE;
}

static gboolean
on_frames (const uint8_t *rgb, int n_frames, int64_t first_frame, void *data)
{
  run_state *s = data;
  dp_engine_stats st;
  dp_engine_get_stats (s->pipe->engine, &st);
  const gint64 now = g_get_monotonic_time ();
  /* A block's frames come in groups (one per latent frame); the first group
   * of a block times it (the first block: from the start of the run). */
  if (st.blocks_done != s->last_block) {
    s->block_seconds = (now - s->last_block_us) / 1e6;
    s->last_block = st.blocks_done;
    s->last_block_us = now;
  }
  s->frames_done = first_frame + n_frames;
  dp_progress p = {
    .frames_done = s->frames_done, .frames_total = s->frames_total, .steps = s->pipe->steps,
    .blocks_in_flight = st.blocks_in_flight, .block_seconds = s->block_seconds,
  };
  return s->job->frames_cb (rgb, n_frames, first_frame, &p, s->job->frames_data);
}

static void
on_iteration (int64_t iteration, int64_t total, void *data)
{
  run_state *s = data;
  const gint64 now = g_get_monotonic_time ();
  dp_step_progress p = { (int) MIN (iteration + 1, G_MAXINT), total < 0 ? -1 : (int) MIN (total, G_MAXINT),
                         (now - s->last_iteration_us) / 1e6 };
  s->last_iteration_us = now;
  if (s->job->step_cb)
    s->job->step_cb (&p, s->job->step_data);
}

gboolean
dp_dualparal_pipe_run (dp_dualparal_pipe *pipe, const dp_dualparal_job *job, GError **error)
{
  run_state s = { pipe, job, 0, 0 };
  s.temporal_scale = dp_wan_vae_get_config (job->vae)->temporal_scale;
  s.frames_total = pipe->latent_frames < 0 ? -1 : 1 + (pipe->latent_frames - 1) * s.temporal_scale;
  s.last_block = -1;
  s.trans_block = -1;

  /* Block 0: the schedule's frame 0 line (each run starts there), else
   * the generator's prompt as it is now. */
  g_mutex_lock (&job->state->lock);
  if (job->n_schedule > 0) {
    g_free (job->state->prompt);
    job->state->prompt = g_strdup (job->schedule[0].prompt);
    s.next_line = 1;
  }
  s.target.prompt = g_strdup (job->state->prompt);
  s.target.negative = g_strdup (job->state->negative_prompt);
  s.target.guidance = job->state->guidance;
  s.serial_seen = job->state->serial;
  g_mutex_unlock (&job->state->lock);

  dp_tensor context;
  if (!encode_context (job, s.target.prompt, s.target.negative, &context, error)) {
    texts_clear (&s.target);
    return FALSE;
  }
  /* The engine makes block 0's conditioning from the context and its
   * params guidance; ours must say the same. */
  s.target_cond = dp_engine_cond_new (&context, s.target.guidance, error);
  gboolean ok = s.target_cond != NULL;
  if (ok) {
    s.last_cond = dp_engine_cond_ref (s.target_cond);
    dp_engine_set_guidance (pipe->engine, s.target.guidance);
  }
  s.last_block_us = s.last_iteration_us = g_get_monotonic_time ();
  dp_engine_output out = {
    .frames = on_frames, .iteration = on_iteration, .block_cond = on_block_cond, .user_data = &s,
    .cancel = job->cancel, .vae_tiling = job->vae_tiling, .decode_thread = job->decode_thread,
  };
  if (!ok) {
  } else if (pipe->cluster) {
    ok = dp_cluster_run_begin (pipe->cluster, &context, s.target.guidance, error);
    if (ok) {
      ok = dp_engine_run (pipe->engine, &context, job->vae, &out, error);
      ok = dp_cluster_run_end (pipe->cluster, ok, error);
    }
  } else {
    ok = dp_engine_run (pipe->engine, &context, job->vae, &out, error);
  }
  dp_tensor_free (&context);
  texts_clear (&s.target);
  dp_engine_cond_unref (s.target_cond);
  dp_engine_cond_unref (s.last_cond);
  dp_engine_cond_unref (s.from_cond);
  return ok;
}
