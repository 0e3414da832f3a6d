/* The generator object (dualparal/generator.h): settings, the model
 * directory, loading the parts, and handing a run to the engine (the
 * classic pipeline in pipeline/classic.c; the DualParal engine is not there
 * yet). */
#include "dualparal/generator.h"

#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <json-glib/json-glib.h>

#include "generator_private.h"
#include "engine/generate.h"
#include "cpu/backend_cpu.h"

struct dp_generator {
  /* Settings (own copies). */
  char *model_dir;
  char *prompt;
  char *negative_prompt;
  char *device;          /* the backend spec: "cpu:N", "cuda:N" */
  char *devices;         /* the devices list, CPU threads given ("cpu:2,cpu:2") */
  int width, height;     /* pixels */
  int width_step, height_step; /* sizes are multiples of these: VAE scale x patch */
  int num_frames;
  int text_len;
  int fps;
  dp_engine_kind engine;            /* never DP_ENGINE_AUTO */
  int block_frames, context_frames; /* 0: the engine's defaults */
  int model_window;                 /* latent frames of the model's window (C + P + C), 0: none named */
  double guidance;
  double guidance2;      /* the low-noise expert's (two experts) */
  double boundary_ratio; /* two experts: transformer_2 runs below boundary_ratio x num_train_timesteps; 0: one */
  double boundary;       /* that timestep */
  gboolean expand_timesteps; /* Wan2.2 TI2V-5B: a timestep per token */
  uint64_t seed;
  int channels, latent_frames, latent_height, latent_width;

  /* The parts, all on be. */
  dp_backend *be;
  dp_tokenizer *tokenizer;
  dp_umt5_holder *text_encoder; /* kept loaded, or loaded for each encode (keep_text_encoder) */
  dp_wan_dit *dit;
  dp_wan_dit *dit2; /* Wan2.2: the low-noise expert (transformer_2/), else NULL */
  dp_wan_vae *vae;              /* on be, or on vae_be with vae_thread */
  dp_wan_vae_decoder *decoder;
  dp_sampler *sampler;
  dp_backend *vae_be;           /* the VAE's own backend (vae_thread), else NULL */
  dp_wan_vae_tiling vae_tiling; /* tile 0: untiled */
  gboolean vae_thread;
  char *vae_device;             /* NULL: stage 0's */

  dp_step_cb step_cb;
  void *step_data;
  dp_warning_cb warning_cb; /* NULL: g_warning */
  void *warning_data;

  dp_dualparal_pipe *dualparal; /* the DualParal engine (instead of dit, sampler, decoder) */
  /* Steering (DualParal engine): the prompt, negative prompt and guidance
   * as they are now (prompt / negative_prompt / guidance above stay the
   * creation's), the schedule, the change callback. */
  dp_prompt_state state;
  dp_prompt_line *schedule;
  int n_schedule;
  dp_prompt_cb prompt_cb;
  void *prompt_data;

  gint cancel;  /* atomic: a cancel request */
  gint running; /* atomic: a run is in progress */
};

/* What model_index.json says beyond diffusers (0: not given). */
typedef struct {
  int width, height, text_len, fps;
  int block_frames, context_frames; /* DualParal P and C suited to the model's training window */
  double boundary_ratio;            /* Wan2.2 two experts: transformer_2 below it (0: Wan2.1) */
  gboolean expand_timesteps;        /* Wan2.2 TI2V-5B: a timestep per token */
} model_hints;

void
dp_generator_params_init (dp_generator_params *p)
{
  memset (p, 0, sizeof *p);
  p->model_dir = NULL;
  p->prompt = NULL;
  p->negative_prompt = "";
  p->width = 0;
  p->height = 0;
  p->num_frames = 81;
  p->steps = 50;
  p->guidance_scale = 5.0;
  p->flow_shift = 0.0;
  p->seed = 0;
  p->sampler = DP_SAMPLER_UNIPC;
  p->engine = DP_ENGINE_CLASSIC;
  p->block_frames = 0;
  p->context_frames = 0;
  p->devices = "cpu";
  p->text_len = 0;
  p->threads = 0;
  p->vae_tile = 0;
  p->vae_thread = FALSE;
  p->vae_device = NULL;
  p->keep_text_encoder = TRUE;
}

/* ------------------------------------------------------------ settings */

static gboolean
several_devices (const char *devices)
{
  return devices != NULL && strchr (devices, ',') != NULL;
}

/* ------------------------------------------------------------ prompt schedule */

/* Parses "FRAME: PROMPT" lines (generator.h, prompt_schedule) into lines
 * (NULL: check only).  Errors name the line. */
static gboolean
parse_schedule (const char *text, dp_prompt_line **lines, int *n_lines, GError **error)
{
  char **rows = g_strsplit (text, "\n", -1);
  GArray *out = g_array_new (FALSE, FALSE, sizeof (dp_prompt_line));
  gboolean ok = TRUE;
  int64_t prev = -1;

  if (!g_utf8_validate (text, -1, NULL)) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "prompt schedule: the text is not valid UTF-8");
    ok = FALSE;
  }
  for (int i = 0; ok && rows[i]; i++) {
    char *row = g_strstrip (rows[i]);
    const int line = i + 1;
    if (row[0] == '\0' || row[0] == '#')
      continue;
    char *colon = strchr (row, ':');
    if (!colon) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "prompt schedule line %d: \"%s\" is not \"FRAME: PROMPT\"",
                   line, row);
      ok = FALSE;
      break;
    }
    *colon = '\0';
    char *num = g_strstrip (row);
    guint64 frame = 0;
    if (!g_ascii_string_to_unsigned (num, 10, 0, G_MAXINT64 / 8, &frame, NULL)) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "prompt schedule line %d: the frame \"%s\" is not a whole "
                   "number of 0 or more", line, num);
      ok = FALSE;
      break;
    }
    if (prev < 0 && frame != 0) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "prompt schedule line %d: the first prompt must be at frame "
                   "0, not %" G_GUINT64_FORMAT, line, frame);
      ok = FALSE;
      break;
    }
    if (prev >= 0 && (int64_t) frame <= prev) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "prompt schedule line %d: frame %" G_GUINT64_FORMAT " does "
                   "not come after the previous line's frame %" G_GINT64_FORMAT, line, frame, prev);
      ok = FALSE;
      break;
    }
    prev = (int64_t) frame;
    dp_prompt_line l = { (int64_t) frame, g_strdup (g_strstrip (colon + 1)) };
    g_array_append_val (out, l);
  }
  if (ok && out->len == 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "prompt schedule: no \"FRAME: PROMPT\" line");
    ok = FALSE;
  }
  g_strfreev (rows);
  if (ok && lines) {
    *n_lines = (int) out->len;
    *lines = (dp_prompt_line *) g_array_free (out, FALSE);
    return TRUE;
  }
  for (guint i = 0; i < out->len; i++)
    g_free (g_array_index (out, dp_prompt_line, i).prompt);
  g_array_free (out, TRUE);
  return ok;
}

gboolean
dp_prompt_schedule_check (const char *text, GError **error)
{
  if (!text) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "prompt schedule: no text");
    return FALSE;
  }
  return parse_schedule (text, NULL, NULL, error);
}

/* The settings that need no model.  Sizes and frame counts are checked
 * against the model after loading. */
static gboolean
check_params (const dp_generator_params *p, GError **error)
{
  if (p->model_dir == NULL || p->model_dir[0] == '\0') {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "No model directory given (model_dir is not set)");
    return FALSE;
  }
  if (p->prompt == NULL && p->prompt_schedule == NULL) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "No prompt given (prompt is not set; an empty "
                 "prompt \"\" is allowed)");
    return FALSE;
  }
  if (p->prompt && !g_utf8_validate (p->prompt, -1, NULL)) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "The prompt is not valid UTF-8 text");
    return FALSE;
  }
  if (p->negative_prompt && !g_utf8_validate (p->negative_prompt, -1, NULL)) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "The negative prompt is not valid UTF-8 text");
    return FALSE;
  }
  if (p->engine != DP_ENGINE_CLASSIC && p->engine != DP_ENGINE_DUALPARAL && p->engine != DP_ENGINE_AUTO) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "Unknown engine %d", (int) p->engine);
    return FALSE;
  }
  if (p->num_frames == -1 && p->engine == DP_ENGINE_CLASSIC) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "Endless video (num_frames -1) needs the "
                 "DualParal engine; give a frame count 4k+1 for the classic engine");
    return FALSE;
  }
  if (p->vae_tile < 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "vae_tile %d is not valid: give a tile size in pixels "
                 "(a multiple of 8, e.g. 256) or 0 for an untiled decode", p->vae_tile);
    return FALSE;
  }
  if (p->vae_device && p->vae_device[0] && !p->vae_thread) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "vae_device '%s' is for decoding on a thread of its own: "
                 "set vae_thread too", p->vae_device);
    return FALSE;
  }
  if (p->vae_thread && p->engine == DP_ENGINE_CLASSIC) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "vae_thread needs the DualParal engine (the classic "
                 "engine decodes after the whole video is denoised: nothing to overlap)");
    return FALSE;
  }
  if (p->num_frames < 1 && p->num_frames != -1) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "num_frames %d is not valid: the model makes "
                 "4k+1 frames (1, 5, 9, ..., 81, ...)", p->num_frames);
    return FALSE;
  }
  if (p->steps < 1 || p->steps > DP_SAMPLER_MAX_STEPS) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "steps %d is not valid: use 1 to %d", p->steps,
                 DP_SAMPLER_MAX_STEPS);
    return FALSE;
  }
  if (!isfinite (p->guidance_scale) || p->guidance_scale < 1.0) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "guidance_scale %g is not valid: use 1 (the "
                 "conditional pass alone) or more (classifier-free guidance)", p->guidance_scale);
    return FALSE;
  }
  if (p->guidance_scale_2 != 0.0 && (!isfinite (p->guidance_scale_2) || p->guidance_scale_2 < 1.0)) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "guidance_scale_2 %g is not valid: use 1 or more, "
                 "or 0 for guidance_scale's", p->guidance_scale_2);
    return FALSE;
  }
  if (p->guidance_scale_2 > 1.0 && p->guidance_scale <= 1.0) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "guidance_scale_2 %g needs guidance_scale above 1: "
                 "with guidance_scale 1 no unconditional pass is run (as in diffusers, where "
                 "guidance_scale alone turns guidance on)", p->guidance_scale_2);
    return FALSE;
  }
  if (!isfinite (p->flow_shift)) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "flow_shift %g is not valid: use a positive "
                 "shift, or 0 for the model's", p->flow_shift);
    return FALSE;
  }
  if (p->sampler != DP_SAMPLER_UNIPC && p->sampler != DP_SAMPLER_EULER) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "Unknown sampler %d", (int) p->sampler);
    return FALSE;
  }
  if (p->width < 0 || p->height < 0 || (p->width == 0) != (p->height == 0)) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "Size %dx%d is not valid: give a width and a "
                 "height (positive multiples of 16), or neither for the model's native size",
                 p->width, p->height);
    return FALSE;
  }
  if (p->text_len < 0 || p->text_len > DP_GENERATOR_MAX_TEXT_LEN) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "text_len %d is not valid: use 1 to %d, or 0 "
                 "for the model's", p->text_len, DP_GENERATOR_MAX_TEXT_LEN);
    return FALSE;
  }
  if (p->block_frames < 0 || p->context_frames < 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "block_frames %d / context_frames %d: must not "
                 "be negative", p->block_frames, p->context_frames);
    return FALSE;
  }
  if (p->processes != DP_PROCESSES_THREADS && p->processes != DP_PROCESSES_SPAWN &&
      p->processes != DP_PROCESSES_LAUNCHER) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "Unknown processes mode %d", (int) p->processes);
    return FALSE;
  }
  if (p->transition_blocks < 0 || p->transition_blocks > DP_GENERATOR_MAX_TRANSITION_BLOCKS) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "transition_blocks %d is not valid: use 0 (at once) to %d",
                 p->transition_blocks, DP_GENERATOR_MAX_TRANSITION_BLOCKS);
    return FALSE;
  }
  if (p->prompt_schedule != NULL && !dp_prompt_schedule_check (p->prompt_schedule, error))
    return FALSE;
  if (p->prompt_schedule != NULL && p->engine == DP_ENGINE_CLASSIC) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "A prompt schedule needs the DualParal engine (the "
                 "classic engine denoises the whole video with one prompt)");
    return FALSE;
  }
  if (p->processes != DP_PROCESSES_THREADS && p->engine == DP_ENGINE_CLASSIC) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "Stages in several processes need the DualParal "
                 "engine (the classic engine runs on one device)");
    return FALSE;
  }
  if (p->processes == DP_PROCESSES_SPAWN && !several_devices (p->devices)) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "processes \"spawn\" runs one process per device: "
                 "devices \"%s\" names one (give a list such as cpu,cpu or 0,1)", p->devices ? p->devices : "");
    return FALSE;
  }
  if (p->processes == DP_PROCESSES_LAUNCHER && several_devices (p->devices)) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "processes \"launcher\": devices names rank 0's own "
                 "device only (each worker picks its own), not \"%s\"", p->devices);
    return FALSE;
  }
  return TRUE;
}


/* "cpu", "cuda", "cuda:N" or "N" -> a backend spec; a list of several
 * devices is valid but needs the DualParal engine. */
static char *
parse_devices (const char *devices, gboolean several, GError **error)
{
  char **items;
  char *spec = NULL;
  int n;

  if (devices == NULL)
    return g_strdup ("cpu");
  items = g_strsplit (devices, ",", -1);
  n = (int) g_strv_length (items);
  for (int i = 0; i < n; i++) {
    char *item = g_strstrip (items[i]);
    char *end = NULL;

    if (item[0] == '\0') {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "devices \"%s\": empty device name (use cpu, "
                   "cuda:N, or a list of GPU numbers such as 0,1)", devices);
      goto out;
    }
    if (g_ascii_isdigit (item[0])) {
      errno = 0;
      unsigned long v = strtoul (item, &end, 10);
      if (*end != '\0' || errno != 0 || v > 1024) {
        g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "devices \"%s\": \"%s\" is not a device "
                     "(use cpu, cuda:N or a GPU number N)", devices, item);
        goto out;
      }
      if (i == 0)
        spec = g_strdup_printf ("cuda:%lu", v);
    } else if (strcmp (item, "cpu") == 0 || g_str_has_prefix (item, "cpu:")
               || strcmp (item, "cuda") == 0 || g_str_has_prefix (item, "cuda:")) {
      if (i == 0)
        spec = g_strdup (item); /* dp_backend_new judges "cpu:N", "cuda:N" */
    } else {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "devices \"%s\": \"%s\" is not a device (use "
                   "cpu, cuda:N or a GPU number N)", devices, item);
      goto out;
    }
  }
  if (n == 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "devices is empty (use cpu or cuda:N)");
    goto out;
  }
  if (n > 1 && !several) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "devices \"%s\" lists %d devices: running "
                 "on several devices needs the DualParal engine; give one device for the classic "
                 "engine", devices, n);
    goto out;
  }
  g_strfreev (items);
  return spec;

out:
  g_free (spec);
  g_strfreev (items);
  return NULL;
}

/* ------------------------------------------------------------ model dir */

static gboolean
hint_int (JsonObject *obj, const char *path, const char *key, int min, int max, int *out,
          GError **error)
{
  JsonNode *node = json_object_get_member (obj, key);

  if (node == NULL)
    return TRUE;
  if (!JSON_NODE_HOLDS_VALUE (node) || json_node_get_value_type (node) != G_TYPE_INT64
      || json_node_get_int (node) < min || json_node_get_int (node) > max) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: \"_dualparal\".\"%s\" must be an integer "
                 "from %d to %d", path, key, min, max);
    return FALSE;
  }
  *out = (int) json_node_get_int (node);
  return TRUE;
}

/* Reads model_index.json: it must be a text-to-video WanPipeline, Wan2.1
 * (one transformer), Wan2.2 T2V-A14B ("boundary_ratio" and transformer_2,
 * the low-noise expert) or Wan2.2 TI2V-5B ("expand_timesteps": a timestep
 * per token), and may hold "_dualparal" hints.  What it cannot run
 * (image-to-video, S2V, Animate) is refused naming the reason. */
static gboolean
read_model_index (const char *model_dir, model_hints *hints, GError **error)
{
  char *path = g_build_filename (model_dir, "model_index.json", NULL);
  JsonParser *parser = NULL;
  GError *jerr = NULL;
  JsonObject *obj;
  JsonNode *node;
  gboolean ok = FALSE;

  memset (hints, 0, sizeof *hints);
  if (!g_file_test (path, G_FILE_TEST_EXISTS)) {
    g_set_error (error, DP_ERROR, DP_ERROR_MISSING, "%s is missing: '%s' is not a diffusers model "
                 "directory (model_index.json, tokenizer/, text_encoder/, transformer/, vae/, "
                 "scheduler/)", path, model_dir);
    goto out;
  }
  parser = json_parser_new ();
  if (!json_parser_load_from_file (parser, path, &jerr)) {
    /* json-glib's parse errors already start with the file name. */
    g_set_error (error, DP_ERROR, jerr->domain == G_FILE_ERROR ? DP_ERROR_IO : DP_ERROR_FORMAT,
                 "%s%s%s", g_str_has_prefix (jerr->message, path) ? "" : path,
                 g_str_has_prefix (jerr->message, path) ? "" : ": ", jerr->message);
    g_error_free (jerr);
    goto out;
  }
  node = json_parser_get_root (parser);
  if (node == NULL || !JSON_NODE_HOLDS_OBJECT (node)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: not a JSON object", path);
    goto out;
  }
  obj = json_node_get_object (node);

  node = json_object_get_member (obj, "_class_name");
  if (node != NULL) {
    const char *cls = JSON_NODE_HOLDS_VALUE (node) && json_node_get_value_type (node) == G_TYPE_STRING
                          ? json_node_get_string (node) : NULL;
    if (cls == NULL) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: \"_class_name\" is not a string", path);
      goto out;
    }
    if (strcmp (cls, "WanPipeline") != 0) {
      /* Name the reason for the Wan variants diffusers knows. */
      const char *why = strstr (cls, "ImageToVideo") ? "image-to-video models (Wan2.1 / Wan2.2 I2V) "
                                                       "are not supported"
                        : strstr (cls, "SpeechToVideo") || strstr (cls, "S2V")
                            ? "Wan2.2 S2V (speech-to-video) is not supported"
                        : strstr (cls, "Animate") ? "Wan2.2 Animate is not supported"
                        : strstr (cls, "VACE") ? "Wan VACE (video editing) is not supported"
                        : strstr (cls, "VideoToVideo") ? "video-to-video is not supported"
                        : "it is not a Wan text-to-video pipeline";
      g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "%s: pipeline class \"%s\" is not "
                   "supported: %s; dualparal runs Wan text-to-video models (\"WanPipeline\": "
                   "Wan2.1 T2V, Wan2.2 T2V-A14B, Wan2.2 TI2V-5B as text-to-video)", path, cls, why);
      goto out;
    }
  }
  node = json_object_get_member (obj, "expand_timesteps");
  if (node != NULL && !JSON_NODE_HOLDS_NULL (node)) {
    if (!JSON_NODE_HOLDS_VALUE (node) || json_node_get_value_type (node) != G_TYPE_BOOLEAN) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: \"expand_timesteps\" is not true or false", path);
      goto out;
    }
    /* Wan2.2 TI2V-5B: a timestep per token (text-to-video here: every
     * token at the step's, diffusers' mask of ones). */
    hints->expand_timesteps = json_node_get_boolean (node);
  }
  node = json_object_get_member (obj, "boundary_ratio");
  if (node != NULL && !JSON_NODE_HOLDS_NULL (node)) {
    JsonNode *t2 = json_object_get_member (obj, "transformer_2");
    JsonArray *t2a = t2 != NULL && JSON_NODE_HOLDS_ARRAY (t2) ? json_node_get_array (t2) : NULL;
    GType vt = JSON_NODE_HOLDS_VALUE (node) ? json_node_get_value_type (node) : G_TYPE_INVALID;
    double r;

    if (vt != G_TYPE_DOUBLE && vt != G_TYPE_INT64) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: \"boundary_ratio\" is not a number", path);
      goto out;
    }
    r = json_node_get_double (node);
    if (!(r > 0.0 && r < 1.0)) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: \"boundary_ratio\" %g is not valid: a "
                   "Wan2.2 two-expert model switches experts at a ratio between 0 and 1", path, r);
      goto out;
    }
    if (hints->expand_timesteps) {
      g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "%s: both \"boundary_ratio\" (two experts, "
                   "T2V-A14B) and \"expand_timesteps\" (a timestep per token, TI2V-5B) are set: no Wan2.2 "
                   "release is both, and this combination is not supported", path);
      goto out;
    }
    /* diffusers runs transformer_2 below the boundary: it must be there. */
    if (t2a == NULL || json_array_get_length (t2a) != 2 || JSON_NODE_HOLDS_NULL (json_array_get_element (t2a, 1))) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: \"boundary_ratio\" is set (a Wan2.2 "
                   "two-expert model) but \"transformer_2\" (the low-noise expert) is not", path);
      goto out;
    }
    hints->boundary_ratio = r;
  }

  node = json_object_get_member (obj, "_dualparal");
  if (node != NULL) {
    JsonObject *h;

    if (!JSON_NODE_HOLDS_OBJECT (node)) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: \"_dualparal\" is not an object", path);
      goto out;
    }
    h = json_node_get_object (node);
    if (!hint_int (h, path, "width", 16, 16384, &hints->width, error)
        || !hint_int (h, path, "height", 16, 16384, &hints->height, error)
        || !hint_int (h, path, "text_len", 1, DP_GENERATOR_MAX_TEXT_LEN, &hints->text_len, error)
        || !hint_int (h, path, "fps", 1, 1000, &hints->fps, error)
        || !hint_int (h, path, "block_frames", 1, 4096, &hints->block_frames, error)
        || !hint_int (h, path, "context_frames", 1, 4096, &hints->context_frames, error))
      goto out;
    if ((hints->width == 0) != (hints->height == 0)) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: \"_dualparal\" gives only one of width "
                   "and height", path);
      goto out;
    }
  }
  ok = TRUE;

out:
  if (parser)
    g_object_unref (parser);
  g_free (path);
  return ok;
}

/* Every component directory must be there before anything is loaded, so
 * that a missing one is named at once. */
static gboolean
check_components (const char *model_dir, gboolean two_experts, GError **error)
{
  static const struct {
    const char *name, *what;
  } comps[] = {
    { "tokenizer", "the tokenizer" },
    { "text_encoder", "the umT5 text encoder" },
    { "transformer", "the diffusion transformer" },
    { "vae", "the VAE" },
    { "scheduler", "the scheduler config" },
  };

  for (size_t i = 0; i < G_N_ELEMENTS (comps); i++) {
    char *dir = g_build_filename (model_dir, comps[i].name, NULL);
    gboolean there = g_file_test (dir, G_FILE_TEST_IS_DIR);

    if (!there)
      g_set_error (error, DP_ERROR, DP_ERROR_MISSING, "Model directory '%s' has no %s/ (%s): a Wan "
                   "text-to-video model in diffusers layout has tokenizer/, text_encoder/, "
                   "transformer/, vae/ and scheduler/", model_dir, comps[i].name, comps[i].what);
    g_free (dir);
    if (!there)
      return FALSE;
  }
  if (two_experts) {
    char *dir = g_build_filename (model_dir, "transformer_2", NULL);
    gboolean there = g_file_test (dir, G_FILE_TEST_IS_DIR);

    if (!there)
      g_set_error (error, DP_ERROR, DP_ERROR_MISSING, "Model directory '%s' has no transformer_2/: "
                   "model_index.json sets \"boundary_ratio\" (a Wan2.2 two-expert model), whose "
                   "low-noise expert is transformer_2/", model_dir);
    g_free (dir);
    return there;
  }
  return TRUE;
}

/* ------------------------------------------------------------ loading */

/* The DualParal engine's parts: the text encoder here, the DiT's stages,
 * the samplers and the decoder in the engine (engine/generate.c). */
static void warn (dp_generator *gen, const char *fmt, ...) G_GNUC_PRINTF (2, 3);

/* Parts below the generator warn through the callback set when they speak. */
static void
warn_cb (const char *message, void *data)
{
  warn (data, "%s", message);
}

static gboolean
load_dualparal (dp_generator *gen, const dp_generator_params *p, const dp_sampler_settings *settings,
                GError **error)
{
  char *dir = g_build_filename (gen->model_dir, "text_encoder", NULL);
  gen->text_encoder = dp_umt5_holder_new (gen->be, dir, p->keep_text_encoder, error);
  g_free (dir);
  if (gen->text_encoder == NULL) {
    g_prefix_error (error, "Text encoder: ");
    return FALSE;
  }
  dp_dualparal_config c = {
    .model_dir = gen->model_dir, .devices = gen->devices, .be0 = gen->be,
    .block_frames = gen->block_frames, .context_frames = gen->context_frames,
    .latent_frames = gen->latent_frames, .latent_height = gen->latent_height,
    .latent_width = gen->latent_width, .settings = settings, .steps = p->steps,
    .guidance = gen->guidance, .seed = gen->seed,
    .two_experts = gen->boundary_ratio > 0.0, .boundary = gen->boundary, .guidance_2 = p->guidance_scale_2,
    .per_token_time = gen->expand_timesteps,
    .processes = p->processes, .wire_bf16 = p->wire_bf16, .warn = warn_cb, .warn_data = gen,
  };
  gen->dualparal = dp_dualparal_pipe_new (&c, error);
  return gen->dualparal != NULL;
}

static gboolean
load_parts (dp_generator *gen, const dp_generator_params *p, GError **error)
{
  char *dir;
  dp_wan_config wcfg;
  dp_umt5_config tcfg;
  const dp_wan_config *wc = &wcfg;
  const dp_wan_vae_config *vc;
  dp_sampler_settings settings;
  dp_schedule *sched = NULL;
  gboolean ok;

  /* The cheap parts first (configs, tokenizer, the small VAE), so that a
   * wrong setting or a mismatched model fails before gigabytes of weights
   * are read. */
  gen->be = dp_backend_new (gen->device, error);
  if (gen->be == NULL)
    return FALSE;

  if (!dp_sampler_settings_load (&settings, gen->model_dir, p->sampler, error)) {
    g_prefix_error (error, "Scheduler: ");
    return FALSE;
  }
  if (p->flow_shift > 0.0)
    settings.shift = p->flow_shift;
  /* diffusers: boundary_timestep = boundary_ratio * scheduler.config.num_train_timesteps. */
  gen->boundary = gen->boundary_ratio * settings.num_train_timesteps;
  sched = dp_schedule_new (&settings, p->steps, error);
  if (sched == NULL) {
    g_prefix_error (error, "Scheduler: ");
    return FALSE;
  }

  gen->tokenizer = dp_tokenizer_load (gen->model_dir, error);
  if (gen->tokenizer == NULL) {
    g_prefix_error (error, "Tokenizer: ");
    goto fail;
  }

  dir = g_build_filename (gen->model_dir, "text_encoder", NULL);
  ok = dp_umt5_config_load (dir, &tcfg, error);
  g_free (dir);
  if (!ok) {
    g_prefix_error (error, "Text encoder: ");
    goto fail;
  }
  dir = g_build_filename (gen->model_dir, "transformer", NULL);
  ok = dp_wan_config_load (dir, &wcfg, error);
  g_free (dir);
  if (!ok) {
    g_prefix_error (error, "Transformer: ");
    goto fail;
  }
  if (gen->boundary_ratio > 0.0) {
    /* The low-noise expert takes the same latents, text and positions. */
    dp_wan_config c2;

    dir = g_build_filename (gen->model_dir, "transformer_2", NULL);
    ok = dp_wan_config_load (dir, &c2, error);
    g_free (dir);
    if (!ok) {
      g_prefix_error (error, "Transformer 2 (the low-noise expert): ");
      goto fail;
    }
    if (c2.patch_t != wc->patch_t || c2.patch_h != wc->patch_h || c2.patch_w != wc->patch_w
        || c2.num_heads != wc->num_heads || c2.head_dim != wc->head_dim || c2.in_channels != wc->in_channels
        || c2.out_channels != wc->out_channels || c2.text_dim != wc->text_dim || c2.num_layers != wc->num_layers
        || c2.rope_max_seq_len != wc->rope_max_seq_len) {
      g_set_error (error, DP_ERROR, DP_ERROR_SHAPE, "Model '%s' does not fit together: transformer_2/ "
                   "(%d layers, %d heads x %d, channels %d -> %d, text_dim %d, patch %dx%dx%d, "
                   "rope_max_seq_len %d) is not shaped like transformer/ (%d layers, %d heads x %d, "
                   "channels %d -> %d, text_dim %d, patch %dx%dx%d, rope_max_seq_len %d): the two "
                   "experts of a Wan2.2 model take turns on the same latents", gen->model_dir,
                   c2.num_layers, c2.num_heads, c2.head_dim, c2.in_channels, c2.out_channels, c2.text_dim,
                   c2.patch_t, c2.patch_h, c2.patch_w, c2.rope_max_seq_len, wc->num_layers, wc->num_heads,
                   wc->head_dim, wc->in_channels, wc->out_channels, wc->text_dim, wc->patch_t, wc->patch_h,
                   wc->patch_w, wc->rope_max_seq_len);
      goto fail;
    }
  }
  dir = g_build_filename (gen->model_dir, "vae", NULL);
  gen->vae = dp_wan_vae_load (gen->be, dir, error);
  g_free (dir);
  if (gen->vae == NULL) {
    g_prefix_error (error, "VAE: ");
    goto fail;
  }
  vc = dp_wan_vae_get_config (gen->vae);
  if (p->vae_tile > 0) {
    dp_wan_vae_tiling_default (p->vae_tile, vc->spatial_scale, &gen->vae_tiling);
    if (!dp_wan_vae_tiling_check (vc, &gen->vae_tiling, error)) {
      g_prefix_error (error, "vae_tile %d: ", p->vae_tile);
      goto fail;
    }
  }

  /* The parts must fit together. */
  if (tcfg.d_model != wc->text_dim) {
    g_set_error (error, DP_ERROR, DP_ERROR_SHAPE, "Model '%s' does not fit together: the text "
                 "encoder's d_model is %d but the transformer's text_dim is %d", gen->model_dir,
                 tcfg.d_model, wc->text_dim);
    goto fail;
  }
  if (dp_tokenizer_vocab_size (gen->tokenizer) > tcfg.vocab_size) {
    g_set_error (error, DP_ERROR, DP_ERROR_SHAPE, "Model '%s' does not fit together: the tokenizer "
                 "has %d pieces but the text encoder only %d embeddings", gen->model_dir,
                 dp_tokenizer_vocab_size (gen->tokenizer), tcfg.vocab_size);
    goto fail;
  }
  /* TI2V-5B's latents are those of the Wan2.2 VAE (residual, z_dim 48). */
  if (gen->expand_timesteps && !vc->is_residual) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "Model '%s' does not fit together: model_index.json "
                 "sets \"expand_timesteps\" (Wan2.2 TI2V-5B) but vae/ is not the Wan2.2 VAE "
                 "(is_residual false, z_dim %d; TI2V-5B's has is_residual true and z_dim 48)",
                 gen->model_dir, vc->z_dim);
    goto fail;
  }
  if (vc->z_dim != wc->in_channels || vc->z_dim != wc->out_channels) {
    g_set_error (error, DP_ERROR, DP_ERROR_SHAPE, "Model '%s' does not fit together: the VAE has "
                 "%d latent channels but the transformer takes %d and makes %d", gen->model_dir,
                 vc->z_dim, wc->in_channels, wc->out_channels);
    goto fail;
  }

  /* Sizes against the model. */
  {
    const int mult_h = vc->spatial_scale * wc->patch_h, mult_w = vc->spatial_scale * wc->patch_w;
    const int ts = vc->temporal_scale;

    gen->width_step = mult_w;
    gen->height_step = mult_h;
    if (gen->width % mult_w != 0 || gen->height % mult_h != 0) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "Size %dx%d is not valid for this model: the "
                   "width must be a multiple of %d and the height of %d", gen->width, gen->height,
                   mult_w, mult_h);
      goto fail;
    }
    if (gen->num_frames != -1 && (gen->num_frames - 1) % ts != 0) {
      int below = (gen->num_frames - 1) / ts * ts + 1;
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "num_frames %d is not valid: the model makes "
                   "%dk+1 frames (nearest: %d or %d)", gen->num_frames, ts, below, below + ts);
      goto fail;
    }
    gen->channels = wc->in_channels;
    gen->latent_frames = gen->num_frames == -1 ? -1 : (gen->num_frames - 1) / ts + 1;
    gen->latent_height = gen->height / vc->spatial_scale;
    gen->latent_width = gen->width / vc->spatial_scale;
    if (gen->engine == DP_ENGINE_AUTO) {
      /* Asking for blocks is asking for the DualParal engine. */
      gen->engine = gen->num_frames == -1 || several_devices (p->devices) || p->block_frames > 0
                        || gen->n_schedule > 1
                        || p->processes != DP_PROCESSES_THREADS
                        || p->context_frames > 0
                        || (gen->model_window > 0 && gen->latent_frames > gen->model_window)
                        || gen->latent_frames > wc->rope_max_seq_len
                      ? DP_ENGINE_DUALPARAL : DP_ENGINE_CLASSIC;
    }
    if (gen->engine == DP_ENGINE_CLASSIC && gen->latent_frames > wc->rope_max_seq_len) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "num_frames %d is too many for the classic "
                   "engine: %d latent frames, the transformer's positions end at %d (at most %d "
                   "frames)", gen->num_frames, gen->latent_frames, wc->rope_max_seq_len,
                   (wc->rope_max_seq_len - 1) * ts + 1);
      goto fail;
    }
  }

  /* The big parts. */
  if (gen->vae_thread && gen->engine != DP_ENGINE_DUALPARAL) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "vae_thread needs the DualParal engine (the classic "
                 "engine decodes after the whole video is denoised: nothing to overlap)");
    goto fail;
  }
  if (gen->vae_thread) {
    /* The decode thread's own backend (a backend serves one thread), and
     * the VAE loaded again onto it. */
    const char *spec = gen->vae_device ? gen->vae_device : gen->device;
    gen->vae_be = dp_backend_new (spec, error);
    if (gen->vae_be == NULL) {
      g_prefix_error (error, "VAE device '%s': ", spec);
      goto fail;
    }
    dp_wan_vae_free (gen->vae);
    dir = g_build_filename (gen->model_dir, "vae", NULL);
    gen->vae = dp_wan_vae_load (gen->vae_be, dir, error);
    g_free (dir);
    if (gen->vae == NULL) {
      g_prefix_error (error, "VAE on '%s': ", spec);
      goto fail;
    }
  }
  if (gen->engine == DP_ENGINE_DUALPARAL) {
    g_clear_pointer (&sched, dp_schedule_free);
    return load_dualparal (gen, p, &settings, error);
  }
  dir = g_build_filename (gen->model_dir, "transformer", NULL);
  gen->dit = dp_wan_dit_load (gen->be, dir, 0, -1, error);
  g_free (dir);
  if (gen->dit == NULL) {
    g_prefix_error (error, "Transformer: ");
    goto fail;
  }
  if (gen->boundary_ratio > 0.0) {
    dir = g_build_filename (gen->model_dir, "transformer_2", NULL);
    gen->dit2 = dp_wan_dit_load (gen->be, dir, 0, -1, error);
    g_free (dir);
    if (gen->dit2 == NULL) {
      g_prefix_error (error, "Transformer 2 (the low-noise expert): ");
      goto fail;
    }
    dp_wan_dit_share_arena (gen->dit2, gen->dit); /* they take turns: one activation arena */
  }
  dir = g_build_filename (gen->model_dir, "text_encoder", NULL);
  gen->text_encoder = dp_umt5_holder_new (gen->be, dir, p->keep_text_encoder, error);
  g_free (dir);
  if (gen->text_encoder == NULL) {
    g_prefix_error (error, "Text encoder: ");
    goto fail;
  }

  /* What every run needs, allocated now so that a size that does not fit in
   * memory fails here rather than mid-run. */
  gen->sampler = dp_sampler_new (gen->be, sched,
                                 4, (int64_t[]){ gen->channels, gen->latent_frames,
                                                 gen->latent_height, gen->latent_width },
                                 error);
  g_clear_pointer (&sched, dp_schedule_free);
  if (gen->sampler == NULL)
    goto fail;

  gen->decoder = dp_wan_vae_decoder_new_tiled (gen->vae, gen->latent_height, gen->latent_width,
                                              &gen->vae_tiling, error);
  if (gen->decoder == NULL) {
    g_prefix_error (error, "VAE decoder: ");
    goto fail;
  }

  {
    /* The DiT's arena for this span and batch: sized with a zero context of
     * the run's shape (the real one replaces it at every run). */
    dp_tensor ctx = dp_tensor_new_host (DP_F32, 3,
                                        (int64_t[]){ gen->guidance > 1.0 ? 2 : 1, gen->text_len,
                                                     wc->text_dim });
    dp_wan_span span;

    dp_wan_span_init (&span, gen->latent_frames, gen->latent_height, gen->latent_width);
    ok = dp_wan_dit_set_context (gen->dit, &ctx, error) && dp_wan_dit_reserve (gen->dit, &span, error);
    if (ok && gen->dit2 != NULL)
      ok = dp_wan_dit_set_context (gen->dit2, &ctx, error) && dp_wan_dit_reserve (gen->dit2, &span, error);
    dp_tensor_free (&ctx);
    if (!ok) {
      g_prefix_error (error, "Transformer: ");
      goto fail;
    }
  }
  return TRUE;

fail:
  /* The parts made so far are freed with the generator. */
  if (sched != NULL)
    dp_schedule_free (sched);
  return FALSE;
}

dp_generator *
dp_generator_new (const dp_generator_params *p, GError **error)
{
  dp_generator *gen;
  model_hints hints;
  char *device, *devices;

  g_return_val_if_fail (p != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  if (!check_params (p, error))
    return NULL;
  device = parse_devices (p->devices, p->engine != DP_ENGINE_CLASSIC && p->processes != DP_PROCESSES_LAUNCHER, error);
  if (device == NULL)
    return NULL;
  g_free (device);
  /* The CPU threads of each CPU stage: "cpu,cpu" with 3 threads -> "cpu:2,cpu:1". */
  devices = dp_cpu_assign_threads (p->devices, p->threads, error);
  if (devices == NULL)
    return NULL;
  device = parse_devices (devices, TRUE, NULL);
  if (!g_file_test (p->model_dir, G_FILE_TEST_IS_DIR)) {
    g_set_error (error, DP_ERROR, DP_ERROR_MISSING, "Model directory '%s' does not exist or is not "
                 "a directory", p->model_dir);
    g_free (device);
    g_free (devices);
    return NULL;
  }
  if (!read_model_index (p->model_dir, &hints, error)
      || !check_components (p->model_dir, hints.boundary_ratio > 0.0, error)) {
    g_free (device);
    g_free (devices);
    return NULL;
  }
  if (hints.boundary_ratio == 0.0 && p->guidance_scale_2 != 0.0) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "guidance_scale_2 is for Wan2.2 two-expert models "
                 "(model_index.json with \"boundary_ratio\"); '%s' has one transformer", p->model_dir);
    g_free (device);
    g_free (devices);
    return NULL;
  }

  gen = g_new0 (dp_generator, 1);
  gen->device = device;
  gen->devices = devices;
  gen->model_dir = g_strdup (p->model_dir);
  if (p->prompt_schedule && !parse_schedule (p->prompt_schedule, &gen->schedule, &gen->n_schedule, error)) {
    g_free (gen->device);
    g_free (gen);
    return NULL;
  }
  /* A schedule's frame 0 line is the prompt. */
  gen->prompt = g_strdup (gen->n_schedule > 0 ? gen->schedule[0].prompt : p->prompt);
  gen->negative_prompt = g_strdup (p->negative_prompt ? p->negative_prompt : "");
  g_mutex_init (&gen->state.lock);
  gen->state.prompt = g_strdup (gen->prompt);
  gen->state.negative_prompt = g_strdup (gen->negative_prompt);
  gen->state.guidance = p->guidance_scale;
  gen->state.transition_blocks = p->transition_blocks;
  gen->num_frames = p->num_frames;
  gen->warning_cb = p->warning_cb;
  gen->warning_data = p->warning_cb ? p->warning_data : NULL;
  gen->engine = p->engine; /* DP_ENGINE_AUTO is resolved in load_parts */
  gen->guidance = p->guidance_scale;
  gen->guidance2 = p->guidance_scale_2 > 0.0 ? p->guidance_scale_2 : p->guidance_scale;
  gen->boundary_ratio = hints.boundary_ratio;
  gen->expand_timesteps = hints.expand_timesteps;
  gen->seed = p->seed;
  gen->vae_thread = p->vae_thread;
  gen->vae_device = p->vae_device && p->vae_device[0] ? g_strdup (p->vae_device) : NULL;
  if (p->width > 0) {
    gen->width = p->width;
    gen->height = p->height;
  } else if (hints.width > 0) {
    gen->width = hints.width;
    gen->height = hints.height;
  } else if (hints.expand_timesteps) {
    gen->width = DP_GENERATOR_TI2V_WIDTH;
    gen->height = DP_GENERATOR_TI2V_HEIGHT;
  } else {
    gen->width = DP_GENERATOR_DEFAULT_WIDTH;
    gen->height = DP_GENERATOR_DEFAULT_HEIGHT;
  }
  gen->text_len = p->text_len > 0 ? p->text_len
                  : hints.text_len > 0 ? hints.text_len : DP_GENERATOR_DEFAULT_TEXT_LEN;
  gen->fps = hints.fps > 0 ? hints.fps : hints.expand_timesteps ? DP_GENERATOR_TI2V_FPS : DP_GENERATOR_DEFAULT_FPS;
  /* A small model trained on short windows gives its own P and C; the
   * caller's values win, the engine's defaults come last. */
  gen->block_frames = p->block_frames > 0 ? p->block_frames : hints.block_frames;
  gen->context_frames = p->context_frames > 0 ? p->context_frames : hints.context_frames;
  if (hints.block_frames > 0 && hints.context_frames > 0)
    gen->model_window = 2 * hints.context_frames + hints.block_frames;

  if (!load_parts (gen, p, error)) {
    dp_generator_free (gen);
    return NULL;
  }
  return gen;
}

void
dp_generator_free (dp_generator *gen)
{
  if (gen == NULL)
    return;
  g_warn_if_fail (!g_atomic_int_get (&gen->running));
  dp_sampler_free (gen->sampler);
  if (gen->decoder)
    dp_wan_vae_decoder_free (gen->decoder);
  if (gen->vae)
    dp_wan_vae_free (gen->vae);
  dp_backend_free (gen->vae_be);
  g_free (gen->vae_device);
  if (gen->dit)
    dp_wan_dit_free (gen->dit);
  if (gen->dit2)
    dp_wan_dit_free (gen->dit2);
  dp_umt5_holder_free (gen->text_encoder);
  if (gen->tokenizer)
    dp_tokenizer_free (gen->tokenizer);
  dp_dualparal_pipe_free (gen->dualparal);
  dp_backend_free (gen->be);
  for (int i = 0; i < gen->n_schedule; i++)
    g_free (gen->schedule[i].prompt);
  g_free (gen->schedule);
  g_free (gen->state.prompt);
  g_free (gen->state.negative_prompt);
  g_mutex_clear (&gen->state.lock);
  g_free (gen->model_dir);
  g_free (gen->prompt);
  g_free (gen->negative_prompt);
  g_free (gen->device);
  g_free (gen->devices);
  g_free (gen);
}

/* ------------------------------------------------------------ queries */

void
dp_generator_get_size (const dp_generator *gen, int *width, int *height)
{
  if (width)
    *width = gen->width;
  if (height)
    *height = gen->height;
}

void
dp_generator_get_size_step (const dp_generator *gen, int *width_step, int *height_step)
{
  if (width_step)
    *width_step = gen->width_step;
  if (height_step)
    *height_step = gen->height_step;
}

int
dp_generator_fps (const dp_generator *gen)
{
  return gen->fps;
}

int64_t
dp_generator_num_frames (const dp_generator *gen)
{
  return gen->num_frames;
}

dp_engine_kind
dp_generator_engine (const dp_generator *gen, int *block_frames, int *context_frames)
{
  if (block_frames)
    *block_frames = gen->engine == DP_ENGINE_DUALPARAL ? gen->block_frames : 0;
  if (context_frames)
    *context_frames = gen->engine == DP_ENGINE_DUALPARAL ? gen->context_frames : 0;
  return gen->engine;
}

int
dp_generator_text_len (const dp_generator *gen)
{
  return gen->text_len;
}

int
dp_generator_threads (const dp_generator *gen)
{
  return dp_cpu_threads_in (gen->devices);
}

void
dp_generator_latent_shape (const dp_generator *gen, int64_t shape[4])
{
  shape[0] = gen->channels;
  shape[1] = gen->latent_frames;
  shape[2] = gen->latent_height;
  shape[3] = gen->latent_width;
}

void
dp_generator_set_step_callback (dp_generator *gen, dp_step_cb cb, void *user_data)
{
  g_return_if_fail (!g_atomic_int_get (&gen->running));
  gen->step_cb = cb;
  gen->step_data = cb ? user_data : NULL;
}

void
dp_generator_set_prompt_callback (dp_generator *gen, dp_prompt_cb cb, void *user_data)
{
  g_return_if_fail (!g_atomic_int_get (&gen->running));
  gen->prompt_cb = cb;
  gen->prompt_data = cb ? user_data : NULL;
}

gboolean
dp_generator_set_prompt (dp_generator *gen, const char *prompt, const char *negative_prompt,
                         double guidance_scale, GError **error)
{
  g_return_val_if_fail (gen != NULL, FALSE);
  if (gen->engine != DP_ENGINE_DUALPARAL) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "The prompt cannot change with the classic engine: it "
                 "denoises the whole video at once from one prompt (use the DualParal engine to steer a video)");
    return FALSE;
  }
  if ((prompt && !g_utf8_validate (prompt, -1, NULL)) ||
      (negative_prompt && !g_utf8_validate (negative_prompt, -1, NULL))) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "The new %s is not valid UTF-8 text",
                 prompt && !g_utf8_validate (prompt, -1, NULL) ? "prompt" : "negative prompt");
    return FALSE;
  }
  if (guidance_scale > 0.0 && (!isfinite (guidance_scale) || guidance_scale < 1.0)) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "guidance_scale %g is not valid: use 1 or more", guidance_scale);
    return FALSE;
  }
  if (guidance_scale > 1.0 && gen->guidance <= 1.0) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "guidance_scale %g: this generator was made with guidance 1 "
                 "(the conditional pass alone, no unconditional one to guide with); make it with guidance > 1 to "
                 "change guidance later", guidance_scale);
    return FALSE;
  }
  g_mutex_lock (&gen->state.lock);
  if (prompt) {
    g_free (gen->state.prompt);
    gen->state.prompt = g_strdup (prompt);
  }
  if (negative_prompt) {
    g_free (gen->state.negative_prompt);
    gen->state.negative_prompt = g_strdup (negative_prompt);
  }
  if (guidance_scale > 0.0)
    gen->state.guidance = guidance_scale;
  gen->state.serial++;
  g_mutex_unlock (&gen->state.lock);
  return TRUE;
}

gboolean
dp_generator_set_transition (dp_generator *gen, int blocks, GError **error)
{
  if (blocks < 0 || blocks > DP_GENERATOR_MAX_TRANSITION_BLOCKS) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "transition of %d blocks is not valid: use 0 (at once) to %d",
                 blocks, DP_GENERATOR_MAX_TRANSITION_BLOCKS);
    return FALSE;
  }
  g_mutex_lock (&gen->state.lock);
  gen->state.transition_blocks = blocks;
  g_mutex_unlock (&gen->state.lock);
  return TRUE;
}

void
dp_generator_set_warning_callback (dp_generator *gen, dp_warning_cb cb, void *user_data)
{
  g_return_if_fail (!g_atomic_int_get (&gen->running));
  gen->warning_cb = cb;
  gen->warning_data = cb ? user_data : NULL;
}

/* ------------------------------------------------------------ running */

static void
warn (dp_generator *gen, const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  char *msg = g_strdup_vprintf (fmt, ap);
  va_end (ap);
  if (gen->warning_cb)
    gen->warning_cb (msg, gen->warning_data);
  else
    g_warning ("%s", msg);
  g_free (msg);
}

/* Says when a prompt has more tokens than the text length: the encoder then
 * reads only its first text_len - 1 and EOS (as diffusers, which truncates
 * without a word). */
static void
warn_if_truncated (dp_generator *gen, const char *which, const char *prompt)
{
  /* Encode into more room than text_len until the count fits (a full
   * buffer may have been cut). */
  int n = 0;
  for (int room = gen->text_len + 1; room > 0 && room <= (1 << 24); room *= 4) {
    int32_t *ids = g_new (int32_t, room);
    n = dp_tokenizer_encode (gen->tokenizer, prompt, room, ids, NULL);
    g_free (ids);
    if (n < room)
      break;
  }
  if (n > gen->text_len)
    warn (gen, "the %s has %d tokens (EOS included), more than the text length %d: the model reads only its first "
          "%d tokens and EOS", which, n, gen->text_len, gen->text_len - 1);
}

gboolean
dp_generator_run_traced (dp_generator *gen, const dp_tensor *initial_noise,
                         const dp_classic_trace *trace, dp_frames_cb cb, void *user_data,
                         GError **error)
{
  dp_classic_parts parts;
  dp_classic_job job;
  gboolean ok;

  g_return_val_if_fail (gen != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);
  if (cb == NULL) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "dp_generator_run needs a frame callback");
    return FALSE;
  }
  if (!g_atomic_int_compare_and_exchange (&gen->running, 0, 1)) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "The generator is already running");
    return FALSE;
  }
  if (gen->dualparal != NULL) {
    g_mutex_lock (&gen->state.lock);
    char *pr = g_strdup (gen->n_schedule > 0 ? gen->schedule[0].prompt : gen->state.prompt);
    char *neg = g_strdup (gen->state.negative_prompt);
    g_mutex_unlock (&gen->state.lock);
    warn_if_truncated (gen, "prompt", pr);
    if (gen->guidance > 1.0)
      warn_if_truncated (gen, "negative prompt", neg);
    g_free (pr);
    g_free (neg);
  } else {
    warn_if_truncated (gen, "prompt", gen->prompt);
    if (gen->guidance > 1.0)
      warn_if_truncated (gen, "negative prompt", gen->negative_prompt);
  }

  if (gen->dualparal != NULL) {
    dp_dualparal_job dj = {
      .tokenizer = gen->tokenizer, .text_encoder = gen->text_encoder, .vae = gen->vae, .state = &gen->state,
      .vae_tiling = &gen->vae_tiling, .decode_thread = gen->vae_thread,
      .schedule = gen->schedule, .n_schedule = gen->n_schedule, .text_len = gen->text_len,
      .guided = gen->guidance > 1.0, .prompt_cb = gen->prompt_cb, .prompt_data = gen->prompt_data,
      .cancel = &gen->cancel, .frames_cb = cb, .frames_data = user_data, .step_cb = gen->step_cb,
      .step_data = gen->step_data,
    };
    if (initial_noise != NULL || trace != NULL) {
      g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "The DualParal engine draws its own noise "
                   "and has no trace hooks");
      ok = FALSE;
    } else {
      ok = dp_dualparal_pipe_run (gen->dualparal, &dj, error);
    }
    g_atomic_int_set (&gen->cancel, 0);
    g_atomic_int_set (&gen->running, 0);
    return ok;
  }

  parts = (dp_classic_parts){
    gen->be, gen->tokenizer, gen->text_encoder, gen->dit, gen->decoder, gen->sampler, gen->dit2,
  };
  job = (dp_classic_job){
    .prompt = gen->prompt,
    .negative_prompt = gen->negative_prompt,
    .text_len = gen->text_len,
    .guidance = gen->guidance,
    .guidance2 = gen->guidance2,
    .boundary = gen->boundary,
    .per_token_time = gen->expand_timesteps,
    .channels = gen->channels,
    .latent_frames = gen->latent_frames,
    .latent_height = gen->latent_height,
    .latent_width = gen->latent_width,
    .seed = gen->seed,
    .initial_noise = initial_noise,
    .cancel = &gen->cancel,
    .frames_cb = cb,
    .frames_data = user_data,
    .step_cb = gen->step_cb,
    .step_data = gen->step_data,
    .trace = trace,
  };
  ok = dp_classic_run (&parts, &job, error);
  /* The request is used up: the next run starts afresh. */
  g_atomic_int_set (&gen->cancel, 0);
  g_atomic_int_set (&gen->running, 0);
  return ok;
}

gboolean
dp_generator_run (dp_generator *gen, dp_frames_cb cb, void *user_data, GError **error)
{
  return dp_generator_run_traced (gen, NULL, NULL, cb, user_data, error);
}

void
dp_generator_cancel (dp_generator *gen)
{
  if (gen)
    g_atomic_int_set (&gen->cancel, 1);
}
