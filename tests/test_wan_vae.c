/* The Wan2.1 VAE decoder against diffusers (tests/data/vae, made by
 * tools/make_vae_golden.py: a base_dim 4 AutoencoderKLWan with Wan2.1's
 * structure, a [16, 4, 4, 6] latent -> 13 frames of 32x48).
 *
 * - Streaming decode (one latent frame per push) matches diffusers'
 *   vae.decode: float video rel. L2 <= 1e-4 (fp32; measured ~1e-7), uint8
 *   frames within 1 level for >= 99.9% of values (rounding at .5 boundaries
 *   may flip; measured: all exact or within 1).
 * - Whole-video decode, a reset decoder, and per-frame 3-D latent tensors
 *   give bitwise the same frames as the streaming decode (same code path).
 * - The same two checks on the Wan2.2 VAE (tests/data/vae22, made by
 *   tools/make_vae22_golden.py: a decoder base_dim 4 residual
 *   AutoencoderKLWan, z_dim 48, patch_size 2, a [48, 3, 2, 3] latent -> 9
 *   frames of 32x48) with the same tolerances; measured rel L2 8.6e-7, max
 *   abs 1.8e-6, uint8 99.998% exact, all within 1.
 * - Bad model directories and bad calls fail with the right error code and a
 *   message naming the key / tensor.
 * - Tiled decode: the grid / blend arithmetic; tiles covering the frame give
 *   bitwise the untiled frames; against diffusers' enable_tiling on the tiny
 *   VAE (tests/data/vae/tiled.safetensors, tools/make_vae_tiled_golden.py:
 *   grids 2x3 and 4x3) rel L2 <= 1e-4 (measured 1.2-1.3e-6); real tiles
 *   against the untiled decode within TILED_REL_L2_BOUND. */
#include <math.h>
#include <string.h>

#include <json-glib/json-glib.h>

#include "dualparal/backend.h"
#include "dualparal/safetensors.h"
#include "dualparal/wan_vae.h"

#include "test_util.h"

/* Tiled (128 / 96) against untiled on a 192 x 256 random latent
 * (test_tiled_vs_untiled): measured rel L2 0.176, max abs 0.91 with this
 * random-weight tiny VAE, whose outputs have no spatial smoothness to hide
 * a seam; a real VAE's would be far smaller, not measured here. */
#define TILED_REL_L2_BOUND 0.25

/* ------------------------------------------------------------ helpers */

/* The golden set under tests/data the current test reads: "vae" (Wan2.1) or
 * "vae22" (Wan2.2). */
static const char *data_set = "vae";

static char *
vae_path (const char *rel)
{
  return dp_test_data_path (data_set, rel, NULL);
}

typedef struct {
  dp_tensor latent; /* host [16, T, h, w] */
  dp_tensor video;  /* host [3, F, H, W] */
  dp_tensor frames; /* host [F, H, W, 3], values 0..255 */
} golden;

static void
golden_load (golden *g)
{
  GError *err = NULL;
  char *path = vae_path ("io.safetensors");
  dp_safetensors *st = dp_safetensors_open (path, &err);
  g_assert_no_error (err);
  g_assert_true (dp_safetensors_load (st, "latent", DP_F32, -1, NULL, &g->latent, &err));
  g_assert_true (dp_safetensors_load (st, "video", DP_F32, -1, NULL, &g->video, &err));
  g_assert_true (dp_safetensors_load (st, "frames", DP_F32, -1, NULL, &g->frames, &err));
  g_assert_no_error (err);
  dp_safetensors_close (st);
  g_free (path);
  g_assert_cmpint (g->latent.ndim, ==, 4);
  g_assert_cmpint (g->video.ndim, ==, 4);
  g_assert_cmpint (g->frames.ndim, ==, 4);
}

static void
golden_free (golden *g)
{
  dp_tensor_free (&g->latent);
  dp_tensor_free (&g->video);
  dp_tensor_free (&g->frames);
}

/* A host tensor copied into backend memory. */
static dp_tensor
upload (dp_backend *be, const dp_tensor *host)
{
  dp_tensor t = dp_backend_tensor_new (be, DP_F32, host->ndim, host->shape);
  g_assert_nonnull (t.data);
  be->ops->to_device (be, &t, host);
  GError *err = NULL;
  g_assert_true (be->ops->sync (be, &err));
  return t;
}

static dp_wan_vae *
load_golden_vae (dp_backend *be)
{
  GError *err = NULL;
  char *dir = vae_path ("vae");
  dp_wan_vae *vae = dp_wan_vae_load (be, dir, &err);
  g_assert_no_error (err);
  g_assert_nonnull (vae);
  g_free (dir);
  return vae;
}

typedef struct {
  int64_t frames;
  int H, W;
  float *video;   /* [3, frames, H, W] */
  uint8_t *rgb;   /* [frames, H, W, 3] */
} decoded;

static void
decoded_free (decoded *d)
{
  g_free (d->video);
  g_free (d->rgb);
}

/* Streams every latent frame through dec (3-D per-frame tensors when
 * per_frame), assembling the video.  Checks the frames-per-push contract. */
static void
stream_decode (dp_backend *be, dp_wan_vae *vae, dp_wan_vae_decoder *dec, const dp_tensor *latent_host,
               gboolean per_frame, decoded *out)
{
  GError *err = NULL;
  const int64_t T = latent_host->shape[1], h = latent_host->shape[2], w = latent_host->shape[3];
  const int64_t z = latent_host->shape[0];
  dp_wan_vae_decoder_get_size (dec, &out->W, &out->H);
  out->frames = dp_wan_vae_num_frames (vae, T);
  const int64_t hw = (int64_t) out->H * out->W;
  const int maxf = dp_wan_vae_decoder_max_frames (dec);
  out->video = g_new0 (float, 3 * out->frames * hw);
  out->rgb = g_new0 (uint8_t, out->frames * hw * 3);
  float *chunk = g_new (float, 3 * maxf * hw);
  uint8_t *chunk_rgb = g_new (uint8_t, maxf * hw * 3);

  dp_tensor all = upload (be, latent_host);
  int64_t done = 0;
  for (int64_t i = 0; i < T; i++) {
    int n = -1;
    g_assert_cmpint (dp_wan_vae_decoder_position (dec), ==, i);
    if (per_frame) {
      /* Frame i alone, as a [z, h, w] host tensor uploaded on its own. */
      int64_t shape[3] = { z, h, w };
      dp_tensor f = dp_tensor_new_host (DP_F32, 3, shape);
      for (int64_t c = 0; c < z; c++)
        memcpy ((float *) f.data + c * h * w, (float *) latent_host->data + (c * T + i) * h * w,
                h * w * sizeof (float));
      dp_tensor fb = upload (be, &f);
      g_assert_true (dp_wan_vae_decoder_push (dec, &fb, 0, chunk_rgb, chunk, &n, &err));
      dp_backend_tensor_free (be, &fb);
      dp_tensor_free (&f);
    } else {
      g_assert_true (dp_wan_vae_decoder_push (dec, &all, i, chunk_rgb, chunk, &n, &err));
    }
    g_assert_no_error (err);
    g_assert_cmpint (n, ==, i == 0 ? 1 : maxf);
    for (int c = 0; c < 3; c++)
      memcpy (out->video + (c * out->frames + done) * hw, chunk + c * n * hw, n * hw * sizeof (float));
    memcpy (out->rgb + done * hw * 3, chunk_rgb, n * hw * 3);
    done += n;
  }
  g_assert_cmpint (done, ==, out->frames);
  dp_backend_tensor_free (be, &all);
  g_free (chunk);
  g_free (chunk_rgb);
}

/* ------------------------------------------------------------ golden */

static void
test_golden_stream (gconstpointer set)
{
  data_set = set;
  const gboolean v22 = g_str_equal (data_set, "vae22");
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  g_assert_no_error (err);
  golden g;
  golden_load (&g);
  dp_wan_vae *vae = load_golden_vae (be);
  const dp_wan_vae_config *cfg = dp_wan_vae_get_config (vae);
  g_assert_cmpint (cfg->z_dim, ==, v22 ? 48 : 16);
  g_assert_cmpint (cfg->spatial_scale, ==, v22 ? 16 : 8);
  g_assert_cmpint (cfg->patch_size, ==, v22 ? 2 : 1);
  g_assert_cmpint (cfg->is_residual, ==, v22);
  g_assert_cmpint (cfg->out_channels, ==, v22 ? 12 : 3);
  g_assert_cmpint (cfg->video_channels, ==, 3);
  g_assert_cmpint (cfg->temporal_scale, ==, 4);
  g_assert_false (cfg->temporal_upsample[2]);
  g_assert_true (cfg->temporal_upsample[0] && cfg->temporal_upsample[1]);

  gint64 t0 = g_get_monotonic_time ();
  dp_wan_vae_decoder *dec = dp_wan_vae_decoder_new (vae, (int) g.latent.shape[2], (int) g.latent.shape[3], &err);
  g_assert_no_error (err);
  gint64 t1 = g_get_monotonic_time ();
  decoded d;
  stream_decode (be, vae, dec, &g.latent, FALSE, &d);
  gint64 t2 = g_get_monotonic_time ();
  g_assert_cmpint (d.frames, ==, g.video.shape[1]);
  g_assert_cmpint (d.H, ==, g.video.shape[2]);
  g_assert_cmpint (d.W, ==, g.video.shape[3]);

  /* Float video: relative L2 error, fp32 on both sides. */
  const int64_t n = dp_tensor_nelem (&g.video);
  const float *ref = g.video.data;
  double num = 0, den = 0, max_abs = 0;
  for (int64_t i = 0; i < n; i++) {
    double e = (double) d.video[i] - ref[i];
    num += e * e;
    den += (double) ref[i] * ref[i];
    max_abs = MAX (max_abs, fabs (e));
  }
  double rel = sqrt (num / den);
  /* uint8 frames: the pipeline's rounding on both sides; values near a .5
   * boundary may round differently by one level. */
  const float *fr = g.frames.data;
  int64_t exact = 0, within1 = 0, nf = dp_tensor_nelem (&g.frames);
  int max_diff = 0;
  for (int64_t i = 0; i < nf; i++) {
    int diff = abs ((int) d.rgb[i] - (int) fr[i]);
    exact += diff == 0;
    within1 += diff <= 1;
    max_diff = MAX (max_diff, diff);
  }
  g_test_message ("VAE golden (%s): %" G_GINT64_FORMAT " frames %dx%d, video rel L2 %.3g, max abs %.3g; "
                  "uint8 exact %.4f%%, within 1 %.4f%%, max diff %d; decoder setup %.1f ms, decode %.1f ms, "
                  "decoder memory %zu bytes",
                  data_set, d.frames, d.W, d.H, rel, max_abs, 100.0 * exact / nf, 100.0 * within1 / nf, max_diff,
                  (t1 - t0) / 1e3, (t2 - t1) / 1e3, dp_wan_vae_decoder_memory_bytes (dec));
  g_assert_cmpfloat (rel, <=, 1e-4);
  g_assert_cmpfloat ((double) within1 / nf, >=, 0.999);
  g_assert_cmpint (max_diff, <=, 1);

  decoded_free (&d);
  dp_wan_vae_decoder_free (dec);
  dp_wan_vae_free (vae);
  golden_free (&g);
  dp_backend_free (be);
}

/* Whole-video decode, a reset decoder and per-frame tensors: bitwise equal
 * to the streaming decode. */
static void
test_whole_equals_stream (gconstpointer set)
{
  data_set = set;
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  g_assert_no_error (err);
  golden g;
  golden_load (&g);
  dp_wan_vae *vae = load_golden_vae (be);
  dp_wan_vae_decoder *dec = dp_wan_vae_decoder_new (vae, (int) g.latent.shape[2], (int) g.latent.shape[3], &err);
  g_assert_no_error (err);

  /* s2 runs on the reset decoder, from per-frame [z, h, w] tensors. */
  decoded s1, s2;
  stream_decode (be, vae, dec, &g.latent, FALSE, &s1);
  dp_wan_vae_decoder_reset (dec);
  stream_decode (be, vae, dec, &g.latent, TRUE, &s2);
  const int64_t hw = (int64_t) s1.H * s1.W;
  const size_t vbytes = 3 * s1.frames * hw * sizeof (float), rbytes = s1.frames * hw * 3;
  g_assert_true (memcmp (s1.video, s2.video, vbytes) == 0);
  g_assert_true (memcmp (s1.rgb, s2.rgb, rbytes) == 0);

  dp_tensor lat = upload (be, &g.latent);
  float *video = g_new (float, 3 * s1.frames * hw);
  uint8_t *rgb = g_new (uint8_t, s1.frames * hw * 3);
  g_assert_true (dp_wan_vae_decode (vae, &lat, rgb, video, &err));
  g_assert_no_error (err);
  g_assert_true (memcmp (s1.video, video, vbytes) == 0);
  g_assert_true (memcmp (s1.rgb, rgb, rbytes) == 0);
  /* Either output alone. */
  memset (rgb, 0, rbytes);
  g_assert_true (dp_wan_vae_decode (vae, &lat, rgb, NULL, &err));
  g_assert_true (memcmp (s1.rgb, rgb, rbytes) == 0);

  /* The causal caches matter: a latent frame decoded at the start of a
   * video differs from the same frame decoded after others. */
  int64_t shape3[3] = { g.latent.shape[0], g.latent.shape[2], g.latent.shape[3] };
  dp_tensor f = dp_tensor_new_host (DP_F32, 3, shape3);
  const int64_t T = g.latent.shape[1], lhw = shape3[1] * shape3[2];
  for (int64_t c = 0; c < shape3[0]; c++)
    memcpy ((float *) f.data + c * lhw, (float *) g.latent.data + (c * T + 1) * lhw, lhw * sizeof (float));
  dp_tensor fb = upload (be, &f);
  int nfr = 0;
  dp_wan_vae_decoder_reset (dec);
  g_assert_true (dp_wan_vae_decoder_push (dec, &fb, 0, NULL, video, &nfr, &err));
  g_assert_cmpint (nfr, ==, 1);
  gboolean differs = FALSE;
  for (int64_t i = 0; i < hw && !differs; i++)
    differs = video[i] != s1.video[i + hw]; /* channel 0, frame 1 of the streamed video */
  g_assert_true (differs);

  dp_backend_tensor_free (be, &fb);
  dp_tensor_free (&f);
  g_free (video);
  g_free (rgb);
  dp_backend_tensor_free (be, &lat);
  decoded_free (&s1);
  decoded_free (&s2);
  dp_wan_vae_decoder_free (dec);
  dp_wan_vae_free (vae);
  golden_free (&g);
  dp_backend_free (be);
}

/* ------------------------------------------------------------ errors */

typedef void (*config_edit) (JsonObject *root);

/* A model directory in a temp dir: the golden config passed through edit
 * (if any), and the golden weights minus the tensor `drop` (if any). */
static char *
make_model_dir (config_edit edit, const char *drop)
{
  GError *err = NULL;
  char *dir = dp_test_make_tmp_dir ("dp-vae-XXXXXX");

  char *src_cfg = vae_path ("vae/config.json");
  JsonParser *parser = dp_test_parse_json (src_cfg);
  JsonObject *root = json_node_get_object (json_parser_get_root (parser));
  if (edit)
    edit (root);
  char *cfg_path = g_build_filename (dir, "config.json", NULL);
  dp_test_write_json (cfg_path, json_parser_get_root (parser));
  g_object_unref (parser);

  /* The weights, rewritten without `drop`. */
  char *src_st = vae_path ("vae/diffusion_pytorch_model.safetensors");
  dp_safetensors *st = dp_safetensors_open (src_st, &err);
  g_assert_no_error (err);
  char *st_path = g_build_filename (dir, "diffusion_pytorch_model.safetensors", NULL);
  dp_test_write_safetensors_copy (st_path, st, drop);
  dp_safetensors_close (st);

  g_free (st_path);
  g_free (src_st);
  g_free (cfg_path);
  g_free (src_cfg);
  return dir;
}

static void
expect_load_error (config_edit edit, const char *drop, int code, const char *needle)
{
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  g_assert_no_error (err);
  char *dir = make_model_dir (edit, drop);
  dp_wan_vae *vae = dp_wan_vae_load (be, dir, &err);
  g_assert_null (vae);
  g_assert_error (err, DP_ERROR, code);
  if (!strstr (err->message, needle))
    g_error ("error \"%s\" does not mention \"%s\"", err->message, needle);
  g_test_message ("expected error: %s", err->message);
  g_clear_error (&err);
  dp_test_remove_tree (dir);
  g_free (dir);
  dp_backend_free (be);
}

static void
edit_td_length (JsonObject *r)
{
  JsonArray *a = json_array_new ();
  json_array_add_boolean_element (a, TRUE);
  json_object_set_array_member (r, "temperal_downsample", a);
}

static void
edit_td_type (JsonObject *r)
{
  JsonArray *a = json_array_new ();
  json_array_add_int_element (a, 0);
  json_array_add_int_element (a, 1);
  json_array_add_int_element (a, 1);
  json_object_set_array_member (r, "temperal_downsample", a);
}

static void
edit_no_base_dim (JsonObject *r)
{
  json_object_remove_member (r, "base_dim");
}

static void
edit_base_dim_8 (JsonObject *r)
{
  json_object_set_int_member (r, "base_dim", 8);
}

static void
edit_mean_short (JsonObject *r)
{
  JsonArray *a = json_array_new ();
  json_array_add_double_element (a, 0.5);
  json_object_set_array_member (r, "latents_mean", a);
}

static void
edit_residual (JsonObject *r)
{
  json_object_set_boolean_member (r, "is_residual", TRUE);
}

static void
edit_std_string (JsonObject *r)
{
  json_object_set_string_member (r, "latents_std", "wide");
}

static void
edit_other_class (JsonObject *r)
{
  json_object_set_string_member (r, "_class_name", "AutoencoderKL");
}

static void
edit_out_channels_6 (JsonObject *r)
{
  json_object_set_int_member (r, "out_channels", 6);
}

static void
edit_not_residual (JsonObject *r)
{
  json_object_set_boolean_member (r, "is_residual", FALSE);
}

static void
test_errors_config (void)
{
  data_set = "vae";
  /* A sane directory first, so the failures below come from the edits. */
  char *dir = make_model_dir (NULL, NULL);
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  dp_wan_vae *vae = dp_wan_vae_load (be, dir, &err);
  g_assert_no_error (err);
  dp_wan_vae_free (vae);
  dp_backend_free (be);
  dp_test_remove_tree (dir);
  g_free (dir);

  expect_load_error (edit_td_length, NULL, DP_ERROR_FORMAT, "temperal_downsample");
  expect_load_error (edit_td_type, NULL, DP_ERROR_FORMAT, "temperal_downsample");
  expect_load_error (edit_no_base_dim, NULL, DP_ERROR_MISSING, "base_dim");
  expect_load_error (edit_mean_short, NULL, DP_ERROR_FORMAT, "latents_mean");
  expect_load_error (edit_std_string, NULL, DP_ERROR_FORMAT, "latents_std");
  /* Wan2.1 weights under a residual config: the Wan2.2 upsampler's name. */
  expect_load_error (edit_residual, NULL, DP_ERROR_MISSING, "decoder.up_blocks.0.upsampler.resample.1.weight");
  expect_load_error (edit_other_class, NULL, DP_ERROR_UNSUPPORTED, "AutoencoderKL");
  /* Config and weights disagree: the first tensor checked has another shape. */
  expect_load_error (edit_base_dim_8, NULL, DP_ERROR_SHAPE, "decoder.conv_in.weight");
}

/* The Wan2.2 set: a patchify that does not divide out_channels, and Wan2.2
 * weights under a Wan2.1 (non-residual) config. */
static void
test_errors_config22 (void)
{
  data_set = "vae22";
  expect_load_error (edit_out_channels_6, NULL, DP_ERROR_FORMAT, "patch_size");
  expect_load_error (edit_not_residual, NULL, DP_ERROR_MISSING, "decoder.up_blocks.0.upsamplers.0.resample.1.weight");
  expect_load_error (NULL, "decoder.up_blocks.0.upsampler.time_conv.weight", DP_ERROR_MISSING,
                     "decoder.up_blocks.0.upsampler.time_conv.weight");
  data_set = "vae";
}

static void
test_errors_weights (void)
{
  data_set = "vae";
  expect_load_error (NULL, "decoder.conv_out.bias", DP_ERROR_MISSING, "decoder.conv_out.bias");
  expect_load_error (NULL, "decoder.up_blocks.1.upsamplers.0.time_conv.weight", DP_ERROR_MISSING,
                     "decoder.up_blocks.1.upsamplers.0.time_conv.weight");
  expect_load_error (NULL, "decoder.mid_block.attentions.0.norm.gamma", DP_ERROR_MISSING,
                     "decoder.mid_block.attentions.0.norm.gamma");
  expect_load_error (NULL, "post_quant_conv.weight", DP_ERROR_MISSING, "post_quant_conv.weight");

  /* No directory at all. */
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  g_assert_null (dp_wan_vae_load (be, "/nonexistent/vae", &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_MISSING);
  g_assert_nonnull (strstr (err->message, "/nonexistent/vae"));
  g_clear_error (&err);
  dp_backend_free (be);
}

static void
test_errors_push (void)
{
  data_set = "vae";
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  golden g;
  golden_load (&g);
  dp_wan_vae *vae = load_golden_vae (be);
  dp_wan_vae_decoder *dec = dp_wan_vae_decoder_new (vae, 4, 6, &err);
  g_assert_no_error (err);
  dp_tensor lat = upload (be, &g.latent);
  int n = 0;

  /* Latent frame index out of range. */
  g_assert_false (dp_wan_vae_decoder_push (dec, &lat, 4, NULL, NULL, &n, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  /* Wrong latent size for this decoder. */
  dp_wan_vae_decoder *dec2 = dp_wan_vae_decoder_new (vae, 6, 4, &err);
  g_assert_no_error (err);
  g_assert_false (dp_wan_vae_decoder_push (dec2, &lat, 0, NULL, NULL, &n, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_SHAPE);
  g_clear_error (&err);
  /* Wrong channel count. */
  dp_tensor part = dp_tensor_slice0 (&lat, 0, 8);
  g_assert_false (dp_wan_vae_decoder_push (dec, &part, 0, NULL, NULL, &n, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_SHAPE);
  g_clear_error (&err);
  g_assert_cmpint (dp_wan_vae_decoder_position (dec), ==, 0);
  /* Bad sizes. */
  g_assert_null (dp_wan_vae_decoder_new (vae, 0, 6, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  /* The failed calls left the backend healthy: a push still works. */
  g_assert_true (dp_wan_vae_decoder_push (dec, &lat, 0, NULL, NULL, &n, &err));
  g_assert_no_error (err);
  g_assert_cmpint (n, ==, 1);

  dp_backend_tensor_free (be, &lat);
  dp_wan_vae_decoder_free (dec2);
  dp_wan_vae_decoder_free (dec);
  dp_wan_vae_free (vae);
  golden_free (&g);
  dp_backend_free (be);
}

/* ------------------------------------------------------------- tiling */

/* The grid and blend arithmetic, against values worked out by hand from
 * diffusers' tiled_decode loops. */
static void
test_tiling_arithmetic (void)
{
  /* 480p: latent 60 x 104, diffusers' 256 / 192 -> tile 32, stride 24 latents. */
  g_assert_cmpint (dp_wan_vae_tile_count (60, 32, 24), ==, 3);   /* 0, 24, 48 */
  g_assert_cmpint (dp_wan_vae_tile_count (104, 32, 24), ==, 5);  /* 0, 24, 48, 72, 96 */
  g_assert_cmpint (dp_wan_vae_tile_count (24, 32, 24), ==, 1);
  g_assert_cmpint (dp_wan_vae_tile_count (25, 32, 24), ==, 2);
  g_assert_cmpint (dp_wan_vae_tile_count (10, 0, 0), ==, 1);     /* untiled */
  g_assert_cmpint (dp_wan_vae_tile_count (0, 32, 24), ==, 0);
  int start, size;
  dp_wan_vae_tile_span (2, 60, 32, 24, &start, &size);
  g_assert_cmpint (start, ==, 48);
  g_assert_cmpint (size, ==, 12);
  dp_wan_vae_tile_span (1, 60, 32, 24, &start, &size);
  g_assert_cmpint (start, ==, 24);
  g_assert_cmpint (size, ==, 32);
  dp_wan_vae_tile_span (4, 104, 32, 24, &start, &size);
  g_assert_cmpint (start, ==, 96);
  g_assert_cmpint (size, ==, 8);
  dp_wan_vae_tile_span (0, 60, 0, 0, &start, &size);
  g_assert_cmpint (start, ==, 0);
  g_assert_cmpint (size, ==, 60);
  /* Every latent row is in some tile, and the kept parts (stride each, the
   * rest for the last) add up to the whole. */
  for (int extent = 1; extent < 70; extent++)
    for (int tile = 1; tile < 12; tile++)
      for (int stride = 1; stride <= tile; stride++) {
        const int n = dp_wan_vae_tile_count (extent, tile, stride);
        int kept = 0, end = 0;
        for (int i = 0; i < n; i++) {
          dp_wan_vae_tile_span (i, extent, tile, stride, &start, &size);
          g_assert_cmpint (size, >=, 1);
          g_assert_cmpint (start, <=, end);
          end = MAX (end, start + size);
          kept += MIN (size, stride);
        }
        g_assert_cmpint (end, ==, extent);
        g_assert_cmpint (kept, ==, extent);
      }
  /* Blend extents: the overlap, unless a tile is smaller. */
  g_assert_cmpint (dp_wan_vae_blend_extent (256, 256, 64), ==, 64);
  g_assert_cmpint (dp_wan_vae_blend_extent (256, 40, 64), ==, 40);
  g_assert_cmpint (dp_wan_vae_blend_extent (30, 256, 64), ==, 30);
  g_assert_cmpint (dp_wan_vae_blend_extent (256, 256, 0), ==, 0);
  /* Weights: a linear ramp from the previous tile to the current one that
   * sums to 1 (exactly, for these). */
  float wa, wb;
  dp_wan_vae_blend_weights (0, 64, &wa, &wb);
  g_assert_cmpfloat (wa, ==, 1.0f);
  g_assert_cmpfloat (wb, ==, 0.0f);
  dp_wan_vae_blend_weights (16, 64, &wa, &wb);
  g_assert_cmpfloat (wa, ==, 0.75f);
  g_assert_cmpfloat (wb, ==, 0.25f);
  dp_wan_vae_blend_weights (1, 3, &wa, &wb);
  g_assert_cmpfloat (wb, ==, (float) (1.0 / 3.0));
  g_assert_cmpfloat (wa, ==, (float) (1.0 - 1.0 / 3.0));
  /* The default: diffusers' 256 / 192. */
  dp_wan_vae_tiling t;
  dp_wan_vae_tiling_default (256, 8, &t);
  g_assert_cmpint (t.tile_height, ==, 256);
  g_assert_cmpint (t.tile_width, ==, 256);
  g_assert_cmpint (t.stride_height, ==, 192);
  g_assert_cmpint (t.stride_width, ==, 192);
  dp_wan_vae_tiling_default (16, 8, &t);
  g_assert_cmpint (t.stride_width, ==, 8);
  dp_wan_vae_tiling_default (256, 16, &t); /* Wan2.2's scale */
  g_assert_cmpint (t.stride_width, ==, 192);
  dp_wan_vae_tiling_default (64, 16, &t);
  g_assert_cmpint (t.stride_width, ==, 48);
  dp_wan_vae_tiling_default (16, 16, &t);
  g_assert_cmpint (t.stride_width, ==, 16);
  /* Active only above one tile (diffusers' _decode). */
  dp_wan_vae_config cfg = { 0 };
  cfg.spatial_scale = 8;
  dp_wan_vae_tiling_default (256, 8, &t);
  g_assert_false (dp_wan_vae_tiling_active (&cfg, &t, 32, 32));
  g_assert_true (dp_wan_vae_tiling_active (&cfg, &t, 32, 33));
  g_assert_true (dp_wan_vae_tiling_active (&cfg, &t, 60, 104));
  g_assert_false (dp_wan_vae_tiling_active (&cfg, NULL, 60, 104));
  /* Bad settings name the axis. */
  GError *err = NULL;
  g_assert_true (dp_wan_vae_tiling_check (&cfg, &t, &err));
  g_assert_true (dp_wan_vae_tiling_check (&cfg, NULL, &err));
  dp_wan_vae_tiling bad = { 256, 250, 192, 192 };
  g_assert_false (dp_wan_vae_tiling_check (&cfg, &bad, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_assert_nonnull (strstr (err->message, "width"));
  g_clear_error (&err);
  dp_wan_vae_tiling bad2 = { 256, 256, 264, 192 };
  g_assert_false (dp_wan_vae_tiling_check (&cfg, &bad2, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_assert_nonnull (strstr (err->message, "stride height"));
  g_clear_error (&err);
  dp_wan_vae_tiling bad3 = { 256, 256, 0, 192 };
  g_assert_false (dp_wan_vae_tiling_check (&cfg, &bad3, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
}

static void
compare_video (const char *what, const float *got, const float *ref, int64_t n, double *rel_out, double *max_out)
{
  double num = 0, den = 0, max_abs = 0;
  for (int64_t i = 0; i < n; i++) {
    double e = (double) got[i] - ref[i];
    num += e * e;
    den += (double) ref[i] * ref[i];
    max_abs = MAX (max_abs, fabs (e));
  }
  *rel_out = sqrt (num / den);
  *max_out = max_abs;
  g_test_message ("%s: rel L2 %.3g, max abs %.3g", what, *rel_out, *max_out);
}

/* Tiles covering the frame: bitwise the untiled decode (the latents do not
 * exceed a tile, so no tiling, as in diffusers). */
static void
test_tiled_covering_frame (void)
{
  data_set = "vae";
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  golden g;
  golden_load (&g);
  dp_wan_vae *vae = load_golden_vae (be);
  const int h = (int) g.latent.shape[2], w = (int) g.latent.shape[3];
  dp_wan_vae_decoder *plain = dp_wan_vae_decoder_new (vae, h, w, &err);
  g_assert_no_error (err);
  decoded ref;
  stream_decode (be, vae, plain, &g.latent, FALSE, &ref);
  const dp_wan_vae_tiling covers[] = { { 8 * h, 8 * w, 8 * h, 8 * w }, { 256, 256, 192, 192 }, { 8 * h, 8 * w, 8, 8 } };
  for (size_t k = 0; k < G_N_ELEMENTS (covers); k++) {
    dp_wan_vae_decoder *dec = dp_wan_vae_decoder_new_tiled (vae, h, w, &covers[k], &err);
    g_assert_no_error (err);
    int rows = 0, cols = 0;
    dp_wan_vae_decoder_get_tiles (dec, &rows, &cols);
    g_assert_cmpint (rows, ==, 1);
    g_assert_cmpint (cols, ==, 1);
    decoded d;
    stream_decode (be, vae, dec, &g.latent, FALSE, &d);
    const int64_t hw = (int64_t) d.H * d.W;
    g_assert_true (memcmp (d.video, ref.video, 3 * d.frames * hw * sizeof (float)) == 0);
    g_assert_true (memcmp (d.rgb, ref.rgb, d.frames * hw * 3) == 0);
    decoded_free (&d);
    dp_wan_vae_decoder_free (dec);
  }
  decoded_free (&ref);
  dp_wan_vae_decoder_free (plain);
  dp_wan_vae_free (vae);
  golden_free (&g);
  dp_backend_free (be);
}

/* Against diffusers' enable_tiling on the same tiny VAE (tests/data/vae/
 * tiled.safetensors, tools/make_vae_tiled_golden.py): two grids, one with
 * uneven edge tiles. */
static void
test_tiled_golden (void)
{
  data_set = "vae";
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  dp_wan_vae *vae = load_golden_vae (be);
  char *path = vae_path ("tiled.safetensors");
  dp_safetensors *st = dp_safetensors_open (path, &err);
  g_assert_no_error (err);
  dp_tensor latent, ref[3];
  const char *names[3] = { "video_untiled", "video_a", "video_b" };
  g_assert_true (dp_safetensors_load (st, "latent", DP_F32, -1, NULL, &latent, &err));
  for (int k = 0; k < 3; k++)
    g_assert_true (dp_safetensors_load (st, names[k], DP_F32, -1, NULL, &ref[k], &err));
  g_assert_no_error (err);
  const dp_wan_vae_tiling settings[3] = { { 0 }, { 24, 24, 16, 16 }, { 16, 24, 8, 16 } };
  const int grid[3][2] = { { 1, 1 }, { 2, 3 }, { 4, 3 } };
  const int h = (int) latent.shape[2], w = (int) latent.shape[3];
  for (int k = 0; k < 3; k++) {
    dp_wan_vae_decoder *dec = dp_wan_vae_decoder_new_tiled (vae, h, w, &settings[k], &err);
    g_assert_no_error (err);
    int rows, cols;
    dp_wan_vae_decoder_get_tiles (dec, &rows, &cols);
    g_assert_cmpint (rows, ==, grid[k][0]);
    g_assert_cmpint (cols, ==, grid[k][1]);
    decoded d;
    stream_decode (be, vae, dec, &latent, FALSE, &d);
    g_assert_cmpint (3 * d.frames * d.H * d.W, ==, dp_tensor_nelem (&ref[k]));
    double rel, max_abs;
    char *what = g_strdup_printf ("tiled golden %s (grid %dx%d) against diffusers", names[k], rows, cols);
    compare_video (what, d.video, ref[k].data, dp_tensor_nelem (&ref[k]), &rel, &max_abs);
    g_free (what);
    g_assert_cmpfloat (rel, <=, 1e-4);
    decoded_free (&d);
    dp_wan_vae_decoder_free (dec);
  }
  for (int k = 0; k < 3; k++)
    dp_tensor_free (&ref[k]);
  dp_tensor_free (&latent);
  dp_safetensors_close (st);
  g_free (path);
  dp_wan_vae_free (vae);
  dp_backend_free (be);
}

/* Real tiles against the untiled decode on a larger latent (the tiny VAE's
 * receptive field is that of the real one): 192 x 256 pixels in tiles of
 * 128 with a stride of 96 (diffusers' proportions), a 2 x 3 grid.  The
 * difference is the seams' (each tile sees zero padding at its border), so
 * it depends on the weights; the bound is what this random model measures,
 * with margin. */
static void
test_tiled_vs_untiled (void)
{
  data_set = "vae";
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  dp_wan_vae *vae = load_golden_vae (be);
  const int64_t shape[4] = { 16, 2, 24, 32 };
  dp_tensor latent = dp_tensor_new_host (DP_F32, 4, shape);
  GRand *rng = g_rand_new_with_seed (22);
  float *lp = latent.data;
  for (int64_t i = 0; i < dp_tensor_nelem (&latent); i++) {
    /* Box-Muller: standard normal latents, as the sampler leaves them. */
    double u1 = g_rand_double_range (rng, 1e-12, 1.0), u2 = g_rand_double (rng);
    lp[i] = (float) (sqrt (-2.0 * log (u1)) * cos (2 * G_PI * u2));
  }
  g_rand_free (rng);
  dp_wan_vae_decoder *plain = dp_wan_vae_decoder_new (vae, 24, 32, &err);
  g_assert_no_error (err);
  dp_wan_vae_tiling t;
  dp_wan_vae_tiling_default (128, 8, &t);
  g_assert_cmpint (t.stride_height, ==, 96);
  dp_wan_vae_decoder *tiled = dp_wan_vae_decoder_new_tiled (vae, 24, 32, &t, &err);
  g_assert_no_error (err);
  int rows, cols;
  dp_wan_vae_decoder_get_tiles (tiled, &rows, &cols);
  g_assert_cmpint (rows, ==, 2);
  g_assert_cmpint (cols, ==, 3);
  g_test_message ("decoder memory: untiled %zu bytes, tiled %zu bytes", dp_wan_vae_decoder_memory_bytes (plain),
                  dp_wan_vae_decoder_memory_bytes (tiled));
  decoded a, b;
  stream_decode (be, vae, plain, &latent, FALSE, &a);
  stream_decode (be, vae, tiled, &latent, FALSE, &b);
  const int64_t n = 3 * a.frames * a.H * a.W;
  double rel, max_abs;
  compare_video ("tiled 128/96 against untiled, 192x256", b.video, a.video, n, &rel, &max_abs);
  int64_t within = 0;
  for (int64_t i = 0; i < a.frames * a.H * a.W * 3; i++)
    within += abs ((int) a.rgb[i] - (int) b.rgb[i]) <= 2;
  g_test_message ("uint8 within 2 levels: %.3f%%", 100.0 * within / (a.frames * a.H * a.W * 3));
  g_assert_cmpfloat (rel, <=, TILED_REL_L2_BOUND);
  g_assert_cmpfloat (rel, >, 0.0); /* the tiles did run */
  decoded_free (&a);
  decoded_free (&b);
  dp_wan_vae_decoder_free (plain);
  dp_wan_vae_decoder_free (tiled);
  dp_tensor_free (&latent);
  dp_wan_vae_free (vae);
  dp_backend_free (be);
}

static void
test_tiled_errors (void)
{
  data_set = "vae";
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  dp_wan_vae *vae = load_golden_vae (be);
  const dp_wan_vae_tiling bad = { 20, 24, 16, 16 };
  g_assert_null (dp_wan_vae_decoder_new_tiled (vae, 4, 6, &bad, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_assert_nonnull (strstr (err->message, "tile height 20"));
  g_clear_error (&err);
  dp_wan_vae_free (vae);
  dp_backend_free (be);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_data_func ("/wan_vae/golden_stream", "vae", test_golden_stream);
  g_test_add_data_func ("/wan_vae/whole_equals_stream", "vae", test_whole_equals_stream);
  g_test_add_data_func ("/wan_vae/wan22/golden_stream", "vae22", test_golden_stream);
  g_test_add_data_func ("/wan_vae/wan22/whole_equals_stream", "vae22", test_whole_equals_stream);
  g_test_add_func ("/wan_vae/wan22/errors_config", test_errors_config22);
  g_test_add_func ("/wan_vae/errors_config", test_errors_config);
  g_test_add_func ("/wan_vae/errors_weights", test_errors_weights);
  g_test_add_func ("/wan_vae/errors_push", test_errors_push);
  g_test_add_func ("/wan_vae/tiling/arithmetic", test_tiling_arithmetic);
  g_test_add_func ("/wan_vae/tiling/covering_frame", test_tiled_covering_frame);
  g_test_add_func ("/wan_vae/tiling/golden", test_tiled_golden);
  g_test_add_func ("/wan_vae/tiling/vs_untiled", test_tiled_vs_untiled);
  g_test_add_func ("/wan_vae/tiling/errors", test_tiled_errors);
  return g_test_run ();
}
