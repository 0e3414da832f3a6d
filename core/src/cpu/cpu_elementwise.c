/* CPU backend: element-wise arithmetic, gated residual add, nearest 2x
 * upsampling and the DiT's patch (un)rearrangements.  Large arrays are split
 * over the backend's thread pool. */
#include "cpu/backend_cpu.h"
#include "cpu/cpu_act.h"

#include <string.h>

static gboolean
check_binary (dp_backend *be, const char *op, const dp_tensor *y, const dp_tensor *a, const dp_tensor *b)
{
  if (!dp_cpu_check_f32 (be, op, a) || !dp_cpu_check_f32 (be, op, b) || !dp_cpu_check_f32 (be, op, y))
    return FALSE;
  const int64_t n = dp_tensor_nelem (y);
  if (dp_tensor_nelem (a) != n || dp_tensor_nelem (b) != n) {
    char by[64], ba[64], bb[64];
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: y %s, a %s, b %s differ in element count", op,
                     dp_shape_str (y, by, sizeof by), dp_shape_str (a, ba, sizeof ba), dp_shape_str (b, bb, sizeof bb));
    return FALSE;
  }
  return TRUE;
}

/* The loops' arguments: y = alpha a + beta b and the like.  The loops read
 * them into locals first: a float store through j->y could otherwise alias
 * alpha and beta (floats in the same struct), forcing a reload every
 * element.  y may be a or b (in place). */
typedef struct {
  float *y;
  const float *a, *b, *g;
  float alpha, beta;
  int64_t D, L; /* gated_add: row length, rows per batch entry */
} ew_job;

static void
add_range (void *ctx, int64_t i0, int64_t i1, int worker)
{
  const ew_job *j = ctx;
  float *y = j->y;
  const float *a = j->a, *b = j->b;
  for (int64_t i = i0; i < i1; i++)
    y[i] = a[i] + b[i];
}

static void
mul_range (void *ctx, int64_t i0, int64_t i1, int worker)
{
  const ew_job *j = ctx;
  float *y = j->y;
  const float *a = j->a, *b = j->b;
  for (int64_t i = i0; i < i1; i++)
    y[i] = a[i] * b[i];
}

static void
axpby_range (void *ctx, int64_t i0, int64_t i1, int worker)
{
  const ew_job *j = ctx;
  float *y = j->y;
  const float *a = j->a, *b = j->b;
  const float alpha = j->alpha, beta = j->beta;
  for (int64_t i = i0; i < i1; i++)
    y[i] = alpha * a[i] + beta * b[i];
}

/* y += a (gated_add without a gate). */
static void
acc_range (void *ctx, int64_t i0, int64_t i1, int worker)
{
  const ew_job *j = ctx;
  float *y = j->y;
  const float *a = j->a;
  for (int64_t i = i0; i < i1; i++)
    y[i] += a[i];
}

/* Rows [r0, r1) of x += gate * y: x is j->y, y j->a, gate j->g. */
static void
gated_rows (void *ctx, int64_t r0, int64_t r1, int worker)
{
  const ew_job *j = ctx;
  const int64_t D = j->D;
  for (int64_t r = r0; r < r1; r++) {
    const float *g = j->g + (r / j->L) * D;
    float *xr = j->y + r * D;
    const float *yr = j->a + r * D;
    for (int64_t i = 0; i < D; i++)
      xr[i] += g[i] * yr[i];
  }
}

void
dp_cpu_add (dp_backend *be, dp_tensor *y, const dp_tensor *a, const dp_tensor *b)
{
  if (!check_binary (be, "add", y, a, b))
    return;
  const int64_t n = dp_tensor_nelem (y);
  ew_job job = { .y = y->data, .a = a->data, .b = b->data };
  dp_cpu_for (be, n > DP_CPU_PAR_MIN, n, add_range, &job);
}

void
dp_cpu_mul (dp_backend *be, dp_tensor *y, const dp_tensor *a, const dp_tensor *b)
{
  if (!check_binary (be, "mul", y, a, b))
    return;
  const int64_t n = dp_tensor_nelem (y);
  ew_job job = { .y = y->data, .a = a->data, .b = b->data };
  dp_cpu_for (be, n > DP_CPU_PAR_MIN, n, mul_range, &job);
}

void
dp_cpu_axpby (dp_backend *be, dp_tensor *y, float alpha, const dp_tensor *a, float beta, const dp_tensor *b)
{
  if (!check_binary (be, "axpby", y, a, b))
    return;
  const int64_t n = dp_tensor_nelem (y);
  ew_job job = { .y = y->data, .a = a->data, .b = b->data, .alpha = alpha, .beta = beta };
  dp_cpu_for (be, n > DP_CPU_PAR_MIN, n, axpby_range, &job);
}

void
dp_cpu_gated_add (dp_backend *be, dp_tensor *x, const dp_tensor *y, const dp_tensor *gate)
{
  if (!dp_cpu_check_f32 (be, "gated_add", x) || !dp_cpu_check_f32 (be, "gated_add", y))
    return;
  if (gate && !dp_cpu_check_f32 (be, "gated_add", gate))
    return;
  char bx[64], by[64], bg[64];
  const int64_t n = dp_tensor_nelem (x);
  if (dp_tensor_nelem (y) != n || dp_tensor_cols (y) != dp_tensor_cols (x)) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "gated_add: x %s and y %s differ", dp_shape_str (x, bx, sizeof bx),
                     dp_shape_str (y, by, sizeof by));
    return;
  }
  if (!gate) {
    ew_job job = { .y = x->data, .a = y->data };
    dp_cpu_for (be, n > DP_CPU_PAR_MIN, n, acc_range, &job);
    return;
  }
  /* x [B, L, D]; a 2-D x is one batch entry [L, D]. */
  const int64_t D = dp_tensor_cols (x), R = dp_tensor_rows (x);
  const int64_t B = x->ndim >= 3 ? x->shape[0] : 1;
  if (D <= 0 || B <= 0 || R % B != 0 || dp_tensor_nelem (gate) != B * D || dp_tensor_cols (gate) != D) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "gated_add: x %s with gate %s is not [B, L, D] with [B, D]",
                     dp_shape_str (x, bx, sizeof bx), dp_shape_str (gate, bg, sizeof bg));
    return;
  }
  ew_job job = { .y = x->data, .a = y->data, .g = gate->data, .D = D, .L = R / B };
  dp_cpu_for (be, n > DP_CPU_PAR_MIN, R, gated_rows, &job);
}

typedef struct {
  const float *x;
  float *y;
  int64_t W;
} up_job;

/* Input rows [r0, r1): one output row pair each. */
static void
upsample_rows (void *ctx, int64_t r0, int64_t r1, int worker)
{
  const up_job *j = ctx;
  const int64_t W = j->W;
  for (int64_t r = r0; r < r1; r++) {
    const float *xr = j->x + r * W;
    float *y0 = j->y + r * 4 * W;
    for (int64_t k = 0; k < W; k++)
      y0[2 * k] = y0[2 * k + 1] = xr[k];
    memcpy (y0 + 2 * W, y0, (size_t) (2 * W) * sizeof (float));
  }
}

void
dp_cpu_upsample_nearest2x (dp_backend *be, dp_tensor *y, const dp_tensor *x)
{
  if (!dp_cpu_check_f32 (be, "upsample_nearest2x", x) || !dp_cpu_check_f32 (be, "upsample_nearest2x", y))
    return;
  char bx[64], by[64];
  gboolean ok = x->ndim >= 2 && x->ndim == y->ndim;
  for (int i = 0; ok && i < x->ndim - 2; i++)
    ok = x->shape[i] == y->shape[i];
  if (ok)
    ok = y->shape[x->ndim - 2] == 2 * x->shape[x->ndim - 2] && y->shape[x->ndim - 1] == 2 * x->shape[x->ndim - 1];
  if (!ok) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "upsample_nearest2x: y %s is not x %s with H and W doubled",
                     dp_shape_str (y, by, sizeof by), dp_shape_str (x, bx, sizeof bx));
    return;
  }
  if (dp_cpu_overlap (y, x)) {
    dp_backend_fail (be, DP_ERROR_INVALID, "upsample_nearest2x: y must not overlap x");
    return;
  }
  const int64_t H = x->shape[x->ndim - 2], W = x->shape[x->ndim - 1];
  const int64_t planes = H * W > 0 ? dp_tensor_nelem (x) / (H * W) : 0;
  up_job job = { x->data, y->data, W };
  dp_cpu_for (be, dp_tensor_nelem (y) > DP_CPU_PAR_MIN, planes * H, upsample_rows, &job);
}

/* Shared checks of patchify / unpatchify: the video v [C, F, H, W] divides
 * into patches and tokens is [Fp*Hp*Wp, C*pt*ph*pw] (any shape with that
 * many rows of that length). */
static gboolean
check_patches (dp_backend *be, const char *op, const dp_tensor *tokens, const dp_tensor *v, int pt, int ph, int pw)
{
  if (!dp_cpu_check_f32 (be, op, tokens) || !dp_cpu_check_f32 (be, op, v))
    return FALSE;
  char bt[64], bv[64];
  if (pt < 1 || ph < 1 || pw < 1 || v->ndim != 4 || v->shape[1] % pt || v->shape[2] % ph || v->shape[3] % pw) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: video %s is not [C, F, H, W] divisible by patch %dx%dx%d", op,
                     dp_shape_str (v, bv, sizeof bv), pt, ph, pw);
    return FALSE;
  }
  const int64_t ntok = (v->shape[1] / pt) * (v->shape[2] / ph) * (v->shape[3] / pw);
  const int64_t width = v->shape[0] * pt * ph * pw;
  if (dp_tensor_cols (tokens) != width || dp_tensor_rows (tokens) != ntok) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: tokens %s, expected [%" G_GINT64_FORMAT ", %" G_GINT64_FORMAT "] for video %s",
                     op, dp_shape_str (tokens, bt, sizeof bt), ntok, width, dp_shape_str (v, bv, sizeof bv));
    return FALSE;
  }
  if (dp_cpu_overlap (tokens, v)) {
    dp_backend_fail (be, DP_ERROR_INVALID, "%s: tokens and video must not overlap", op);
    return FALSE;
  }
  return TRUE;
}

typedef struct {
  int64_t C, F, H, W, Hp, Wp, width;
  int pt, ph, pw;
  const float *src;
  float *dst;
} patch_job;

/* Tokens [t0, t1) from the video (src) into their rows (dst). */
static void
patchify_rows (void *ctx, int64_t t0, int64_t t1, int worker)
{
  const patch_job *j = ctx;
  const int64_t C = j->C, F = j->F, H = j->H, W = j->W, Hp = j->Hp, Wp = j->Wp, width = j->width;
  const int pt = j->pt, ph = j->ph, pw = j->pw;
  const float *xd = j->src;
  float *td = j->dst;
  for (int64_t t = t0; t < t1; t++) {
    const int64_t fp = t / (Hp * Wp), hp = (t / Wp) % Hp, wp = t % Wp;
    float *row = td + t * width;
    /* column (c, kt, kh, kw) row-major = Conv3d weight flattening */
    for (int64_t c = 0; c < C; c++)
      for (int kt = 0; kt < pt; kt++)
        for (int kh = 0; kh < ph; kh++) {
          const float *src = xd + ((c * F + fp * pt + kt) * H + hp * ph + kh) * W + wp * pw;
          float *dst = row + ((c * pt + kt) * ph + kh) * pw;
          for (int kw = 0; kw < pw; kw++)
            dst[kw] = src[kw];
        }
  }
}

/* Tokens [t0, t1) (src) back into the video (dst). */
static void
unpatchify_rows (void *ctx, int64_t t0, int64_t t1, int worker)
{
  const patch_job *j = ctx;
  const int64_t C = j->C, F = j->F, H = j->H, W = j->W, Hp = j->Hp, Wp = j->Wp, width = j->width;
  const int pt = j->pt, ph = j->ph, pw = j->pw;
  const float *td = j->src;
  float *xd = j->dst;
  for (int64_t t = t0; t < t1; t++) {
    const int64_t fp = t / (Hp * Wp), hp = (t / Wp) % Hp, wp = t % Wp;
    const float *row = td + t * width;
    /* diffusers: reshape [.., pt, ph, pw, C] then permute to [C, F, H, W]:
     * column (kt*ph*pw + kh*pw + kw)*C + c */
    for (int kt = 0; kt < pt; kt++)
      for (int kh = 0; kh < ph; kh++)
        for (int kw = 0; kw < pw; kw++) {
          const float *src = row + ((kt * ph + kh) * pw + kw) * C;
          float *dst = xd + ((fp * pt + kt) * H + hp * ph + kh) * W + wp * pw + kw;
          for (int64_t c = 0; c < C; c++)
            dst[c * F * H * W] = src[c];
        }
  }
}

void
dp_cpu_patchify (dp_backend *be, dp_tensor *tokens, const dp_tensor *x, int pt, int ph, int pw)
{
  if (!check_patches (be, "patchify", tokens, x, pt, ph, pw))
    return;
  const int64_t C = x->shape[0], F = x->shape[1], H = x->shape[2], W = x->shape[3];
  const int64_t Hp = H / ph, Wp = W / pw, ntok = (F / pt) * Hp * Wp, width = C * pt * ph * pw;
  patch_job job = { C, F, H, W, Hp, Wp, width, pt, ph, pw, x->data, tokens->data };
  dp_cpu_for (be, ntok * width > DP_CPU_PAR_MIN, ntok, patchify_rows, &job);
}

void
dp_cpu_unpatchify (dp_backend *be, dp_tensor *x, const dp_tensor *tokens, int pt, int ph, int pw)
{
  if (!check_patches (be, "unpatchify", tokens, x, pt, ph, pw))
    return;
  const int64_t C = x->shape[0], F = x->shape[1], H = x->shape[2], W = x->shape[3];
  const int64_t Hp = H / ph, Wp = W / pw, ntok = (F / pt) * Hp * Wp, width = C * pt * ph * pw;
  patch_job job = { C, F, H, W, Hp, Wp, width, pt, ph, pw, tokens->data, x->data };
  dp_cpu_for (be, ntok * width > DP_CPU_PAR_MIN, ntok, unpatchify_rows, &job);
}
