/* Wan2.1 VAE decoder (diffusers AutoencoderKLWan, decoder half), streaming
 * one latent frame at a time with per-convolution causal caches. */
#include "dualparal/wan_vae.h"

#include "dualparal/arena.h"
#include "dualparal/config.h"
#include "dualparal/weights.h"

#include <math.h>
#include <string.h>

/* F.normalize's eps in diffusers' WanRMS_norm. */
#define VAE_NORM_EPS 1e-12f
/* Frames a causal k=3 convolution keeps (diffusers CACHE_T). */
#define CACHE_T 2

/* ------------------------------------------------------------ the model */

typedef struct {
  dp_tensor w, b;              /* w [cout, cin, kt, kh, kw] (2-D convs seen with kt = 1) */
  int cin, cout, kt, kh, kw;
  int cache;                   /* index of its causal cache, -1 when kt == 1 */
} vae_conv;

typedef struct {
  int cin, cout;
  dp_tensor norm1, norm2;      /* gammas, cin and cout elements */
  vae_conv conv1, conv2;
  gboolean has_shortcut;       /* 1x1x1 conv_shortcut when cin != cout */
  vae_conv shortcut;
} vae_resnet;

typedef struct {
  int c;
  dp_tensor norm;
  vae_conv to_qkv, proj;       /* 1x1 Conv2d, seen as 1x1x1 */
} vae_attn;

typedef enum {
  UP_NONE = 0,
  UP_2D,                       /* nearest 2x + Conv2d 3x3 */
  UP_3D,                       /* time_conv (C -> 2C, k (3,1,1)) first, then as UP_2D */
} vae_up_mode;

typedef struct {
  int n_resnets;
  vae_resnet *resnets;
  vae_up_mode mode;
  vae_conv resample;           /* out_dim -> out_dim / 2 */
  vae_conv time_conv;          /* UP_3D only */
  /* Wan2.2 residual up block with an upsampler: y = up (resnets (x)) + DupUp3D (x),
   * DupUp3D: out[o, t*ft + a, 2h + b, 2w + d] = x[((o*ft + a)*4 + 2b + d) / dup_rep, t, h, w]. */
  gboolean dup;
  int dup_cin, dup_cout, dup_ft, dup_rep;
  gboolean dup_rows_same;      /* the source channel does not depend on b */
} vae_up_block;

/* One causal cache: [channels, CACHE_T, height, width] at spatial level
 * `level` (latent size times 2^level). */
typedef struct {
  int channels, level;
} vae_cache_info;

struct dp_wan_vae {
  dp_backend *be;
  dp_wan_vae_config cfg;
  dp_weights *weights;
  vae_conv post_quant, conv_in, conv_out;
  vae_resnet mid_res[2];
  vae_attn mid_attn;
  vae_up_block up[DP_WAN_VAE_MAX_LEVELS];
  dp_tensor norm_out;
  GArray *caches;              /* vae_cache_info, in order of use */
};

/* ------------------------------------------------------------- config */

static gboolean
load_config (const char *vae_dir, dp_wan_vae_config *cfg, GError **error)
{
  char *path = g_build_filename (vae_dir, "config.json", NULL);
  dp_config *c = dp_config_load (path, error);
  gboolean ok = FALSE;
  if (!c)
    goto out;
  memset (cfg, 0, sizeof *cfg);

  if (!dp_config_expect_string (c, "_class_name", "AutoencoderKLWan", error))
    goto out;
  if (!dp_config_bool_or (c, "is_residual", FALSE, &cfg->is_residual, error) ||
      !dp_config_int_range_or (c, "patch_size", 1, 1, 16, &cfg->patch_size, error))
    goto out;

  int base_dim;
  if (!dp_config_int_range (c, "base_dim", 1, 1 << 14, &base_dim, error) ||
      !dp_config_int_range_or (c, "decoder_base_dim", base_dim, 1, 1 << 14, &cfg->base_dim, error) ||
      !dp_config_int_range (c, "z_dim", 1, DP_WAN_VAE_MAX_Z, &cfg->z_dim, error) ||
      !dp_config_int_range (c, "num_res_blocks", 0, 64, &cfg->num_res_blocks, error) ||
      !dp_config_int_range_or (c, "out_channels", 3, 1, 64, &cfg->out_channels, error))
    goto out;

  int64_t mult[DP_WAN_VAE_MAX_LEVELS];
  if (!dp_config_int_array (c, "dim_mult", mult, DP_WAN_VAE_MAX_LEVELS, &cfg->n_levels, error))
    goto out;
  if (cfg->n_levels < 1) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: \"dim_mult\" is empty", path);
    goto out;
  }
  for (int i = 0; i < cfg->n_levels; i++) {
    if (mult[i] < 1 || mult[i] > 64) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: dim_mult[%d] = %" G_GINT64_FORMAT " is out of range [1, 64]",
                   path, i, mult[i]);
      goto out;
    }
    cfg->dim_mult[i] = (int) mult[i];
  }

  gboolean down[DP_WAN_VAE_MAX_LEVELS];
  int n_down = 0;
  if (!dp_config_bool_array (c, "temperal_downsample", down, DP_WAN_VAE_MAX_LEVELS, &n_down, error))
    goto out;
  if (n_down != cfg->n_levels - 1) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                 "%s: \"temperal_downsample\" has %d elements, expected %d (one fewer than dim_mult)", path,
                 n_down, cfg->n_levels - 1);
    goto out;
  }
  /* The decoder runs the encoder's levels backwards. */
  cfg->temporal_scale = 1;
  for (int i = 0; i < n_down; i++) {
    cfg->temporal_upsample[i] = down[n_down - 1 - i];
    if (cfg->temporal_upsample[i])
      cfg->temporal_scale *= 2;
  }
  cfg->spatial_scale = (1 << (cfg->n_levels - 1)) * cfg->patch_size;
  const int pp = cfg->patch_size * cfg->patch_size;
  if (cfg->out_channels % pp != 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                 "%s: out_channels %d is not a multiple of patch_size^2 = %d (the unpatchify needs that)", path,
                 cfg->out_channels, pp);
    goto out;
  }
  cfg->video_channels = cfg->out_channels / pp;

  double v[DP_WAN_VAE_MAX_Z];
  if (!dp_config_double_array (c, "latents_mean", v, cfg->z_dim, error))
    goto out;
  for (int i = 0; i < cfg->z_dim; i++)
    cfg->latents_mean[i] = (float) v[i];
  if (!dp_config_double_array (c, "latents_std", v, cfg->z_dim, error))
    goto out;
  for (int i = 0; i < cfg->z_dim; i++) {
    if (!isfinite (v[i]) || v[i] == 0.0) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: latents_std[%d] must be a non-zero number", path, i);
      goto out;
    }
    cfg->latents_std[i] = (float) v[i];
  }
  ok = TRUE;
out:
  dp_config_free (c);
  g_free (path);
  return ok;
}

/* ------------------------------------------------------------ weights */

static gboolean
load_conv (dp_wan_vae *vae, vae_conv *cv, const char *prefix, int cin, int cout, int kt, int kh,
           int kw, gboolean two_d, int cache_level, GError **error)
{
  memset (cv, 0, sizeof *cv);
  cv->cin = cin;
  cv->cout = cout;
  cv->kt = kt;
  cv->kh = kh;
  cv->kw = kw;
  cv->cache = -1;
  char *wname = g_strconcat (prefix, ".weight", NULL);
  char *bname = g_strconcat (prefix, ".bias", NULL);
  int64_t shape5[5] = { cout, cin, kt, kh, kw };
  int64_t shape4[4] = { cout, cin, kh, kw };
  int64_t bshape[1] = { cout };
  gboolean ok = two_d ? dp_weights_get (vae->weights, wname, DP_F32, 4, shape4, &cv->w, error)
                      : dp_weights_get (vae->weights, wname, DP_F32, 5, shape5, &cv->w, error);
  ok = ok && dp_weights_get (vae->weights, bname, DP_F32, 1, bshape, &cv->b, error);
  if (ok && two_d)
    dp_tensor_reshape (&cv->w, 5, shape5); /* Conv2d weight as a 1 x kh x kw Conv3d one */
  if (ok && kt > 1) {
    g_assert (kt == CACHE_T + 1);
    vae_cache_info ci = { cin, cache_level };
    cv->cache = (int) vae->caches->len;
    g_array_append_val (vae->caches, ci);
  }
  g_free (wname);
  g_free (bname);
  return ok;
}

static gboolean
load_gamma (dp_wan_vae *vae, dp_tensor *g, const char *prefix, int c, int ndim, GError **error)
{
  char *name = g_strconcat (prefix, ".gamma", NULL);
  int64_t shape[4] = { c, 1, 1, 1 };
  gboolean ok = dp_weights_get (vae->weights, name, DP_F32, ndim, shape, g, error);
  g_free (name);
  return ok;
}

static gboolean
load_resnet (dp_wan_vae *vae, vae_resnet *rn, const char *prefix, int cin, int cout, int level,
             GError **error)
{
  rn->cin = cin;
  rn->cout = cout;
  rn->has_shortcut = cin != cout;
  char *p1 = g_strconcat (prefix, ".norm1", NULL), *p2 = g_strconcat (prefix, ".conv1", NULL);
  char *p3 = g_strconcat (prefix, ".norm2", NULL), *p4 = g_strconcat (prefix, ".conv2", NULL);
  char *p5 = g_strconcat (prefix, ".conv_shortcut", NULL);
  gboolean ok = load_gamma (vae, &rn->norm1, p1, cin, 4, error) &&
                load_conv (vae, &rn->conv1, p2, cin, cout, 3, 3, 3, FALSE, level, error) &&
                load_gamma (vae, &rn->norm2, p3, cout, 4, error) &&
                load_conv (vae, &rn->conv2, p4, cout, cout, 3, 3, 3, FALSE, level, error) &&
                (!rn->has_shortcut || load_conv (vae, &rn->shortcut, p5, cin, cout, 1, 1, 1, FALSE, level, error));
  g_free (p1);
  g_free (p2);
  g_free (p3);
  g_free (p4);
  g_free (p5);
  return ok;
}

static gboolean
have_ops (dp_backend *be, GError **error)
{
  const dp_backend_ops *o = be->ops;
  const struct {
    const void *fn;
    const char *name;
  } need[] = {
    { (const void *) o->conv3d, "conv3d" },
    { (const void *) o->channel_rms_norm, "channel_rms_norm" },
    { (const void *) o->copy_cols, "copy_cols" },
    { (const void *) o->transpose, "transpose" },
    { (const void *) o->attention, "attention" },
    { (const void *) o->upsample_nearest2x, "upsample_nearest2x" },
    { (const void *) o->add, "add" },
    { (const void *) o->mul, "mul" },
    { (const void *) o->copy, "copy" },
    { (const void *) o->fill, "fill" },
  };
  for (size_t i = 0; i < G_N_ELEMENTS (need); i++)
    if (!need[i].fn) {
      g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "backend %s has no %s operation (needed by the VAE decoder)",
                   be->name, need[i].name);
      return FALSE;
    }
  return TRUE;
}

dp_wan_vae *
dp_wan_vae_load (dp_backend *be, const char *vae_dir, GError **error)
{
  g_return_val_if_fail (be != NULL && vae_dir != NULL, NULL);
  if (!have_ops (be, error))
    return NULL;
  dp_wan_vae *vae = g_new0 (dp_wan_vae, 1);
  vae->be = be;
  vae->caches = g_array_new (FALSE, FALSE, sizeof (vae_cache_info));
  if (!load_config (vae_dir, &vae->cfg, error))
    goto fail;
  dp_safetensors *st = dp_safetensors_open_dir (vae_dir, error);
  if (!st)
    goto fail;
  vae->weights = dp_weights_new (be, st);

  const dp_wan_vae_config *c = &vae->cfg;
  const int n = c->n_levels, z = c->z_dim;
  /* dims[k]: the decoder's widths, deepest first (diffusers WanDecoder3d). */
  int dims[DP_WAN_VAE_MAX_LEVELS + 1];
  dims[0] = c->base_dim * c->dim_mult[n - 1];
  for (int k = 1; k <= n; k++)
    dims[k] = c->base_dim * c->dim_mult[n - k];

  if (!load_conv (vae, &vae->post_quant, "post_quant_conv", z, z, 1, 1, 1, FALSE, 0, error) ||
      !load_conv (vae, &vae->conv_in, "decoder.conv_in", z, dims[0], 3, 3, 3, FALSE, 0, error) ||
      !load_resnet (vae, &vae->mid_res[0], "decoder.mid_block.resnets.0", dims[0], dims[0], 0, error))
    goto fail;
  vae_attn *at = &vae->mid_attn;
  at->c = dims[0];
  if (!load_gamma (vae, &at->norm, "decoder.mid_block.attentions.0.norm", dims[0], 3, error) ||
      !load_conv (vae, &at->to_qkv, "decoder.mid_block.attentions.0.to_qkv", dims[0], 3 * dims[0], 1, 1, 1,
                  TRUE, 0, error) ||
      !load_conv (vae, &at->proj, "decoder.mid_block.attentions.0.proj", dims[0], dims[0], 1, 1, 1, TRUE, 0,
                  error) ||
      !load_resnet (vae, &vae->mid_res[1], "decoder.mid_block.resnets.1", dims[0], dims[0], 0, error))
    goto fail;

  for (int i = 0; i < n; i++) {
    vae_up_block *ub = &vae->up[i];
    /* Wan2.1's upsamplers halve the width; Wan2.2's residual ones keep it. */
    int in_dim = i == 0 || c->is_residual ? dims[i] : dims[i] / 2, out_dim = dims[i + 1];
    if (in_dim < 1) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: up block %d would have no input channels", vae_dir, i);
      goto fail;
    }
    ub->n_resnets = c->num_res_blocks + 1;
    ub->resnets = g_new0 (vae_resnet, ub->n_resnets);
    for (int j = 0; j < ub->n_resnets; j++) {
      char *p = g_strdup_printf ("decoder.up_blocks.%d.resnets.%d", i, j);
      gboolean ok = load_resnet (vae, &ub->resnets[j], p, j == 0 ? in_dim : out_dim, out_dim, i, error);
      g_free (p);
      if (!ok)
        goto fail;
    }
    if (i == n - 1)
      continue;
    ub->mode = c->temporal_upsample[i] ? UP_3D : UP_2D;
    const int up_out = c->is_residual ? out_dim : out_dim / 2;
    if (up_out < 1) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: up block %d has too few channels to upsample", vae_dir, i);
      goto fail;
    }
    const char *up_name = c->is_residual ? "upsampler" : "upsamplers.0";
    char *p = g_strdup_printf ("decoder.up_blocks.%d.%s.resample.1", i, up_name);
    gboolean ok = load_conv (vae, &ub->resample, p, out_dim, up_out, 1, 3, 3, TRUE, i + 1, error);
    g_free (p);
    if (!ok)
      goto fail;
    if (ub->mode == UP_3D) {
      p = g_strdup_printf ("decoder.up_blocks.%d.%s.time_conv", i, up_name);
      ok = load_conv (vae, &ub->time_conv, p, out_dim, 2 * out_dim, 3, 1, 1, FALSE, i, error);
      g_free (p);
      if (!ok)
        goto fail;
    }
    if (c->is_residual) {
      /* DupUp3D (in_dim, out_dim, factor_t, factor_s 2): repeat_interleave by
       * out_dim * factor_t * 4 / in_dim channels. */
      ub->dup = TRUE;
      ub->dup_cin = in_dim;
      ub->dup_cout = out_dim;
      ub->dup_ft = ub->mode == UP_3D ? 2 : 1;
      const int64_t f = (int64_t) out_dim * ub->dup_ft * 4;
      if (f % in_dim != 0) {
        g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                     "%s: up block %d: DupUp3D needs out_dim * %d to be a multiple of in_dim (%d -> %d)", vae_dir, i,
                     ub->dup_ft * 4, in_dim, out_dim);
        goto fail;
      }
      ub->dup_rep = (int) (f / in_dim);
      ub->dup_rows_same = TRUE;
      for (int o = 0; o < out_dim; o++)
        for (int a = 0; a < ub->dup_ft; a++) {
          const int k = (o * ub->dup_ft + a) * 4;
          if (k / ub->dup_rep != (k + 1) / ub->dup_rep || (k + 2) / ub->dup_rep != (k + 3) / ub->dup_rep) {
            g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                         "%s: up block %d: a DupUp3D shortcut %d -> %d channels that differs between neighbouring "
                         "columns is not supported", vae_dir, i, in_dim, out_dim);
            goto fail;
          }
          if (k / ub->dup_rep != (k + 2) / ub->dup_rep)
            ub->dup_rows_same = FALSE;
        }
    }
  }
  if (!load_gamma (vae, &vae->norm_out, "decoder.norm_out", dims[n], 4, error) ||
      !load_conv (vae, &vae->conv_out, "decoder.conv_out", dims[n], c->out_channels, 3, 3, 3, FALSE, n - 1,
                  error))
    goto fail;
  return vae;

fail:
  dp_wan_vae_free (vae);
  return NULL;
}

void
dp_wan_vae_free (dp_wan_vae *vae)
{
  if (!vae)
    return;
  for (int i = 0; i < DP_WAN_VAE_MAX_LEVELS; i++)
    g_free (vae->up[i].resnets);
  dp_weights_free (vae->weights);
  g_array_unref (vae->caches);
  g_free (vae);
}

const dp_wan_vae_config *
dp_wan_vae_get_config (const dp_wan_vae *vae)
{
  return &vae->cfg;
}

dp_backend *
dp_wan_vae_get_backend (const dp_wan_vae *vae)
{
  return vae->be;
}

int64_t
dp_wan_vae_num_frames (const dp_wan_vae *vae, int64_t latent_frames)
{
  return latent_frames <= 0 ? 0 : 1 + (int64_t) vae->cfg.temporal_scale * (latent_frames - 1);
}

/* ------------------------------------------------------------ decoder */

/* One spatial tile of a (possibly tiled) decoder: a latent rectangle with
 * its own causal caches, so that each tile streams exactly as an untiled
 * decoder of its size would. */
typedef struct {
  int y0, x0, th, tw;          /* latent rectangle */
  dp_tensor *caches;           /* views [C, CACHE_T, th_l, tw_l] into the decoder's cache_mem */
  dp_tensor mean, std;         /* [z, 1, th, tw]: latents_mean / latents_std broadcast */
  float *host;                 /* [out_channels, temporal_scale, th * s, tw * s] (several tiles only) */
  gboolean host_pinned;
  int64_t out_count;           /* values of the last decoded chunk */
} vae_tile;

struct dp_wan_vae_decoder {
  dp_wan_vae *vae;
  int h, w;                    /* latent size */
  int H, W;                    /* video size */
  int64_t position;            /* latent frames decoded since reset */
  void *cache_mem;             /* all causal caches of all tiles, one allocation */
  int64_t cache_floats;
  dp_tensor *cache_views;      /* n_tiles * caches->len views */
  int tile_rows, tile_cols;    /* 1 x 1 when untiled */
  vae_tile *tiles;             /* row-major */
  int stride_h, stride_w;      /* tile strides in decoder-output pixels (before the unpatchify) */
  int blend_h, blend_w;        /* overlaps to blend, same units */
  dp_arena io[2];              /* ping-pong layer outputs */
  dp_arena scratch;            /* per-layer temporaries */
  /* Host buffers the decoder output is copied into are page-locked when the
   * backend offers it (dp_backend_host_alloc): the copies are asynchronous
   * and all tiles are queued before one sync. */
  float *host;                 /* [video_channels, temporal_scale, H, W] clamped output */
  float *host_raw;             /* [out_channels, temporal_scale, H/p, W/p] before the unpatchify (p > 1) */
  gboolean host_pinned, host_raw_pinned;
};

/* One forward pass over a chunk.  measure: allocations only (sizing). */
typedef struct {
  dp_backend *be;
  const dp_wan_vae *vae;
  dp_tensor *caches;           /* NULL when measuring */
  gboolean measure;
  gboolean first;              /* the video's first latent frame */
  dp_arena *io[2];
  dp_arena *scratch;
  int cur;                     /* io[cur] holds x */
  dp_tensor x;                 /* the current activation [C, T, H, W] */
} vae_run;

static dp_tensor
t4 (dp_arena *a, int64_t c, int64_t t, int64_t h, int64_t w)
{
  int64_t shape[4] = { c, t, h, w };
  return dp_arena_tensor (a, DP_F32, 4, shape);
}

/* A layer's output: in the other io arena, whose previous content (the
 * previous layer's input) is dead. */
static dp_tensor
next_out (vae_run *r, int64_t c, int64_t t, int64_t h, int64_t w)
{
  dp_arena *a = r->io[1 - r->cur];
  dp_arena_reset (a, 0);
  return t4 (a, c, t, h, w);
}

/* y = conv (x): x [cin, T, H, W] -> y [cout, T, H, W].  A k=3 causal conv
 * runs over [cache | x] (T + 2 frames, no time padding) and then keeps the
 * last 2 of those frames: zeros at the start of a video, exactly diffusers'
 * zero padding / feat_cache behaviour. */
static void
conv_apply (vae_run *r, const vae_conv *cv, dp_tensor *y, const dp_tensor *x)
{
  dp_backend *be = r->be;
  dp_conv3d_params p = { 1, 1, 1, 0, 0, cv->kh / 2, cv->kw / 2 };
  if (cv->cache < 0) {
    if (!r->measure)
      be->ops->conv3d (be, y, x, &cv->w, &cv->b, &p);
    return;
  }
  const int64_t T = x->shape[1], hw = x->shape[2] * x->shape[3];
  size_t mark = dp_arena_mark (r->scratch);
  dp_tensor xc = t4 (r->scratch, cv->cin, T + CACHE_T, x->shape[2], x->shape[3]);
  if (!r->measure) {
    dp_tensor *cache = &r->caches[cv->cache];
    be->ops->copy_cols (be, &xc, 0, cache, 0, CACHE_T * hw);
    be->ops->copy_cols (be, &xc, CACHE_T * hw, x, 0, T * hw);
    be->ops->conv3d (be, y, &xc, &cv->w, &cv->b, &p);
    be->ops->copy_cols (be, cache, 0, &xc, T * hw, CACHE_T * hw);
  }
  dp_arena_reset (r->scratch, mark);
}

static void
norm_apply (vae_run *r, dp_tensor *y, const dp_tensor *x, const dp_tensor *gamma, dp_act act)
{
  if (!r->measure)
    r->be->ops->channel_rms_norm (r->be, y, x, gamma, VAE_NORM_EPS, act);
}

static void
set_x (vae_run *r, dp_tensor y)
{
  r->x = y;
  r->cur = 1 - r->cur;
}

/* WanResidualBlock: shortcut (x) + conv2 (SiLU (RMS (conv1 (SiLU (RMS (x)))))). */
static void
resnet_apply (vae_run *r, const vae_resnet *rn)
{
  const dp_tensor x = r->x;
  const int64_t T = x.shape[1], H = x.shape[2], W = x.shape[3];
  size_t mark = dp_arena_mark (r->scratch);
  dp_tensor y = next_out (r, rn->cout, T, H, W);
  dp_tensor hs = x;
  if (rn->has_shortcut) {
    hs = t4 (r->scratch, rn->cout, T, H, W);
    conv_apply (r, &rn->shortcut, &hs, &x);
  }
  dp_tensor t1 = t4 (r->scratch, rn->cout, T, H, W);
  size_t mark_a = dp_arena_mark (r->scratch);
  /* conv1's input lives in t1's memory when it fits: conv_apply copies it
   * into its [cache | x] buffer before the convolution writes t1.  This is
   * the decoder's peak (full resolution, 4 frames), so it saves 4 frames'
   * worth of memory there. */
  g_assert (rn->conv1.cache >= 0);
  int64_t a_shape[4] = { rn->cin, T, H, W };
  dp_tensor a = rn->cin <= rn->cout ? dp_tensor_view (t1.data, DP_F32, 4, a_shape)
                                    : t4 (r->scratch, rn->cin, T, H, W);
  norm_apply (r, &a, &x, &rn->norm1, DP_ACT_SILU);
  conv_apply (r, &rn->conv1, &t1, &a);
  dp_arena_reset (r->scratch, mark_a);
  norm_apply (r, &t1, &t1, &rn->norm2, DP_ACT_SILU);
  conv_apply (r, &rn->conv2, &y, &t1);
  if (!r->measure)
    r->be->ops->add (r->be, &y, &y, &hs);
  dp_arena_reset (r->scratch, mark);
  set_x (r, y);
}

/* WanAttentionBlock: per frame, single-head attention over the H*W pixels
 * with C-wide q, k, v (1x1 conv to_qkv, split q | k | v), scale 1/sqrt(C),
 * 1x1 proj, residual.  The attention op wants tokens in rows, hence the
 * transposes around it. */
static void
attn_apply (vae_run *r, const vae_attn *at)
{
  dp_backend *be = r->be;
  const dp_tensor x = r->x;
  const int64_t C = at->c, T = x.shape[1], H = x.shape[2], W = x.shape[3], L = H * W;
  const dp_dtype act = be->act_dtype;
  size_t mark = dp_arena_mark (r->scratch);
  dp_tensor y = next_out (r, C, T, H, W);

  dp_tensor xn = t4 (r->scratch, C, T, H, W);
  norm_apply (r, &xn, &x, &at->norm, DP_ACT_NONE);
  dp_tensor qkv = t4 (r->scratch, 3 * C, T, H, W);
  conv_apply (r, &at->to_qkv, &qkv, &xn);

  int64_t tok_shape[4] = { T, L, 1, C };
  dp_tensor qkv_tok[3], qkv_act[3];
  for (int j = 0; j < 3; j++) {
    qkv_tok[j] = dp_arena_tensor (r->scratch, DP_F32, 4, tok_shape);
    if (!r->measure) {
      dp_tensor part = dp_tensor_slice0 (&qkv, j * C, C); /* [C, T, H, W] */
      be->ops->transpose (be, &qkv_tok[j], &part);
    }
    qkv_act[j] = qkv_tok[j];
    if (act != DP_F32) {
      qkv_act[j] = dp_arena_tensor (r->scratch, act, 4, tok_shape);
      if (!r->measure)
        be->ops->copy (be, &qkv_act[j], &qkv_tok[j]);
    }
  }
  dp_tensor o = dp_arena_tensor (r->scratch, act, 4, tok_shape);
  dp_attn_params ap = { (float) (1.0 / sqrt ((double) C)), 0, NULL };
  if (!r->measure)
    be->ops->attention (be, &o, &qkv_act[0], &qkv_act[1], &qkv_act[2], &ap);
  dp_tensor o32 = o;
  if (act != DP_F32) {
    o32 = dp_arena_tensor (r->scratch, DP_F32, 4, tok_shape);
    if (!r->measure)
      be->ops->copy (be, &o32, &o);
  }
  int64_t rows_shape[2] = { T * L, C };
  dp_tensor o_rows = dp_tensor_view (o32.data, DP_F32, 2, rows_shape);
  dp_tensor ot = t4 (r->scratch, C, T, H, W);
  if (!r->measure)
    be->ops->transpose (be, &ot, &o_rows);
  conv_apply (r, &at->proj, &y, &ot);
  if (!r->measure)
    be->ops->add (be, &y, &y, &x);
  dp_arena_reset (r->scratch, mark);
  set_x (r, y);
}

/* WanResample, upsample2d / upsample3d.  The time conv turns T frames of C
 * channels into 2T: output channels [0, C) give frame 2t, [C, 2C) frame
 * 2t + 1.  It is skipped on the video's first latent frame, whose frame is
 * not cached either, so the second latent frame sees zero history (diffusers'
 * "Rep" marker). */
static void
up_apply (vae_run *r, const vae_up_block *ub)
{
  dp_backend *be = r->be;
  const dp_tensor x = r->x;
  const int64_t C = x.shape[0], T = x.shape[1], H = x.shape[2], W = x.shape[3], hw = H * W;
  size_t mark = dp_arena_mark (r->scratch);
  dp_tensor src = x;
  if (ub->mode == UP_3D && !r->first) {
    dp_tensor tc = t4 (r->scratch, 2 * C, T, H, W);
    conv_apply (r, &ub->time_conv, &tc, &x);
    src = t4 (r->scratch, C, 2 * T, H, W);
    if (!r->measure)
      for (int half = 0; half < 2; half++) {
        dp_tensor part = dp_tensor_slice0 (&tc, half * C, C); /* [C, T, H, W] */
        for (int64_t t = 0; t < T; t++)
          be->ops->copy_cols (be, &src, (2 * t + half) * hw, &part, t * hw, hw);
      }
  }
  const int64_t T2 = src.shape[1];
  dp_tensor up = t4 (r->scratch, C, T2, 2 * H, 2 * W);
  if (!r->measure)
    be->ops->upsample_nearest2x (be, &up, &src);
  dp_tensor y = next_out (r, ub->resample.cout, T2, 2 * H, 2 * W);
  conv_apply (r, &ub->resample, &y, &up);
  dp_arena_reset (r->scratch, mark);
  set_x (r, y);
}

/* DupUp3D (diffusers), the shortcut of a Wan2.2 residual up block:
 * y[o, t*ft + a, 2h + b, 2w + d] = x[((o*ft + a)*4 + 2b + d) / rep, t, h, w]
 * (d never changes the source channel: checked at load).  On the video's
 * first latent frame only the last of the ft frames is kept (first_chunk).
 * Per (a, b): gather the source channels (one strided copy for Wan2.2's
 * widths), upsample 2x nearest, copy the frames (or, when the source depends
 * on b, the rows of parity b) into y. */
static void
dup_apply (vae_run *r, const vae_up_block *ub, dp_tensor *y, const dp_tensor *x)
{
  dp_backend *be = r->be;
  const int64_t T = x->shape[1], H = x->shape[2], W = x->shape[3], hw = H * W, hw4 = 4 * hw, W2 = 2 * W;
  const int ft = ub->dup_ft, skip = r->first ? ft - 1 : 0;
  size_t mark = dp_arena_mark (r->scratch);
  dp_tensor g = t4 (r->scratch, ub->dup_cout, T, H, W);
  dp_tensor u = t4 (r->scratch, ub->dup_cout, T, 2 * H, 2 * W);
  if (!r->measure)
    for (int a = 0; a < ft; a++)
      for (int b = 0; b < 2; b++) {
        if (b == 1 && ub->dup_rows_same)
          break;
        /* Source channel src(o) = q o + c0 with cin = q cout (the Wan2.2
         * widths): one strided copy from x seen as [cout, q T h w];
         * otherwise channel by channel. */
        const int c0 = (a * 4 + 2 * b) / ub->dup_rep;
        const int q = ub->dup_cout > 1 ? ((ft + a) * 4 + 2 * b) / ub->dup_rep - c0 : 1;
        gboolean strided = q >= 1 && (int64_t) q * ub->dup_cout == ub->dup_cin;
        for (int o = 0; strided && o < ub->dup_cout; o++)
          strided = ((o * ft + a) * 4 + 2 * b) / ub->dup_rep == q * o + c0;
        if (strided) {
          int64_t vshape[2] = { ub->dup_cout, (int64_t) q * T * hw };
          dp_tensor xv = dp_tensor_view (x->data, DP_F32, 2, vshape);
          be->ops->copy_cols (be, &g, 0, &xv, c0 * T * hw, T * hw);
        } else
          for (int o = 0; o < ub->dup_cout; o++) {
            const int src = ((o * ft + a) * 4 + 2 * b) / ub->dup_rep;
            dp_tensor go = dp_tensor_slice0 (&g, o, 1), xs = dp_tensor_slice0 (x, src, 1);
            be->ops->copy_cols (be, &go, 0, &xs, 0, T * hw);
          }
        be->ops->upsample_nearest2x (be, &u, &g);
        for (int64_t t = 0; t < T; t++) {
          const int64_t to = t * ft + a - skip;
          if (to < 0)
            continue;
          if (ub->dup_rows_same)
            be->ops->copy_cols (be, y, to * hw4, &u, t * hw4, hw4);
          else
            for (int64_t row = b; row < 2 * H; row += 2)
              be->ops->copy_cols (be, y, to * hw4 + row * W2, &u, t * hw4 + row * W2, W2);
        }
      }
  dp_arena_reset (r->scratch, mark);
}

/* The decoder on one latent frame; leaves [out_channels, T, H, W] in r->x. */
static void
forward_chunk (vae_run *r, const dp_tensor *latents, int64_t index, const vae_tile *tile)
{
  dp_backend *be = r->be;
  const dp_wan_vae *vae = r->vae;
  const int64_t z = vae->cfg.z_dim, h = tile->th, w = tile->tw;
  const int64_t lh = latents->shape[latents->ndim - 2], lw = latents->shape[latents->ndim - 1];

  r->cur = 0;
  dp_arena_reset (r->io[0], 0);
  dp_arena_reset (r->io[1], 0);
  dp_arena_reset (r->scratch, 0);
  dp_tensor x = t4 (r->io[0], z, 1, h, w);
  if (!r->measure) {
    /* pipeline_wan.py: latents / (1 / latents_std) + latents_mean.  A tile
     * narrower than the latents is cut out row by row. */
    if (w == lw)
      be->ops->copy_cols (be, &x, 0, latents, (index * lh + tile->y0) * lw, h * w);
    else
      for (int64_t y = 0; y < h; y++)
        be->ops->copy_cols (be, &x, y * w, latents, (index * lh + tile->y0 + y) * lw + tile->x0, w);
    be->ops->mul (be, &x, &x, &tile->std);
    be->ops->add (be, &x, &x, &tile->mean);
  }
  r->x = x;

  dp_tensor y = next_out (r, z, 1, h, w);
  conv_apply (r, &vae->post_quant, &y, &r->x);
  set_x (r, y);
  y = next_out (r, vae->conv_in.cout, 1, h, w);
  conv_apply (r, &vae->conv_in, &y, &r->x);
  set_x (r, y);

  resnet_apply (r, &vae->mid_res[0]);
  attn_apply (r, &vae->mid_attn);
  resnet_apply (r, &vae->mid_res[1]);

  for (int i = 0; i < vae->cfg.n_levels; i++) {
    const vae_up_block *ub = &vae->up[i];
    /* Wan2.2: the shortcut of the block's input, kept in the scratch arena
     * below everything the resnets and the upsampler use. */
    size_t mark = dp_arena_mark (r->scratch);
    dp_tensor sc = { 0 };
    if (ub->dup) {
      const dp_tensor xin = r->x;
      const int64_t T = xin.shape[1] * ub->dup_ft - (r->first ? ub->dup_ft - 1 : 0);
      sc = t4 (r->scratch, ub->dup_cout, T, 2 * xin.shape[2], 2 * xin.shape[3]);
      dup_apply (r, ub, &sc, &xin);
    }
    for (int j = 0; j < ub->n_resnets; j++)
      resnet_apply (r, &ub->resnets[j]);
    if (ub->mode != UP_NONE)
      up_apply (r, ub);
    if (ub->dup && !r->measure)
      be->ops->add (be, &r->x, &r->x, &sc);
    dp_arena_reset (r->scratch, mark);
  }

  const dp_tensor xh = r->x;
  dp_tensor a = t4 (r->scratch, xh.shape[0], xh.shape[1], xh.shape[2], xh.shape[3]);
  norm_apply (r, &a, &xh, &vae->norm_out, DP_ACT_SILU);
  y = next_out (r, vae->conv_out.cout, xh.shape[1], xh.shape[2], xh.shape[3]);
  conv_apply (r, &vae->conv_out, &y, &a);
  dp_arena_reset (r->scratch, 0);
  set_x (r, y);
}

static vae_run
make_run (dp_wan_vae_decoder *dec, const vae_tile *tile, dp_arena *io0, dp_arena *io1, dp_arena *scratch,
          gboolean measure)
{
  vae_run r = { 0 };
  r.be = dec->vae->be;
  r.vae = dec->vae;
  r.caches = measure ? NULL : tile->caches;
  r.measure = measure;
  r.first = dec->position == 0;
  r.io[0] = io0;
  r.io[1] = io1;
  r.scratch = scratch;
  return r;
}

static gboolean
nomem (dp_wan_vae_decoder *dec, const char *what, size_t bytes, GError **error)
{
  GError *err = NULL;
  dp_backend_check (dec->vae->be, &err);
  g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "VAE decoder %dx%d: cannot allocate %zu bytes for %s%s%s",
               dec->W, dec->H, bytes, what, err ? ": " : "", err ? err->message : "");
  g_clear_error (&err);
  return FALSE;
}

/* ------------------------------------------------------------- tiling */

int
dp_wan_vae_tile_count (int latent_extent, int tile_latent, int stride_latent)
{
  if (latent_extent < 1)
    return 0;
  if (tile_latent < 1 || stride_latent < 1)
    return 1;
  return (latent_extent + stride_latent - 1) / stride_latent;
}

void
dp_wan_vae_tile_span (int index, int latent_extent, int tile_latent, int stride_latent, int *start, int *size)
{
  if (tile_latent < 1 || stride_latent < 1) {
    *start = 0;
    *size = latent_extent;
    return;
  }
  *start = index * stride_latent;
  *size = MIN (tile_latent, latent_extent - *start);
}

int
dp_wan_vae_blend_extent (int prev_size, int cur_size, int overlap)
{
  return MAX (0, MIN (MIN (prev_size, cur_size), overlap));
}

void
dp_wan_vae_blend_weights (int i, int extent, float *prev_weight, float *cur_weight)
{
  /* diffusers' blend_v / blend_h: a * (1 - i / extent) + b * (i / extent),
   * Python doubles rounded to the tensor's F32. */
  const double t = (double) i / (double) extent;
  *prev_weight = (float) (1.0 - t);
  *cur_weight = (float) t;
}

gboolean
dp_wan_vae_tiling_active (const dp_wan_vae_config *cfg, const dp_wan_vae_tiling *tiling, int latent_height,
                          int latent_width)
{
  if (!tiling || tiling->tile_height <= 0 || tiling->tile_width <= 0)
    return FALSE;
  /* diffusers' _decode: tiles only when the latents exceed one tile. */
  return latent_width > tiling->tile_width / cfg->spatial_scale ||
         latent_height > tiling->tile_height / cfg->spatial_scale;
}

gboolean
dp_wan_vae_tiling_check (const dp_wan_vae_config *cfg, const dp_wan_vae_tiling *tiling, GError **error)
{
  if (!tiling || (tiling->tile_height == 0 && tiling->tile_width == 0))
    return TRUE;
  const int s = cfg->spatial_scale;
  const struct {
    int tile, stride;
    const char *axis;
  } ax[2] = { { tiling->tile_height, tiling->stride_height, "height" },
              { tiling->tile_width, tiling->stride_width, "width" } };
  for (int i = 0; i < 2; i++) {
    if (ax[i].tile < s || ax[i].tile % s != 0 || ax[i].tile > 16384) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                   "VAE tiling: tile %s %d must be a positive multiple of %d (the VAE's scale), at most 16384",
                   ax[i].axis, ax[i].tile, s);
      return FALSE;
    }
    if (ax[i].stride < s || ax[i].stride % s != 0 || ax[i].stride > ax[i].tile) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                   "VAE tiling: stride %s %d must be a positive multiple of %d and at most the tile's %d",
                   ax[i].axis, ax[i].stride, s, ax[i].tile);
      return FALSE;
    }
  }
  return TRUE;
}

void
dp_wan_vae_tiling_default (int tile_pixels, int scale, dp_wan_vae_tiling *tiling)
{
  /* diffusers' defaults are 256 with a stride of 192: a quarter overlaps. */
  scale = MAX (scale, 1);
  int stride = tile_pixels - tile_pixels / 4;
  stride -= stride % scale;
  tiling->tile_height = tiling->tile_width = tile_pixels;
  tiling->stride_height = tiling->stride_width = MAX (stride, scale);
}

/* ------------------------------------------------------------ decoder */

static void
tile_mean_std_free (dp_backend *be, vae_tile *t)
{
  dp_backend_tensor_free (be, &t->mean);
  dp_backend_tensor_free (be, &t->std);
}

/* De-normalisation constants broadcast over one tile's latent frame. */
static gboolean
tile_mean_std (dp_wan_vae_decoder *dec, vae_tile *t, GError **error);

dp_wan_vae_decoder *
dp_wan_vae_decoder_new (dp_wan_vae *vae, int latent_height, int latent_width, GError **error)
{
  return dp_wan_vae_decoder_new_tiled (vae, latent_height, latent_width, NULL, error);
}

dp_wan_vae_decoder *
dp_wan_vae_decoder_new_tiled (dp_wan_vae *vae, int latent_height, int latent_width, const dp_wan_vae_tiling *tiling,
                              GError **error)
{
  g_return_val_if_fail (vae != NULL, NULL);
  const dp_wan_vae_config *c = &vae->cfg;
  dp_backend *be = vae->be;
  if (latent_height < 1 || latent_width < 1 || latent_height > 16384 / c->spatial_scale ||
      latent_width > 16384 / c->spatial_scale) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "VAE decoder: latent size %dx%d is out of range",
                 latent_width, latent_height);
    return NULL;
  }
  if (!dp_wan_vae_tiling_check (c, tiling, error))
    return NULL;
  dp_wan_vae_decoder *dec = g_new0 (dp_wan_vae_decoder, 1);
  dec->vae = vae;
  dec->h = latent_height;
  dec->w = latent_width;
  dec->H = latent_height * c->spatial_scale;
  dec->W = latent_width * c->spatial_scale;

  /* The tile grid, in latent units; strides and overlaps in decoder-output
   * pixels (diffusers blends before the unpatchify). */
  const int p = c->patch_size, s_dec = c->spatial_scale / p;
  int tile_lh = 0, tile_lw = 0, stride_lh = 0, stride_lw = 0;
  if (dp_wan_vae_tiling_active (c, tiling, latent_height, latent_width)) {
    tile_lh = tiling->tile_height / c->spatial_scale;
    tile_lw = tiling->tile_width / c->spatial_scale;
    stride_lh = tiling->stride_height / c->spatial_scale;
    stride_lw = tiling->stride_width / c->spatial_scale;
    dec->stride_h = tiling->stride_height / p;
    dec->stride_w = tiling->stride_width / p;
    dec->blend_h = tiling->tile_height / p - dec->stride_h;
    dec->blend_w = tiling->tile_width / p - dec->stride_w;
  }
  dec->tile_rows = dp_wan_vae_tile_count (dec->h, tile_lh, stride_lh);
  dec->tile_cols = dp_wan_vae_tile_count (dec->w, tile_lw, stride_lw);
  const int n_tiles = dec->tile_rows * dec->tile_cols;
  dec->tiles = g_new0 (vae_tile, n_tiles);
  for (int ty = 0; ty < dec->tile_rows; ty++)
    for (int tx = 0; tx < dec->tile_cols; tx++) {
      vae_tile *t = &dec->tiles[ty * dec->tile_cols + tx];
      dp_wan_vae_tile_span (ty, dec->h, tile_lh, stride_lh, &t->y0, &t->th);
      dp_wan_vae_tile_span (tx, dec->w, tile_lw, stride_lw, &t->x0, &t->tw);
    }

  /* Causal caches of every tile, one allocation. */
  const guint n_caches = vae->caches->len;
  for (int k = 0; k < n_tiles; k++)
    for (guint i = 0; i < n_caches; i++) {
      const vae_cache_info *ci = &g_array_index (vae->caches, vae_cache_info, i);
      dec->cache_floats += (int64_t) ci->channels * CACHE_T * ((int64_t) dec->tiles[k].th << ci->level) *
                           ((int64_t) dec->tiles[k].tw << ci->level);
    }
  size_t cache_bytes = (size_t) dec->cache_floats * sizeof (float);
  dec->cache_mem = be->ops->alloc (be, MAX (cache_bytes, 1));
  if (!dec->cache_mem) {
    nomem (dec, "the causal caches", cache_bytes, error);
    goto fail;
  }
  dec->cache_views = g_new0 (dp_tensor, MAX (n_caches, 1) * n_tiles);
  float *cp = dec->cache_mem;
  for (int k = 0; k < n_tiles; k++) {
    vae_tile *t = &dec->tiles[k];
    t->caches = dec->cache_views + (size_t) k * MAX (n_caches, 1);
    for (guint i = 0; i < n_caches; i++) {
      const vae_cache_info *ci = &g_array_index (vae->caches, vae_cache_info, i);
      int64_t shape[4] = { ci->channels, CACHE_T, (int64_t) t->th << ci->level, (int64_t) t->tw << ci->level };
      t->caches[i] = dp_tensor_view (cp, DP_F32, 4, shape);
      cp += dp_tensor_nelem (&t->caches[i]);
    }
    if (!tile_mean_std (dec, t, error))
      goto fail;
  }

  /* Arena sizes: measure a first chunk (T = 1 throughout) and a later one
   * (T grows at each temporal upsampler), on the largest tile (the first:
   * only the last row and column can be cut short). */
  dp_arena m_io0, m_io1, m_s;
  dp_arena_init_measure (&m_io0);
  dp_arena_init_measure (&m_io1);
  dp_arena_init_measure (&m_s);
  int64_t lshape[4] = { c->z_dim, 1, dec->h, dec->w };
  dp_tensor fake = dp_tensor_view (NULL, DP_F32, 4, lshape);
  for (int pass = 0; pass < 2; pass++) {
    dec->position = pass;
    vae_run r = make_run (dec, &dec->tiles[0], &m_io0, &m_io1, &m_s, TRUE);
    forward_chunk (&r, &fake, 0, &dec->tiles[0]);
  }
  dec->position = 0;
  if (!dp_arena_init (&dec->io[0], be, dp_arena_peak (&m_io0), NULL) ||
      !dp_arena_init (&dec->io[1], be, dp_arena_peak (&m_io1), NULL) ||
      !dp_arena_init (&dec->scratch, be, dp_arena_peak (&m_s), NULL)) {
    nomem (dec, "activations", dp_arena_peak (&m_io0) + dp_arena_peak (&m_io1) + dp_arena_peak (&m_s), error);
    goto fail;
  }

  size_t host_bytes = (size_t) c->video_channels * c->temporal_scale * dec->H * dec->W * sizeof (float);
  dec->host = dp_backend_host_alloc (be, host_bytes, &dec->host_pinned);
  if (c->patch_size > 1)
    dec->host_raw = dp_backend_host_alloc (be, host_bytes, &dec->host_raw_pinned);
  if (!dec->host || (c->patch_size > 1 && !dec->host_raw)) {
    g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "VAE decoder %dx%d: cannot allocate %zu bytes of host memory",
                 dec->W, dec->H, host_bytes);
    goto fail;
  }
  if (n_tiles > 1)
    for (int k = 0; k < n_tiles; k++) {
      vae_tile *t = &dec->tiles[k];
      size_t tile_bytes = (size_t) c->out_channels * c->temporal_scale * (t->th * s_dec) * (t->tw * s_dec) *
                          sizeof (float);
      t->host = dp_backend_host_alloc (be, tile_bytes, &t->host_pinned);
      if (!t->host) {
        g_set_error (error, DP_ERROR, DP_ERROR_NOMEM,
                     "VAE decoder %dx%d: cannot allocate %zu bytes of host memory for tile %d", dec->W, dec->H,
                     tile_bytes, k);
        goto fail;
      }
    }
  dp_wan_vae_decoder_reset (dec);
  if (!dp_backend_check (be, error))
    goto fail;
  return dec;

fail:
  dp_wan_vae_decoder_free (dec);
  return NULL;
}

static gboolean
tile_mean_std (dp_wan_vae_decoder *dec, vae_tile *t, GError **error)
{
  const dp_wan_vae_config *c = &dec->vae->cfg;
  dp_backend *be = dec->vae->be;
  int64_t zshape[4] = { c->z_dim, 1, t->th, t->tw };
  const int64_t hw = (int64_t) t->th * t->tw;
  dp_tensor hm = dp_tensor_new_host (DP_F32, 4, zshape), hs = dp_tensor_new_host (DP_F32, 4, zshape);
  if (!hm.data || !hs.data) {
    dp_tensor_free (&hm);
    dp_tensor_free (&hs);
    g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "VAE decoder: cannot allocate the latent statistics");
    return FALSE;
  }
  for (int k = 0; k < c->z_dim; k++)
    for (int64_t i = 0; i < hw; i++) {
      ((float *) hm.data)[k * hw + i] = c->latents_mean[k];
      ((float *) hs.data)[k * hw + i] = c->latents_std[k];
    }
  t->mean = dp_backend_tensor_new (be, DP_F32, 4, zshape);
  t->std = dp_backend_tensor_new (be, DP_F32, 4, zshape);
  if (t->mean.data && t->std.data) {
    be->ops->to_device (be, &t->mean, &hm);
    be->ops->to_device (be, &t->std, &hs);
  }
  dp_tensor_free (&hm);
  dp_tensor_free (&hs);
  if (!t->mean.data || !t->std.data)
    return nomem (dec, "the latent statistics", 2 * hw * c->z_dim * sizeof (float), error);
  return TRUE;
}

void
dp_wan_vae_decoder_free (dp_wan_vae_decoder *dec)
{
  if (!dec)
    return;
  dp_backend *be = dec->vae->be;
  if (dec->cache_mem)
    be->ops->free (be, dec->cache_mem);
  g_free (dec->cache_views);
  for (int k = 0; dec->tiles && k < dec->tile_rows * dec->tile_cols; k++) {
    tile_mean_std_free (be, &dec->tiles[k]);
    dp_backend_host_free (be, dec->tiles[k].host, dec->tiles[k].host_pinned);
  }
  g_free (dec->tiles);
  dp_arena_release (&dec->io[0]);
  dp_arena_release (&dec->io[1]);
  dp_arena_release (&dec->scratch);
  dp_backend_host_free (be, dec->host, dec->host_pinned);
  dp_backend_host_free (be, dec->host_raw, dec->host_raw_pinned);
  g_free (dec);
}

void
dp_wan_vae_decoder_reset (dp_wan_vae_decoder *dec)
{
  dp_backend *be = dec->vae->be;
  int64_t n = dec->cache_floats;
  if (n > 0) {
    dp_tensor all = dp_tensor_view (dec->cache_mem, DP_F32, 1, &n);
    be->ops->fill (be, &all, 0.0f);
  }
  dec->position = 0;
}

void
dp_wan_vae_decoder_get_size (const dp_wan_vae_decoder *dec, int *width, int *height)
{
  if (width)
    *width = dec->W;
  if (height)
    *height = dec->H;
}

int
dp_wan_vae_decoder_max_frames (const dp_wan_vae_decoder *dec)
{
  return dec->vae->cfg.temporal_scale;
}

int64_t
dp_wan_vae_decoder_position (const dp_wan_vae_decoder *dec)
{
  return dec->position;
}

size_t
dp_wan_vae_decoder_memory_bytes (const dp_wan_vae_decoder *dec)
{
  size_t bytes = (size_t) dec->cache_floats * sizeof (float) + dec->io[0].size + dec->io[1].size + dec->scratch.size;
  for (int k = 0; k < dec->tile_rows * dec->tile_cols; k++)
    bytes += dp_tensor_nbytes (&dec->tiles[k].mean) + dp_tensor_nbytes (&dec->tiles[k].std);
  return bytes;
}

size_t
dp_wan_vae_decoder_cache_bytes (const dp_wan_vae_decoder *dec)
{
  return (size_t) dec->cache_floats * sizeof (float);
}

void
dp_wan_vae_decoder_get_tiles (const dp_wan_vae_decoder *dec, int *rows, int *cols)
{
  if (rows)
    *rows = dec->tile_rows;
  if (cols)
    *cols = dec->tile_cols;
}

/* diffusers' tiled_decode on one chunk of n frames: in raster order each
 * tile's first rows are blended with the (already blended) tile above, then
 * its first columns with the tile on its left, in place; then the first
 * stride rows and columns of each tile make up the frame.  raw:
 * [out_channels, n, H/p, W/p]. */
static void
blend_tiles (dp_wan_vae_decoder *dec, int n, int channels, int s_dec, float *raw)
{
  const int64_t Hd = dec->H / (dec->vae->cfg.patch_size), Wd = dec->W / (dec->vae->cfg.patch_size);
  const int64_t planes = (int64_t) channels * n;
  for (int ty = 0; ty < dec->tile_rows; ty++)
    for (int tx = 0; tx < dec->tile_cols; tx++) {
      vae_tile *t = &dec->tiles[ty * dec->tile_cols + tx];
      const int64_t th = (int64_t) t->th * s_dec, tw = (int64_t) t->tw * s_dec;
      if (ty > 0) {
        const vae_tile *a = &dec->tiles[(ty - 1) * dec->tile_cols + tx];
        const int64_t ah = (int64_t) a->th * s_dec;
        const int e = dp_wan_vae_blend_extent ((int) ah, (int) th, dec->blend_h);
        for (int y = 0; y < e; y++) {
          float wa, wb;
          dp_wan_vae_blend_weights (y, e, &wa, &wb);
          for (int64_t pl = 0; pl < planes; pl++) {
            const float *src = a->host + (pl * ah + ah - e + y) * tw;
            float *dst = t->host + (pl * th + y) * tw;
            for (int64_t x = 0; x < tw; x++)
              dst[x] = src[x] * wa + dst[x] * wb;
          }
        }
      }
      if (tx > 0) {
        const vae_tile *a = &dec->tiles[ty * dec->tile_cols + tx - 1];
        const int64_t aw = (int64_t) a->tw * s_dec;
        const int e = dp_wan_vae_blend_extent ((int) aw, (int) tw, dec->blend_w);
        for (int64_t pl = 0; pl < planes; pl++)
          for (int64_t y = 0; y < th; y++) {
            const float *src = a->host + (pl * th + y) * aw + aw - e;
            float *dst = t->host + (pl * th + y) * tw;
            for (int x = 0; x < e; x++) {
              float wa, wb;
              dp_wan_vae_blend_weights (x, e, &wa, &wb);
              dst[x] = src[x] * wa + dst[x] * wb;
            }
          }
      }
      /* Its kept part: the first stride rows / columns (fewer at the edge). */
      const int64_t oy = (int64_t) ty * dec->stride_h, ox = (int64_t) tx * dec->stride_w;
      const int64_t kh = MIN (MIN (th, dec->stride_h), Hd - oy), kw = MIN (MIN (tw, dec->stride_w), Wd - ox);
      for (int64_t pl = 0; pl < planes; pl++)
        for (int64_t y = 0; y < kh; y++)
          memcpy (raw + (pl * Hd + oy + y) * Wd + ox, t->host + (pl * th + y) * tw, (size_t) kw * sizeof (float));
    }
}

/* Decodes one latent frame into dec->host ([out_channels, n, H, W], clamped). */
static gboolean
push_frame (dp_wan_vae_decoder *dec, const dp_tensor *latents, int64_t index, int *n_frames,
            GError **error)
{
  dp_wan_vae *vae = dec->vae;
  dp_backend *be = vae->be;
  const dp_wan_vae_config *c = &vae->cfg;
  char buf[64];
  if (!latents || (latents->ndim != 3 && latents->ndim != 4) || latents->shape[0] != c->z_dim ||
      latents->shape[latents->ndim - 2] != dec->h || latents->shape[latents->ndim - 1] != dec->w) {
    g_set_error (error, DP_ERROR, DP_ERROR_SHAPE, "VAE decoder: latents have shape %s, expected [%d, F, %d, %d]",
                 latents ? dp_shape_str (latents, buf, sizeof buf) : "(null)", c->z_dim, dec->h, dec->w);
    return FALSE;
  }
  const int64_t frames = latents->ndim == 4 ? latents->shape[1] : 1;
  if (index < 0 || index >= frames) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "VAE decoder: latent frame %" G_GINT64_FORMAT
                 " out of range (the latents have %" G_GINT64_FORMAT ")", index, frames);
    return FALSE;
  }
  if (latents->dtype != DP_F32 || !latents->data) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "VAE decoder: latents must be F32 backend data, got %s",
                 dp_dtype_name (latents->dtype));
    return FALSE;
  }

  const int p = c->patch_size, s_dec = c->spatial_scale / p;
  const int n_tiles = dec->tile_rows * dec->tile_cols;
  float *raw = p > 1 ? dec->host_raw : dec->host;
  int64_t n = 0;
  /* Every tile's decode and copy are queued before one sync: the copies
   * (asynchronous into page-locked memory) run in stream order behind each
   * tile's last kernel, and the next tile's kernels reuse the arenas only
   * after that copy.  Then the results are checked on the host. */
  for (int k = 0; k < n_tiles; k++) {
    vae_tile *t = &dec->tiles[k];
    vae_run r = make_run (dec, t, &dec->io[0], &dec->io[1], &dec->scratch, FALSE);
    forward_chunk (&r, latents, index, t);
    if (dec->io[0].overflow || dec->io[1].overflow || dec->scratch.overflow) {
      g_set_error (error, DP_ERROR, DP_ERROR_FAILED, "VAE decoder: activation arena overflow (a sizing bug)");
      return FALSE;
    }
    const dp_tensor out = r.x;
    t->out_count = dp_tensor_nelem (&out);
    n = out.shape[1];
    /* One tile (untiled) goes straight to the frame buffer. */
    dp_tensor host = dp_tensor_view (n_tiles == 1 ? raw : t->host, DP_F32, 4, out.shape);
    be->ops->to_host (be, &host, &out);
  }
  if (!be->ops->sync (be, error))
    return FALSE;
  for (int k = 0; k < n_tiles; k++) {
    const float *dst = n_tiles == 1 ? raw : dec->tiles[k].host;
    const int64_t count = dec->tiles[k].out_count;
    for (int64_t i = 0; i < count; i++)
      if (!isfinite (dst[i])) {
        char where[32] = "";
        if (n_tiles > 1)
          g_snprintf (where, sizeof where, ", tile %d of %d", k + 1, n_tiles);
        g_set_error (error, DP_ERROR, DP_ERROR_NUMERIC,
                     "VAE decoder: the VAE produced %s decoding latent frame %" G_GINT64_FORMAT
                     " (value %" G_GINT64_FORMAT " of %" G_GINT64_FORMAT "%s): its weights give non-finite numbers",
                     dp_nonfinite_name (dst[i]), index, i, count, where);
        return FALSE;
      }
  }
  if (n_tiles > 1)
    blend_tiles (dec, (int) n, c->out_channels, s_dec, raw);
  const int64_t count = (int64_t) c->video_channels * n * dec->H * dec->W;
  if (p > 1) {
    /* diffusers' unpatchify: video[c, f, h*p + q2, w*p + q1] = out[c*p*p + q1*p + q2, f, h, w]. */
    const int64_t h = dec->H / p, w = dec->W / p;
    for (int ch = 0; ch < c->video_channels; ch++)
      for (int q1 = 0; q1 < p; q1++)
        for (int q2 = 0; q2 < p; q2++) {
          const float *src = raw + (int64_t) (ch * p * p + q1 * p + q2) * n * h * w;
          float *dst = dec->host + (int64_t) ch * n * h * w * p * p;
          for (int64_t f = 0; f < n; f++)
            for (int64_t y = 0; y < h; y++)
              for (int64_t x = 0; x < w; x++)
                dst[(f * h * p + y * p + q2) * w * p + x * p + q1] = src[(f * h + y) * w + x];
        }
  }
  /* vae.decode's torch.clamp (out, -1, 1) (after the unpatchify there). */
  for (int64_t i = 0; i < count; i++)
    dec->host[i] = CLAMP (dec->host[i], -1.0f, 1.0f);
  dec->position++;
  *n_frames = (int) n;
  return TRUE;
}

/* dec->host's n frames to frame `first` of the caller's buffers; video has
 * `total` frames per channel. */
static void
write_outputs (const dp_wan_vae_decoder *dec, int n, uint8_t *rgb, float *video, int64_t total,
               int64_t first)
{
  const int64_t hw = (int64_t) dec->H * dec->W;
  const int C = dec->vae->cfg.video_channels;
  if (video)
    for (int c = 0; c < C; c++)
      memcpy (video + (c * total + first) * hw, dec->host + (int64_t) c * n * hw, (size_t) (n * hw) * sizeof (float));
  if (rgb) {
    uint8_t *dst = rgb + first * hw * 3;
    for (int64_t t = 0; t < n; t++)
      for (int64_t i = 0; i < hw; i++)
        for (int c = 0; c < 3; c++) {
          /* VaeImageProcessor.denormalize, then numpy_to_pil's
           * (v * 255).round() (half to even, as rintf). */
          float v = dec->host[(c * n + t) * hw + i] * 0.5f + 0.5f;
          v = CLAMP (v, 0.0f, 1.0f);
          dst[(t * hw + i) * 3 + c] = (uint8_t) rintf (v * 255.0f);
        }
  }
}

static gboolean
check_rgb (const dp_wan_vae *vae, const uint8_t *rgb, GError **error)
{
  if (rgb && vae->cfg.video_channels != 3) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "VAE decoder: RGB output needs 3 output channels, the model has %d",
                 vae->cfg.video_channels);
    return FALSE;
  }
  return TRUE;
}

gboolean
dp_wan_vae_decoder_push (dp_wan_vae_decoder *dec, const dp_tensor *latents, int64_t index, uint8_t *rgb,
                         float *video, int *n_frames, GError **error)
{
  g_return_val_if_fail (dec != NULL, FALSE);
  int n = 0;
  if (!check_rgb (dec->vae, rgb, error) || !push_frame (dec, latents, index, &n, error))
    return FALSE;
  write_outputs (dec, n, rgb, video, n, 0);
  if (n_frames)
    *n_frames = n;
  return TRUE;
}

gboolean
dp_wan_vae_decode (dp_wan_vae *vae, const dp_tensor *latents, uint8_t *rgb, float *video, GError **error)
{
  g_return_val_if_fail (vae != NULL && latents != NULL, FALSE);
  char buf[64];
  if ((latents->ndim != 3 && latents->ndim != 4) || latents->shape[0] != vae->cfg.z_dim) {
    g_set_error (error, DP_ERROR, DP_ERROR_SHAPE, "VAE decode: latents have shape %s, expected [%d, F, h, w]",
                 dp_shape_str (latents, buf, sizeof buf), vae->cfg.z_dim);
    return FALSE;
  }
  if (!check_rgb (vae, rgb, error))
    return FALSE;
  const int64_t frames = latents->ndim == 4 ? latents->shape[1] : 1;
  const int64_t total = dp_wan_vae_num_frames (vae, frames);
  dp_wan_vae_decoder *dec = dp_wan_vae_decoder_new (vae, (int) latents->shape[latents->ndim - 2],
                                                    (int) latents->shape[latents->ndim - 1], error);
  if (!dec)
    return FALSE;
  gboolean ok = TRUE;
  int64_t done = 0;
  for (int64_t i = 0; ok && i < frames; i++) {
    int n = 0;
    ok = push_frame (dec, latents, i, &n, error);
    if (ok) {
      write_outputs (dec, n, rgb, video, total, done);
      done += n;
    }
  }
  g_assert (!ok || done == total);
  dp_wan_vae_decoder_free (dec);
  return ok;
}
