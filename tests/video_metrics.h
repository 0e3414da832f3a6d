/* video_metrics: measures of decoded RGB frames, for the embedded model's
 * checks (tests/test_shapes_model.c) and tools/dualparal-seams.c.
 *
 * Pure C (GLib types only), no state.  A frame is height x width x 3 bytes
 * of RGB, row stride width * 3: what dp_frames_cb delivers.  A video is
 * n_frames such frames back to back.  Colours are RGB in [0, 1], as in
 * tools/shapes_dataset.py; colour distances are Euclidean in that unit
 * (0 .. sqrt 3).  Pixel coordinates are pixel centres: column x has centre
 * x + 0.5, so a centroid of a full frame is (width / 2, height / 2).
 *
 * "Pairs" are consecutive frames: pair i (1 <= i < n_frames) is (frame i-1,
 * frame i); arrays indexed by pair have n_frames entries and entry 0 is
 * unused.  A pair is a *boundary* when frame i is the first frame of a new
 * block (or of a new clip, for clips joined end to end). */
#ifndef DUALPARAL_TESTS_VIDEO_METRICS_H
#define DUALPARAL_TESTS_VIDEO_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include <glib.h>

G_BEGIN_DECLS

/* ---- colours -------------------------------------------------------------- */

/* The shape colours of tools/shapes_dataset.py (COLOURS): red, green, blue,
 * yellow, white.  FALSE (rgb untouched) for any other name. */
gboolean vm_colour_by_name (const char *name, double rgb[3]);
/* The first palette colour named as a whole word in text ("a red ball
 * moving ..." -> "red"), or NULL.  The returned string is static. */
const char *vm_colour_in_text (const char *text);

/* Pixels of one frame within `radius` of colour: their number; mask (width
 * x height bytes, 1 in / 0 out) is written when not NULL. */
size_t vm_colour_mask (const uint8_t *frame, int width, int height, const double colour[3], double radius,
                       uint8_t *mask);

/* One frame's colour figures. */
typedef struct {
  size_t pixels;   /* pixels within the radius */
  double fraction; /* pixels / (width * height) */
  double cx, cy;   /* their centroid (pixels); NAN when pixels < min_pixels */
} vm_colour_stats;

void vm_colour_stats_frame (const uint8_t *frame, int width, int height, const double colour[3], double radius,
                            size_t min_pixels, vm_colour_stats *out);

/* A whole video's colour figures: stats[n_frames] filled per frame. */
void vm_colour_stats_video (const uint8_t *video, int n_frames, int width, int height, const double colour[3],
                            double radius, size_t min_pixels, vm_colour_stats *stats);

/* ---- motion --------------------------------------------------------------- */

/* Least-squares line v = intercept + slope * i through the points (i, v[i]),
 * i = 0..n-1, skipping non-finite v[i].  FALSE (outputs untouched) with
 * fewer than 2 finite points.  *used (may be NULL): points used. */
gboolean vm_linear_fit (const double *v, int n, double *slope, double *intercept, int *used);

/* Centroid tracks of stats[n_frames] as two arrays (NAN where missing). */
void vm_centroid_track (const vm_colour_stats *stats, int n_frames, double *cx, double *cy);

/* ---- change between frames ------------------------------------------------ */

/* Mean absolute difference of two frames' bytes, in 8-bit levels (0..255). */
double vm_mean_abs_diff (const uint8_t *a, const uint8_t *b, size_t n_bytes);

/* change[i] = vm_mean_abs_diff (frame i-1, frame i) for every pair;
 * change[0] = NAN. */
void vm_frame_changes (const uint8_t *video, int n_frames, int width, int height, double *change);

/* jump[i] = distance (pixels) between the centroids of frames i-1 and i,
 * NAN when either is missing; jump[0] = NAN. */
void vm_centroid_jumps (const double *cx, const double *cy, int n_frames, double *jump);

/* ---- boundaries ----------------------------------------------------------- */

/* First video frame of latent frame k of a Wan VAE (4x in time): 0 for
 * k = 0, else 4k - 3 (latent frame k >= 1 decodes to frames 4k-3 .. 4k). */
int vm_latent_first_frame (int latent_frame);

/* boundary[i] = TRUE where frame i starts a DualParal block (engine.h:
 * block b >= 1 starts at latent frame C + b P), for i < n_frames; FALSE
 * elsewhere.  Returns the number of boundaries. */
int vm_dualparal_boundaries (int block_frames, int context_frames, int n_frames, gboolean *boundary);
/* boundary[i] = TRUE where frame i starts a clip of clip_frames frames
 * (i = clip_frames, 2 clip_frames, ...).  Returns the number of boundaries. */
int vm_clip_boundaries (int clip_frames, int n_frames, gboolean *boundary);
/* latent_edge[i] = TRUE where frames i-1 and i come from different latent
 * frames of one decoder run (i = 1, 5, 9, ...: 4k - 3), for a video made of
 * runs of clip_frames frames joined end to end (clip_frames <= 0: one run;
 * the first pair of each further run is an edge too).  Block boundaries are
 * always latent edges; comparing them with the latent edges inside blocks
 * takes out the VAE's own 4-frame rhythm. */
void vm_latent_edges (int n_frames, int clip_frames, gboolean *latent_edge);

/* Figures of a per-pair value (a frame change, a centroid jump) split into
 * boundary pairs and the others, skipping non-finite values and, when
 * `inside_only` is not NULL, inside pairs where inside_only[i] is FALSE. */
typedef struct {
  int n_boundary, n_inside;
  double boundary_mean, boundary_max;
  double inside_mean, inside_max, inside_median;
  double ratio; /* boundary_mean / inside_mean; NAN when either side is empty
                 * or inside_mean is 0 */
} vm_pair_split;

void vm_pair_split_compute (const double *value, const gboolean *boundary, const gboolean *inside_only,
                            int n_frames, vm_pair_split *out);

/* ---- objects -------------------------------------------------------------- */

/* The connected components of one frame's colour mask (vm_colour_mask), on
 * the torus: 8-connected, and a component may cross an edge and go on at the
 * opposite one (the training clips wrap around: an object half out on the
 * left and half in on the right is one object).  Components of fewer than
 * min_pixels pixels are specks: counted, otherwise ignored. */
typedef struct {
  int n_objects;      /* components of at least min_pixels pixels */
  int n_specks;       /* smaller components */
  size_t largest;     /* pixels of the largest component; 0 when n_objects == 0 */
  int bbox_w, bbox_h; /* its bounding box, unwrapped across the edges (pixels) */
  double fill;        /* largest / (bbox_w * bbox_h): the shape measure (a disc
                       * about pi / 4 = 0.79, an axis-aligned square 1, the
                       * dataset's upright triangle 0.5); NAN when no object */
  double cx, cy;      /* its centroid in [0, width) x [0, height), pixel
                       * centres as above; NAN when no object */
} vm_objects;

void vm_objects_in_mask (const uint8_t *mask, int width, int height, size_t min_pixels, vm_objects *out);
/* The same for every frame of a video: objects[n_frames]. */
void vm_objects_video (const uint8_t *video, int n_frames, int width, int height, const double colour[3],
                       double radius, size_t min_pixels, vm_objects *objects);

/* ---- motion over time ----------------------------------------------------- */

/* A coordinate track (NAN where missing) of an object that may wrap around a
 * period (the frame's width or height), unwrapped: a step between two
 * consecutive finite entries is taken the shortest way modulo the period
 * when that is at most max_step px (an object leaving on the right and
 * coming back on the left keeps moving right); a longer one is a jump (the
 * object vanished and another appeared elsewhere, or the track switched
 * objects) and is taken as it is inside the frame, so an object that keeps
 * reappearing near the centre makes no net progress.  unwrapped[t] is NAN
 * where track[t] is.  Returns the number of jumps. */
int vm_unwrap_track (const double *track, int n, double period, double max_step, double *unwrapped);

/* The video cut into n_segments spans of frames as equal as can be (span s:
 * frames [s (n-1) / n_segments, (s+1) (n-1) / n_segments], integer division;
 * the last frame of one span is the first of the next: 257 frames in 4 are
 * 0..64, 64..128, 128..192, 192..256); speed[s] = (last finite - first finite entry of
 * the unwrapped track in the span) / the frames between them, in px/frame;
 * NAN when the span has fewer than 2 finite entries. */
void vm_segment_speeds (const double *unwrapped, int n, int n_segments, double *speed);

G_END_DECLS

#endif
