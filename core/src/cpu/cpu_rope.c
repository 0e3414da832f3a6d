/* CPU backend: Wan's 3-D rotary embedding, as diffusers' WanRotaryPosEmbed +
 * apply_rotary_emb: per axis, frequency i of a part of size n is
 * theta^(-2i / n) and angle = pos * frequency, both in double (diffusers
 * computes them in float64), cos / sin rounded to F32, then every pair
 * (x[2i], x[2i+1]) is rotated in F32 as (x0 c - x1 s, x0 s + x1 c). */
#include "cpu/backend_cpu.h"
#include "cpu/cpu_act.h"

#include <math.h>

/* cos / sin tables [npos, npairs] for one axis; pos[p] or p when pos is NULL. */
static void
axis_table (float *cs, float *sn, int npos, const int *pos, int npairs, int part_dim, double theta)
{
  for (int p = 0; p < npos; p++) {
    double at = pos ? (double) pos[p] : (double) p;
    for (int i = 0; i < npairs; i++) {
      double freq = 1.0 / pow (theta, (double) (2 * i) / (double) part_dim);
      double angle = at * freq;
      cs[(size_t) p * npairs + i] = (float) cos (angle);
      sn[(size_t) p * npairs + i] = (float) sin (angle);
    }
  }
}

typedef struct {
  float *x;
  int64_t L, H, d, Hg, Wg;
  const float *cos[3], *sin[3]; /* the frame, height and width tables */
  int np[3];                    /* their pairs per position */
} rope_job;

/* Tokens [bl0, bl1) of x [B*L, H, d], every head. */
static void
rope_rows (void *ctx, int64_t bl0, int64_t bl1, int worker)
{
  const rope_job *j = ctx;
  const int64_t L = j->L, H = j->H, d = j->d, Hg = j->Hg, Wg = j->Wg;
  const int *np = j->np;
  for (int64_t bl = bl0; bl < bl1; bl++) {
    const int64_t l = bl % L;
    const int64_t f = l / (Hg * Wg), hh = (l / Wg) % Hg, ww = l % Wg;
    const float *cs[3] = { j->cos[0] + f * np[0], j->cos[1] + hh * np[1], j->cos[2] + ww * np[2] };
    const float *sn[3] = { j->sin[0] + f * np[0], j->sin[1] + hh * np[1], j->sin[2] + ww * np[2] };
    for (int64_t h = 0; h < H; h++) {
      float *v = j->x + (bl * H + h) * d;
      for (int part = 0; part < 3; part++) {
        const float *c = cs[part], *s = sn[part];
        for (int i = 0; i < np[part]; i++) {
          float x0 = v[2 * i], x1 = v[2 * i + 1];
          v[2 * i] = x0 * c[i] - x1 * s[i];
          v[2 * i + 1] = x0 * s[i] + x1 * c[i];
        }
        v += 2 * np[part];
      }
    }
  }
}

void
dp_cpu_rope_3d (dp_backend *be, dp_tensor *x, const dp_rope_grid *grid)
{
  if (!dp_cpu_check_f32 (be, "rope_3d", x))
    return;
  if (!grid || grid->frames <= 0 || grid->height <= 0 || grid->width <= 0) {
    dp_backend_fail (be, DP_ERROR_INVALID, "rope_3d: missing or empty grid");
    return;
  }
  char bx[64];
  const int64_t F = grid->frames, Hg = grid->height, Wg = grid->width;
  if (x->ndim != 4 || x->shape[1] != F * Hg * Wg || x->shape[3] % 2 != 0 || x->shape[3] <= 0) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "rope_3d: x %s is not [B, %" G_GINT64_FORMAT "*%" G_GINT64_FORMAT "*%" G_GINT64_FORMAT ", H, even d]",
                     dp_shape_str (x, bx, sizeof bx), F, Hg, Wg);
    return;
  }
  const int64_t B = x->shape[0], L = x->shape[1], H = x->shape[2], d = x->shape[3];
  /* diffusers: h_dim = w_dim = 2 * (d // 6), t_dim = d - h_dim - w_dim */
  const int dh = 2 * (int) (d / 6), dw = dh, dt = (int) d - dh - dw;
  const int nt = dt / 2, nh = dh / 2, nw = dw / 2;
  const double theta = grid->theta;

  float *ct = g_new (float, (size_t) F * nt + 1), *st = g_new (float, (size_t) F * nt + 1);
  float *ch = g_new (float, (size_t) Hg * nh + 1), *sh = g_new (float, (size_t) Hg * nh + 1);
  float *cw = g_new (float, (size_t) Wg * nw + 1), *sw = g_new (float, (size_t) Wg * nw + 1);
  axis_table (ct, st, (int) F, grid->frame_pos, nt, dt, theta);
  axis_table (ch, sh, (int) Hg, NULL, nh, dh, theta);
  axis_table (cw, sw, (int) Wg, NULL, nw, dw, theta);

  rope_job job = { x->data, L, H, d, Hg, Wg, { ct, ch, cw }, { st, sh, sw }, { nt, nh, nw } };
  dp_cpu_for (be, B * L * H * d > DP_CPU_PAR_MIN, B * L, rope_rows, &job);
  g_free (ct);
  g_free (st);
  g_free (ch);
  g_free (sh);
  g_free (cw);
  g_free (sw);
}
