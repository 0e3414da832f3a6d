/* dualparal-seams: how coherent is a long video across its block boundaries?
 *
 *   dualparal-seams --prompt "a red ball bouncing" --frames 257 \
 *       --engine dualparal --block-frames 3 --context-frames 1
 *   dualparal-seams --prompt "a red ball bouncing" --frames 257 \
 *       --engine naive --clip-frames 33
 *
 * Generates a video with the embedded model (or --model) and prints the
 * figures of docs/model-card-shapes-tiny.md, "Long-video coherence":
 * - the prompt's colour (the first palette word of the prompt, or --colour):
 *   pixel fraction per frame, centroid track, its linear-fit slope;
 * - the frame-to-frame change (mean absolute difference, 8-bit levels) at
 *   block boundaries against inside blocks (all inside pairs, and only the
 *   inside pairs that also cross latent frames, the like-for-like set);
 * - the centroid jump at boundaries against inside blocks (the same two sets).
 *
 * Engines: dualparal (one block-wise run; a block b >= 1 starts at video
 * frame 4 (C + b P) - 3), naive (independent classic clips of --clip-frames
 * frames, seeds seed, seed + 1, ..., joined end to end and cut to --frames:
 * what a long video without DualParal looks like), classic (one clip, no
 * boundaries).  The measures are tests/video_metrics.c, the same code the
 * model tests use.  --raw writes the frames as raw RGB24 (ffmpeg -f rawvideo
 * -pix_fmt rgb24 -s WxH -r 16 -i FILE ...), --csv the per-frame figures.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "dualparal/backend.h"
#include "dualparal/generator.h"
#include "video_metrics.h"


#define PROG "dualparal-seams"

static char *opt_model = NULL;
static char *opt_prompt = NULL;
static char *opt_engine = NULL;
static char *opt_colour = NULL;
static char *opt_raw = NULL;
static char *opt_csv = NULL;
static int opt_frames = 257;
static int opt_clip_frames = 33;
static int opt_block_frames = 3, opt_context_frames = 1;
static int opt_steps = 20;
static int opt_size = 0;
static double opt_guidance = 5.0;
static double opt_radius = 0.3;
static int opt_min_pixels = 8;
static gint64 opt_seed = 0;
static gboolean opt_quiet = FALSE;

static GOptionEntry entries[] = {
  { "model", 'm', 0, G_OPTION_ARG_FILENAME, &opt_model, "Model directory (default: the embedded model)",
    "DIR" },
  { "prompt", 'p', 0, G_OPTION_ARG_STRING, &opt_prompt, "What the video shows (required)", "TEXT" },
  { "engine", 'e', 0, G_OPTION_ARG_STRING, &opt_engine,
    "dualparal (default), naive (classic clips joined end to end) or classic (one clip)", "NAME" },
  { "frames", 'f', 0, G_OPTION_ARG_INT, &opt_frames, "Frames of the video (default 257)", "N" },
  { "clip-frames", 0, 0, G_OPTION_ARG_INT, &opt_clip_frames,
    "naive: frames per clip, 4k+1 (default 33)", "N" },
  { "block-frames", 0, 0, G_OPTION_ARG_INT, &opt_block_frames,
    "dualparal: latent frames per block, P (default 3)", "P" },
  { "context-frames", 0, 0, G_OPTION_ARG_INT, &opt_context_frames,
    "dualparal: context latent frames, C (default 1)", "C" },
  { "steps", 's', 0, G_OPTION_ARG_INT, &opt_steps, "Sampler steps (default 20)", "N" },
  { "guidance", 'g', 0, G_OPTION_ARG_DOUBLE, &opt_guidance, "Guidance scale (default 5)", "G" },
  { "size", 0, 0, G_OPTION_ARG_INT, &opt_size, "Width = height in pixels (default: the model's native size)",
    "N" },
  { "seed", 0, 0, G_OPTION_ARG_INT64, &opt_seed, "Seed (default 0; naive: the first clip's)", "N" },
  { "colour", 'c', 0, G_OPTION_ARG_STRING, &opt_colour,
    "Colour to track: red, green, blue, yellow, white (default: the one the prompt names)", "NAME" },
  { "radius", 0, 0, G_OPTION_ARG_DOUBLE, &opt_radius,
    "Colour match radius, Euclidean RGB distance in [0, 1] units (default 0.3)", "R" },
  { "min-pixels", 0, 0, G_OPTION_ARG_INT, &opt_min_pixels,
    "Fewest matching pixels for a frame's centroid (default 8)", "N" },
  { "raw", 0, 0, G_OPTION_ARG_FILENAME, &opt_raw, "Write the frames as raw RGB24", "FILE" },
  { "csv", 0, 0, G_OPTION_ARG_FILENAME, &opt_csv,
    "Write per-frame figures: frame, boundary, fraction, cx, cy, change, jump", "FILE" },
  { "quiet", 'q', 0, G_OPTION_ARG_NONE, &opt_quiet, "No progress on stderr", NULL },
  { NULL },
};

typedef struct {
  uint8_t *video;     /* all frames of the joined video */
  size_t frame_bytes;
  int64_t capacity;   /* frames */
  int64_t offset;     /* where the current run's frame 0 lands */
  int64_t received;   /* frames stored so far */
} collector;

static gboolean
on_frames (const uint8_t *rgb, int n_frames, int64_t first_frame, const dp_progress *progress,
           void *user_data)
{
  collector *c = user_data;
  for (int i = 0; i < n_frames; i++) {
    int64_t at = c->offset + first_frame + i;
    if (at >= c->capacity)
      continue; /* a naive join is cut to the length asked */
    memcpy (c->video + (size_t) at * c->frame_bytes, rgb + (size_t) i * c->frame_bytes, c->frame_bytes);
    c->received = MAX (c->received, at + 1);
  }
  if (!opt_quiet && progress->frames_total > 0)
    g_printerr ("\r  %" G_GINT64_FORMAT " / %" G_GINT64_FORMAT " frames", progress->frames_done,
                progress->frames_total);
  return TRUE;
}

/* One generator run of n_frames frames into the collector at c->offset. */
static gboolean
run_one (dp_engine_kind engine, int n_frames, uint64_t seed, collector *c, int *width, int *height,
         double *seconds, GError **error)
{
  dp_generator_params p;
  dp_generator_params_init (&p);
  p.model_dir = opt_model;
  p.prompt = opt_prompt;
  p.width = p.height = opt_size;
  p.num_frames = n_frames;
  p.steps = opt_steps;
  p.guidance_scale = opt_guidance;
  p.seed = seed;
  p.engine = engine;
  if (engine == DP_ENGINE_DUALPARAL) {
    p.block_frames = opt_block_frames;
    p.context_frames = opt_context_frames;
  }
  gint64 t0 = g_get_monotonic_time ();
  dp_generator *gen = dp_generator_new (&p, error);
  if (gen == NULL)
    return FALSE;
  dp_generator_get_size (gen, width, height);
  if (c->video == NULL) {
    c->frame_bytes = (size_t) *width * *height * 3;
    c->video = g_try_malloc ((size_t) c->capacity * c->frame_bytes);
    if (c->video == NULL) {
      g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "No memory for %" G_GINT64_FORMAT " frames of %dx%d",
                   c->capacity, *width, *height);
      dp_generator_free (gen);
      return FALSE;
    }
  } else if (c->frame_bytes != (size_t) *width * *height * 3) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "Clips of different sizes");
    dp_generator_free (gen);
    return FALSE;
  }
  gboolean ok = dp_generator_run (gen, on_frames, c, error);
  dp_generator_free (gen);
  *seconds = (g_get_monotonic_time () - t0) / 1e6;
  if (!opt_quiet)
    g_printerr ("\n");
  return ok;
}

static void
print_split (const char *what, const vm_pair_split *s)
{
  printf ("%-36s boundary mean %7.3f  max %7.3f  (n %3d) | inside mean %7.3f  median %7.3f  max %7.3f  "
          "(n %3d) | ratio %.2f\n",
          what, s->boundary_mean, s->boundary_max, s->n_boundary, s->inside_mean, s->inside_median,
          s->inside_max, s->n_inside, s->ratio);
}

int
main (int argc, char **argv)
{
  GError *error = NULL;
  dp_openblas_quiet_reexec (argv); /* no spinning OpenBLAS pool (as dualparal-generate) */
  GOptionContext *ctx = g_option_context_new ("- seam figures of a long generated video");
  g_option_context_add_main_entries (ctx, entries, NULL);
  if (!g_option_context_parse (ctx, &argc, &argv, &error)) {
    g_printerr (PROG ": %s\n", error->message);
    return 2;
  }
  g_option_context_free (ctx);

  if (opt_prompt == NULL) {
    g_printerr (PROG ": --prompt is required\n");
    return 2;
  }
  if (opt_model == NULL) {
    opt_model = dp_default_model_dir (&error);
    if (opt_model == NULL) {
      g_printerr (PROG ": %s; give --model DIR\n", error->message);
      g_error_free (error);
      return 2;
    }
  }
  const char *colour_name = opt_colour ? opt_colour : vm_colour_in_text (opt_prompt);
  double colour[3];
  if (!vm_colour_by_name (colour_name, colour)) {
    g_printerr (PROG ": %s: not a palette colour (red, green, blue, yellow, white); use --colour\n",
                colour_name ? colour_name : "the prompt names no colour");
    return 2;
  }
  dp_engine_kind engine = DP_ENGINE_DUALPARAL;
  gboolean naive = FALSE;
  if (opt_engine == NULL || strcmp (opt_engine, "dualparal") == 0)
    engine = DP_ENGINE_DUALPARAL;
  else if (strcmp (opt_engine, "naive") == 0) {
    engine = DP_ENGINE_CLASSIC;
    naive = TRUE;
  }
  else if (strcmp (opt_engine, "classic") == 0)
    engine = DP_ENGINE_CLASSIC;
  else {
    g_printerr (PROG ": --engine %s: dualparal, naive or classic\n", opt_engine);
    return 2;
  }
  if (opt_frames < 2 || (naive && opt_clip_frames < 2)) {
    g_printerr (PROG ": --frames and --clip-frames must be at least 2\n");
    return 2;
  }

  collector c = { .capacity = opt_frames };
  int width = 0, height = 0, runs = 0;
  double seconds = 0.0;
  if (naive) {
    for (c.offset = 0; c.offset < opt_frames; c.offset += opt_clip_frames, runs++) {
      double s = 0.0;
      if (!opt_quiet)
        g_printerr ("clip %d (seed %" G_GINT64_FORMAT ")\n", runs, opt_seed + runs);
      if (!run_one (engine, opt_clip_frames, (uint64_t) (opt_seed + runs), &c, &width, &height, &s, &error))
        break;
      seconds += s;
    }
  } else {
    runs = 1;
    run_one (engine, opt_frames, (uint64_t) opt_seed, &c, &width, &height, &seconds, &error);
  }
  if (error) {
    g_printerr (PROG ": %s\n", error->message);
    g_free (c.video);
    return 1;
  }
  if (c.received != opt_frames) {
    g_printerr (PROG ": got %" G_GINT64_FORMAT " frames of %d\n", c.received, opt_frames);
    g_free (c.video);
    return 1;
  }

  const int n = opt_frames;
  gboolean *boundary = g_new0 (gboolean, n);
  int n_boundaries = 0;
  if (engine == DP_ENGINE_DUALPARAL)
    n_boundaries = vm_dualparal_boundaries (opt_block_frames, opt_context_frames, n, boundary);
  else if (naive)
    n_boundaries = vm_clip_boundaries (opt_clip_frames, n, boundary);

  vm_colour_stats *stats = g_new (vm_colour_stats, n);
  double *cx = g_new (double, n), *cy = g_new (double, n);
  double *change = g_new (double, n), *jump = g_new (double, n);
  gboolean *edges = g_new (gboolean, n);
  vm_colour_stats_video (c.video, n, width, height, colour, opt_radius, (size_t) opt_min_pixels, stats);
  vm_centroid_track (stats, n, cx, cy);
  vm_frame_changes (c.video, n, width, height, change);
  vm_centroid_jumps (cx, cy, n, jump);
  vm_latent_edges (n, naive ? opt_clip_frames : 0, edges);

  double frac_sum = 0.0, frac_min = 1.0;
  int tracked = 0;
  for (int t = 0; t < n; t++) {
    frac_sum += stats[t].fraction;
    frac_min = MIN (frac_min, stats[t].fraction);
    tracked += isfinite (stats[t].cx);
  }
  double sx = NAN, sy = NAN;
  vm_linear_fit (cx, n, &sx, NULL, NULL);
  vm_linear_fit (cy, n, &sy, NULL, NULL);

  printf ("prompt \"%s\", %s engine, %d frames of %dx%d, %d steps, guidance %g, seed %" G_GINT64_FORMAT "\n",
          opt_prompt, naive ? "naive (classic clips joined)" : engine == DP_ENGINE_DUALPARAL ? "dualparal" :
          "classic", n, width, height, opt_steps, opt_guidance, opt_seed);
  if (engine == DP_ENGINE_DUALPARAL)
    printf ("blocks: P %d, C %d latent frames; %d boundaries; %.1f s\n", opt_block_frames,
            opt_context_frames, n_boundaries, seconds);
  else if (naive)
    printf ("clips: %d of %d frames; %d boundaries; %.1f s\n", runs, opt_clip_frames, n_boundaries, seconds);
  else
    printf ("one clip; %.1f s\n", seconds);
  if (n_boundaries) {
    printf ("boundary frames:");
    for (int i = 0; i < n; i++)
      if (boundary[i])
        printf (" %d", i);
    printf ("\n");
  }
  printf ("colour %s (radius %.2f): fraction mean %.4f min %.4f; centroid in %d / %d frames; "
          "slope x %+.3f y %+.3f px/frame\n",
          colour_name, opt_radius, frac_sum / n, frac_min, tracked, n, sx, sy);

  vm_pair_split split;
  vm_pair_split_compute (change, boundary, NULL, n, &split);
  print_split ("frame change (levels), all inside", &split);
  vm_pair_split_compute (change, boundary, edges, n, &split);
  print_split ("frame change (levels), latent edges", &split);
  vm_pair_split_compute (jump, boundary, NULL, n, &split);
  print_split ("centroid jump (px), all inside", &split);
  vm_pair_split_compute (jump, boundary, edges, n, &split);
  print_split ("centroid jump (px), latent edges", &split);

  int status = 0;
  if (opt_raw) {
    FILE *f = g_fopen (opt_raw, "wb");
    if (f == NULL || fwrite (c.video, c.frame_bytes, (size_t) n, f) != (size_t) n) {
      g_printerr (PROG ": cannot write %s\n", opt_raw);
      status = 1;
    }
    if (f && fclose (f) != 0)
      status = 1;
  }
  if (opt_csv) {
    FILE *f = g_fopen (opt_csv, "w");
    if (f == NULL) {
      g_printerr (PROG ": cannot write %s\n", opt_csv);
      status = 1;
    } else {
      fprintf (f, "frame,boundary,fraction,cx,cy,change,jump\n");
      for (int t = 0; t < n; t++)
        fprintf (f, "%d,%d,%.6f,%.3f,%.3f,%.4f,%.3f\n", t, boundary[t] ? 1 : 0, stats[t].fraction, cx[t],
                 cy[t], change[t], jump[t]);
      if (fclose (f) != 0)
        status = 1;
    }
  }

  g_free (boundary);
  g_free (stats);
  g_free (cx);
  g_free (cy);
  g_free (change);
  g_free (jump);
  g_free (edges);
  g_free (c.video);
  g_free (opt_model);
  return status;
}
