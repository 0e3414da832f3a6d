/* The umT5 encoder against diffusers' WanPipeline._get_t5_prompt_embeds on a tiny
 * random-weight UMT5EncoderModel (tests/data/t5, tools/make_t5_golden.py), and
 * its error paths.
 *
 * Tolerance: relative L2 error <= 1e-5 over the real rows.  Both sides are
 * fp32; torch's own result is 1.5e-6..3.8e-6 away from a float64 run of the
 * same model (random weights with large activations), so the budget is about
 * 3x torch's error.  The rows after the prompt's tokens must be exactly zero. */
#include "dualparal/backend.h"
#include "dualparal/safetensors.h"
#include "dualparal/tokenizer.h"
#include "dualparal/umt5.h"

#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <string.h>

#include "test_util.h"

#define REL_L2_TOL 1e-5

static char *
data_path (const char *rel)
{
  return dp_test_data_path ("t5", rel, NULL);
}

static void
test_config (void)
{
  char *dir = data_path ("model/text_encoder");
  dp_umt5_config cfg;
  GError *err = NULL;
  g_assert_true (dp_umt5_config_load (dir, &cfg, &err));
  g_assert_no_error (err);
  g_assert_cmpint (cfg.vocab_size, ==, 512);
  g_assert_cmpint (cfg.d_model, ==, 40);
  g_assert_cmpint (cfg.d_kv, ==, 12);
  g_assert_cmpint (cfg.d_ff, ==, 80);
  g_assert_cmpint (cfg.num_heads, ==, 4);
  g_assert_cmpint (cfg.num_layers, ==, 3);
  g_assert_cmpint (cfg.num_buckets, ==, 32);
  g_assert_cmpint (cfg.max_distance, ==, 128);
  g_assert_cmpfloat (cfg.eps, ==, 1e-6f);
  g_free (dir);
}

/* transformers' buckets for rel = -600..600 (32 buckets, distance 128). */
static void
test_buckets (void)
{
  char *path = data_path ("cases.json");
  JsonParser *parser = dp_test_parse_json (path);
  JsonObject *b = json_object_get_object_member (json_node_get_object (json_parser_get_root (parser)),
                                                 "buckets");
  int rel_min = json_object_get_int_member (b, "rel_min");
  JsonArray *values = json_object_get_array_member (b, "values");
  g_assert_cmpuint (json_array_get_length (values), ==, (guint) (-2 * rel_min + 1));
  for (guint i = 0; i < json_array_get_length (values); i++) {
    int rel = rel_min + (int) i;
    g_assert_cmpint (dp_umt5_relative_bucket (rel, 32, 128), ==, json_array_get_int_element (values, i));
  }
  g_object_unref (parser);
  g_free (path);
}

static void
test_golden (void)
{
  char *model_dir = data_path ("model");
  char *te_dir = data_path ("model/text_encoder");
  char *cases_path = data_path ("cases.json");
  char *golden_path = data_path ("golden.safetensors");
  GError *err = NULL;

  dp_backend *be = dp_test_cpu_backend ();
  dp_tokenizer *tok = dp_tokenizer_load (model_dir, &err);
  g_assert_no_error (err);
  dp_umt5 *m = dp_umt5_load (be, te_dir, &err);
  g_assert_no_error (err);
  g_assert_nonnull (m);
  dp_safetensors *golden = dp_safetensors_open (golden_path, &err);
  g_assert_no_error (err);

  JsonParser *parser = dp_test_parse_json (cases_path);
  JsonArray *cases = json_object_get_array_member (json_node_get_object (json_parser_get_root (parser)),
                                                   "encoder_cases");
  g_assert_cmpuint (json_array_get_length (cases), >=, 8);
  double worst = 0;
  for (guint c = 0; c < json_array_get_length (cases); c++) {
    JsonObject *o = json_array_get_object_element (cases, c);
    const char *name = json_object_get_string_member (o, "name");
    int text_len = json_object_get_int_member (o, "text_len");
    int seq_len = json_object_get_int_member (o, "seq_len");

    dp_tensor out;
    int n = 0;
    g_assert_true (dp_umt5_encode_prompt (m, tok, json_object_get_string_member (o, "prompt"), text_len,
                                          &out, &n, &err));
    g_assert_no_error (err);
    g_assert_cmpint (n, ==, seq_len);
    g_assert_cmpint (out.ndim, ==, 2);
    g_assert_cmpint (out.shape[0], ==, text_len);
    g_assert_cmpint (out.shape[1], ==, 40);

    char *key = g_strconcat ("embeds.", name, NULL);
    int64_t shape[2] = { seq_len, 40 };
    dp_tensor want;
    g_assert_true (dp_safetensors_load (golden, key, DP_F32, 2, shape, &want, &err));
    g_assert_no_error (err);
    double e = dp_test_rel_l2 (out.data, want.data, (size_t) seq_len * 40);
    g_test_message ("%s: %d tokens of %d, rel L2 %.3g", name, seq_len, text_len, e);
    g_assert_cmpfloat (e, <=, REL_L2_TOL);
    worst = MAX (worst, e);
    const float *tail = (const float *) out.data + (size_t) seq_len * 40;
    for (size_t i = 0; i < (size_t) (text_len - seq_len) * 40; i++)
      g_assert_cmpfloat (tail[i], ==, 0.0f);
    dp_tensor_free (&want);
    dp_tensor_free (&out);
    g_free (key);
  }
  g_test_message ("worst rel L2 %.3g (tolerance %g)", worst, REL_L2_TOL);

  g_object_unref (parser);
  dp_safetensors_close (golden);
  dp_umt5_free (m);
  dp_tokenizer_free (tok);
  dp_backend_free (be);
  g_free (golden_path);
  g_free (cases_path);
  g_free (te_dir);
  g_free (model_dir);
}

static void
test_bad_input (void)
{
  char *te_dir = data_path ("model/text_encoder");
  char *model_dir = data_path ("model");
  GError *err = NULL;
  dp_backend *be = dp_test_cpu_backend ();
  dp_umt5 *m = dp_umt5_load (be, te_dir, &err);
  g_assert_no_error (err);
  dp_tokenizer *tok = dp_tokenizer_load (model_dir, &err);
  g_assert_no_error (err);

  dp_tensor out = { 0 };
  int32_t ids[4] = { 5, 512, 1, 0 };
  g_assert_false (dp_umt5_encode (m, ids, 3, 8, &out, &err)); /* 512 is past the vocabulary */
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_assert_nonnull (strstr (err->message, "512"));
  g_clear_error (&err);
  ids[1] = -3;
  g_assert_false (dp_umt5_encode (m, ids, 3, 8, &out, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  ids[1] = 7;
  g_assert_false (dp_umt5_encode (m, ids, 0, 8, &out, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  g_assert_false (dp_umt5_encode (m, ids, 4, 3, &out, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  g_assert_false (dp_umt5_encode_prompt (m, tok, "bad \xff byte", 8, &out, NULL, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  g_assert_null (out.data);

  /* Still usable afterwards; an exact text_len works. */
  g_assert_true (dp_umt5_encode (m, ids, 4, 4, &out, &err));
  g_assert_no_error (err);
  dp_tensor_free (&out);

  dp_tokenizer_free (tok);
  dp_umt5_free (m);
  dp_backend_free (be);
  g_free (model_dir);
  g_free (te_dir);
}

/* ---------------------------------------------------------- broken models */

typedef enum { SET_STRING, SET_INT, REMOVE } edit_kind;

/* A copy of the test text encoder in a temporary directory, with one config
 * key changed (key NULL: none) and one tensor left out (skip NULL: none). */
static char *
make_broken_model (const char *key, edit_kind kind, const char *sval, gint64 ival, const char *skip)
{
  GError *err = NULL;
  char *tmp = dp_test_make_tmp_dir ("dp-umt5-XXXXXX");
  char *src_dir = data_path ("model/text_encoder");
  char *src_cfg = g_build_filename (src_dir, "config.json", NULL);
  JsonParser *parser = dp_test_parse_json (src_cfg);
  JsonObject *o = json_node_get_object (json_parser_get_root (parser));
  if (key && kind == SET_STRING)
    json_object_set_string_member (o, key, sval);
  else if (key && kind == SET_INT)
    json_object_set_int_member (o, key, ival);
  else if (key)
    json_object_remove_member (o, key);
  char *cfg_path = g_build_filename (tmp, "config.json", NULL);
  dp_test_write_json (cfg_path, json_parser_get_root (parser));

  dp_safetensors *st = dp_safetensors_open_dir (src_dir, &err);
  g_assert_no_error (err);
  char *st_path = g_build_filename (tmp, "model.safetensors", NULL);
  dp_test_write_safetensors_copy (st_path, st, skip);
  dp_safetensors_close (st);

  g_object_unref (parser);
  g_free (st_path);
  g_free (cfg_path);
  g_free (src_cfg);
  g_free (src_dir);
  return tmp;
}

static void
remove_model (char *dir)
{
  char *cfg = g_build_filename (dir, "config.json", NULL);
  char *st = g_build_filename (dir, "model.safetensors", NULL);
  g_assert_cmpint (g_unlink (cfg), ==, 0);
  g_assert_cmpint (g_unlink (st), ==, 0);
  g_assert_cmpint (g_rmdir (dir), ==, 0);
  g_free (st);
  g_free (cfg);
  g_free (dir);
}

/* Loads dir and expects failure with code and a message containing needle. */
static void
expect_load_error (const char *dir, int code, const char *needle)
{
  GError *err = NULL;
  dp_backend *be = dp_test_cpu_backend ();
  dp_umt5 *m = dp_umt5_load (be, dir, &err);
  g_assert_null (m);
  g_assert_error (err, DP_ERROR, code);
  g_test_message ("expected error: %s", err->message);
  g_assert_nonnull (strstr (err->message, needle));
  g_clear_error (&err);
  dp_backend_free (be);
}

static void
test_broken_models (void)
{
  /* The untouched copy loads: the writer is not what the cases below test. */
  char *dir = make_broken_model (NULL, REMOVE, NULL, 0, NULL);
  GError *err = NULL;
  dp_backend *be = dp_test_cpu_backend ();
  dp_umt5 *m = dp_umt5_load (be, dir, &err);
  g_assert_no_error (err);
  dp_umt5_free (m);
  dp_backend_free (be);
  remove_model (dir);

  dir = make_broken_model (NULL, REMOVE, NULL, 0, "encoder.block.1.layer.1.DenseReluDense.wi_1.weight");
  expect_load_error (dir, DP_ERROR_MISSING, "encoder.block.1.layer.1.DenseReluDense.wi_1.weight");
  remove_model (dir);

  dir = make_broken_model (NULL, REMOVE, NULL, 0, "encoder.block.2.layer.0.SelfAttention.relative_attention_bias.weight");
  expect_load_error (dir, DP_ERROR_MISSING, "relative_attention_bias");
  remove_model (dir);

  dir = make_broken_model (NULL, REMOVE, NULL, 0, "shared.weight");
  expect_load_error (dir, DP_ERROR_MISSING, "shared.weight");
  remove_model (dir);

  dir = make_broken_model ("d_ff", SET_INT, NULL, 81, NULL);
  expect_load_error (dir, DP_ERROR_SHAPE, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight");
  remove_model (dir);

  dir = make_broken_model ("vocab_size", SET_INT, NULL, 600, NULL);
  expect_load_error (dir, DP_ERROR_SHAPE, "shared.weight");
  remove_model (dir);

  dir = make_broken_model ("num_layers", SET_INT, NULL, 4, NULL);
  expect_load_error (dir, DP_ERROR_MISSING, "encoder.block.3.");
  remove_model (dir);

  dir = make_broken_model ("model_type", SET_STRING, "t5", 0, NULL);
  expect_load_error (dir, DP_ERROR_UNSUPPORTED, "umt5");
  remove_model (dir);

  dir = make_broken_model ("feed_forward_proj", SET_STRING, "relu", 0, NULL);
  expect_load_error (dir, DP_ERROR_UNSUPPORTED, "gated-gelu");
  remove_model (dir);

  dir = make_broken_model ("d_model", REMOVE, NULL, 0, NULL);
  expect_load_error (dir, DP_ERROR_MISSING, "d_model");
  remove_model (dir);

  dir = make_broken_model ("num_heads", SET_INT, NULL, 0, NULL);
  expect_load_error (dir, DP_ERROR_FORMAT, "num_heads");
  remove_model (dir);

  dir = make_broken_model ("d_kv", SET_STRING, "twelve", 0, NULL);
  expect_load_error (dir, DP_ERROR_FORMAT, "d_kv");
  remove_model (dir);

  char *missing = g_build_filename (g_get_tmp_dir (), "dp-umt5-no-such-dir", "text_encoder", NULL);
  expect_load_error (missing, DP_ERROR_MISSING, "config.json");
  g_free (missing);
}

/* The holder (keep_text_encoder): kept, or loaded for each use and freed
 * after it; both encode the same. */
static void
test_holder (void)
{
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  g_assert_no_error (err);
  char *te_dir = data_path ("model/text_encoder");
  const int32_t ids[3] = { 5, 9, 1 };
  dp_tensor out[2] = { { 0 } };
  for (int keep = 0; keep < 2; keep++) {
    dp_umt5_holder *h = dp_umt5_holder_new (be, te_dir, keep, &err);
    g_assert_no_error (err);
    g_assert_cmpint (dp_umt5_holder_loaded (h), ==, keep);
    g_assert_cmpint (dp_umt5_holder_config (h)->d_model, >, 0);
    for (int use = 0; use < 2; use++) {
      dp_umt5 *m = dp_umt5_holder_acquire (h, &err);
      g_assert_no_error (err);
      g_assert_nonnull (m);
      dp_tensor_free (&out[keep]);
      g_assert_true (dp_umt5_encode (m, ids, 3, 8, &out[keep], &err));
      dp_umt5_holder_release (h);
      g_assert_cmpint (dp_umt5_holder_loaded (h), ==, keep);
    }
    g_assert_cmpint (dp_umt5_holder_loads (h), ==, keep ? 1 : 2);
    dp_umt5_holder_free (h);
  }
  g_assert_cmpmem (out[0].data, dp_tensor_nbytes (&out[0]), out[1].data, dp_tensor_nbytes (&out[1]));
  /* A bad directory fails at creation, loaded or not. */
  g_assert_null (dp_umt5_holder_new (be, "/nonexistent/text_encoder", FALSE, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_MISSING);
  g_clear_error (&err);
  dp_tensor_free (&out[0]);
  dp_tensor_free (&out[1]);
  g_free (te_dir);
  dp_backend_free (be);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/umt5/holder", test_holder);
  g_test_add_func ("/umt5/config", test_config);
  g_test_add_func ("/umt5/buckets", test_buckets);
  g_test_add_func ("/umt5/golden", test_golden);
  g_test_add_func ("/umt5/bad-input", test_bad_input);
  g_test_add_func ("/umt5/broken-models", test_broken_models);
  return g_test_run ();
}
