/* The classic single-device pipeline: the whole video denoised at once, then
 * decoded and delivered frame group by frame group (see classic.h). */
#include "pipeline/classic.h"

#include <string.h>

#include "dualparal/rng.h"

static gboolean
cancelled (const dp_classic_job *job, const char *when, GError **error)
{
  if (job->cancel == NULL || !g_atomic_int_get (job->cancel))
    return FALSE;
  g_set_error (error, DP_ERROR, DP_ERROR_CANCELLED, "Generation cancelled %s", when);
  return TRUE;
}

static gboolean
cancel_hook (gpointer flag)
{
  return g_atomic_int_get ((const gint *) flag) != 0;
}

/* The DiT context: host F32 [B, text_len, d_model], entry 0 the prompt,
 * entry 1 (when guiding) the negative prompt. */
static gboolean
encode_context (const dp_classic_parts *parts, const dp_classic_job *job, gboolean guided,
                dp_tensor *context, int n_tokens[2], GError **error)
{
  const int B = guided ? 2 : 1;
  const int d = dp_umt5_holder_config (parts->text_encoder)->d_model;
  const char *texts[2] = { job->prompt, job->negative_prompt ? job->negative_prompt : "" };
  const char *names[2] = { "prompt", "negative prompt" };
  dp_umt5 *t5 = dp_umt5_holder_acquire (parts->text_encoder, error);

  if (!t5) {
    g_prefix_error (error, "Loading the text encoder: ");
    return FALSE;
  }
  *context = dp_tensor_new_host (DP_F32, 3, (int64_t[]){ B, job->text_len, d });
  for (int b = 0; b < B; b++) {
    dp_tensor embeds = { 0 };

    if (cancelled (job, "while encoding the prompts", error))
      goto fail;
    if (!dp_umt5_encode_prompt (t5, parts->tokenizer, texts[b], job->text_len,
                                &embeds, &n_tokens[b], error)) {
      g_prefix_error (error, "Encoding the %s: ", names[b]);
      goto fail;
    }
    memcpy ((float *) context->data + (size_t) b * job->text_len * d, embeds.data,
            (size_t) job->text_len * d * sizeof (float));
    dp_tensor_free (&embeds);
  }
  dp_umt5_holder_release (parts->text_encoder);
  return TRUE;

fail:
  dp_umt5_holder_release (parts->text_encoder);
  dp_tensor_free (context);
  return FALSE;
}

/* Host copy of a backend tensor for a trace hook. */
static gboolean
trace_copy (dp_backend *be, const dp_tensor *src, dp_tensor *host, GError **error)
{
  be->ops->to_host (be, host, src);
  return be->ops->sync (be, error);
}

static gboolean
denoise_steps (const dp_classic_parts *parts, const dp_classic_job *job, float guidance, dp_tensor *x,
               dp_tensor *v, dp_tensor *trace_host, dp_wan_span *span, float *frame_t, GError **error)
{
  dp_sampler *s = parts->sampler;
  const int steps = dp_sampler_num_steps (s);

  for (int i = 0; i < steps; i++) {
    gint64 t0 = g_get_monotonic_time ();
    char when[64];

    g_snprintf (when, sizeof when, "before sampler step %d of %d", i + 1, steps);
    if (cancelled (job, when, error))
      return FALSE;
    const double t = dp_sampler_timestep (s, i);
    const int expert = dp_classic_expert (parts->dit2 != NULL, job->boundary, t);
    for (int f = 0; frame_t && f < job->latent_frames; f++)
      frame_t[f] = (float) t;
    if (!dp_wan_dit_forward (expert ? parts->dit2 : parts->dit, span, x, (float) t,
                             expert ? (float) job->guidance2 : guidance, v, error)) {
      g_prefix_error (error, "Sampler step %d of %d, transformer: ", i + 1, steps);
      return FALSE;
    }
    if (!dp_sampler_step (s, x, v, error)) {
      g_prefix_error (error, "Sampler step %d of %d: ", i + 1, steps);
      return FALSE;
    }
    /* Wait for the step so that its time is real and errors surface here. */
    if (!parts->be->ops->sync (parts->be, error))
      return FALSE;
    /* A NaN or Inf stays in the latents to the end: stop at the step that
     * made it. */
    float bad = 0;
    const int64_t at = dp_backend_find_nonfinite (parts->be, x, trace_host->data, &bad, error);
    if (at == -2)
      return FALSE;
    if (at >= 0) {
      g_set_error (error, DP_ERROR, DP_ERROR_NUMERIC,
                   "the model produced %s at step %d of %d (latent value %" G_GINT64_FORMAT " of %" G_GINT64_FORMAT
                   "): the transformer's weights or the settings give non-finite numbers",
                   dp_nonfinite_name (bad), i + 1, steps, at, dp_tensor_nelem (x));
      return FALSE;
    }
    if (job->trace && job->trace->step) {
      if (!trace_copy (parts->be, x, trace_host, error))
        return FALSE;
      job->trace->step (i, trace_host, expert, job->trace->data);
    }
    if (job->step_cb) {
      dp_step_progress p = { i + 1, steps, (g_get_monotonic_time () - t0) / 1e6 };
      job->step_cb (&p, job->step_data);
    }
  }
  return TRUE;
}

static gboolean
denoise (const dp_classic_parts *parts, const dp_classic_job *job, float guidance, dp_tensor *x,
         dp_tensor *v, dp_tensor *trace_host, GError **error)
{
  dp_wan_span span;
  float *frame_t = NULL;

  dp_wan_span_init (&span, job->latent_frames, job->latent_height, job->latent_width);
  if (job->per_token_time) {
    frame_t = g_try_new (float, job->latent_frames);
    if (!frame_t) {
      g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "Out of memory for %d per-frame timesteps",
                   job->latent_frames);
      return FALSE;
    }
    span.frame_timesteps = frame_t;
  }
  gboolean ok = denoise_steps (parts, job, guidance, x, v, trace_host, &span, frame_t, error);
  g_free (frame_t);
  return ok;
}

/* Decodes x latent frame by latent frame and delivers each group of frames. */
static gboolean
decode_and_deliver (const dp_classic_parts *parts, const dp_classic_job *job, const dp_tensor *x,
                    gint64 run_start, GError **error)
{
  dp_wan_vae_decoder *dec = parts->decoder;
  const int maxf = dp_wan_vae_decoder_max_frames (dec);
  const int steps = dp_sampler_num_steps (parts->sampler);
  int W, H;
  gboolean ok = FALSE;
  int64_t frames_done = 0, frames_total;
  gint64 last = run_start;
  uint8_t *rgb;
  float *video = NULL;

  dp_wan_vae_decoder_get_size (dec, &W, &H);
  frames_total = 1 + (int64_t) (job->latent_frames - 1) * maxf;
  rgb = g_try_malloc ((size_t) maxf * H * W * 3);
  if (job->trace && job->trace->video)
    video = g_try_malloc ((size_t) maxf * 3 * H * W * sizeof (float));
  if (rgb == NULL || (job->trace && job->trace->video && video == NULL)) {
    g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "Out of memory for %d decoded frames of %dx%d",
                 maxf, W, H);
    goto out;
  }

  dp_wan_vae_decoder_reset (dec);
  for (int f = 0; f < job->latent_frames; f++) {
    char when[64];
    int n = 0;

    g_snprintf (when, sizeof when, "after %" G_GINT64_FORMAT " of %" G_GINT64_FORMAT " frames",
                frames_done, frames_total);
    if (cancelled (job, when, error))
      goto out;
    if (!dp_wan_vae_decoder_push (dec, x, f, rgb, video, &n, error)) {
      g_prefix_error (error, "Decoding latent frame %d of %d: ", f + 1, job->latent_frames);
      goto out;
    }
    if (video)
      job->trace->video (video, n, frames_done, job->trace->data);

    gint64 now = g_get_monotonic_time ();
    dp_progress p = { frames_done + n, frames_total, steps, 1, (now - last) / 1e6 };
    last = now;
    if (!job->frames_cb (rgb, n, frames_done, &p, job->frames_data)) {
      g_set_error (error, DP_ERROR, DP_ERROR_CANCELLED,
                   "Generation stopped by the frame callback after %" G_GINT64_FORMAT
                   " of %" G_GINT64_FORMAT " frames", frames_done + n, frames_total);
      goto out;
    }
    frames_done += n;
  }
  ok = TRUE;

out:
  g_free (rgb);
  g_free (video);
  return ok;
}

gboolean
dp_classic_run (const dp_classic_parts *parts, const dp_classic_job *job, GError **error)
{
  dp_backend *be = parts->be;
  const gboolean guided = job->guidance > 1.0;
  const int64_t shape[4] = { job->channels, job->latent_frames, job->latent_height,
                             job->latent_width };
  const size_t n = (size_t) shape[0] * shape[1] * shape[2] * shape[3];
  gint64 start = g_get_monotonic_time ();
  dp_tensor context = { 0 }, noise = { 0 }, trace_host = { 0 }, x = { 0 }, v = { 0 };
  int n_tokens[2] = { 0, 0 };
  gboolean ok = FALSE;

  g_return_val_if_fail (job->frames_cb != NULL, FALSE);

  if (cancelled (job, "before it started", error))
    return FALSE;

  /* 1. Text. */
  if (!encode_context (parts, job, guided, &context, n_tokens, error))
    return FALSE;
  if (job->trace && job->trace->context)
    job->trace->context (&context, n_tokens, job->trace->data);
  if (!dp_wan_dit_set_context (parts->dit, &context, error)) {
    g_prefix_error (error, "Transformer text context: ");
    goto out;
  }
  /* Each expert has its own text embedding and cross-attention K/V. */
  if (parts->dit2 != NULL && !dp_wan_dit_set_context (parts->dit2, &context, error)) {
    g_prefix_error (error, "Transformer 2 text context: ");
    goto out;
  }

  /* 2. Initial noise, x_0. */
  x = dp_backend_tensor_new (be, DP_F32, 4, shape);
  v = dp_backend_tensor_new (be, DP_F32, 4, shape);
  if (x.data == NULL || v.data == NULL) {
    dp_backend_check (be, error);
    g_prefix_error (error, "Latents of %zu values: ", n);
    goto out;
  }
  if (job->initial_noise) {
    if (job->initial_noise->dtype != DP_F32 || dp_tensor_nelem (job->initial_noise) != (int64_t) n) {
      char buf[64];
      g_set_error (error, DP_ERROR, DP_ERROR_SHAPE, "Initial noise is %s, expected %zu F32 values",
                   dp_shape_str (job->initial_noise, buf, sizeof buf), n);
      goto out;
    }
    be->ops->to_device (be, &x, job->initial_noise);
  } else {
    noise = dp_tensor_new_host (DP_F32, 4, shape);
    dp_rng_latent_noise (job->seed, DP_CLASSIC_NOISE_STREAM, 0, job->latent_frames, job->channels,
                         job->latent_height, job->latent_width, noise.data);
    be->ops->to_device (be, &x, &noise);
  }
  if (!be->ops->sync (be, error))
    goto out;
  dp_tensor_free (&noise);
  /* A host copy of the latents: for the trace, and for the NaN check of a
   * backend whose memory the host cannot read. */
  if ((job->trace && job->trace->step) || !be->host_memory)
    trace_host = dp_tensor_new_host (DP_F32, 4, shape);

  /* 3. Denoising; the transformer also asks for a cancel between layers. */
  dp_sampler_reset (parts->sampler);
  if (job->cancel) {
    dp_wan_dit_set_cancel (parts->dit, cancel_hook, (gpointer) job->cancel);
    if (parts->dit2)
      dp_wan_dit_set_cancel (parts->dit2, cancel_hook, (gpointer) job->cancel);
  }
  ok = denoise (parts, job, (float) job->guidance, &x, &v, &trace_host, error);
  dp_wan_dit_set_cancel (parts->dit, NULL, NULL);
  if (parts->dit2)
    dp_wan_dit_set_cancel (parts->dit2, NULL, NULL);
  if (!ok)
    goto out;

  /* 4. Decoding, delivered as it goes. */
  ok = decode_and_deliver (parts, job, &x, start, error);

out:
  dp_tensor_free (&context);
  dp_tensor_free (&noise);
  dp_tensor_free (&trace_host);
  dp_backend_tensor_free (be, &x);
  dp_backend_tensor_free (be, &v);
  return ok;
}
