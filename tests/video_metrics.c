/* video_metrics: measures of decoded RGB frames (video_metrics.h). */
#include "video_metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* tools/shapes_dataset.py COLOURS; keep in step with it. */
static const struct {
  const char *name;
  double rgb[3];
} palette[] = {
  { "red", { 0.92, 0.12, 0.10 } },
  { "green", { 0.10, 0.80, 0.15 } },
  { "blue", { 0.12, 0.25, 0.95 } },
  { "yellow", { 0.95, 0.88, 0.10 } },
  { "white", { 0.95, 0.95, 0.95 } },
};

gboolean
vm_colour_by_name (const char *name, double rgb[3])
{
  if (name == NULL)
    return FALSE;
  for (size_t i = 0; i < G_N_ELEMENTS (palette); i++)
    if (g_ascii_strcasecmp (name, palette[i].name) == 0) {
      memcpy (rgb, palette[i].rgb, sizeof palette[i].rgb);
      return TRUE;
    }
  return FALSE;
}

const char *
vm_colour_in_text (const char *text)
{
  if (text == NULL)
    return NULL;
  const char *p = text;
  while (*p) {
    while (*p && !g_ascii_isalpha (*p))
      p++;
    const char *w = p;
    while (*p && g_ascii_isalpha (*p))
      p++;
    size_t len = (size_t) (p - w);
    for (size_t i = 0; len > 0 && i < G_N_ELEMENTS (palette); i++)
      if (strlen (palette[i].name) == len && g_ascii_strncasecmp (w, palette[i].name, len) == 0)
        return palette[i].name;
  }
  return NULL;
}

size_t
vm_colour_mask (const uint8_t *frame, int width, int height, const double colour[3], double radius,
                uint8_t *mask)
{
  /* Compare squared distances in 8-bit levels: no sqrt per pixel. */
  const double ref[3] = { colour[0] * 255.0, colour[1] * 255.0, colour[2] * 255.0 };
  const double r2 = radius * 255.0 * radius * 255.0;
  const size_t n = (size_t) width * height;
  size_t count = 0;

  for (size_t i = 0; i < n; i++) {
    const uint8_t *p = frame + 3 * i;
    double d0 = p[0] - ref[0], d1 = p[1] - ref[1], d2 = p[2] - ref[2];
    gboolean in = d0 * d0 + d1 * d1 + d2 * d2 < r2;
    count += in;
    if (mask)
      mask[i] = (uint8_t) in;
  }
  return count;
}

void
vm_colour_stats_frame (const uint8_t *frame, int width, int height, const double colour[3], double radius,
                       size_t min_pixels, vm_colour_stats *out)
{
  const double ref[3] = { colour[0] * 255.0, colour[1] * 255.0, colour[2] * 255.0 };
  const double r2 = radius * 255.0 * radius * 255.0;
  double sx = 0.0, sy = 0.0;
  size_t count = 0;

  for (int y = 0; y < height; y++)
    for (int x = 0; x < width; x++) {
      const uint8_t *p = frame + 3 * ((size_t) y * width + x);
      double d0 = p[0] - ref[0], d1 = p[1] - ref[1], d2 = p[2] - ref[2];
      if (d0 * d0 + d1 * d1 + d2 * d2 < r2) {
        count++;
        sx += x + 0.5;
        sy += y + 0.5;
      }
    }
  out->pixels = count;
  out->fraction = (width > 0 && height > 0) ? (double) count / ((double) width * height) : 0.0;
  if (count > 0 && count >= min_pixels) {
    out->cx = sx / (double) count;
    out->cy = sy / (double) count;
  } else {
    out->cx = NAN;
    out->cy = NAN;
  }
}

void
vm_colour_stats_video (const uint8_t *video, int n_frames, int width, int height, const double colour[3],
                       double radius, size_t min_pixels, vm_colour_stats *stats)
{
  const size_t frame_bytes = (size_t) width * height * 3;
  for (int t = 0; t < n_frames; t++)
    vm_colour_stats_frame (video + (size_t) t * frame_bytes, width, height, colour, radius, min_pixels,
                           &stats[t]);
}

gboolean
vm_linear_fit (const double *v, int n, double *slope, double *intercept, int *used)
{
  double s1 = 0.0, sx = 0.0, sy = 0.0;
  int m = 0;

  /* Two passes around the means: stable for long videos. */
  for (int i = 0; i < n; i++)
    if (isfinite (v[i])) {
      s1 += 1.0;
      sx += i;
      sy += v[i];
      m++;
    }
  if (used)
    *used = m;
  if (m < 2)
    return FALSE;
  const double mx = sx / s1, my = sy / s1;
  double sxx = 0.0, sxy = 0.0;
  for (int i = 0; i < n; i++)
    if (isfinite (v[i])) {
      sxx += (i - mx) * (i - mx);
      sxy += (i - mx) * (v[i] - my);
    }
  if (sxx <= 0.0)
    return FALSE;
  *slope = sxy / sxx;
  if (intercept)
    *intercept = my - *slope * mx;
  return TRUE;
}

void
vm_centroid_track (const vm_colour_stats *stats, int n_frames, double *cx, double *cy)
{
  for (int t = 0; t < n_frames; t++) {
    cx[t] = stats[t].cx;
    cy[t] = stats[t].cy;
  }
}

double
vm_mean_abs_diff (const uint8_t *a, const uint8_t *b, size_t n_bytes)
{
  uint64_t sum = 0;
  if (n_bytes == 0)
    return 0.0;
  for (size_t i = 0; i < n_bytes; i++)
    sum += (uint64_t) abs ((int) a[i] - (int) b[i]);
  return (double) sum / (double) n_bytes;
}

void
vm_frame_changes (const uint8_t *video, int n_frames, int width, int height, double *change)
{
  const size_t frame_bytes = (size_t) width * height * 3;
  if (n_frames < 1)
    return;
  change[0] = NAN;
  for (int i = 1; i < n_frames; i++)
    change[i] = vm_mean_abs_diff (video + (size_t) (i - 1) * frame_bytes, video + (size_t) i * frame_bytes,
                                  frame_bytes);
}

void
vm_centroid_jumps (const double *cx, const double *cy, int n_frames, double *jump)
{
  if (n_frames < 1)
    return;
  jump[0] = NAN;
  for (int i = 1; i < n_frames; i++) {
    if (isfinite (cx[i]) && isfinite (cx[i - 1]) && isfinite (cy[i]) && isfinite (cy[i - 1]))
      jump[i] = hypot (cx[i] - cx[i - 1], cy[i] - cy[i - 1]);
    else
      jump[i] = NAN;
  }
}

int
vm_latent_first_frame (int latent_frame)
{
  return latent_frame <= 0 ? 0 : 4 * latent_frame - 3;
}

int
vm_dualparal_boundaries (int block_frames, int context_frames, int n_frames, gboolean *boundary)
{
  int count = 0;
  for (int i = 0; i < n_frames; i++)
    boundary[i] = FALSE;
  if (block_frames < 1)
    return 0;
  for (int b = 1;; b++) {
    int f = vm_latent_first_frame (context_frames + b * block_frames);
    if (f >= n_frames)
      break;
    boundary[f] = TRUE;
    count++;
  }
  return count;
}

int
vm_clip_boundaries (int clip_frames, int n_frames, gboolean *boundary)
{
  int count = 0;
  for (int i = 0; i < n_frames; i++) {
    boundary[i] = clip_frames > 0 && i > 0 && i % clip_frames == 0;
    count += boundary[i];
  }
  return count;
}

void
vm_latent_edges (int n_frames, int clip_frames, gboolean *latent_edge)
{
  for (int i = 0; i < n_frames; i++) {
    int j = clip_frames > 0 ? i % clip_frames : i;
    latent_edge[i] = j % 4 == 1 || (i > 0 && j == 0);
  }
}

static int
cmp_double (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return (x > y) - (x < y);
}

void
vm_pair_split_compute (const double *value, const gboolean *boundary, const gboolean *inside_only,
                       int n_frames, vm_pair_split *out)
{
  double bsum = 0.0, isum = 0.0;
  double *inside = g_new (double, MAX (n_frames, 1));

  memset (out, 0, sizeof *out);
  out->boundary_max = NAN;
  out->inside_max = NAN;
  for (int i = 1; i < n_frames; i++) {
    if (!isfinite (value[i]))
      continue;
    if (boundary[i]) {
      bsum += value[i];
      out->boundary_max = out->n_boundary == 0 ? value[i] : MAX (out->boundary_max, value[i]);
      out->n_boundary++;
    } else if (inside_only == NULL || inside_only[i]) {
      isum += value[i];
      out->inside_max = out->n_inside == 0 ? value[i] : MAX (out->inside_max, value[i]);
      inside[out->n_inside++] = value[i];
    }
  }
  out->boundary_mean = out->n_boundary ? bsum / out->n_boundary : NAN;
  out->inside_mean = out->n_inside ? isum / out->n_inside : NAN;
  if (out->n_inside) {
    qsort (inside, (size_t) out->n_inside, sizeof (double), cmp_double);
    int h = out->n_inside / 2;
    out->inside_median = out->n_inside % 2 ? inside[h] : 0.5 * (inside[h - 1] + inside[h]);
  } else {
    out->inside_median = NAN;
  }
  out->ratio = (out->n_boundary && out->n_inside && out->inside_mean > 0.0)
      ? out->boundary_mean / out->inside_mean : NAN;
  g_free (inside);
}

/* ---- objects ---- */

void
vm_objects_in_mask (const uint8_t *mask, int width, int height, size_t min_pixels, vm_objects *out)
{
  const size_t n = (size_t) width * height;
  /* seen[i]: pixel i already in a component.  The queue holds each pixel
   * once, with its coordinates unwrapped relative to the component's first
   * pixel (x may leave [0, width) when the component crosses an edge). */
  uint8_t *seen = g_malloc0 (n);
  int *qx = g_new (int, n), *qy = g_new (int, n);

  memset (out, 0, sizeof *out);
  out->fill = out->cx = out->cy = NAN;
  for (size_t start = 0; start < n; start++) {
    if (!mask[start] || seen[start])
      continue;
    size_t head = 0, tail = 0;
    qx[tail] = (int) (start % width);
    qy[tail++] = (int) (start / width);
    seen[start] = 1;
    int x0 = qx[0], x1 = qx[0], y0 = qy[0], y1 = qy[0];
    double sx = 0.0, sy = 0.0;
    while (head < tail) {
      int x = qx[head], y = qy[head++];
      sx += x + 0.5;
      sy += y + 0.5;
      x0 = MIN (x0, x), x1 = MAX (x1, x), y0 = MIN (y0, y), y1 = MAX (y1, y);
      for (int dy = -1; dy <= 1; dy++)
        for (int dx = -1; dx <= 1; dx++) {
          int ux = x + dx, uy = y + dy;
          int wx = ((ux % width) + width) % width, wy = ((uy % height) + height) % height;
          size_t j = (size_t) wy * width + wx;
          if (mask[j] && !seen[j]) {
            seen[j] = 1;
            qx[tail] = ux;
            qy[tail++] = uy;
          }
        }
    }
    if (tail < min_pixels) {
      out->n_specks++;
      continue;
    }
    out->n_objects++;
    if (tail > out->largest) {
      out->largest = tail;
      /* A band around the whole torus unwraps past the frame: clamp. */
      out->bbox_w = MIN (x1 - x0 + 1, width);
      out->bbox_h = MIN (y1 - y0 + 1, height);
      out->fill = (double) tail / ((double) out->bbox_w * out->bbox_h);
      out->cx = fmod (fmod (sx / tail, width) + width, width);
      out->cy = fmod (fmod (sy / tail, height) + height, height);
    }
  }
  g_free (seen);
  g_free (qx);
  g_free (qy);
}

void
vm_objects_video (const uint8_t *video, int n_frames, int width, int height, const double colour[3],
                  double radius, size_t min_pixels, vm_objects *objects)
{
  const size_t frame_bytes = (size_t) width * height * 3;
  uint8_t *mask = g_malloc ((size_t) width * height);
  for (int t = 0; t < n_frames; t++) {
    vm_colour_mask (video + (size_t) t * frame_bytes, width, height, colour, radius, mask);
    vm_objects_in_mask (mask, width, height, min_pixels, &objects[t]);
  }
  g_free (mask);
}

/* ---- motion over time ---- */

int
vm_unwrap_track (const double *track, int n, double period, double max_step, double *unwrapped)
{
  double prev = NAN, acc = NAN;
  int jumps = 0;
  for (int t = 0; t < n; t++) {
    if (!isfinite (track[t])) {
      unwrapped[t] = NAN;
      continue;
    }
    if (!isfinite (prev)) {
      acc = track[t];
    } else {
      double d = fmod (track[t] - prev, period); /* (-period, period) */
      if (d > period / 2)
        d -= period;
      else if (d < -period / 2)
        d += period;
      if (fabs (d) > max_step) {
        d = track[t] - prev; /* a jump: where it is, not around the edge */
        jumps++;
      }
      acc += d;
    }
    prev = track[t];
    unwrapped[t] = acc;
  }
  return jumps;
}

void
vm_segment_speeds (const double *unwrapped, int n, int n_segments, double *speed)
{
  for (int s = 0; s < n_segments; s++) {
    int a = (int) ((long) s * (n - 1) / n_segments), b = (int) ((long) (s + 1) * (n - 1) / n_segments);
    int first = -1, last = -1;
    for (int t = a; t <= b; t++)
      if (isfinite (unwrapped[t])) {
        if (first < 0)
          first = t;
        last = t;
      }
    speed[s] = (first >= 0 && last > first) ? (unwrapped[last] - unwrapped[first]) / (last - first) : NAN;
  }
}
