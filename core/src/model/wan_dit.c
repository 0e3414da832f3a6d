/* Wan DiT forward pass on the backend table: time and text conditioning,
 * patch embedding, transformer blocks over a span, head and guidance.
 *
 * Every pass is written once and run twice: first on a measuring arena with
 * the backend calls skipped (only the allocation sequence runs, so the
 * arena's peak is exact), then for real once the arena is big enough. */
#include "model/wan_dit_private.h"

#include <math.h>
#include <string.h>

typedef struct {
  dp_wan_dit *dit;
  dp_backend *be;
  dp_arena *a;
  gboolean measure;   /* plan only: allocate, skip the backend calls */
  gboolean cancelled; /* the cancel hook fired: the rest of the plan is skipped */
} wan_run;

/* A backend call, skipped while measuring. */
#define OP(r, op, ...)                               \
  do {                                               \
    if (!(r)->measure)                               \
      (r)->be->ops->op ((r)->be, __VA_ARGS__);       \
  } while (0)

/* The geometry of a span, resolved once per call. */
typedef struct {
  const dp_wan_span *span;
  int64_t hp, wp, hw; /* tokens per frame row / column / frame */
  int64_t L;          /* own tokens */
  int64_t Le;         /* extra (cached) tokens */
  int64_t Lx, x0;     /* exported tokens and their first row */
  int64_t Lo, o0;     /* output tokens and their first row */
  int out_frames;
  dp_rope_grid own, extra;
  /* Timesteps: the own tokens as runs of frames with one timestep each
   * (one run on the scalar path), each run's distinct value (tix) and the
   * time slot holding its embedding. */
  int n_seg, n_times;
  struct {
    int64_t row0, rows;
    int tix;
  } seg[DP_WAN_MAX_SPAN_SEGMENTS];
  float times[DP_WAN_TIME_SLOTS];
  int slot[DP_WAN_TIME_SLOTS];
} span_geom;

static dp_tensor
alloc_t (wan_run *r, dp_dtype dt, int ndim, const int64_t *shape)
{
  return dp_arena_tensor (r->a, dt, ndim, shape);
}
#define ALLOC(r, dt, ...) \
  alloc_t (r, dt, (int) (sizeof ((int64_t[]){ __VA_ARGS__ }) / sizeof (int64_t)), (int64_t[]){ __VA_ARGS__ })

/* View of n rows starting at row r0 of t seen as [rows, cols], shaped
 * [1, n, cols] (or [n, cols] when flat).  NULL data stays NULL (measuring). */
static dp_tensor
rows_view (const dp_tensor *t, int64_t r0, int64_t n, gboolean flat)
{
  int64_t cols = dp_tensor_cols (t);
  size_t off = (size_t) r0 * (size_t) cols * dp_dtype_size (t->dtype);
  void *data = t->data ? (uint8_t *) t->data + off : NULL;
  if (flat)
    return dp_tensor_view (data, t->dtype, 2, (int64_t[]){ n, cols });
  return dp_tensor_view (data, t->dtype, 3, (int64_t[]){ 1, n, cols });
}

/* Rows [r0, r0 + n) of batch entry b of t [B, R, C]. */
static dp_tensor
batch_rows (const dp_tensor *t, int64_t b, int64_t r0, int64_t n, gboolean flat)
{
  return rows_view (t, b * t->shape[1] + r0, n, flat);
}

/* t [B, L, H * d] seen as [B, L, H, d]. */
static dp_tensor
heads_view (const dp_tensor *t, int heads)
{
  int64_t d = t->shape[2] / heads;
  return dp_tensor_view (t->data, t->dtype, 4, (int64_t[]){ t->shape[0], t->shape[1], heads, d });
}

/* ------------------------------------------------------------ time path */

/* diffusers Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0): cos
 * half first, frequency i = exp(-ln(10000) i / half), computed in F32 in the
 * same order as torch (exp rounded from double: deterministic across libms). */
static void
time_sinusoid (float *out, int freq_dim, float t)
{
  int half = freq_dim / 2;
  float neg_log = (float) -log (10000.0);
  for (int i = 0; i < half; i++) {
    float e = neg_log * (float) i;
    e = e / (float) half;
    float freq = (float) exp ((double) e);
    float arg = t * freq;
    out[i] = (float) cos ((double) arg);
    out[half + i] = (float) sin ((double) arg);
  }
}

/* temb = time_embedder(sinusoid(t)), e0 = time_proj(SiLU(temb)) as [6, dim]
 * into a time slot, kept until the slot is taken by another timestep (the
 * least recently used one goes).  Returns the slot.  A call's slots are
 * all touched before its plan runs, so with at most DP_WAN_TIME_SLOTS
 * distinct values none of them evicts another of the same call. */
static int
update_time (dp_wan_dit *dit, float t)
{
  int slot = 0;
  for (int i = 0; i < DP_WAN_TIME_SLOTS; i++) {
    if (dit->time_valid[i] && dit->time_value[i] == t) {
      dit->time_used[i] = ++dit->time_clock;
      return i;
    }
    if (dit->time_used[i] < dit->time_used[slot])
      slot = i;
  }
  dit->time_used[slot] = ++dit->time_clock;
  dp_backend *be = dit->be;
  const dp_backend_ops *ops = be->ops;
  time_sinusoid (dit->sinus_host, dit->cfg.freq_dim, t);
  dp_tensor host = dp_tensor_view (dit->sinus_host, DP_F32, 2, dit->sinus.shape);
  ops->to_device (be, &dit->sinus, &host);
  ops->linear (be, &dit->time_h, &dit->sinus, &dit->te1_w, &dit->te1_b, DP_ACT_SILU);
  ops->linear (be, &dit->temb[slot], &dit->time_h, &dit->te2_w, &dit->te2_b, DP_ACT_NONE);
  ops->silu (be, &dit->temb_silu, &dit->temb[slot]);
  ops->copy (be, &dit->temb_silu_act, &dit->temb_silu);
  ops->linear (be, &dit->e0_act, &dit->temb_silu_act, &dit->tp_w, &dit->tp_b, DP_ACT_NONE);
  ops->copy (be, &dit->e0[slot], &dit->e0_act);
  dit->time_valid[slot] = !dp_backend_failed (be);
  dit->time_value[slot] = t;
  return slot;
}

/* mod [K, B, dim] F32: mod[k][b] = table[k] + vec[k]  (table, vec [K, dim]). */
static dp_tensor
modulation (wan_run *r, const dp_tensor *table, const dp_tensor *vec, int K, int B)
{
  const int64_t D = r->dit->cfg.dim;
  dp_tensor mod = ALLOC (r, DP_F32, K, B, D);
  for (int k = 0; k < K; k++) {
    dp_tensor tk = rows_view (table, k, 1, TRUE);
    dp_tensor vk = rows_view (vec, k, 1, TRUE);
    for (int b = 0; b < B; b++) {
      dp_tensor y = rows_view (&mod, (int64_t) k * B + b, 1, TRUE);
      OP (r, add, &y, &tk, &vk);
    }
  }
  return mod;
}

/* Chunk k of mod [K, B, dim]: [B, dim]. */
static dp_tensor
mod_chunk (const dp_tensor *mod, int k)
{
  int64_t B = mod->shape[1];
  return rows_view (mod, (int64_t) k * B, B, TRUE);
}

/* Chunk k of mod [K, B, dim] for batch entry b: [1, dim]. */
static dp_tensor
mod_entry (const dp_tensor *mod, int k, int64_t b)
{
  return rows_view (mod, (int64_t) k * mod->shape[1] + b, 1, TRUE);
}

/* xn = LN(h) * (1 + scale) + shift, h and xn [B, L, D], with chunks
 * k_shift, k_shift + 1 of each segment's modulation mods[tix]: one call
 * over every row on the scalar path, one per segment and batch entry with
 * per-token timesteps (a segment's rows are contiguous in each entry). */
static void
segments_norm_modulate (wan_run *r, const span_geom *g, dp_tensor *xn, const dp_tensor *h, const dp_tensor *mods,
                        int k_shift)
{
  const float eps = r->dit->cfg.eps;
  if (g->n_seg == 1) {
    dp_tensor shift = mod_chunk (&mods[0], k_shift), scale = mod_chunk (&mods[0], k_shift + 1);
    OP (r, layer_norm_modulate, xn, h, &shift, &scale, eps);
    return;
  }
  for (int64_t b = 0; b < h->shape[0]; b++)
    for (int i = 0; i < g->n_seg; i++) {
      const dp_tensor *m = &mods[g->seg[i].tix];
      dp_tensor shift = mod_entry (m, k_shift, b), scale = mod_entry (m, k_shift + 1, b);
      dp_tensor hs = batch_rows (h, b, g->seg[i].row0, g->seg[i].rows, FALSE);
      dp_tensor xs = batch_rows (xn, b, g->seg[i].row0, g->seg[i].rows, FALSE);
      OP (r, layer_norm_modulate, &xs, &hs, &shift, &scale, eps);
    }
}

/* ------------------------------------------------------------ text */

static void
plan_context (wan_run *r, const dp_tensor *context)
{
  dp_wan_dit *dit = r->dit;
  const dp_wan_config *c = &dit->cfg;
  const int64_t B = context->shape[0], Lt = context->shape[1];
  dp_dtype act = r->be->act_dtype;

  dp_tensor ctx = ALLOC (r, act, B * Lt, c->text_dim);
  dp_tensor host = dp_tensor_view (context->data, context->dtype, 2, ctx.shape);
  OP (r, to_device, &ctx, &host);
  dp_tensor t1 = ALLOC (r, act, B * Lt, c->dim);
  OP (r, linear, &t1, &ctx, &dit->tx1_w, &dit->tx1_b, DP_ACT_GELU_TANH);
  dp_tensor text = ALLOC (r, act, B * Lt, c->dim);
  OP (r, linear, &text, &t1, &dit->tx2_w, &dit->tx2_b, DP_ACT_NONE);
  for (int i = 0; i < dit->n_layers; i++) {
    wan_layer *ly = &dit->layers[i];
    dp_tensor k = dp_tensor_view (dit->cross_k[i].data, act, 2, (int64_t[]){ B * Lt, c->dim });
    dp_tensor v = dp_tensor_view (dit->cross_v[i].data, act, 2, (int64_t[]){ B * Lt, c->dim });
    OP (r, linear, &k, &text, &ly->ck_w, &ly->ck_b, DP_ACT_NONE);
    OP (r, rms_norm, &k, &k, &ly->cnorm_k, c->eps);
    OP (r, linear, &v, &text, &ly->cv_w, &ly->cv_b, DP_ACT_NONE);
  }
}

/* ------------------------------------------------------------ embed */

static void
plan_embed (wan_run *r, const dp_tensor *latent, int frame_offset, dp_tensor *hidden)
{
  dp_wan_dit *dit = r->dit;
  const dp_wan_config *c = &dit->cfg;
  const int64_t hw = (latent->shape[2] / c->patch_h) * (latent->shape[3] / c->patch_w);
  const int64_t n = latent->shape[1] * hw;
  dp_dtype act = r->be->act_dtype;

  dp_tensor tokens = ALLOC (r, act, n, dit->patch_w.shape[1]);
  OP (r, patchify, &tokens, latent, c->patch_t, c->patch_h, c->patch_w);
  dp_tensor e = ALLOC (r, act, n, c->dim);
  OP (r, linear, &e, &tokens, &dit->patch_w, &dit->patch_b, DP_ACT_NONE);
  for (int64_t b = 0; b < hidden->shape[0]; b++) {
    dp_tensor dst = batch_rows (hidden, b, frame_offset * hw, n, TRUE);
    OP (r, copy, &dst, &e);
  }
}

/* ------------------------------------------------------------ blocks */

/* Between the key/value buffer kv [B, Lk, D] (rows [row0, row0 + n) of each
 * batch entry) and a cache tensor [n_local_layers, B, n, D] at local layer li:
 * into kv when to_kv, else out of it. */
static void
copy_cache_rows (wan_run *r, dp_tensor *kv, int64_t row0, const dp_tensor *cache, int li, int64_t c0, int64_t n,
                 gboolean to_kv)
{
  const int64_t B = kv->shape[0];
  dp_tensor layer = dp_tensor_slice0 (cache, li, 1); /* [1, B, n, D] */
  for (int64_t b = 0; b < B; b++) {
    dp_tensor kb = batch_rows (kv, b, row0, n, TRUE);
    dp_tensor cb = rows_view (&layer, b * cache->shape[2] + c0, n, TRUE);
    if (to_kv)
      OP (r, copy, &kb, &cb);
    else
      OP (r, copy, &cb, &kb);
  }
}

/* x = RoPE (RMSNorm (x) * w) in place, x [B, L, D] with L the grid's
 * tokens: one pass where the backend fuses the two. */
static void
norm_rope (wan_run *r, dp_tensor *x, const dp_tensor *w, const dp_rope_grid *grid)
{
  const dp_wan_config *c = &r->dit->cfg;
  dp_tensor x4 = heads_view (x, c->num_heads);
  if (r->be->ops->rms_norm_rope_3d) {
    OP (r, rms_norm_rope_3d, &x4, w, c->eps, grid);
    return;
  }
  OP (r, rms_norm, x, x, w, c->eps);
  OP (r, rope_3d, &x4, grid);
}

/* h += gate * (x w^T + bias), the projection that closes a residual
 * branch: h F32 [B, L, D], x [B, L, K], gate F32 [B, D] or NULL.  Backends
 * with linear_gated_add do it in one pass per batch entry (each has its own
 * gate); the others go through y [B, L, D], a buffer of the caller's. */
static void
project_residual (wan_run *r, dp_tensor *h, const dp_tensor *x, const dp_tensor *w, const dp_tensor *bias,
                  const dp_tensor *gate, dp_tensor *y)
{
  if (!r->be->ops->linear_gated_add) {
    OP (r, linear, y, x, w, bias, DP_ACT_NONE);
    OP (r, gated_add, h, y, gate);
    return;
  }
  const int64_t B = gate ? h->shape[0] : 1, L = gate ? h->shape[1] : dp_tensor_rows (h);
  for (int64_t b = 0; b < B; b++) {
    dp_tensor hb = rows_view (h, b * L, L, TRUE), xb = rows_view (x, b * L, L, TRUE);
    dp_tensor gb = gate ? rows_view (gate, b, 1, TRUE) : (dp_tensor){ 0 };
    OP (r, linear_gated_add, &hb, &xb, w, bias, gate ? &gb : NULL);
  }
}

static void
self_attention (wan_run *r, const wan_layer *ly, int li, const span_geom *g, const dp_tensor *mods,
                dp_tensor *h)
{
  dp_wan_dit *dit = r->dit;
  const dp_wan_config *c = &dit->cfg;
  const dp_wan_span *s = g->span;
  const int64_t B = h->shape[0], L = g->L, Le = g->Le, Lk = L + Le, D = c->dim;
  dp_dtype act = r->be->act_dtype;
  size_t mark = dp_arena_mark (r->a);

  dp_tensor xn = ALLOC (r, act, B, L, D);
  segments_norm_modulate (r, g, &xn, h, mods, 0);

  dp_tensor q = ALLOC (r, act, B, L, D);
  OP (r, linear, &q, &xn, &ly->q_w, &ly->q_b, DP_ACT_NONE);

  /* Keys and values: [own L | extra Le] per batch entry. */
  dp_tensor k = ALLOC (r, act, B, Lk, D);
  dp_tensor v = ALLOC (r, act, B, Lk, D);
  if (Le == 0) {
    OP (r, linear, &k, &xn, &ly->k_w, &ly->k_b, DP_ACT_NONE);
    OP (r, linear, &v, &xn, &ly->v_w, &ly->v_b, DP_ACT_NONE);
  } else {
    for (int64_t b = 0; b < B; b++) {
      dp_tensor xb = batch_rows (&xn, b, 0, L, TRUE);
      dp_tensor kb = batch_rows (&k, b, 0, L, TRUE), vb = batch_rows (&v, b, 0, L, TRUE);
      OP (r, linear, &kb, &xb, &ly->k_w, &ly->k_b, DP_ACT_NONE);
      OP (r, linear, &vb, &xb, &ly->v_w, &ly->v_b, DP_ACT_NONE);
    }
    if (!r->measure) { /* the cache tensors are absent when only sizing */
      copy_cache_rows (r, &k, L, s->extra_k, li, 0, Le, TRUE);
      copy_cache_rows (r, &v, L, s->extra_v, li, 0, Le, TRUE);
    }
  }
  /* The cache takes K and V before norm_k and RoPE (positions are
   * per-window); the extras were consumed above, so export may alias them. */
  if (g->Lx > 0 && !r->measure) {
    copy_cache_rows (r, &k, g->x0, s->export_k, li, 0, g->Lx, FALSE);
    copy_cache_rows (r, &v, g->x0, s->export_v, li, 0, g->Lx, FALSE);
  }
  /* norm_k spans own and extra keys alike; RoPE turns each with its grid. */
  norm_rope (r, &q, &ly->norm_q, &g->own);
  if (Le == 0) {
    norm_rope (r, &k, &ly->norm_k, &g->own);
  } else {
    for (int64_t b = 0; b < B; b++) {
      dp_tensor ko = batch_rows (&k, b, 0, L, FALSE), kx = batch_rows (&k, b, L, Le, FALSE);
      norm_rope (r, &ko, &ly->norm_k, &g->own);
      norm_rope (r, &kx, &ly->norm_k, &g->extra);
    }
  }

  dp_tensor o = ALLOC (r, act, B, L, D);
  dp_tensor q4 = heads_view (&q, c->num_heads), k4 = heads_view (&k, c->num_heads);
  dp_tensor v4 = heads_view (&v, c->num_heads), o4 = heads_view (&o, c->num_heads);
  dp_attn_params ap = { .scale = 1.0f / sqrtf ((float) c->head_dim), .key_len = 0, .bias = NULL };
  OP (r, attention, &o4, &q4, &k4, &v4, &ap);
  /* q is dead: it takes the output projection where the backend needs a buffer */
  if (g->n_seg == 1) {
    dp_tensor gate = mod_chunk (&mods[0], 2);
    project_residual (r, h, &o, &ly->o_w, &ly->o_b, &gate, &q);
  } else {
    for (int64_t b = 0; b < B; b++)
      for (int i = 0; i < g->n_seg; i++) {
        const int64_t r0 = g->seg[i].row0, n = g->seg[i].rows;
        dp_tensor gate = mod_entry (&mods[g->seg[i].tix], 2, b);
        dp_tensor hs = batch_rows (h, b, r0, n, FALSE), os = batch_rows (&o, b, r0, n, FALSE);
        dp_tensor ys = batch_rows (&q, b, r0, n, FALSE);
        project_residual (r, &hs, &os, &ly->o_w, &ly->o_b, &gate, &ys);
      }
  }
  dp_arena_reset (r->a, mark);
}

static void
cross_attention (wan_run *r, const wan_layer *ly, int li, const span_geom *g, dp_tensor *h)
{
  dp_wan_dit *dit = r->dit;
  const dp_wan_config *c = &dit->cfg;
  const int64_t B = h->shape[0], L = g->L, D = c->dim;
  dp_dtype act = r->be->act_dtype;
  size_t mark = dp_arena_mark (r->a);

  dp_tensor xn = ALLOC (r, act, B, L, D);
  if (c->cross_attn_norm)
    OP (r, layer_norm, &xn, h, &ly->norm2_w, &ly->norm2_b, c->eps);
  else
    OP (r, copy, &xn, h);
  dp_tensor q = ALLOC (r, act, B, L, D);
  OP (r, linear, &q, &xn, &ly->cq_w, &ly->cq_b, DP_ACT_NONE);
  OP (r, rms_norm, &q, &q, &ly->cnorm_q, c->eps);
  dp_tensor o = ALLOC (r, act, B, L, D);
  dp_tensor q4 = heads_view (&q, c->num_heads), o4 = heads_view (&o, c->num_heads);
  dp_tensor k4 = heads_view (&dit->cross_k[li], c->num_heads), v4 = heads_view (&dit->cross_v[li], c->num_heads);
  dp_attn_params ap = { .scale = 1.0f / sqrtf ((float) c->head_dim), .key_len = 0, .bias = NULL };
  OP (r, attention, &o4, &q4, &k4, &v4, &ap);
  project_residual (r, h, &o, &ly->co_w, &ly->co_b, NULL, &xn);
  dp_arena_reset (r->a, mark);
}

static void
feed_forward (wan_run *r, const wan_layer *ly, const span_geom *g, const dp_tensor *mods, dp_tensor *h)
{
  dp_wan_dit *dit = r->dit;
  const dp_wan_config *c = &dit->cfg;
  const int64_t B = h->shape[0], L = g->L, D = c->dim;
  dp_dtype act = r->be->act_dtype;
  size_t mark = dp_arena_mark (r->a);

  dp_tensor xn = ALLOC (r, act, B, L, D);
  segments_norm_modulate (r, g, &xn, h, mods, 3);
  /* The GEMM pair chunked over each batch entry's rows (the hidden
   * activations of all rows at once would be large); the gate per entry
   * and timestep segment (chunks never straddle segments). */
  const int64_t chunk = MIN (L, dit->ffn_chunk_rows);
  dp_tensor f = ALLOC (r, act, chunk, c->ffn_dim);
  dp_tensor y = r->be->ops->linear_gated_add ? (dp_tensor){ 0 } : ALLOC (r, act, 1, chunk, D);
  for (int64_t b = 0; b < B; b++) {
    for (int i = 0; i < g->n_seg; i++) {
      dp_tensor gb = mod_entry (&mods[g->seg[i].tix], 5, b);
      const int64_t s1 = g->seg[i].row0 + g->seg[i].rows;
      for (int64_t r0 = g->seg[i].row0; r0 < s1; r0 += chunk) {
        int64_t n = MIN (chunk, s1 - r0);
        dp_tensor xr = batch_rows (&xn, b, r0, n, TRUE), fr = rows_view (&f, 0, n, TRUE);
        dp_tensor hr = batch_rows (h, b, r0, n, FALSE), yr = y.ndim ? rows_view (&y, 0, n, FALSE) : y;
        OP (r, linear, &fr, &xr, &ly->ff1_w, &ly->ff1_b, DP_ACT_GELU_TANH);
        project_residual (r, &hr, &fr, &ly->ff2_w, &ly->ff2_b, &gb, &yr);
      }
    }
  }
  dp_arena_reset (r->a, mark);
}

static void
plan_layers (wan_run *r, const span_geom *g, dp_tensor *h)
{
  dp_wan_dit *dit = r->dit;
  for (int i = 0; i < dit->n_layers; i++) {
    const wan_layer *ly = &dit->layers[i];
    /* A layer of a large model takes seconds on a CPU: a cancel must not
     * wait for the whole forward.  Measuring plans every layer. */
    if (!r->measure && dit->is_cancelled && dit->is_cancelled (dit->cancel_data)) {
      r->cancelled = TRUE;
      return;
    }
    size_t mark = dp_arena_mark (r->a);
    dp_tensor mods[DP_WAN_TIME_SLOTS]; /* one per distinct timestep of the span */
    for (int t = 0; t < g->n_times; t++)
      mods[t] = modulation (r, &ly->sst, &dit->e0[g->slot[t]], 6, (int) h->shape[0]);
    self_attention (r, ly, i, g, mods, h);
    cross_attention (r, ly, i, g, h);
    feed_forward (r, ly, g, mods, h);
    dp_arena_reset (r->a, mark);
  }
}

/* ------------------------------------------------------------ head */

static void
plan_head (wan_run *r, const span_geom *g, float guidance, const dp_tensor *h, dp_tensor *velocity)
{
  dp_wan_dit *dit = r->dit;
  const dp_wan_config *c = &dit->cfg;
  const int B = (int) h->shape[0];
  dp_dtype act = r->be->act_dtype;
  size_t mark = dp_arena_mark (r->a);

  /* (shift, scale) = head table + temb (not e0), per distinct timestep */
  dp_tensor mods[DP_WAN_TIME_SLOTS];
  for (int t = 0; t < g->n_times; t++) {
    mods[t] = ALLOC (r, DP_F32, 2, B, c->dim);
    for (int k = 0; k < 2; k++) {
      dp_tensor tk = rows_view (&dit->head_sst, k, 1, TRUE);
      for (int b = 0; b < B; b++) {
        dp_tensor y = rows_view (&mods[t], (int64_t) k * B + b, 1, TRUE);
        OP (r, add, &y, &tk, &dit->temb[g->slot[t]]);
      }
    }
  }
  dp_tensor xn = ALLOC (r, act, 1, g->Lo, c->dim);
  dp_tensor y = ALLOC (r, act, g->Lo, dit->proj_w.shape[0]);
  dp_tensor uncond = { 0 };
  if (B == 2)
    uncond = ALLOC (r, DP_F32, velocity->shape[0], velocity->shape[1], velocity->shape[2], velocity->shape[3]);
  for (int b = 0; b < B; b++) {
    if (g->n_seg == 1) {
      dp_tensor shift = mod_entry (&mods[0], 0, b), scale = mod_entry (&mods[0], 1, b);
      dp_tensor hb = batch_rows (h, b, g->o0, g->Lo, FALSE);
      OP (r, layer_norm_modulate, &xn, &hb, &shift, &scale, c->eps);
    } else {
      /* each segment's part of the output rows */
      for (int i = 0; i < g->n_seg; i++) {
        const int64_t lo = MAX (g->seg[i].row0, g->o0);
        const int64_t hi = MIN (g->seg[i].row0 + g->seg[i].rows, g->o0 + g->Lo);
        if (lo >= hi)
          continue;
        dp_tensor shift = mod_entry (&mods[g->seg[i].tix], 0, b), scale = mod_entry (&mods[g->seg[i].tix], 1, b);
        dp_tensor hs = batch_rows (h, b, lo, hi - lo, FALSE), xs = rows_view (&xn, lo - g->o0, hi - lo, FALSE);
        OP (r, layer_norm_modulate, &xs, &hs, &shift, &scale, c->eps);
      }
    }
    OP (r, linear, &y, &xn, &dit->proj_w, &dit->proj_b, DP_ACT_NONE);
    OP (r, unpatchify, b == 0 ? velocity : &uncond, &y, c->patch_t, c->patch_h, c->patch_w);
  }
  if (B == 2) {
    /* v = u + g (c - u), in diffusers' order */
    OP (r, axpby, velocity, 1.0f, velocity, -1.0f, &uncond);
    OP (r, axpby, velocity, guidance, velocity, 1.0f, &uncond);
  }
  dp_arena_reset (r->a, mark);
}

/* ------------------------------------------------------------ checks */

static gboolean
check_tensor (const dp_wan_dit *dit, const char *what, const dp_tensor *t, dp_dtype dtype, int ndim,
              const int64_t *shape, GError **error)
{
  dp_tensor want = dp_tensor_view (NULL, dtype, ndim, shape);
  char a[96], b[96];
  if (!t || !t->data) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "wan_dit: %s is missing (expected %s %s)", what,
                 dp_dtype_name (dtype), dp_shape_str (&want, b, sizeof b));
    return FALSE;
  }
  if (t->dtype != dtype || !dp_tensor_same_shape (t, &want)) {
    g_set_error (error, DP_ERROR, DP_ERROR_SHAPE, "wan_dit: %s is %s %s, expected %s %s", what,
                 dp_dtype_name (t->dtype), dp_shape_str (t, a, sizeof a), dp_dtype_name (dtype),
                 dp_shape_str (&want, b, sizeof b));
    return FALSE;
  }
  return TRUE;
}

static gboolean
check_positions (const dp_wan_dit *dit, const char *what, const int *pos, int n, GError **error)
{
  for (int i = 0; i < n; i++)
    if (pos[i] < 0 || pos[i] >= dit->cfg.rope_max_seq_len) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                   "wan_dit: span %s[%d] = %d is outside the RoPE range [0, %d)", what, i, pos[i],
                   dit->cfg.rope_max_seq_len);
      return FALSE;
    }
  return TRUE;
}

static gboolean
need_context (const dp_wan_dit *dit, GError **error)
{
  if (dit->batch > 0)
    return TRUE;
  g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "wan_dit: no text context: call dp_wan_dit_set_context() first");
  return FALSE;
}

/* Positions 0..n-1 from a host buffer grown on demand. */
static const int *
sequential_positions (dp_wan_dit *dit, int n)
{
  if (dit->seq_pos_len < n) {
    dit->seq_pos = g_renew (int, dit->seq_pos, n);
    for (int i = dit->seq_pos_len; i < n; i++)
      dit->seq_pos[i] = i;
    dit->seq_pos_len = n;
  }
  return dit->seq_pos;
}

/* Validates the span's sizes and (when with_tensors) its cache tensors, and
 * resolves its geometry. */
static gboolean
resolve_span (dp_wan_dit *dit, const dp_wan_span *s, gboolean with_tensors, span_geom *g, GError **error)
{
  const dp_wan_config *c = &dit->cfg;
  memset (g, 0, sizeof *g);
  g->span = s;
  if (s->frames < 1 || s->height < 1 || s->width < 1 || s->height % c->patch_h || s->width % c->patch_w) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "wan_dit: span of %d x %d x %d latent frames x height x width: need at least one frame and "
                 "sizes that are multiples of the patch %d x %d",
                 s->frames, s->height, s->width, c->patch_h, c->patch_w);
    return FALSE;
  }
  g->hp = s->height / c->patch_h;
  g->wp = s->width / c->patch_w;
  if (g->hp > c->rope_max_seq_len || g->wp > c->rope_max_seq_len) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "wan_dit: %" G_GINT64_FORMAT " x %" G_GINT64_FORMAT
                 " tokens per frame exceed the RoPE range %d", g->hp, g->wp, c->rope_max_seq_len);
    return FALSE;
  }
  g->hw = g->hp * g->wp;
  g->L = s->frames * g->hw;
  const int *pos = s->frame_pos ? s->frame_pos : sequential_positions (dit, s->frames);
  if (!check_positions (dit, "frame_pos", pos, s->frames, error))
    return FALSE;
  g->own = (dp_rope_grid){ s->frames, (int) g->hp, (int) g->wp, pos, c->rope_theta };

  if (s->extra_frames < 0 || s->export_frames < 0 || s->out_frames < 0 || s->export_first < 0 || s->out_first < 0 ||
      s->export_first + s->export_frames > s->frames || s->out_first + s->out_frames > s->frames) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "wan_dit: bad span ranges (extra %d, export [%d, +%d), output [%d, +%d) of %d frames)",
                 s->extra_frames, s->export_first, s->export_frames, s->out_first, s->out_frames, s->frames);
    return FALSE;
  }
  g->out_frames = s->out_frames ? s->out_frames : s->frames;
  g->o0 = (s->out_frames ? s->out_first : 0) * g->hw;
  g->Lo = g->out_frames * g->hw;
  if (dit->n_layers == 0 || !with_tensors)
    return TRUE;

  const int64_t B = dit->batch, nl = dit->n_layers, D = c->dim;
  dp_dtype act = dit->be->act_dtype;
  if (s->extra_frames > 0) {
    if (!s->extra_pos) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "wan_dit: span has extra frames but no extra_pos");
      return FALSE;
    }
    if (!check_positions (dit, "extra_pos", s->extra_pos, s->extra_frames, error))
      return FALSE;
    g->Le = s->extra_frames * g->hw;
    int64_t shape[4] = { nl, B, g->Le, D };
    if (!check_tensor (dit, "span extra_k", s->extra_k, act, 4, shape, error) ||
        !check_tensor (dit, "span extra_v", s->extra_v, act, 4, shape, error))
      return FALSE;
    g->extra = (dp_rope_grid){ s->extra_frames, (int) g->hp, (int) g->wp, s->extra_pos, c->rope_theta };
  }
  if (s->export_frames > 0) {
    g->Lx = s->export_frames * g->hw;
    g->x0 = s->export_first * g->hw;
    int64_t shape[4] = { nl, B, g->Lx, D };
    if (!check_tensor (dit, "span export_k", s->export_k, act, 4, shape, error) ||
        !check_tensor (dit, "span export_v", s->export_v, act, 4, shape, error))
      return FALSE;
  }
  return TRUE;
}

/* The span's timesteps as segments (runs of frames with one value) and
 * distinct values: frame_timesteps, else every frame at t. */
static gboolean
resolve_times (const dp_wan_span *s, float t, span_geom *g, GError **error)
{
  g->n_seg = g->n_times = 0;
  for (int f = 0; f < s->frames; f++) {
    const float v = s->frame_timesteps ? s->frame_timesteps[f] : t;
    if (!isfinite (v) || v < 0.0f) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "wan_dit: timestep %g of frame %d is not valid (a finite "
                   "value >= 0)", (double) v, f);
      return FALSE;
    }
    if (g->n_seg > 0 && g->times[g->seg[g->n_seg - 1].tix] == v) {
      g->seg[g->n_seg - 1].rows += g->hw;
      continue;
    }
    int tix = 0;
    while (tix < g->n_times && g->times[tix] != v)
      tix++;
    if (tix == g->n_times) {
      if (g->n_times == DP_WAN_TIME_SLOTS) {
        g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "wan_dit: span frame_timesteps has more than %d distinct "
                     "values", DP_WAN_MAX_SPAN_TIMESTEPS);
        return FALSE;
      }
      g->times[g->n_times++] = v;
    }
    if (g->n_seg == DP_WAN_MAX_SPAN_SEGMENTS) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "wan_dit: span frame_timesteps has more than %d runs of "
                   "equal values", DP_WAN_MAX_SPAN_SEGMENTS);
      return FALSE;
    }
    g->seg[g->n_seg].row0 = (int64_t) f * g->hw;
    g->seg[g->n_seg].rows = g->hw;
    g->seg[g->n_seg].tix = tix;
    g->n_seg++;
  }
  return TRUE;
}

/* Time embeddings of every distinct timestep of g into slots. */
static void
prepare_times (dp_wan_dit *dit, span_geom *g)
{
  for (int i = 0; i < g->n_times; i++)
    g->slot[i] = update_time (dit, g->times[i]);
}

/* ------------------------------------------------------------ arena */

/* Makes the arena hold at least `need` bytes (reallocating only to grow). */
static gboolean
ensure_arena (dp_wan_dit *dit, size_t need, GError **error)
{
  dp_arena *a = wan_dit_arena (dit);
  if (a->base && a->size >= need)
    return TRUE;
  dp_arena_release (a);
  if (!dp_arena_init (a, dit->be, need, error)) {
    g_prefix_error (error, "wan_dit: activation arena of %zu bytes: ", need);
    return FALSE;
  }
  return TRUE;
}

typedef void (*plan_fn) (wan_run *r, gpointer data);

/* Measures plan, grows the arena, runs plan for real. */
static gboolean
run_planned (dp_wan_dit *dit, plan_fn plan, gpointer data, GError **error)
{
  dp_arena m;
  dp_arena_init_measure (&m);
  wan_run r = { dit, dit->be, &m, TRUE, FALSE };
  plan (&r, data);
  if (!ensure_arena (dit, dp_arena_peak (&m), error))
    return FALSE;
  dp_arena *arena = wan_dit_arena (dit);
  dp_arena_reset (arena, 0);
  r.a = arena;
  r.measure = FALSE;
  plan (&r, data);
  if (r.cancelled) {
    /* A backend failure before the cancel is the error worth reporting. */
    if (!dp_backend_check (dit->be, error))
      return FALSE;
    g_set_error (error, DP_ERROR, DP_ERROR_CANCELLED, "wan_dit: cancelled between layers");
    return FALSE;
  }
  if (arena->overflow) {
    arena->overflow = FALSE;
    g_set_error (error, DP_ERROR, DP_ERROR_FAILED, "wan_dit: internal error: activation arena overflow");
    return FALSE;
  }
  return dp_backend_check (dit->be, error);
}

/* ------------------------------------------------------------ public */

void
dp_wan_dit_share_arena (dp_wan_dit *dit, dp_wan_dit *owner)
{
  g_return_if_fail (dit != NULL && dit != owner);
  g_return_if_fail (owner == NULL || (owner->be == dit->be && owner->arena_owner == NULL));
  dp_arena_release (&dit->arena);
  dit->arena_owner = owner;
}

void
dp_wan_dit_set_cancel (dp_wan_dit *dit, gboolean (*is_cancelled) (gpointer data), gpointer data)
{
  dit->is_cancelled = is_cancelled;
  dit->cancel_data = data;
}

void
dp_wan_span_init (dp_wan_span *span, int frames, int height, int width)
{
  memset (span, 0, sizeof *span);
  span->frames = frames;
  span->height = height;
  span->width = width;
}

int64_t
dp_wan_span_tokens (const dp_wan_dit *dit, const dp_wan_span *span)
{
  return (int64_t) span->frames * (span->height / dit->cfg.patch_h) * (span->width / dit->cfg.patch_w);
}

typedef struct {
  const dp_tensor *context;
} context_job;

static void
context_plan (wan_run *r, gpointer data)
{
  plan_context (r, ((context_job *) data)->context);
}

static void
free_context_slots (dp_wan_dit *dit)
{
  dp_backend *be = dit->be;
  for (int i = 0; i < dit->ctx_n; i++) {
    if (dit->ctx[i].mem)
      be->ops->free (be, dit->ctx[i].mem);
    g_free (dit->ctx[i].k);
    g_free (dit->ctx[i].v);
  }
  memset (dit->ctx, 0, sizeof dit->ctx);
  dit->ctx_n = dit->ctx_cur = 0;
  dit->cross_bytes = 0;
  dit->cross_k = dit->cross_v = NULL;
  dit->batch = dit->text_len = 0;
}

/* A new slot for [B, Lt] contexts; FALSE with the backend's error. */
static gboolean
add_context_slot (dp_wan_dit *dit, int B, int Lt, GError **error)
{
  dp_backend *be = dit->be;
  const dp_dtype act = be->act_dtype;
  const int i = dit->ctx_n;
  int64_t shape[3] = { B, Lt, dit->cfg.dim };
  dp_tensor one = dp_tensor_view (NULL, act, 3, shape);
  const size_t each = (dp_tensor_nbytes (&one) + DP_ARENA_ALIGN - 1) / DP_ARENA_ALIGN * DP_ARENA_ALIGN;
  dit->ctx[i].k = g_new0 (dp_tensor, MAX (dit->n_layers, 1));
  dit->ctx[i].v = g_new0 (dp_tensor, MAX (dit->n_layers, 1));
  dit->ctx[i].key = 0;
  dit->ctx[i].used = 0;
  dit->ctx_n++;
  if (dit->n_layers > 0) {
    dit->ctx[i].mem = be->ops->alloc (be, each * 2 * dit->n_layers);
    if (!dit->ctx[i].mem) {
      dp_backend_check (be, error);
      g_prefix_error (error, "wan_dit: cross-attention keys/values: ");
      return FALSE;
    }
    dit->cross_bytes += each * 2 * dit->n_layers;
  }
  for (int l = 0; l < dit->n_layers; l++) {
    dit->ctx[i].k[l] = dp_tensor_view ((uint8_t *) dit->ctx[i].mem + each * (2 * l), act, 3, shape);
    dit->ctx[i].v[l] = dp_tensor_view ((uint8_t *) dit->ctx[i].mem + each * (2 * l + 1), act, 3, shape);
  }
  return TRUE;
}

static void
select_slot (dp_wan_dit *dit, int i)
{
  dit->ctx_cur = i;
  dit->ctx[i].used = ++dit->ctx_clock;
  dit->cross_k = dit->ctx[i].k;
  dit->cross_v = dit->ctx[i].v;
}

gboolean
dp_wan_dit_use_context (dp_wan_dit *dit, uint64_t key, const dp_tensor *context, gboolean *computed,
                        GError **error)
{
  const dp_wan_config *c = &dit->cfg;
  if (computed)
    *computed = FALSE;
  if (!context || !context->data || context->ndim != 3 || context->shape[0] < 1 || context->shape[0] > 2 ||
      context->shape[1] < 1 || context->shape[2] != c->text_dim) {
    char buf[96] = "(none)";
    if (context)
      dp_shape_str (context, buf, sizeof buf);
    g_set_error (error, DP_ERROR, DP_ERROR_SHAPE,
                 "wan_dit: text context is %s, expected a host tensor [B, tokens, %d] with B 1 or 2", buf,
                 c->text_dim);
    return FALSE;
  }
  const int B = (int) context->shape[0], Lt = (int) context->shape[1];
  if (B != dit->batch || Lt != dit->text_len)
    free_context_slots (dit); /* every slot has the shape of the last context */
  if (key != 0)
    for (int i = 0; i < dit->ctx_n; i++)
      if (dit->ctx[i].key == key) {
        select_slot (dit, i);
        return TRUE;
      }
  /* A free slot while fewer than ctx_max exist, else the least recently
   * used one. */
  int slot = 0;
  if (dit->ctx_n < dit->ctx_max) {
    if (!add_context_slot (dit, B, Lt, error)) {
      free_context_slots (dit);
      return FALSE;
    }
    slot = dit->ctx_n - 1;
  } else {
    for (int i = 1; i < dit->ctx_n; i++)
      if (dit->ctx[i].used < dit->ctx[slot].used)
        slot = i;
  }
  select_slot (dit, slot);
  dit->ctx[slot].key = 0; /* not valid until computed */
  if (dit->has_text) {
    context_job job = { context };
    if (!run_planned (dit, context_plan, &job, error))
      return FALSE;
  }
  dit->ctx[slot].key = key;
  dit->ctx_computed++;
  dit->batch = B;
  dit->text_len = Lt;
  if (computed)
    *computed = TRUE;
  return TRUE;
}

gboolean
dp_wan_dit_set_context (dp_wan_dit *dit, const dp_tensor *context, GError **error)
{
  return dp_wan_dit_use_context (dit, 0, context, NULL, error);
}

void
dp_wan_dit_set_context_slots (dp_wan_dit *dit, int slots)
{
  slots = CLAMP (slots, 1, DP_WAN_MAX_CONTEXT_SLOTS);
  if (slots < dit->ctx_n)
    free_context_slots (dit);
  dit->ctx_max = slots;
}

uint64_t
dp_wan_dit_contexts_computed (const dp_wan_dit *dit)
{
  return dit->ctx_computed;
}

typedef struct {
  const dp_tensor *latent;
  int frame_offset;
  dp_tensor *hidden;
} embed_job;

static void
embed_plan (wan_run *r, gpointer data)
{
  embed_job *j = data;
  plan_embed (r, j->latent, j->frame_offset, j->hidden);
}

static gboolean
check_latent (const dp_wan_dit *dit, const char *what, const dp_tensor *t, int channels, GError **error)
{
  const dp_wan_config *c = &dit->cfg;
  char buf[96];
  if (!t || !t->data || t->dtype != DP_F32 || t->ndim != 4 || t->shape[0] != channels || t->shape[1] < 1 ||
      t->shape[2] < 1 || t->shape[3] < 1 || t->shape[2] % c->patch_h || t->shape[3] % c->patch_w) {
    g_set_error (error, DP_ERROR, DP_ERROR_SHAPE,
                 "wan_dit: %s is %s %s, expected F32 [%d, frames, height, width] with height, width "
                 "multiples of %d, %d",
                 what, t ? dp_dtype_name (t->dtype) : "none", t ? dp_shape_str (t, buf, sizeof buf) : "",
                 channels, c->patch_h, c->patch_w);
    return FALSE;
  }
  return TRUE;
}

static gboolean
check_hidden (const dp_wan_dit *dit, const dp_tensor *hidden, int64_t L, GError **error)
{
  return check_tensor (dit, "hidden states", hidden, DP_F32, 3,
                       (int64_t[]){ dit->batch, L, dit->cfg.dim }, error);
}

gboolean
dp_wan_dit_embed (dp_wan_dit *dit, const dp_tensor *latent, int frame_offset, dp_tensor *hidden, GError **error)
{
  const dp_wan_config *c = &dit->cfg;
  if (!dit->has_embed) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "wan_dit: the stage [%d, %d) has no patch embedding (only the stage starting at layer 0)",
                 dit->layer_begin, dit->layer_end);
    return FALSE;
  }
  if (!need_context (dit, error) || !check_latent (dit, "latent", latent, c->in_channels, error))
    return FALSE;
  const int64_t hw = (latent->shape[2] / c->patch_h) * (latent->shape[3] / c->patch_w);
  if (!hidden || hidden->ndim != 3 || hidden->shape[1] % hw || frame_offset < 0 ||
      (frame_offset + latent->shape[1]) * hw > hidden->shape[1]) {
    g_set_error (error, DP_ERROR, DP_ERROR_SHAPE,
                 "wan_dit: latent frames [%d, +%" G_GINT64_FORMAT ") do not fit the hidden states", frame_offset,
                 latent->shape[1]);
    return FALSE;
  }
  if (!check_hidden (dit, hidden, hidden->shape[1], error))
    return FALSE;
  embed_job job = { latent, frame_offset, hidden };
  return run_planned (dit, embed_plan, &job, error);
}

typedef struct {
  const span_geom *g;
  dp_tensor *hidden;
} layers_job;

static void
layers_plan (wan_run *r, gpointer data)
{
  layers_job *j = data;
  plan_layers (r, j->g, j->hidden);
}

gboolean
dp_wan_dit_run_layers (dp_wan_dit *dit, const dp_wan_span *span, float timestep, dp_tensor *hidden,
                       GError **error)
{
  span_geom g;
  if (!need_context (dit, error) || !resolve_span (dit, span, TRUE, &g, error) ||
      !check_hidden (dit, hidden, g.L, error))
    return FALSE;
  if (!resolve_times (span, timestep, &g, error))
    return FALSE;
  if (dit->n_layers == 0)
    return TRUE;
  prepare_times (dit, &g);
  layers_job job = { &g, hidden };
  return run_planned (dit, layers_plan, &job, error);
}

typedef struct {
  const span_geom *g;
  float guidance;
  const dp_tensor *hidden;
  dp_tensor *velocity;
} head_job;

static void
head_plan (wan_run *r, gpointer data)
{
  head_job *j = data;
  plan_head (r, j->g, j->guidance, j->hidden, j->velocity);
}

static gboolean
check_velocity (const dp_wan_dit *dit, const span_geom *g, const dp_tensor *velocity, GError **error)
{
  const dp_wan_span *s = g->span;
  return check_tensor (dit, "velocity", velocity, DP_F32, 4,
                       (int64_t[]){ dit->cfg.out_channels, g->out_frames, s->height, s->width }, error);
}

gboolean
dp_wan_dit_head (dp_wan_dit *dit, const dp_wan_span *span, float timestep, float guidance,
                 const dp_tensor *hidden, dp_tensor *velocity, GError **error)
{
  span_geom g;
  if (!dit->has_head) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "wan_dit: the stage [%d, %d) has no head (only the stage ending at layer %d)", dit->layer_begin,
                 dit->layer_end, dit->cfg.num_layers);
    return FALSE;
  }
  if (!need_context (dit, error) || !resolve_span (dit, span, FALSE, &g, error) ||
      !check_hidden (dit, hidden, g.L, error) || !check_velocity (dit, &g, velocity, error) ||
      !resolve_times (span, timestep, &g, error))
    return FALSE;
  prepare_times (dit, &g);
  head_job job = { &g, guidance, hidden, velocity };
  return run_planned (dit, head_plan, &job, error);
}

typedef struct {
  const span_geom *g;
  const dp_tensor *latent;
  float guidance;
  dp_tensor *velocity;
} forward_job;

static void
forward_plan (wan_run *r, gpointer data)
{
  forward_job *j = data;
  dp_tensor hidden = ALLOC (r, DP_F32, r->dit->batch, j->g->L, r->dit->cfg.dim);
  plan_embed (r, j->latent, 0, &hidden);
  plan_layers (r, j->g, &hidden);
  if (!r->cancelled)
    plan_head (r, j->g, j->guidance, &hidden, j->velocity);
}

gboolean
dp_wan_dit_forward (dp_wan_dit *dit, const dp_wan_span *span, const dp_tensor *latent, float timestep,
                    float guidance, dp_tensor *velocity, GError **error)
{
  const dp_wan_config *c = &dit->cfg;
  if (!dit->has_embed || !dit->has_head) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "wan_dit: a full forward needs every layer, this stage holds [%d, %d) of %d", dit->layer_begin,
                 dit->layer_end, c->num_layers);
    return FALSE;
  }
  if (!need_context (dit, error) || !check_latent (dit, "latent", latent, c->in_channels, error))
    return FALSE;
  dp_wan_span whole;
  if (!span) {
    dp_wan_span_init (&whole, (int) latent->shape[1], (int) latent->shape[2], (int) latent->shape[3]);
    span = &whole;
  } else if (span->frames != latent->shape[1] || span->height != latent->shape[2] ||
             span->width != latent->shape[3]) {
    g_set_error (error, DP_ERROR, DP_ERROR_SHAPE, "wan_dit: span %d x %d x %d does not match the latent", span->frames,
                 span->height, span->width);
    return FALSE;
  }
  span_geom g;
  if (!resolve_span (dit, span, TRUE, &g, error) || !check_velocity (dit, &g, velocity, error) ||
      !resolve_times (span, timestep, &g, error))
    return FALSE;
  prepare_times (dit, &g);
  forward_job job = { &g, latent, guidance, velocity };
  return run_planned (dit, forward_plan, &job, error);
}

/* Sizing for a span: the biggest of what this stage will run on it. */
typedef struct {
  const span_geom *g;
  const dp_wan_span *span;
} reserve_job;

static void
reserve_plan (wan_run *r, gpointer data)
{
  reserve_job *j = data;
  dp_wan_dit *dit = r->dit;
  const dp_wan_config *c = &dit->cfg;
  const int64_t B = dit->batch;
  /* hidden (forward keeps it in the arena), then each part from there */
  dp_tensor hidden = ALLOC (r, DP_F32, B, j->g->L, c->dim);
  size_t mark = dp_arena_mark (r->a);
  if (dit->has_embed) {
    dp_tensor latent = dp_tensor_view (NULL, DP_F32, 4,
                                       (int64_t[]){ c->in_channels, j->span->frames, j->span->height, j->span->width });
    plan_embed (r, &latent, 0, &hidden);
  }
  plan_layers (r, j->g, &hidden);
  if (dit->has_head) {
    dp_tensor v = dp_tensor_view (NULL, DP_F32, 4,
                                  (int64_t[]){ c->out_channels, j->g->out_frames, j->span->height, j->span->width });
    plan_head (r, j->g, 1.0f, &hidden, &v);
  }
  dp_arena_reset (r->a, mark);
}

gboolean
dp_wan_dit_reserve (dp_wan_dit *dit, const dp_wan_span *span, GError **error)
{
  span_geom g;
  /* The timesteps' values do not matter to size, their count does. */
  if (!need_context (dit, error) || !resolve_span (dit, span, FALSE, &g, error) ||
      !resolve_times (span, 0.0f, &g, error))
    return FALSE;
  /* The cache tensors are not needed to size: count their rows. */
  g.Le = (int64_t) span->extra_frames * g.hw;
  g.Lx = (int64_t) span->export_frames * g.hw;
  dp_arena m;
  dp_arena_init_measure (&m);
  wan_run r = { dit, dit->be, &m, TRUE };
  reserve_job job = { &g, span };
  reserve_plan (&r, &job);
  return ensure_arena (dit, dp_arena_peak (&m), error);
}
