/* Tensors, dtype conversions, the arena and config.json access. */
#include <math.h>
#include <string.h>

#include "dualparal/arena.h"
#include "dualparal/backend.h"
#include "dualparal/config.h"

#include "test_util.h"

static void
test_shapes (void)
{
  int64_t shape[3] = { 2, 3, 4 };
  dp_tensor t = dp_tensor_new_host (DP_F32, 3, shape);
  g_assert_cmpint (dp_tensor_nelem (&t), ==, 24);
  g_assert_cmpuint (dp_tensor_nbytes (&t), ==, 96);
  g_assert_cmpint (dp_tensor_rows (&t), ==, 6);
  g_assert_cmpint (dp_tensor_cols (&t), ==, 4);
  char buf[64];
  g_assert_cmpstr (dp_shape_str (&t, buf, sizeof buf), ==, "[2, 3, 4]");

  dp_tensor s = dp_tensor_slice0 (&t, 1, 1);
  g_assert_true (s.data == (float *) t.data + 12);
  g_assert_false (s.owned);
  g_assert_cmpint (s.shape[0], ==, 1);

  int64_t flat[2] = { 6, 4 }, bad[1] = { 7 };
  g_assert_true (dp_tensor_reshape (&t, 2, flat));
  g_assert_false (dp_tensor_reshape (&t, 1, bad));
  g_assert_cmpint (t.ndim, ==, 2);
  dp_tensor_free (&t);
  g_assert_null (t.data);
}

static void
test_conversions (void)
{
  /* bf16: exact values, round to nearest even, NaN and infinities. */
  g_assert_cmpuint (dp_f32_to_bf16 (1.0f), ==, 0x3f80);
  g_assert_cmpfloat (dp_bf16_to_f32 (0x3f80), ==, 1.0f);
  g_assert_cmpuint (dp_f32_to_bf16 (-2.5f), ==, 0xc020);
  /* 1 + 2^-8 is exactly between 1 and 1 + 2^-7: ties go to even (1.0). */
  g_assert_cmpuint (dp_f32_to_bf16 (1.0f + 1.0f / 256), ==, 0x3f80);
  /* 1 + 3 * 2^-8 is between 1 + 2^-7 (odd) and 1 + 2^-6: ties go to even. */
  g_assert_cmpuint (dp_f32_to_bf16 (1.0f + 3.0f / 256), ==, 0x3f82);
  g_assert_true (isnan (dp_bf16_to_f32 (dp_f32_to_bf16 (NAN))));
  g_assert_true (isinf (dp_bf16_to_f32 (dp_f32_to_bf16 (INFINITY))));

  /* f16: normals, subnormals, overflow to infinity, NaN. */
  g_assert_cmpuint (dp_f32_to_f16 (1.0f), ==, 0x3c00);
  g_assert_cmpuint (dp_f32_to_f16 (-2.0f), ==, 0xc000);
  g_assert_cmpuint (dp_f32_to_f16 (65504.0f), ==, 0x7bff);
  g_assert_cmpuint (dp_f32_to_f16 (70000.0f), ==, 0x7c00);
  g_assert_cmpuint (dp_f32_to_f16 (5.9604645e-8f), ==, 0x0001); /* smallest subnormal */
  g_assert_cmpfloat (dp_f16_to_f32 (0x0001), ==, 5.9604645e-8f);
  g_assert_cmpfloat (dp_f16_to_f32 (0x3555), ==, 0.333251953125f);
  g_assert_true (isnan (dp_f16_to_f32 (dp_f32_to_f16 (NAN))));
  /* Every f16 value survives a round trip through f32. */
  for (uint32_t h = 0; h < 0x10000; h++) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
      continue; /* NaN payloads need not survive */
    g_assert_cmpuint (dp_f32_to_f16 (dp_f16_to_f32 ((uint16_t) h)), ==, h);
  }
  /* Every bf16 value survives too. */
  for (uint32_t h = 0; h < 0x10000; h++) {
    if ((h & 0x7f80) == 0x7f80 && (h & 0x7f))
      continue;
    g_assert_cmpuint (dp_f32_to_bf16 (dp_bf16_to_f32 ((uint16_t) h)), ==, h);
  }

  float src[3] = { 0.5f, -1.25f, 3.0f }, back[3];
  uint16_t mid[3];
  dp_convert (mid, DP_BF16, src, DP_F32, 3);
  dp_convert (back, DP_F32, mid, DP_BF16, 3);
  g_assert_cmpmem (src, sizeof src, back, sizeof back);
}

static void
test_arena (void)
{
  int64_t shape[2] = { 10, 10 };

  dp_arena m;
  dp_arena_init_measure (&m);
  dp_tensor a = dp_arena_tensor (&m, DP_F32, 2, shape);
  g_assert_null (a.data);
  size_t mark = dp_arena_mark (&m);
  dp_arena_tensor (&m, DP_F32, 2, shape);
  dp_arena_reset (&m, mark);
  dp_arena_tensor (&m, DP_BF16, 2, shape);
  /* 400 B and 200 B, each rounded up to the 256 B alignment. */
  g_assert_cmpuint (dp_arena_peak (&m), ==, 512 + 512);

  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  g_assert_no_error (err);
  dp_arena r;
  g_assert_true (dp_arena_init (&r, be, dp_arena_peak (&m), &err));
  dp_tensor x = dp_arena_tensor (&r, DP_F32, 2, shape);
  g_assert_nonnull (x.data);
  g_assert_cmpuint ((uintptr_t) x.data % DP_ARENA_ALIGN, ==, 0);
  mark = dp_arena_mark (&r);
  dp_tensor y = dp_arena_tensor (&r, DP_F32, 2, shape);
  g_assert_nonnull (y.data);
  dp_arena_reset (&r, mark);
  dp_tensor y2 = dp_arena_tensor (&r, DP_F32, 2, shape);
  g_assert_true (y2.data == y.data); /* reused after reset */
  /* One more does not fit: reported, not written out of bounds. */
  dp_tensor z = dp_arena_tensor (&r, DP_F32, 2, shape);
  g_assert_null (z.data);
  g_assert_true (r.overflow);
  dp_arena_release (&r);
  dp_backend_free (be);
}

static void
test_backend_spec (void)
{
  GError *err = NULL;
  g_assert_null (dp_backend_new ("tpu", &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  g_assert_null (dp_backend_new ("cuda:x", &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  if (!dp_backend_have_cuda ()) {
    g_assert_null (dp_backend_new ("cuda:0", &err));
    g_assert_error (err, DP_ERROR, DP_ERROR_UNSUPPORTED);
    g_clear_error (&err);
  }
  /* Sticky errors: the first one is kept. */
  dp_backend *be = dp_backend_new ("cpu", &err);
  g_assert_no_error (err);
  dp_backend_fail (be, DP_ERROR_SHAPE, "first %d", 1);
  dp_backend_fail (be, DP_ERROR_DEVICE, "second");
  g_assert_false (dp_backend_check (be, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_SHAPE);
  g_assert_nonnull (strstr (err->message, "first 1"));
  g_clear_error (&err);
  dp_backend_free (be);
}

static char *
write_tmp (const char *dir, const char *name, const char *text)
{
  char *path = g_build_filename (dir, name, NULL);
  g_assert_true (g_file_set_contents (path, text, -1, NULL));
  return path;
}

static void
test_config (void)
{
  char *dir = dp_test_make_tmp_dir ("dp-config-XXXXXX");
  char *ok = write_tmp (dir, "ok.json",
                        "{\"num_layers\": 30, \"eps\": 1e-06, \"name\": \"wan\", \"flag\": true,"
                        " \"patch\": [1, 2, 2], \"mean\": [0.5, -1, 2.25], \"ratio\": 3,"
                        " \"down\": [false, true, true], \"mixed\": [true, 1], \"class\": \"WanX\","
                        " \"nothing\": null}");
  char *bad = write_tmp (dir, "bad.json", "{\"num_layers\": ");
  char *arr = write_tmp (dir, "arr.json", "[1, 2]");
  GError *err = NULL;

  dp_config *c = dp_config_load (ok, &err);
  g_assert_no_error (err);
  int64_t i;
  double d, v[3];
  gboolean b;
  g_assert_true (dp_config_int (c, "num_layers", &i, &err) && i == 30);
  g_assert_true (dp_config_double (c, "eps", &d, &err) && d == 1e-6);
  g_assert_true (dp_config_double (c, "ratio", &d, &err) && d == 3.0); /* integers are numbers */
  g_assert_true (dp_config_bool_or (c, "flag", FALSE, &b, &err) && b);
  g_assert_true (dp_config_int_or (c, "absent", 7, &i, &err) && i == 7);
  g_assert_cmpstr (dp_config_string (c, "name", &err), ==, "wan");
  g_assert_true (dp_config_double_array (c, "mean", v, 3, &err));
  g_assert_cmpfloat (v[1], ==, -1.0);
  int64_t p[4];
  int n;
  g_assert_true (dp_config_int_array (c, "patch", p, 4, &n, &err));
  g_assert_cmpint (n, ==, 3);
  g_assert_cmpint (p[2], ==, 2);
  int r;
  g_assert_true (dp_config_int_range (c, "num_layers", 1, 30, &r, &err) && r == 30);
  g_assert_true (dp_config_int_range_or (c, "absent", 5, 0, 9, &r, &err) && r == 5);
  gboolean flags[4] = { TRUE, TRUE, TRUE, TRUE };
  g_assert_true (dp_config_bool_array (c, "down", flags, 4, &n, &err));
  g_assert_cmpint (n, ==, 3);
  g_assert_true (!flags[0] && flags[1] && flags[2] && flags[3]); /* flags[3] untouched */
  /* An expected string: equal, absent or null are fine. */
  g_assert_true (dp_config_expect_string (c, "class", "WanX", &err));
  g_assert_true (dp_config_expect_string (c, "absent", "WanX", &err));
  g_assert_true (dp_config_expect_string (c, "nothing", "WanX", &err));
  g_assert_no_error (err);

  g_assert_false (dp_config_int (c, "eps", &i, &err)); /* wrong type */
  g_assert_error (err, DP_ERROR, DP_ERROR_FORMAT);
  g_assert_nonnull (strstr (err->message, "eps"));
  g_assert_nonnull (strstr (err->message, "ok.json"));
  g_clear_error (&err);
  g_assert_false (dp_config_int (c, "missing", &i, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_MISSING);
  g_clear_error (&err);
  g_assert_false (dp_config_double_array (c, "mean", v, 2, &err)); /* wrong length */
  g_assert_error (err, DP_ERROR, DP_ERROR_FORMAT);
  g_clear_error (&err);
  g_assert_false (dp_config_int_range (c, "num_layers", 1, 29, &r, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_FORMAT);
  g_assert_nonnull (strstr (err->message, "\"num_layers\" = 30 is out of range [1, 29]"));
  g_clear_error (&err);
  g_assert_false (dp_config_int_range_or (c, "absent", 10, 0, 9, &r, &err)); /* the default too */
  g_assert_error (err, DP_ERROR, DP_ERROR_FORMAT);
  g_clear_error (&err);
  g_assert_false (dp_config_int_range (c, "eps", 0, 9, &r, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_FORMAT);
  g_clear_error (&err);
  g_assert_false (dp_config_bool_array (c, "down", flags, 2, &n, &err)); /* too long */
  g_assert_error (err, DP_ERROR, DP_ERROR_FORMAT);
  g_assert_nonnull (strstr (err->message, "down"));
  g_clear_error (&err);
  g_assert_false (dp_config_bool_array (c, "mixed", flags, 4, &n, &err)); /* element 1 not a bool */
  g_assert_error (err, DP_ERROR, DP_ERROR_FORMAT);
  g_assert_nonnull (strstr (err->message, "element 1 of \"mixed\""));
  g_clear_error (&err);
  g_assert_false (dp_config_bool_array (c, "flag", flags, 4, &n, &err)); /* not an array */
  g_assert_error (err, DP_ERROR, DP_ERROR_FORMAT);
  g_clear_error (&err);
  g_assert_false (dp_config_bool_array (c, "absent", flags, 4, &n, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_MISSING);
  g_clear_error (&err);
  g_assert_false (dp_config_expect_string (c, "class", "WanY", &err)); /* another model */
  g_assert_error (err, DP_ERROR, DP_ERROR_UNSUPPORTED);
  g_assert_nonnull (strstr (err->message, "ok.json: class is \"WanX\", expected \"WanY\""));
  g_clear_error (&err);
  g_assert_false (dp_config_expect_string (c, "ratio", "3", &err)); /* not a string */
  g_assert_error (err, DP_ERROR, DP_ERROR_FORMAT);
  g_clear_error (&err);
  dp_config_free (c);

  g_assert_null (dp_config_load (bad, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_FORMAT);
  g_clear_error (&err);
  g_assert_null (dp_config_load (arr, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_FORMAT);
  g_clear_error (&err);
  char *none = g_build_filename (dir, "none.json", NULL);
  g_assert_null (dp_config_load (none, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_MISSING);
  g_clear_error (&err);

  dp_test_remove_tree (dir);
  g_free (none);
  g_free (ok);
  g_free (bad);
  g_free (arr);
  g_free (dir);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/tensor/shapes", test_shapes);
  g_test_add_func ("/tensor/conversions", test_conversions);
  g_test_add_func ("/tensor/arena", test_arena);
  g_test_add_func ("/backend/spec", test_backend_spec);
  g_test_add_func ("/config/read", test_config);
  return g_test_run ();
}
