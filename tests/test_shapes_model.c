/* The embedded model, models/shapes-tiny (issue 8), seen from its pixels.
 *
 * The model directory comes from DP_SHAPES_MODEL_DIR (tests/meson.build sets
 * it to the source tree's models/shapes-tiny).  Without a model_index.json
 * there, the program runs only the checks of the measures themselves and
 * exits 77 (meson's "skipped").
 *
 * /model/metrics/...: tests/video_metrics.c on synthetic frames with known
 *   answers (colour mask, centroid, slope, frame change, boundaries, splits).
 * /model/native/size: the model directory says its own size (64 x 64 for the default recipe)
 *   and frame rate, so the element and dualparal-generate use it by default.
 * /model/prompt/...: for prompts naming a colour and a motion, classic
 *   engine on the CPU, native size, PROMPT_FRAMES frames, the model card's
 *   steps and guidance, PROMPT_SEEDS seeds: the frames hold that colour and
 *   its centroid moves the named way (least-squares slope over the frames)
 *   for at least PROMPT_MIN_PASSING of the seeds.
 *   /model/prompt/shape/...: the same videos show the named shape (the
 *   object's fill of its bounding box); /model/prompt/ghosts/...: one
 *   connected object of the colour per frame.
 * /model/long/dualparal: LONG_FRAMES frames made block-wise by the DualParal
 *   engine: the change between frames across block boundaries stays within
 *   a factor of the change across the latent-frame edges inside blocks, and
 *   so do the colour centroid's jumps (the track is continuous).
 *   /model/long/ghosts: the same video, one object per frame.
 * /model/long/motion/...: LONG_FRAMES-frame DualParal videos of a prompt
 *   naming a direction keep moving that way in every quarter.
 *
 * The shape, ghost and motion-over-time checks have two limits (issue 23):
 * a target that a better model must reach, and the shipped model's record
 * (its measured figure and a small margin) that no change may fall below.
 * A case that holds the record but misses the target is a known failure:
 * GLib's "incomplete" ("not ok ... # TODO" in the log, and a count at the
 * end), never a pass; one that loses the record fails.
 *
 * Every threshold is stated below with the measured value beside it; the
 * same figures come from tools/dualparal-seams (docs/model-card-shapes-tiny.md,
 * "Long-video coherence"), also for naive joins of independent clips. */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <glib/gstdio.h>

#include "dualparal/backend.h"
#include "dualparal/generator.h"
#include "video_metrics.h"

/* ------------------------------------------------------------ settings */

/* The model card's sampling settings (docs/model-card-shapes-tiny.md). */
#define MODEL_STEPS 20
#define MODEL_GUIDANCE 5.0
#define MODEL_FPS 16
/* Frames are square, of the model's native size (model_index.json
 * "_dualparal"); lengths in px below are for 128 x 128 and scale with it,
 * as the training clips' sizes and speeds do (tools/shapes_dataset.py). */
#define MODEL_MAX_SIZE 256
#define PX(size) ((size) / 128.0)

/* Colour matching: Euclidean RGB distance in [0, 1] units to the palette
 * colour of tools/shapes_dataset.py (the training script's own check uses
 * the same 0.3); a frame's centroid needs at least 8 such pixels. */
#define COLOUR_RADIUS 0.3
#define CENTROID_MIN_PIXELS 8

/* Prompt checks: 17 frames = 5 latent frames, the DiT's training window.
 * Each prompt runs with PROMPT_SEEDS seeds (1, 2, ...); a tiny model misses
 * now and then, so at least PROMPT_MIN_PASSING of them must pass every
 * check below (all seeds' figures reach the log). */
#define PROMPT_FRAMES 17
#define PROMPT_SEEDS 4
#define PROMPT_MIN_PASSING 3

/* The colour's mean pixel fraction over the frames; a ball of the training
 * radii (10 to 17 px of 128) covers 2 to 5.5 %.  Measured: the model card's
 * "Measured" table. */
#define PROMPT_MIN_FRACTION_MEAN 0.005
/* Frames with a centroid (at least CENTROID_MIN_PIXELS matching pixels). */
#define PROMPT_MIN_TRACKED_SHARE 0.9
/* Slope of the centroid along the named axis, px/frame (at 128 x 128),
 * signed the named way; the training clips move 2 to 3.5 px/frame. */
#define PROMPT_MIN_SLOPE 0.5
/* ... and the motion is along the named axis: |along| >= this x |across|. */
#define PROMPT_MIN_AXIS_RATIO 2.0

/* Objects (video_metrics.h vm_objects): connected components of the colour
 * mask on the torus (an object crossing an edge is one).  Components under
 * OBJECT_MIN_PIXELS pixels (at 128 x 128, scaled with the frame's area: 8
 * at 64 x 64) are specks and ignored; the smallest training object, a ball
 * of radius 10 px of 128, has 314. */
#define OBJECT_MIN_PIXELS 32
#define OBJECT_MIN_PIXELS_AT(size) ((size_t) MAX (1, lround (OBJECT_MIN_PIXELS * PX (size) * PX (size))))

/* Shape: the largest object's fill of its bounding box, median over the
 * frames with an object.  On the training clips themselves (tools/
 * shapes_dataset.py through the same colour mask, 64 x 64, 120 frames per
 * shape) the median fill is 0.79 for a ball (10th-90th percentile
 * 0.76-0.83), 1.00 for a square (1.00-1.00), 0.54 for a triangle (0.51-0.58;
 * at 128 x 128: 0.78, 1.00, 0.52; python3 tools/train_shapes_model.py
 * --measure-shape-fills).  A video shows the shape whose fill is
 * nearest: square from SHAPE_SQUARE_MIN_FILL up, triangle below
 * SHAPE_TRIANGLE_MAX_FILL, ball between (the midpoints). */
#define SHAPE_FILL_BALL 0.79
#define SHAPE_FILL_SQUARE 1.00
#define SHAPE_FILL_TRIANGLE 0.54
#define SHAPE_SQUARE_MIN_FILL ((SHAPE_FILL_BALL + SHAPE_FILL_SQUARE) / 2)
#define SHAPE_TRIANGLE_MAX_FILL ((SHAPE_FILL_TRIANGLE + SHAPE_FILL_BALL) / 2)

/* Long video: 257 frames = 65 latent frames, DualParal P = 3, C = 1
 * (window 4 latent frames + 1 cached: the 5 positions the DiT was trained
 * on): 22 blocks, 21 boundaries. */
#define LONG_FRAMES 257
#define LONG_BLOCK_FRAMES 3
#define LONG_CONTEXT_FRAMES 1
#define LONG_SEED 1
#define LONG_PROMPT "a red ball bouncing"
/* Mean frame change at block boundaries over the mean change at the latent
 * edges inside blocks.  Like for like: every boundary is a latent edge, and
 * the tiny VAE draws the 4 frames of a latent frame nearly alike and moves
 * the object at the latent edge (on real clips, encoded and decoded with no
 * DiT and no blocks, the change at latent edges is 4-5x that inside
 * latent frames; docs/model-card-shapes-tiny.md), so a comparison with every
 * inside pair measures the VAE's rhythm, not seams.  Measured on the
 * shipped model (model card, "Long-video coherence"): DualParal 1.02;
 * independent clips joined end to end 2.14-2.22. */
#define LONG_MAX_CHANGE_RATIO 1.5
/* Mean centroid jump at boundaries over that at the latent edges inside
 * blocks: the track goes on across boundaries as it does elsewhere.
 * Measured: DualParal 1.08; independent clips joined 2.07-2.21. */
#define LONG_MAX_JUMP_RATIO 1.5
/* Frames with a centroid: the track must exist to be continuous. */
#define LONG_MIN_TRACKED_SHARE 0.9

/* Motion over time: LONG_FRAMES frames of a prompt naming a direction,
 * DualParal as above, cut into LONG_SEGMENTS spans (quarters); in each span
 * the object's unwrapped centroid (wrapping at the edges allowed) moves the
 * named way at PROMPT_MIN_SLOPE px/frame or more (at 128 x 128), its net
 * move over the span.  The largest object's centroid on the torus is
 * tracked (vm_objects), not the colour mask's: a wrapped object's mask
 * centroid sits between its two halves.  A step of more than
 * LONG_MAX_STEP_SHARE of the frame between two tracked frames is a jump
 * (vm_unwrap_track), not a wrap: the fastest training motion is 3.5 px/frame
 * of 128, 14 px over a latent frame's 4 frames, which the tiny VAE draws as
 * one step. */
#define LONG_SEGMENTS 4
#define LONG_MAX_STEP_SHARE 0.125
/* Seeds 1 .. LONG_MOTION_SEEDS of each motion case (one 257-frame video
 * each, 4-8 s at 64 x 64): two, to keep the suite's time modest; seed 1
 * alone was the lucky one for the blue square (model card). */
#define LONG_MOTION_SEEDS 2
/* Record of /model/long/ghosts: measured 4 of 257 frames (seed 1; seeds 2,
 * 3, 4: 0, 0, 18), + 2 as for the prompt cases. */
#define LONG_RECORD_GHOST_FRAMES 6

/* Steering (docs/usage.md, "Steering a running video"): an endless run,
 * DualParal P 3 C 1 and the model card's steps and guidance, switches from
 * STEER_FROM to STEER_TO at block STEER_BLOCK (dp_generator_set_prompt from
 * the frame callback, before that block enters: the callback of the
 * frames of block STEER_BLOCK - STEER_STEPS runs in the iteration before
 * it enters), and stops after STEER_BLOCKS blocks.  A change can touch the
 * blocks still in the queue when its block enters (docs/algorithm.md,
 * "Prompt changes"): STEER_BLOCK - T + 1 on; every frame before that
 * block's first frame must equal, byte for byte, the run without the
 * change. */
#define STEER_FROM "a red ball bouncing"
#define STEER_TO "a blue square bouncing"
#define STEER_BLOCK 24
#define STEER_BLOCKS 34
/* After the transition (from its last block + STEER_SETTLE_BLOCKS on) the
 * new colour covers at least this mean fraction of the frames and more than
 * STEER_MIN_DOMINANCE x the old colour's. */
#define STEER_SETTLE_BLOCKS 2
#define STEER_MIN_FRACTION_MEAN 0.005
#define STEER_MIN_DOMINANCE 3.0
/* Schedule: three prompts over LONG_FRAMES frames; each colour's share is
 * measured over the blocks from its line's block + SCHEDULE_SETTLE_BLOCKS
 * to the next line's block. */
#define SCHEDULE_TEXT "0: a red ball bouncing\n# comments and empty lines are skipped\n\n" \
                      "86: a blue square bouncing\n171: a green ball bouncing\n"
#define SCHEDULE_SETTLE_BLOCKS 2

static const char *model_dir;

/* The fill of the named shape on the training clips (SHAPE_FILL_*). */
static double
shape_fill (const char *shape)
{
  return g_str_equal (shape, "square") ? SHAPE_FILL_SQUARE
         : g_str_equal (shape, "triangle") ? SHAPE_FILL_TRIANGLE : SHAPE_FILL_BALL;
}

/* The shape whose fill is nearest (NULL for NAN). */
static const char *
shape_of_fill (double fill)
{
  if (!isfinite (fill))
    return NULL;
  return fill >= SHAPE_SQUARE_MIN_FILL ? "square" : fill < SHAPE_TRIANGLE_MAX_FILL ? "triangle" : "ball";
}

/* ------------------------------------------------------------ generation */

typedef struct {
  uint8_t *video;
  size_t frame_bytes;
  int capacity;
  int received;
  gboolean in_order;
} collector;

static gboolean
collect_frames (const uint8_t *rgb, int n_frames, int64_t first_frame, const dp_progress *progress,
                void *user_data)
{
  collector *c = user_data;
  (void) progress;
  if (first_frame != c->received || first_frame + n_frames > c->capacity) {
    c->in_order = FALSE;
    return FALSE;
  }
  memcpy (c->video + (size_t) first_frame * c->frame_bytes, rgb, (size_t) n_frames * c->frame_bytes);
  c->received += n_frames;
  return TRUE;
}

/* Generates n_frames frames of the model's native size; returns them
 * (g_free), their size (square) and the seconds the run took. */
static uint8_t *
generate (dp_engine_kind engine, const char *prompt, int n_frames, uint64_t seed, int block_frames,
          int context_frames, int *size, double *seconds)
{
  GError *err = NULL;
  dp_generator_params p;
  dp_generator_params_init (&p);
  p.model_dir = model_dir;
  p.prompt = prompt;
  p.num_frames = n_frames;
  p.steps = MODEL_STEPS;
  p.guidance_scale = MODEL_GUIDANCE;
  p.seed = seed;
  p.engine = engine;
  p.block_frames = block_frames;
  p.context_frames = context_frames;

  gint64 t0 = g_get_monotonic_time ();
  dp_generator *gen = dp_generator_new (&p, &err);
  g_assert_no_error (err);
  if (gen == NULL) {
    g_clear_error (&err);
    return NULL;
  }
  int w = 0, h = 0;
  dp_generator_get_size (gen, &w, &h);
  g_assert_cmpint (w, ==, h);
  *size = w;

  collector c = { .frame_bytes = (size_t) w * h * 3, .capacity = n_frames, .in_order = TRUE };
  c.video = g_malloc ((size_t) n_frames * c.frame_bytes);
  gboolean ok = dp_generator_run (gen, collect_frames, &c, &err);
  g_assert_no_error (err);
  g_clear_error (&err);
  g_assert_true (ok);
  g_assert_true (c.in_order);
  g_assert_cmpint (c.received, ==, n_frames);
  dp_generator_free (gen);
  *seconds = (g_get_monotonic_time () - t0) / 1e6;
  if (!ok || !c.in_order || c.received != n_frames) {
    g_free (c.video);
    return NULL;
  }
  return c.video;
}

/* ------------------------------------------------------------ synthetic frames */

/* Paints a disc of colour rgb (0..1) and radius r centred at (cx, cy):
 * pixels whose centre lies within r.  Returns the pixels painted. */
static int
paint_disc (uint8_t *frame, int w, int h, double cx, double cy, double r, const double rgb[3])
{
  int n = 0;
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++)
      if (hypot (x + 0.5 - cx, y + 0.5 - cy) <= r) {
        uint8_t *p = frame + 3 * ((size_t) y * w + x);
        for (int k = 0; k < 3; k++)
          p[k] = (uint8_t) lround (rgb[k] * 255.0);
        n++;
      }
  return n;
}

static void
fill (uint8_t *frame, int w, int h, const double rgb[3])
{
  for (size_t i = 0; i < (size_t) w * h; i++)
    for (int k = 0; k < 3; k++)
      frame[3 * i + k] = (uint8_t) lround (rgb[k] * 255.0);
}

static void
test_metrics_colour (void)
{
  const int W = 64, H = 48;
  double red[3], blue[3], yellow[3], dark_red[3], rgb[3];
  uint8_t *frame = g_malloc ((size_t) W * H * 3);
  uint8_t *mask = g_malloc ((size_t) W * H);

  g_assert_true (vm_colour_by_name ("red", red));
  g_assert_true (vm_colour_by_name ("Blue", blue));
  g_assert_true (vm_colour_by_name ("yellow", yellow));
  g_assert_true (vm_colour_by_name ("green", rgb));
  g_assert_true (vm_colour_by_name ("white", rgb));
  g_assert_false (vm_colour_by_name ("purple", rgb));
  g_assert_false (vm_colour_by_name (NULL, rgb));
  g_assert_cmpfloat (red[0], ==, 0.92);
  g_assert_cmpstr (vm_colour_in_text ("a blue square moving to the left on a yellow background"), ==, "blue");
  g_assert_cmpstr (vm_colour_in_text ("A RED ball"), ==, "red");
  g_assert_null (vm_colour_in_text ("a bluebird and a reddish fox"));
  g_assert_null (vm_colour_in_text (NULL));

  /* A red disc and a blue one on the dataset's dark-red background (the
   * palette colour x 0.55: 0.41 away from red, outside the radius). */
  for (int k = 0; k < 3; k++)
    dark_red[k] = red[k] * 0.55;
  fill (frame, W, H, dark_red);
  int n_red = paint_disc (frame, W, H, 20.0, 30.0, 6.0, red);
  int n_blue = paint_disc (frame, W, H, 50.0, 12.0, 4.0, blue);
  g_assert_cmpint (n_red, >, 100);

  g_assert_cmpuint (vm_colour_mask (frame, W, H, red, COLOUR_RADIUS, mask), ==, (size_t) n_red);
  g_assert_cmpint (mask[30 * W + 20], ==, 1);
  g_assert_cmpint (mask[12 * W + 50], ==, 0);
  g_assert_cmpint (mask[0], ==, 0);
  g_assert_cmpuint (vm_colour_mask (frame, W, H, blue, COLOUR_RADIUS, NULL), ==, (size_t) n_blue);
  g_assert_cmpuint (vm_colour_mask (frame, W, H, yellow, COLOUR_RADIUS, NULL), ==, 0);

  vm_colour_stats s;
  vm_colour_stats_frame (frame, W, H, red, COLOUR_RADIUS, CENTROID_MIN_PIXELS, &s);
  g_assert_cmpuint (s.pixels, ==, (size_t) n_red);
  g_assert_cmpfloat_with_epsilon (s.fraction, (double) n_red / (W * H), 1e-12);
  /* A disc centred on a pixel corner is symmetric: its centroid is exact. */
  g_assert_cmpfloat_with_epsilon (s.cx, 20.0, 1e-9);
  g_assert_cmpfloat_with_epsilon (s.cy, 30.0, 1e-9);
  /* Too few pixels: no centroid. */
  vm_colour_stats_frame (frame, W, H, blue, COLOUR_RADIUS, (size_t) n_blue + 1, &s);
  g_assert_true (isnan (s.cx) && isnan (s.cy));
  g_assert_cmpuint (s.pixels, ==, (size_t) n_blue);

  /* Near but not equal colours (decoder noise) still match. */
  fill (frame, W, H, (const double[3]) { 0, 0, 0 });
  const double near_red[3] = { red[0] - 0.1, red[1] + 0.1, red[2] + 0.1 }; /* 0.17 away */
  n_red = paint_disc (frame, W, H, 32.0, 24.0, 5.0, near_red);
  g_assert_cmpuint (vm_colour_mask (frame, W, H, red, COLOUR_RADIUS, NULL), ==, (size_t) n_red);
  g_assert_cmpuint (vm_colour_mask (frame, W, H, red, 0.1, NULL), ==, 0);

  g_free (frame);
  g_free (mask);
}

/* A disc moving at (vx, vy) px/frame from (x0, y0); jump added to the
 * position from each boundary frame on. */
static uint8_t *
moving_disc_video (int n, int W, int H, double x0, double y0, double vx, double vy, const gboolean *boundary,
                   double jump_x)
{
  double red[3], bg[3] = { 0.1, 0.1, 0.1 };
  vm_colour_by_name ("red", red);
  uint8_t *video = g_malloc ((size_t) n * W * H * 3);
  double offset = 0.0;
  for (int t = 0; t < n; t++) {
    uint8_t *f = video + (size_t) t * W * H * 3;
    if (boundary && boundary[t])
      offset += jump_x;
    fill (f, W, H, bg);
    paint_disc (f, W, H, fmod (x0 + vx * t + offset, (double) W), y0 + vy * t, 5.0, red);
  }
  return video;
}

static void
test_metrics_motion (void)
{
  const int n = 17, W = 96, H = 64;
  double red[3];
  vm_colour_by_name ("red", red);
  uint8_t *video = moving_disc_video (n, W, H, 10.0, 40.0, 2.5, -1.0, NULL, 0.0);
  vm_colour_stats stats[17];
  double cx[17], cy[17], slope, icpt;
  int used;

  vm_colour_stats_video (video, n, W, H, red, COLOUR_RADIUS, CENTROID_MIN_PIXELS, stats);
  vm_centroid_track (stats, n, cx, cy);
  /* Pixel-grid sampling of a moving disc: centroids within 0.2 px; the
   * fitted slopes within 0.02 px/frame. */
  for (int t = 0; t < n; t++) {
    g_assert_cmpfloat (fabs (cx[t] - (10.0 + 2.5 * t)), <, 0.2);
    g_assert_cmpfloat (fabs (cy[t] - (40.0 - 1.0 * t)), <, 0.2);
  }
  g_assert_true (vm_linear_fit (cx, n, &slope, &icpt, &used));
  g_assert_cmpint (used, ==, n);
  g_assert_cmpfloat (fabs (slope - 2.5), <, 0.02);
  g_assert_cmpfloat (fabs (icpt - 10.0), <, 0.2);
  g_assert_true (vm_linear_fit (cy, n, &slope, NULL, NULL));
  g_assert_cmpfloat (fabs (slope + 1.0), <, 0.02);

  /* Exact line with holes: the holes are skipped. */
  double v[9];
  for (int i = 0; i < 9; i++)
    v[i] = 3.0 - 0.5 * i;
  v[2] = NAN;
  v[7] = INFINITY;
  g_assert_true (vm_linear_fit (v, 9, &slope, &icpt, &used));
  g_assert_cmpint (used, ==, 7);
  g_assert_cmpfloat_with_epsilon (slope, -0.5, 1e-12);
  g_assert_cmpfloat_with_epsilon (icpt, 3.0, 1e-12);
  for (int i = 0; i < 9; i++)
    v[i] = i == 4 ? 1.0 : NAN;
  g_assert_false (vm_linear_fit (v, 9, &slope, &icpt, &used));
  g_assert_cmpint (used, ==, 1);

  /* Frame change of two frames: one byte off by 255 in n bytes. */
  uint8_t a[10] = { 0 }, b[10] = { 0 };
  b[3] = 255;
  b[4] = 10;
  g_assert_cmpfloat_with_epsilon (vm_mean_abs_diff (a, b, 10), 26.5, 1e-12);
  g_assert_cmpfloat (vm_mean_abs_diff (a, a, 10), ==, 0.0);
  g_free (video);
}

/* Paints an axis-aligned square of half-size r (pixel centres within r on
 * both axes) or the dataset's upright triangle inscribed in the circle of
 * radius 1.25 r (tools/shapes_dataset.py _shape_alpha), hard-edged, at
 * (cx, cy), wrapping around the frame's edges. */
static int
paint_shape (uint8_t *frame, int w, int h, const char *shape, double cx, double cy, double r, const double rgb[3])
{
  const double R = 1.25 * r, k = sqrt (3.0) / 2.0;
  int n = 0;
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      /* Nearest copy of the centre on the torus. */
      double dx = remainder (x + 0.5 - cx, w), dy = remainder (y + 0.5 - cy, h);
      gboolean in;
      if (g_str_equal (shape, "square"))
        in = fabs (dx) <= r && fabs (dy) <= r;
      else if (g_str_equal (shape, "triangle"))
        in = R * 0.5 - dy >= 0 && R * 0.5 + k * dx + 0.5 * dy >= 0 && R * 0.5 - k * dx + 0.5 * dy >= 0;
      else
        in = hypot (dx, dy) <= r;
      if (in) {
        uint8_t *p = frame + 3 * ((size_t) y * w + x);
        for (int c = 0; c < 3; c++)
          p[c] = (uint8_t) lround (rgb[c] * 255.0);
        n++;
      }
    }
  return n;
}

static void
test_metrics_objects (void)
{
  const int W = 64, H = 64;
  double blue[3], black[3] = { 0, 0, 0 };
  vm_colour_by_name ("blue", blue);
  uint8_t *frame = g_malloc ((size_t) W * H * 3);
  vm_objects o;
  uint8_t *mask = g_malloc ((size_t) W * H);

  /* The three shapes at the training sizes of 64 x 64 (radius 5 to 8.5):
   * each classified as itself, near its fill on the training clips. */
  static const char *shapes[3] = { "ball", "square", "triangle" };
  for (int i = 0; i < 3; i++)
    for (double r = 5.0; r <= 8.5; r += 0.5) {
      fill (frame, W, H, black);
      int n = paint_shape (frame, W, H, shapes[i], 30.3, 27.6, r, blue);
      vm_colour_mask (frame, W, H, blue, COLOUR_RADIUS, mask);
      vm_objects_in_mask (mask, W, H, 8, &o);
      g_assert_cmpint (o.n_objects, ==, 1);
      g_assert_cmpuint (o.largest, ==, (size_t) n);
      g_assert_cmpstr (shape_of_fill (o.fill), ==, shapes[i]);
      g_assert_cmpfloat (fabs (o.fill - shape_fill (shapes[i])), <, 0.1);
      g_assert_cmpfloat (fabs (o.cx - 30.3), <, 0.6);
    }

  /* A square across the left / right edge is one object, its bounding box
   * and centroid taken across the edge. */
  fill (frame, W, H, black);
  int n = paint_shape (frame, W, H, "square", 1.0, 40.0, 6.0, blue);
  vm_colour_mask (frame, W, H, blue, COLOUR_RADIUS, mask);
  vm_objects_in_mask (mask, W, H, 8, &o);
  g_assert_cmpint (o.n_objects, ==, 1);
  g_assert_cmpuint (o.largest, ==, (size_t) n);
  g_assert_cmpint (o.bbox_w, ==, 12);
  g_assert_cmpfloat (o.fill, ==, 1.0);
  g_assert_true (fabs (o.cx - 1.0) < 0.01 || fabs (o.cx - 65.0) < 0.01);

  /* A second disc is a ghost; a 3-pixel speck is not. */
  paint_disc (frame, W, H, 40.0, 12.0, 5.0, blue);
  for (int x = 50; x < 53; x++)
    memcpy (frame + 3 * (size_t) (60 * W + x), (uint8_t[3]) { 31, 64, 242 }, 3);
  vm_colour_mask (frame, W, H, blue, COLOUR_RADIUS, mask);
  vm_objects_in_mask (mask, W, H, 8, &o);
  g_assert_cmpint (o.n_objects, ==, 2);
  g_assert_cmpint (o.n_specks, ==, 1);
  g_assert_cmpuint (o.largest, ==, (size_t) n); /* the square (144 px) is larger */
  /* Nothing of the colour: no object, NAN figures. */
  fill (frame, W, H, black);
  vm_colour_mask (frame, W, H, blue, COLOUR_RADIUS, mask);
  vm_objects_in_mask (mask, W, H, 8, &o);
  g_assert_cmpint (o.n_objects, ==, 0);
  g_assert_true (isnan (o.fill) && isnan (o.cx));
  g_free (frame);
  g_free (mask);
}

/* x of a disc over n frames: moving at v px/frame (wrapping around w), or
 * jumping back by `back` px every `every` frames (reappearing nearer the
 * centre instead of wrapping). */
static void
synthetic_track (double *x, int n, int w, double x0, double v, int every, double back)
{
  double p = x0;
  for (int t = 0; t < n; t++) {
    x[t] = fmod (fmod (p, w) + w, w);
    p += v;
    if (every > 0 && t % every == every - 1)
      p -= back * (v > 0 ? 1 : -1);
  }
}

static void
test_metrics_motion_over_time (void)
{
  enum { N = 257, W = 64 };
  double x[N], u[N], speed[4];
  const double max_step = 0.125 * W;

  /* Leftwards at 1 px/frame, wrapping four times: every span -1. */
  synthetic_track (x, N, W, 40.0, -1.0, 0, 0.0);
  g_assert_cmpint (vm_unwrap_track (x, N, W, max_step, u), ==, 0);
  vm_segment_speeds (u, N, 4, speed);
  for (int q = 0; q < 4; q++)
    g_assert_cmpfloat (fabs (speed[q] + 1.0), <, 1e-9);
  g_assert_cmpfloat (fabs (u[N - 1] - (40.0 - (N - 1))), <, 1e-9);

  /* Standing still near the centre with jitter: no span moves. */
  for (int t = 0; t < N; t++)
    x[t] = 32.0 + 1.5 * sin (t * 0.7);
  vm_unwrap_track (x, N, W, max_step, u);
  vm_segment_speeds (u, N, 4, speed);
  for (int q = 0; q < 4; q++)
    g_assert_cmpfloat (fabs (speed[q]), <, 0.05);

  /* Moving left 1 px/frame but thrown 16 px back right every 16 frames,
   * between x 24 and 40 (it "stays near the centre"): the jumps are taken
   * as they are, not as wraps, and no span makes progress. */
  synthetic_track (x, N, W, 40.0, -1.0, 16, 16.0);
  g_assert_cmpint (vm_unwrap_track (x, N, W, max_step, u), ==, 16);
  vm_segment_speeds (u, N, 4, speed);
  for (int q = 0; q < 4; q++)
    g_assert_cmpfloat (fabs (speed[q]), <, 0.01);

  /* Holes are skipped; a span without 2 tracked frames is NAN. */
  synthetic_track (x, N, W, 10.0, 0.5, 0, 0.0);
  for (int t = 70; t < 200; t++)
    x[t] = NAN;
  vm_unwrap_track (x, N, W, max_step, u);
  g_assert_true (isnan (u[100]));
  vm_segment_speeds (u, N, 4, speed);
  g_assert_cmpfloat (fabs (speed[0] - 0.5), <, 1e-9);
  g_assert_cmpfloat (fabs (speed[1] - 0.5), <, 1e-9); /* frames 64..69 */
  g_assert_true (isnan (speed[2]));
  g_assert_cmpfloat (fabs (speed[3] - 0.5), <, 1e-9);
}

static void
test_metrics_boundaries (void)
{
  gboolean bnd[257], edges[257];

  g_assert_cmpint (vm_latent_first_frame (0), ==, 0);
  g_assert_cmpint (vm_latent_first_frame (1), ==, 1);
  g_assert_cmpint (vm_latent_first_frame (4), ==, 13);
  /* P 3, C 1, 65 latent frames: blocks start at latent 4, 7, ..., 64
   * (engine.h: C + b P), i.e. frames 13, 25, ..., 253: 21 boundaries. */
  g_assert_cmpint (vm_dualparal_boundaries (3, 1, 257, bnd), ==, 21);
  g_assert_true (bnd[13] && bnd[25] && bnd[253]);
  g_assert_false (bnd[0] || bnd[1] || bnd[12] || bnd[14] || bnd[256]);
  int count = 0;
  for (int i = 0; i < 257; i++)
    if (bnd[i]) {
      g_assert_cmpint (i % 4, ==, 1); /* always a latent edge */
      g_assert_cmpint ((i + 3) / 4, ==, 1 + 3 * ++count);
    }
  /* P 10, C 5 (the engine's defaults): latent 15, 25, ... */
  g_assert_cmpint (vm_dualparal_boundaries (10, 5, 257, bnd), ==, 5);
  g_assert_true (bnd[57] && bnd[97] && bnd[217]);
  /* Clips of 33 frames joined: 33, 66, ..., 231. */
  g_assert_cmpint (vm_clip_boundaries (33, 257, bnd), ==, 7);
  g_assert_true (bnd[33] && bnd[231] && !bnd[0] && !bnd[32]);
  /* Latent edges of one run, and of 33-frame clips joined. */
  vm_latent_edges (257, 0, edges);
  g_assert_true (edges[1] && edges[5] && edges[253] && !edges[0] && !edges[2] && !edges[4]);
  vm_latent_edges (257, 33, edges);
  g_assert_true (edges[1] && edges[29] && edges[33] && edges[34] && edges[38] && !edges[37]);
}

static void
test_metrics_seams (void)
{
  const int n = 65, W = 128, H = 64;
  gboolean bnd[65], edges[65];
  double red[3], change[65], cx[65], cy[65], jump[65];
  vm_colour_stats stats[65];
  vm_pair_split s;

  vm_colour_by_name ("red", red);
  g_assert_cmpint (vm_dualparal_boundaries (3, 1, n, bnd), ==, 5);
  vm_latent_edges (n, 0, edges);

  /* Smooth motion: boundaries look like the rest (ratios 1 within the
   * pixel grid's jitter: 0.8 .. 1.25). */
  uint8_t *video = moving_disc_video (n, W, H, 10.0, 30.0, 1.0, 0.0, NULL, 0.0);
  vm_frame_changes (video, n, W, H, change);
  g_assert_true (isnan (change[0]));
  vm_colour_stats_video (video, n, W, H, red, COLOUR_RADIUS, CENTROID_MIN_PIXELS, stats);
  vm_centroid_track (stats, n, cx, cy);
  vm_centroid_jumps (cx, cy, n, jump);
  vm_pair_split_compute (change, bnd, edges, n, &s);
  g_assert_cmpint (s.n_boundary, ==, 5);
  g_assert_cmpint (s.n_inside, ==, 16 - 5);
  g_assert_cmpfloat (s.ratio, >, 0.8);
  g_assert_cmpfloat (s.ratio, <, 1.25);
  vm_pair_split_compute (jump, bnd, NULL, n, &s);
  g_assert_cmpint (s.n_boundary + s.n_inside, ==, n - 1);
  g_assert_cmpfloat (fabs (s.inside_mean - 1.0), <, 0.05);
  g_assert_cmpfloat (s.ratio, >, 0.8);
  g_assert_cmpfloat (s.ratio, <, 1.25);
  g_free (video);

  /* A 12 px teleport at every boundary of a disc moving 0.5 px/frame (it
   * stays inside the frame): both ratios far above 2. */
  video = moving_disc_video (n, W, H, 10.0, 30.0, 0.5, 0.0, bnd, 12.0);
  vm_frame_changes (video, n, W, H, change);
  vm_colour_stats_video (video, n, W, H, red, COLOUR_RADIUS, CENTROID_MIN_PIXELS, stats);
  vm_centroid_track (stats, n, cx, cy);
  vm_centroid_jumps (cx, cy, n, jump);
  vm_pair_split_compute (change, bnd, edges, n, &s);
  g_assert_cmpfloat (s.ratio, >, 3.0);
  vm_pair_split_compute (jump, bnd, NULL, n, &s);
  g_assert_cmpfloat (fabs (s.boundary_mean - 12.5), <, 0.3);
  g_assert_cmpfloat (s.ratio, >, 10.0);
  vm_pair_split_compute (jump, bnd, edges, n, &s);
  g_assert_cmpint (s.n_inside, ==, 16 - 5);
  g_assert_cmpfloat (s.ratio, >, 10.0);
  g_free (video);

  /* The split's arithmetic on known values; NAN is skipped. */
  double v[8] = { NAN, 1.0, 2.0, 10.0, 3.0, NAN, 4.0, 12.0 };
  gboolean b[8] = { FALSE, FALSE, FALSE, TRUE, FALSE, TRUE, FALSE, TRUE };
  gboolean only[8] = { TRUE, TRUE, FALSE, TRUE, TRUE, TRUE, TRUE, TRUE };
  vm_pair_split_compute (v, b, NULL, 8, &s);
  g_assert_cmpint (s.n_boundary, ==, 2);
  g_assert_cmpint (s.n_inside, ==, 4);
  g_assert_cmpfloat (s.boundary_mean, ==, 11.0);
  g_assert_cmpfloat (s.boundary_max, ==, 12.0);
  g_assert_cmpfloat (s.inside_mean, ==, 2.5);
  g_assert_cmpfloat (s.inside_median, ==, 2.5);
  g_assert_cmpfloat (s.inside_max, ==, 4.0);
  g_assert_cmpfloat_with_epsilon (s.ratio, 4.4, 1e-12);
  vm_pair_split_compute (v, b, only, 8, &s);
  g_assert_cmpint (s.n_inside, ==, 3);
  g_assert_cmpfloat (s.inside_median, ==, 3.0);
  b[3] = b[7] = FALSE;
  vm_pair_split_compute (v, b, NULL, 8, &s);
  g_assert_cmpint (s.n_boundary, ==, 0);
  g_assert_true (isnan (s.ratio) && isnan (s.boundary_mean));
}

/* ------------------------------------------------------------ the model */

static void
test_native_size (void)
{
  GError *err = NULL;
  dp_generator_params p;
  dp_generator_params_init (&p);
  p.model_dir = model_dir;
  p.prompt = "a red ball bouncing";
  p.num_frames = 5;
  p.steps = 1;
  dp_generator *gen = dp_generator_new (&p, &err);
  g_assert_no_error (err);
  if (gen == NULL) {
    g_clear_error (&err);
    return;
  }
  int w = 0, h = 0;
  dp_generator_get_size (gen, &w, &h);
  /* model_index.json "_dualparal" must carry the model's size: without it
   * the generator falls back to Wan's 832 x 480 (generator.h). */
  g_assert_cmpint (w, ==, h);
  g_assert_cmpint (w, <=, MODEL_MAX_SIZE);
  g_assert_cmpint (dp_generator_fps (gen), ==, MODEL_FPS);
  dp_generator_free (gen);
}

typedef struct {
  const char *prompt;
  const char *colour;
  const char *shape; /* ball, square, triangle */
  int axis; /* 0: x, 1: y */
  int sign; /* +1: right / down (image y grows downwards), -1: left / up */
  /* The record to beat (the shipped model's figures, docs/model-card-
   * shapes-tiny.md "Shape, ghosts, motion over time"): the mean over the
   * seeds of |median fill - the named shape's fill| may not grow past
   * record_shape_error, nor the frames with a ghost (a second object) over
   * all seeds past record_ghost_frames.  These catch a regression; the
   * targets (the named shape in PROMPT_MIN_PASSING seeds, no ghost at all)
   * are what a better model must reach. */
  double record_shape_error;
  int record_ghost_frames;
} prompt_case;

/* The caption grammar of tools/shapes_dataset.py (caption_for).  Records:
 * the shipped model's figure on this 2-core VM plus a margin for other CPUs'
 * rounding (fill error + 0.05; ghost frames + 2, or + 20 % where larger);
 * measured: mean |fill - named| 0.016, 0.231, 0.086, 0.216 (the square and
 * the triangle come out as balls: fills 0.76-0.78 and 0.74-0.78); ghost
 * frames 4 (all in seed 4), 0, 0, 0 of 68. */
static const prompt_case prompt_cases[] = {
  { "a red ball moving to the right", "red", "ball", 0, +1, 0.07, 6 },
  { "a blue square moving to the left", "blue", "square", 0, -1, 0.28, 2 },
  { "a green ball moving down", "green", "ball", 1, +1, 0.14, 2 },
  { "a yellow triangle moving up", "yellow", "triangle", 1, -1, 0.27, 2 },
};

static int
cmp_double (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return (x > y) - (x < y);
}

/* Median of the finite fills of objects[n] (NAN when none). */
static double
median_fill (const vm_objects *objects, int n)
{
  double *v = g_new (double, n);
  int m = 0;
  for (int t = 0; t < n; t++)
    if (isfinite (objects[t].fill))
      v[m++] = objects[t].fill;
  qsort (v, m, sizeof *v, cmp_double);
  double med = m == 0 ? NAN : (m % 2 ? v[m / 2] : (v[m / 2 - 1] + v[m / 2]) / 2);
  g_free (v);
  return med;
}

/* Frames with more than one object, and with none. */
static int
ghost_frames (const vm_objects *objects, int n, int *empty_frames)
{
  int ghosts = 0, empty = 0;
  for (int t = 0; t < n; t++) {
    ghosts += objects[t].n_objects > 1;
    empty += objects[t].n_objects == 0;
  }
  if (empty_frames)
    *empty_frames = empty;
  return ghosts;
}

/* What one seed of a prompt case showed. */
typedef struct {
  gboolean colour_ok;    /* the colour is there, tracked in most frames */
  gboolean direction_ok; /* its centroid moves the named way, along the named axis */
  double fill;           /* the largest object's median fill of its bounding box */
  int ghost_frames;      /* frames with a second object of the colour */
} prompt_result;

/* Generates one seed of a prompt case and logs its figures. */
static prompt_result
prompt_seed (const prompt_case *pc, uint64_t seed)
{
  prompt_result r = { FALSE, FALSE, NAN, 0 };
  double colour[3], seconds;
  g_assert_true (vm_colour_by_name (pc->colour, colour));
  int size = 0;
  uint8_t *video = generate (DP_ENGINE_CLASSIC, pc->prompt, PROMPT_FRAMES, seed, 0, 0, &size, &seconds);
  if (video == NULL)
    return r;
  const int n = PROMPT_FRAMES;
  vm_colour_stats stats[PROMPT_FRAMES];
  vm_objects objects[PROMPT_FRAMES];
  double cx[PROMPT_FRAMES], cy[PROMPT_FRAMES], slope[2] = { NAN, NAN };
  vm_colour_stats_video (video, n, size, size, colour, COLOUR_RADIUS, CENTROID_MIN_PIXELS, stats);
  vm_objects_video (video, n, size, size, colour, COLOUR_RADIUS, OBJECT_MIN_PIXELS_AT (size), objects);
  vm_centroid_track (stats, n, cx, cy);
  g_free (video);
  double frac = 0.0, frac_min = 1.0;
  int tracked = 0, specks = 0, empty = 0;
  for (int t = 0; t < n; t++) {
    frac += stats[t].fraction / n;
    frac_min = MIN (frac_min, stats[t].fraction);
    tracked += isfinite (cx[t]);
    specks += objects[t].n_specks;
  }
  r.fill = median_fill (objects, n);
  r.ghost_frames = ghost_frames (objects, n, &empty);
  vm_linear_fit (cx, n, &slope[0], NULL, NULL);
  vm_linear_fit (cy, n, &slope[1], NULL, NULL);
  const double along = pc->sign * slope[pc->axis], across = fabs (slope[1 - pc->axis]);
  r.colour_ok = frac >= PROMPT_MIN_FRACTION_MEAN && tracked >= PROMPT_MIN_TRACKED_SHARE * n;
  /* NaN slopes (no track) fail the comparisons. */
  r.direction_ok = along >= PROMPT_MIN_SLOPE * PX (size) && along >= PROMPT_MIN_AXIS_RATIO * across;
  g_test_message ("\"%s\" seed %" G_GUINT64_FORMAT ": %.1f s; %s fraction mean %.4f min %.4f; centroid in "
                  "%d/%d frames; slope x %+.2f y %+.2f px/frame -> colour %s, direction %s; fill %.3f (%s, "
                  "named %s); frames with 2+ objects %d, with none %d; specks %d", pc->prompt, seed,
                  seconds, pc->colour, frac, frac_min, tracked, n, slope[0], slope[1],
                  r.colour_ok ? "pass" : "FAIL", r.direction_ok ? "pass" : "FAIL", r.fill,
                  shape_of_fill (r.fill) ? shape_of_fill (r.fill) : "none", pc->shape, r.ghost_frames, empty,
                  specks);
  return r;
}

/* Each seed of each case runs once: the colour, direction, shape and ghost
 * tests read the same videos. */
static prompt_result prompt_results[G_N_ELEMENTS (prompt_cases)][PROMPT_SEEDS];
static gboolean prompt_done[G_N_ELEMENTS (prompt_cases)];

static const prompt_result *
prompt_case_results (const prompt_case *pc)
{
  const size_t i = (size_t) (pc - prompt_cases);
  if (!prompt_done[i]) {
    for (int s = 0; s < PROMPT_SEEDS; s++)
      prompt_results[i][s] = prompt_seed (pc, (uint64_t) s + 1);
    prompt_done[i] = TRUE;
  }
  return prompt_results[i];
}

/* Marks the running test as a known failure (GLib "incomplete": reported
 * as such, never as a pass).  Call before the record's assertions: a failed
 * assertion after it still fails the test. */
/* The figures of the shape, ghost and motion-over-time checks, one JSON
 * object per check, written as a JSON array to the file DP_SHAPES_FIGURES
 * names (when set) at the end: models/shapes-tiny/figures.json is this
 * output for the shipped model, the record in machine-readable form, and
 * tools/train-shapes-gpu.sh writes one for a new model. */
static GString *figures;

static void
add_figures (const char *fmt, ...) G_GNUC_PRINTF (1, 2);
static void
add_figures (const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  if (!figures)
    figures = g_string_new (NULL);
  g_string_append (figures, figures->len ? ",\n {" : " {");
  g_string_append_vprintf (figures, fmt, ap);
  g_string_append (figures, "}");
  va_end (ap);
}

/* A JSON number: null for NAN. */
static const char *
json_num (char buf[G_ASCII_DTOSTR_BUF_SIZE], double v, const char *format)
{
  return isfinite (v) ? g_ascii_formatd (buf, G_ASCII_DTOSTR_BUF_SIZE, format, v) : "null";
}

static void
write_figures (void)
{
  const char *path = g_getenv ("DP_SHAPES_FIGURES");
  if (!path || !*path)
    return;
  char *text = g_strdup_printf ("[\n%s\n]\n", figures ? figures->str : "");
  GError *err = NULL;
  if (!g_file_set_contents (path, text, -1, &err)) {
    g_printerr ("DP_SHAPES_FIGURES: %s\n", err->message);
    g_clear_error (&err);
  }
  g_free (text);
}

static int known_failures;
static void
known_failure (const char *fmt, ...) G_GNUC_PRINTF (1, 2);
static void
known_failure (const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  char *msg = g_strdup_vprintf (fmt, ap);
  va_end (ap);
  g_test_message ("KNOWN FAILURE: %s", msg);
  known_failures++;
  g_test_incomplete (msg);
  g_free (msg);
}

/* /model/prompt/colour/...: the named colour, tracked in most frames. */
static void
test_prompt_colour (gconstpointer data)
{
  const prompt_result *r = prompt_case_results (data);
  int passing = 0;
  for (int s = 0; s < PROMPT_SEEDS; s++)
    passing += r[s].colour_ok;
  g_assert_cmpint (passing, >=, PROMPT_MIN_PASSING);
}

/* /model/prompt/direction/...: the colour found and moving the named way. */
static void
test_prompt_direction (gconstpointer data)
{
  const prompt_result *r = prompt_case_results (data);
  int passing = 0;
  for (int s = 0; s < PROMPT_SEEDS; s++)
    passing += r[s].colour_ok && r[s].direction_ok;
  g_assert_cmpint (passing, >=, PROMPT_MIN_PASSING);
}

/* /model/prompt/shape/...: the named shape, from its fill of its bounding
 * box.  Target: PROMPT_MIN_PASSING seeds show the named shape.  Record: the
 * mean error of the fill stays within the case's record. */
static void
test_prompt_shape (gconstpointer data)
{
  const prompt_case *pc = data;
  const prompt_result *r = prompt_case_results (pc);
  const double ideal = shape_fill (pc->shape);
  int named = 0, measured = 0;
  double error = 0.0;
  for (int s = 0; s < PROMPT_SEEDS; s++)
    if (isfinite (r[s].fill)) {
      measured++;
      error += fabs (r[s].fill - ideal);
      const char *seen = shape_of_fill (r[s].fill);
      named += seen && g_str_equal (seen, pc->shape);
    }
  error = measured ? error / measured : NAN;
  g_test_message ("\"%s\": the named shape (%s, fill %.2f) in %d of %d seeds; mean |fill - %.2f| %.3f "
                  "(record %.3f)", pc->prompt, pc->shape, ideal, named, PROMPT_SEEDS, ideal, error,
                  pc->record_shape_error);
  GString *fills = g_string_new (NULL);
  char b[G_ASCII_DTOSTR_BUF_SIZE];
  for (int s = 0; s < PROMPT_SEEDS; s++)
    g_string_append_printf (fills, "%s%s", s ? ", " : "", json_num (b, r[s].fill, "%.3f"));
  add_figures ("\"check\": \"shape\", \"prompt\": \"%s\", \"shape\": \"%s\", \"fill_per_seed\": [%s], "
               "\"seeds_named_shape\": %d, \"mean_fill_error\": %s, \"record\": %.3f, \"target_met\": %s",
               pc->prompt, pc->shape, fills->str, named, json_num (b, error, "%.3f"), pc->record_shape_error,
               named >= PROMPT_MIN_PASSING ? "true" : "false");
  g_string_free (fills, TRUE);
  if (named < PROMPT_MIN_PASSING)
    known_failure ("\"%s\": the named shape in %d of %d seeds (target %d)", pc->prompt, named, PROMPT_SEEDS,
                   PROMPT_MIN_PASSING);
  g_assert_cmpint (measured, ==, PROMPT_SEEDS);
  g_assert_cmpfloat (error, <=, pc->record_shape_error);
}

/* /model/prompt/ghosts/...: one object of the colour per frame.  Target:
 * no frame of any seed with a second object.  Record: no more such frames
 * than the case's record. */
static void
test_prompt_ghosts (gconstpointer data)
{
  const prompt_case *pc = data;
  const prompt_result *r = prompt_case_results (pc);
  int ghosts = 0;
  for (int s = 0; s < PROMPT_SEEDS; s++)
    ghosts += r[s].ghost_frames;
  g_test_message ("\"%s\": frames with a second %s object %d of %d (record %d)", pc->prompt, pc->colour, ghosts,
                  PROMPT_SEEDS * PROMPT_FRAMES, pc->record_ghost_frames);
  add_figures ("\"check\": \"ghosts\", \"prompt\": \"%s\", \"seeds\": %d, \"frames\": %d, "
               "\"ghost_frames\": %d, \"record\": %d, \"target_met\": %s", pc->prompt, PROMPT_SEEDS,
               PROMPT_SEEDS * PROMPT_FRAMES, ghosts, pc->record_ghost_frames, ghosts == 0 ? "true" : "false");
  if (ghosts > 0)
    known_failure ("\"%s\": %d frames with a second object (target 0)", pc->prompt, ghosts);
  g_assert_cmpint (ghosts, <=, pc->record_ghost_frames);
}

/* LONG_FRAMES-frame DualParal videos (P and C as above), made once per
 * prompt and seed: the long tests share them (4-8 s each at 64 x 64). */
#define LONG_CACHE 6
static struct {
  const char *prompt;
  uint64_t seed;
  uint8_t *video;
  int size;
  double seconds;
} long_cache[LONG_CACHE];

static const uint8_t *
long_video (const char *prompt, uint64_t seed, int *size, double *seconds)
{
  int i = 0;
  while (i < LONG_CACHE && long_cache[i].prompt
         && !(g_str_equal (long_cache[i].prompt, prompt) && long_cache[i].seed == seed))
    i++;
  g_assert_cmpint (i, <, LONG_CACHE);
  if (i >= LONG_CACHE)
    return NULL;
  if (!long_cache[i].prompt) {
    long_cache[i].prompt = prompt;
    long_cache[i].seed = seed;
    long_cache[i].video = generate (DP_ENGINE_DUALPARAL, prompt, LONG_FRAMES, seed, LONG_BLOCK_FRAMES,
                                    LONG_CONTEXT_FRAMES, &long_cache[i].size, &long_cache[i].seconds);
  }
  *size = long_cache[i].size;
  *seconds = long_cache[i].seconds;
  return long_cache[i].video;
}

static void
test_long_video (void)
{
  const int n = LONG_FRAMES;
  double colour[3], seconds;
  g_assert_true (vm_colour_by_name (vm_colour_in_text (LONG_PROMPT), colour));

  int size = 0;
  const uint8_t *video = long_video (LONG_PROMPT, LONG_SEED, &size, &seconds);
  if (video == NULL)
    return;
  gboolean *bnd = g_new (gboolean, n), *edges = g_new (gboolean, n);
  vm_colour_stats *stats = g_new (vm_colour_stats, n);
  double *cx = g_new (double, n), *cy = g_new (double, n);
  double *change = g_new (double, n), *jump = g_new (double, n);

  int n_bnd = vm_dualparal_boundaries (LONG_BLOCK_FRAMES, LONG_CONTEXT_FRAMES, n, bnd);
  g_assert_cmpint (n_bnd, ==, 21);
  vm_latent_edges (n, 0, edges);
  vm_frame_changes (video, n, size, size, change);
  vm_colour_stats_video (video, n, size, size, colour, COLOUR_RADIUS, CENTROID_MIN_PIXELS, stats);
  vm_centroid_track (stats, n, cx, cy);
  vm_centroid_jumps (cx, cy, n, jump);
  int tracked = 0;
  double frac = 0.0;
  for (int t = 0; t < n; t++) {
    tracked += isfinite (cx[t]);
    frac += stats[t].fraction / n;
  }

  vm_pair_split ch_edges, ch_all, jp_edges, jp_all;
  vm_pair_split_compute (change, bnd, edges, n, &ch_edges);
  vm_pair_split_compute (change, bnd, NULL, n, &ch_all);
  vm_pair_split_compute (jump, bnd, edges, n, &jp_edges);
  vm_pair_split_compute (jump, bnd, NULL, n, &jp_all);
  g_test_message ("\"%s\", DualParal P %d C %d, %d frames: %.1f s; fraction mean %.4f; centroid in %d/%d "
                  "frames", LONG_PROMPT, LONG_BLOCK_FRAMES, LONG_CONTEXT_FRAMES, n, seconds, frac, tracked, n);
  g_test_message ("frame change: boundary %.3f (max %.3f) | inside latent edges %.3f -> ratio %.2f | "
                  "all inside %.3f -> ratio %.2f", ch_edges.boundary_mean, ch_edges.boundary_max,
                  ch_edges.inside_mean, ch_edges.ratio, ch_all.inside_mean, ch_all.ratio);
  g_test_message ("centroid jump: boundary %.2f px (max %.2f, n %d) | inside latent edges %.2f px (max %.2f, "
                  "n %d) -> ratio %.2f | all inside %.2f px (median %.2f) -> ratio %.2f", jp_edges.boundary_mean,
                  jp_edges.boundary_max, jp_edges.n_boundary, jp_edges.inside_mean, jp_edges.inside_max,
                  jp_edges.n_inside, jp_edges.ratio, jp_all.inside_mean, jp_all.inside_median, jp_all.ratio);

  g_assert_cmpfloat (tracked, >=, LONG_MIN_TRACKED_SHARE * n);
  g_assert_cmpfloat (ch_edges.ratio, <=, LONG_MAX_CHANGE_RATIO);
  /* Most boundaries must have a centroid on both sides to judge the track. */
  g_assert_cmpint (jp_edges.n_boundary, >=, n_bnd * 3 / 4);
  g_assert_cmpfloat (jp_edges.ratio, <=, LONG_MAX_JUMP_RATIO);

  g_free (bnd);
  g_free (edges);
  g_free (stats);
  g_free (cx);
  g_free (cy);
  g_free (change);
  g_free (jump);
}

/* /model/long/ghosts: the bouncing ball of /model/long/dualparal (the same
 * video) is one object in every frame.  Target: no frame with a second
 * object; record: LONG_RECORD_GHOST_FRAMES. */
static void
test_long_ghosts (void)
{
  const int n = LONG_FRAMES;
  double colour[3], seconds;
  g_assert_true (vm_colour_by_name (vm_colour_in_text (LONG_PROMPT), colour));
  int size = 0;
  const uint8_t *video = long_video (LONG_PROMPT, LONG_SEED, &size, &seconds);
  if (video == NULL)
    return;
  vm_objects *objects = g_new (vm_objects, n);
  vm_objects_video (video, n, size, size, colour, COLOUR_RADIUS, OBJECT_MIN_PIXELS_AT (size), objects);
  int empty = 0, ghosts = ghost_frames (objects, n, &empty);
  const double fill = median_fill (objects, n);
  g_test_message ("\"%s\", %d frames: frames with 2+ objects %d, with none %d; fill %.3f (%s) (record %d)",
                  LONG_PROMPT, n, ghosts, empty, fill, shape_of_fill (fill) ? shape_of_fill (fill) : "none",
                  LONG_RECORD_GHOST_FRAMES);
  add_figures ("\"check\": \"long_ghosts\", \"prompt\": \"%s\", \"seed\": %d, \"frames\": %d, "
               "\"ghost_frames\": %d, \"frames_without_object\": %d, \"record\": %d, \"target_met\": %s",
               LONG_PROMPT, LONG_SEED, n, ghosts, empty, LONG_RECORD_GHOST_FRAMES, ghosts == 0 ? "true" : "false");
  if (ghosts > 0)
    known_failure ("\"%s\": %d of %d frames with a second object (target 0)", LONG_PROMPT, ghosts, n);
  g_assert_cmpint (ghosts, <=, LONG_RECORD_GHOST_FRAMES);
  g_free (objects);
}

typedef struct {
  const char *prompt;
  const char *colour;
  int axis, sign; /* as in prompt_case */
  /* The record to beat (the shipped model, seeds 1 to LONG_MOTION_SEEDS):
   * at least record_segments of the seeds' spans move the named way fast
   * enough, and at most record_ghost_frames of their frames show a second
   * object. */
  int record_segments;
  int record_ghost_frames;
} motion_case;

/* Records: the spans measured (no margin: the passing spans' slowest is
 * 0.35 px/frame against the minimum 0.25); ghost frames as for the prompt
 * cases.  Measured (seeds 1, 2): blue square 3 + 0 of 8 spans, 33 + 35
 * ghost frames; red ball 3 + 0 spans, 12 + 0 ghost frames.  Seeds 3 and 4
 * (model card): 0 + 1 and 2 + 0 spans. */
static const motion_case motion_cases[] = {
  { "a blue square moving to the left", "blue", 0, -1, 3, 82 },
  { "a red ball moving to the right", "red", 0, +1, 3, 15 },
};

/* One seed of a motion case: spans passing, ghost frames; figures logged. */
static int
motion_seed (const motion_case *mc, uint64_t seed, int *ghosts)
{
  const int n = LONG_FRAMES;
  double colour[3], seconds;
  g_assert_true (vm_colour_by_name (mc->colour, colour));
  int size = 0;
  const uint8_t *video = long_video (mc->prompt, seed, &size, &seconds);
  *ghosts = 0;
  if (video == NULL)
    return 0;
  vm_objects *objects = g_new (vm_objects, n);
  double *track = g_new (double, n), *unwrapped = g_new (double, n), speed[LONG_SEGMENTS],
         across_speed[LONG_SEGMENTS];
  vm_objects_video (video, n, size, size, colour, COLOUR_RADIUS, OBJECT_MIN_PIXELS_AT (size), objects);
  int empty = 0, jumps = 0;
  *ghosts = ghost_frames (objects, n, &empty);
  for (int axis = 0; axis < 2; axis++) {
    for (int t = 0; t < n; t++)
      track[t] = axis == 0 ? objects[t].cx : objects[t].cy;
    jumps += vm_unwrap_track (track, n, size, LONG_MAX_STEP_SHARE * size, unwrapped);
    vm_segment_speeds (unwrapped, n, LONG_SEGMENTS, axis == mc->axis ? speed : across_speed);
  }
  const double min_speed = PROMPT_MIN_SLOPE * PX (size);
  int passing = 0;
  GString *fig = g_string_new (NULL);
  for (int q = 0; q < LONG_SEGMENTS; q++) {
    const double along = mc->sign * speed[q];
    passing += along >= min_speed; /* NAN (no track) fails */
    g_string_append_printf (fig, "%s%+.2f (across %+.2f)", q ? ", " : "", along, across_speed[q]);
  }
  g_test_message ("\"%s\", %d frames, DualParal P %d C %d, seed %" G_GUINT64_FORMAT ": %.1f s; speed the "
                  "named way per span (px/frame, minimum %.2f): %s; %d of %d spans pass; frames with 2+ objects "
                  "%d, with none %d; jumps %d; fill %.3f", mc->prompt, n, LONG_BLOCK_FRAMES, LONG_CONTEXT_FRAMES,
                  seed, seconds, min_speed, fig->str, passing, LONG_SEGMENTS, *ghosts, empty, jumps,
                  median_fill (objects, n));
  g_string_free (fig, TRUE);
  GString *speeds = g_string_new (NULL);
  char b[G_ASCII_DTOSTR_BUF_SIZE];
  for (int q = 0; q < LONG_SEGMENTS; q++)
    g_string_append_printf (speeds, "%s%s", q ? ", " : "", json_num (b, mc->sign * speed[q], "%.3f"));
  add_figures ("\"check\": \"motion_over_time\", \"prompt\": \"%s\", \"seed\": %" G_GUINT64_FORMAT ", "
               "\"frames\": %d, \"size\": %d, \"span_speed_named_way\": [%s], \"min_speed\": %.3f, "
               "\"spans_passing\": %d, \"ghost_frames\": %d, \"frames_without_object\": %d, \"jumps\": %d",
               mc->prompt, seed, n, size, speeds->str, min_speed, passing, *ghosts, empty, jumps);
  g_string_free (speeds, TRUE);
  g_free (objects);
  g_free (track);
  g_free (unwrapped);
  return passing;
}

/* /model/long/motion/...: a long video keeps moving the named way.  Target:
 * every span of every seed at PROMPT_MIN_SLOPE px/frame or more, and no
 * ghost; record: the case's. */
static void
test_long_motion (gconstpointer data)
{
  const motion_case *mc = data;
  int passing = 0, ghosts = 0;
  for (int s = 0; s < LONG_MOTION_SEEDS; s++) {
    int g = 0;
    passing += motion_seed (mc, (uint64_t) s + 1, &g);
    ghosts += g;
  }
  const int spans = LONG_SEGMENTS * LONG_MOTION_SEEDS;
  g_test_message ("\"%s\", seeds 1-%d: %d of %d spans pass (record %d); frames with 2+ objects %d of %d "
                  "(record %d)", mc->prompt, LONG_MOTION_SEEDS, passing, spans, mc->record_segments, ghosts,
                  LONG_FRAMES * LONG_MOTION_SEEDS, mc->record_ghost_frames);
  add_figures ("\"check\": \"motion_over_time_record\", \"prompt\": \"%s\", \"seeds\": %d, "
               "\"spans_passing\": %d, \"spans\": %d, \"ghost_frames\": %d, \"record_spans\": %d, "
               "\"record_ghost_frames\": %d, \"target_met\": %s", mc->prompt, LONG_MOTION_SEEDS, passing, spans,
               ghosts, mc->record_segments, mc->record_ghost_frames,
               passing == spans && ghosts == 0 ? "true" : "false");
  if (passing < spans || ghosts > 0)
    known_failure ("\"%s\": moves the named way in %d of %d spans (target %d), %d frames with a second "
                   "object (target 0)", mc->prompt, passing, spans, spans, ghosts);
  g_assert_cmpint (passing, >=, mc->record_segments);
  g_assert_cmpint (ghosts, <=, mc->record_ghost_frames);
}

/* ------------------------------------------------------------ steering */

/* First video frame of DualParal block b (P, C latent frames). */
static int
block_first_frame (int b, int P, int C)
{
  return b == 0 ? 0 : vm_latent_first_frame (C + b * P);
}

typedef struct {
  collector c;
  dp_generator *gen;
  int switch_after;        /* frames: once this many are in, set the prompt (-1: never) */
  const char *to;
  gboolean endless;        /* stop (return FALSE) once capacity frames are in */
  gboolean switched;
  int n_changes;
  dp_prompt_change change; /* the last one reported (strings not kept) */
  int64_t change_frames[4];
  char *change_prompts[4];
} steer_run;

static gboolean
steer_frames (const uint8_t *rgb, int n_frames, int64_t first_frame, const dp_progress *progress, void *data)
{
  steer_run *r = data;
  if (r->c.received >= r->c.capacity)
    return FALSE; /* endless: enough */
  int n = MIN (n_frames, r->c.capacity - r->c.received);
  if (!collect_frames (rgb, n, first_frame, progress, &r->c))
    return FALSE;
  if (r->switch_after >= 0 && !r->switched && r->c.received >= r->switch_after) {
    GError *err = NULL;
    g_assert_true (dp_generator_set_prompt (r->gen, r->to, NULL, 0.0, &err));
    g_assert_no_error (err);
    r->switched = TRUE;
  }
  return !r->endless || r->c.received < r->c.capacity;
}

static void
steer_changed (const dp_prompt_change *change, void *data)
{
  steer_run *r = data;
  if (r->n_changes < 4) {
    r->change_frames[r->n_changes] = change->first_frame;
    r->change_prompts[r->n_changes] = g_strdup (change->prompt);
  }
  r->n_changes++;
  r->change = *change;
  r->change.prompt = r->change.negative_prompt = NULL;
}

/* An endless (or, with a schedule, n_frames) DualParal run of n_frames
 * frames; switch_after >= 0: set prompt `to` once that many frames are in. */
static uint8_t *
steer_generate (const char *prompt, const char *schedule, int n_frames, int transition, int switch_after,
                const char *to, steer_run *r, int *size)
{
  GError *err = NULL;
  dp_generator_params p;
  dp_generator_params_init (&p);
  p.model_dir = model_dir;
  p.prompt = prompt;
  p.prompt_schedule = schedule;
  p.num_frames = schedule ? n_frames : -1;
  p.steps = MODEL_STEPS;
  p.guidance_scale = MODEL_GUIDANCE;
  p.seed = LONG_SEED;
  p.engine = DP_ENGINE_DUALPARAL;
  p.block_frames = LONG_BLOCK_FRAMES;
  p.context_frames = LONG_CONTEXT_FRAMES;
  p.transition_blocks = transition;
  memset (r, 0, sizeof *r);
  r->gen = dp_generator_new (&p, &err);
  g_assert_no_error (err);
  if (!r->gen) {
    g_clear_error (&err);
    return NULL;
  }
  dp_generator_get_size (r->gen, size, NULL);
  r->c = (collector){ .frame_bytes = (size_t) *size * *size * 3, .capacity = n_frames, .in_order = TRUE };
  r->c.video = g_malloc ((size_t) n_frames * r->c.frame_bytes);
  r->switch_after = switch_after;
  r->to = to;
  r->endless = schedule == NULL;
  dp_generator_set_prompt_callback (r->gen, steer_changed, r);
  gboolean ok = dp_generator_run (r->gen, steer_frames, r, &err);
  if (!schedule) {
    /* Stopped by the callback once it had its frames. */
    g_assert_error (err, DP_ERROR, DP_ERROR_CANCELLED);
    ok = r->c.received == n_frames;
  }
  g_clear_error (&err);
  g_assert_true (ok);
  g_assert_true (r->c.in_order);
  g_assert_cmpint (r->c.received, ==, n_frames);
  dp_generator_free (r->gen);
  r->gen = NULL;
  return r->c.video;
}

/* Mean fraction of colour over frames [a, b). */
static double
colour_share (const uint8_t *video, int a, int b, int size, const char *name)
{
  double colour[3];
  g_assert_true (vm_colour_by_name (name, colour));
  double sum = 0;
  for (int t = a; t < b; t++) {
    vm_colour_stats st;
    vm_colour_stats_frame (video + (size_t) t * size * size * 3, size, size, colour, COLOUR_RADIUS,
                           CENTROID_MIN_PIXELS, &st);
    sum += st.fraction;
  }
  return b > a ? sum / (b - a) : NAN;
}

/* The run without the change (the same for every K: no change is made),
 * made once. */
static uint8_t *steer_baseline;
static double steer_baseline_seconds;

static void
steer_case (int transition)
{
  const int P = LONG_BLOCK_FRAMES, C = LONG_CONTEXT_FRAMES, T = MODEL_STEPS;
  const int n = block_first_frame (STEER_BLOCKS, P, C);
  /* Block STEER_BLOCK enters in iteration STEER_BLOCK; block STEER_BLOCK - T
   * finishes (and its frames arrive) in iteration STEER_BLOCK - 1. */
  const int switch_after = block_first_frame (STEER_BLOCK - T + 1, P, C);
  const int touched = MAX (0, STEER_BLOCK - T + 1);
  const int untouched_frames = block_first_frame (touched, P, C);
  int size = 0, size2 = 0;
  steer_run base, sw;
  gint64 t0 = g_get_monotonic_time ();
  if (!steer_baseline) {
    steer_baseline = steer_generate (STEER_FROM, NULL, n, transition, -1, NULL, &base, &size);
    steer_baseline_seconds = (g_get_monotonic_time () - t0) / 1e6;
    g_assert_cmpint (base.n_changes, ==, 0);
  }
  uint8_t *a = steer_baseline;
  double base_s = steer_baseline_seconds;
  t0 = g_get_monotonic_time ();
  uint8_t *b = steer_generate (STEER_FROM, NULL, n, transition, switch_after, STEER_TO, &sw, &size2);
  double sw_s = (g_get_monotonic_time () - t0) / 1e6;
  if (!a || !b) {
    g_free (b);
    return;
  }
  size = size2;
  const size_t fb = (size_t) size * size * 3;

  /* The change was taken by block STEER_BLOCK, fully from STEER_BLOCK + K. */
  g_assert_cmpint (sw.n_changes, ==, 1);
  g_assert_cmpint (sw.change.block, ==, STEER_BLOCK);
  g_assert_cmpint (sw.change.first_frame, ==, block_first_frame (STEER_BLOCK, P, C));
  g_assert_cmpint (sw.change.full_block, ==, STEER_BLOCK + transition);
  g_assert_cmpint (sw.change.full_frame, ==, block_first_frame (STEER_BLOCK + transition, P, C));
  g_assert_cmpint (sw.change.transition_blocks, ==, transition);
  g_assert_false (sw.change.scheduled);
  g_assert_cmpstr (sw.change_prompts[0], ==, STEER_TO);

  /* Byte-identical before the first block the change can touch. */
  int first_diff = -1;
  for (int t = 0; t < n && first_diff < 0; t++)
    if (memcmp (a + t * fb, b + t * fb, fb) != 0)
      first_diff = t;
  g_test_message ("switch at block %d (frame %d), K %d: runs %.1f s / %.1f s; first touched block %d (frame %d); "
                  "first differing frame %d; encoding the new prompt %.4f s between two passes (mean pass %.4f s)",
                  STEER_BLOCK, block_first_frame (STEER_BLOCK, P, C), transition, base_s, sw_s, touched,
                  untouched_frames, first_diff, sw.change.encode_seconds, sw.change.pass_seconds);
  g_assert_cmpint (first_diff, >=, untouched_frames);
  g_assert_cmpint (first_diff, >=, 0); /* the change did change something */

  /* The new colour dominates after the transition. */
  const int settled = block_first_frame (STEER_BLOCK + transition + STEER_SETTLE_BLOCKS, P, C);
  const double blue_after = colour_share (b, settled, n, size, "blue");
  const double red_after = colour_share (b, settled, n, size, "red");
  const double red_before = colour_share (b, 0, block_first_frame (STEER_BLOCK, P, C), size, "red");
  const double blue_base = colour_share (a, settled, n, size, "blue");
  const double red_base = colour_share (a, settled, n, size, "red");
  g_test_message ("frames %d..%d: blue %.4f red %.4f (without the change: blue %.4f red %.4f); red before the "
                  "switch %.4f", settled, n - 1, blue_after, red_after, blue_base, red_base, red_before);
  g_assert_cmpfloat (blue_after, >=, STEER_MIN_FRACTION_MEAN);
  g_assert_cmpfloat (blue_after, >=, STEER_MIN_DOMINANCE * red_after);

  /* The change between frames across the switch: the block boundaries from
   * the first touched block to the settled one, against the latent edges
   * inside blocks (the long-video test's measure and limit). */
  gboolean *bnd = g_new0 (gboolean, n), *edges = g_new (gboolean, n), *region = g_new0 (gboolean, n);
  double *change = g_new (double, n);
  vm_dualparal_boundaries (P, C, n, bnd);
  vm_latent_edges (n, 0, edges);
  vm_frame_changes (b, n, size, size, change);
  double max_switch = 0;
  for (int t = 1; t < n; t++) {
    region[t] = bnd[t] && t >= untouched_frames && t <= settled;
    if (region[t])
      max_switch = MAX (max_switch, change[t]);
  }
  vm_pair_split sp, all;
  vm_pair_split_compute (change, region, edges, n, &sp);
  vm_pair_split_compute (change, bnd, edges, n, &all);
  g_test_message ("frame change: switch boundaries %.3f (max %.3f, %d boundaries) | inside latent edges %.3f -> "
                  "ratio %.2f (max / inside %.2f) | every boundary of the run: ratio %.2f", sp.boundary_mean,
                  max_switch, sp.n_boundary, sp.inside_mean, sp.ratio, max_switch / sp.inside_mean, all.ratio);
  g_assert_cmpfloat (sp.ratio, <=, LONG_MAX_CHANGE_RATIO);

  for (int i = 0; i < MIN (sw.n_changes, 4); i++)
    g_free (sw.change_prompts[i]);
  g_free (bnd);
  g_free (edges);
  g_free (region);
  g_free (change);
  g_free (b);
}

static void
test_steer_switch (void)
{
  steer_case (0);
}

static void
test_steer_transition (void)
{
  steer_case (4);
}

/* Three prompts over LONG_FRAMES frames: the colours in order. */
static void
test_steer_schedule (void)
{
  static const char *colours[3] = { "red", "blue", "green" };
  static const int frames[3] = { 0, 86, 171 };
  const int P = LONG_BLOCK_FRAMES, C = LONG_CONTEXT_FRAMES, n = LONG_FRAMES;
  int size = 0;
  steer_run r;
  uint8_t *v = steer_generate (NULL, SCHEDULE_TEXT, n, 0, -1, NULL, &r, &size);
  if (!v)
    return;
  g_assert_cmpint (r.n_changes, ==, 2);
  int starts[4] = { 0, 0, 0, n };
  for (int i = 1; i < 3 && i - 1 < r.n_changes; i++) {
    /* The first block that starts at or after the line's frame. */
    int b = 0;
    while (block_first_frame (b, P, C) < frames[i])
      b++;
    g_assert_cmpint (r.change_frames[i - 1], ==, block_first_frame (b, P, C));
    g_assert_cmpstr (r.change_prompts[i - 1], ==, i == 1 ? "a blue square bouncing" : "a green ball bouncing");
    starts[i] = (int) r.change_frames[i - 1];
  }
  for (int i = 0; i < 3; i++) {
    int from = starts[i];
    if (i > 0) {
      int b = 0;
      while (block_first_frame (b, P, C) < starts[i])
        b++;
      from = block_first_frame (b + SCHEDULE_SETTLE_BLOCKS, P, C);
    }
    double share[3];
    for (int k = 0; k < 3; k++)
      share[k] = colour_share (v, from, starts[i + 1], size, colours[k]);
    g_test_message ("\"%s\" part, frames %d..%d: red %.4f blue %.4f green %.4f", colours[i], from,
                    starts[i + 1] - 1, share[0], share[1], share[2]);
    g_assert_cmpfloat (share[i], >=, STEER_MIN_FRACTION_MEAN);
    for (int k = 0; k < 3; k++)
      if (k != i)
        g_assert_cmpfloat (share[i], >=, STEER_MIN_DOMINANCE * share[k]);
  }
  for (int i = 0; i < MIN (r.n_changes, 4); i++)
    g_free (r.change_prompts[i]);
  g_free (v);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  /* A failed check marks its case failed and the program goes on (meson
   * passes --keep-going): every figure of every case reaches the log. */
  g_test_set_nonfatal_assertions ();

  model_dir = g_getenv ("DP_SHAPES_MODEL_DIR");
  char *index = model_dir ? g_build_filename (model_dir, "model_index.json", NULL) : NULL;
  gboolean have_model = index && g_file_test (index, G_FILE_TEST_IS_REGULAR);
  g_free (index);

  g_test_add_func ("/model/metrics/colour", test_metrics_colour);
  g_test_add_func ("/model/metrics/motion", test_metrics_motion);
  g_test_add_func ("/model/metrics/boundaries", test_metrics_boundaries);
  g_test_add_func ("/model/metrics/seams", test_metrics_seams);
  g_test_add_func ("/model/metrics/objects", test_metrics_objects);
  g_test_add_func ("/model/metrics/motion-over-time", test_metrics_motion_over_time);
  if (have_model) {
    g_test_add_func ("/model/native/size", test_native_size);
    for (size_t i = 0; i < G_N_ELEMENTS (prompt_cases); i++) {
      const prompt_case *pc = &prompt_cases[i];
      const char *dir = pc->axis == 0 ? (pc->sign > 0 ? "right" : "left") : (pc->sign > 0 ? "down" : "up");
      char *name = g_strdup_printf ("/model/prompt/colour/%s-%s", pc->colour, dir);
      g_test_add_data_func (name, pc, test_prompt_colour);
      g_free (name);
      name = g_strdup_printf ("/model/prompt/direction/%s-%s", pc->colour, dir);
      g_test_add_data_func (name, pc, test_prompt_direction);
      g_free (name);
      name = g_strdup_printf ("/model/prompt/shape/%s-%s", pc->colour, dir);
      g_test_add_data_func (name, pc, test_prompt_shape);
      g_free (name);
      name = g_strdup_printf ("/model/prompt/ghosts/%s-%s", pc->colour, dir);
      g_test_add_data_func (name, pc, test_prompt_ghosts);
      g_free (name);
    }
    g_test_add_func ("/model/long/dualparal", test_long_video);
    g_test_add_func ("/model/long/ghosts", test_long_ghosts);
    for (size_t i = 0; i < G_N_ELEMENTS (motion_cases); i++) {
      const motion_case *mc = &motion_cases[i];
      const char *dir = mc->axis == 0 ? (mc->sign > 0 ? "right" : "left") : (mc->sign > 0 ? "down" : "up");
      char *name = g_strdup_printf ("/model/long/motion/%s-%s", mc->colour, dir);
      g_test_add_data_func (name, mc, test_long_motion);
      g_free (name);
    }
    g_test_add_func ("/model/steer/switch", test_steer_switch);
    g_test_add_func ("/model/steer/transition", test_steer_transition);
    g_test_add_func ("/model/steer/schedule", test_steer_schedule);
  }
  int status = g_test_run ();
  write_figures ();
  if (known_failures > 0)
    /* meson's exitcode protocol shows the program as passed: say it here,
     * at the end of its log, too. */
    g_printerr ("%d cases missed their target: known failures (\"not ok ... # TODO\" above, GLib's "
                "incomplete) where they hold the model's record, failures where not; none is a pass\n",
                known_failures);
  g_free (steer_baseline);
  for (int i = 0; i < LONG_CACHE; i++)
    g_free (long_cache[i].video);
  if (figures)
    g_string_free (figures, TRUE);
  if (status == 0 && !have_model) {
    /* 77 is meson's "skipped": the measures passed, the model is not there. */
    g_printerr ("SKIP: no model_index.json in %s (DP_SHAPES_MODEL_DIR); only the measures ran\n",
                model_dir ? model_dir : "(unset)");
    return 77;
  }
  return status;
}
