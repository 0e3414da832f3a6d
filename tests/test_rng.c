/* Philox4x32-10 and the noise streams (core/src/sampler/philox.c).
 *
 * - Random123's known-answer vectors (tests/kat_vectors of the Random123
 *   distribution, "philox4x32 10" lines).
 * - The documented stream layout, cross-checked against an independent
 *   Python implementation (tools/make_sampler_golden.py, cases.json "rng").
 * - Normal statistics over 10^6 samples, bit balance of the words.
 * - Range independence: any [a, b) equals the slice of [0, n).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <json-glib/json-glib.h>

#include "dualparal/rng.h"

#include "test_util.h"

static void
test_kat (void)
{
  /* counter, key, expected output (Random123 kat_vectors). */
  static const uint32_t kat[3][10] = {
    { 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000,
      0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8 },
    { 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
      0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd },
    { 0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
      0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1 },
  };
  for (int v = 0; v < 3; v++) {
    uint32_t out[4];
    dp_philox4x32_10 (kat[v], kat[v] + 4, out);
    for (int w = 0; w < 4; w++)
      g_assert_cmphex (out[w], ==, kat[v][6 + w]);
  }
  /* The stream layout: seed 0, stream 0, block 0 is the all-zero vector. */
  uint32_t words[4];
  dp_rng_u32 (0, 0, 0, words, 4);
  g_assert_cmphex (words[0], ==, 0x6627e8d5);
  g_assert_cmphex (words[3], ==, 0x9b00dbd8);
  /* counter {1, 0, 0, 0}: word 4 of stream (0, 0). */
  uint32_t ctr[4] = { 1, 0, 0, 0 }, key[2] = { 0, 0 }, blk[4];
  dp_philox4x32_10 (ctr, key, blk);
  dp_rng_u32 (0, 0, 4, words, 4);
  g_assert_cmpmem (words, sizeof words, blk, sizeof blk);
  /* seed -> key, stream -> counter words 2, 3 (little word first). */
  uint32_t ctr2[4] = { 5, 0, 0xcafef00d, 0x12345678 }, key2[2] = { 0x9abcdef0, 0x0fedcba9 };
  dp_philox4x32_10 (ctr2, key2, blk);
  dp_rng_u32 (0x0fedcba99abcdef0ull, 0x12345678cafef00dull, 20, words, 4);
  g_assert_cmpmem (words, sizeof words, blk, sizeof blk);
}

/* Box-Muller as documented in rng.h, from the u32 stream. */
static void
test_normal_from_words (void)
{
  enum { N = 64 };
  uint32_t w[N];
  float x[N];
  dp_rng_u32 (7, 3, 0, w, N);
  dp_rng_normal (7, 3, 0, x, N);
  for (int j = 0; j < N; j += 2) {
    double u1 = ((double) w[j] + 1.0) / 4294967296.0, u2 = (double) w[j + 1] / 4294967296.0;
    double r = sqrt (-2.0 * log (u1)), th = 2.0 * G_PI * u2;
    g_assert_cmpfloat (x[j], ==, (float) (r * cos (th)));
    g_assert_cmpfloat (x[j + 1], ==, (float) (r * sin (th)));
  }
}

static uint64_t
parse_u64 (JsonObject *o, const char *key)
{
  const char *s = json_object_get_string_member (o, key);
  g_assert_nonnull (s);
  return g_ascii_strtoull (s, NULL, 10);
}

/* Floats as integers in value order (adjacent floats differ by 1). */
static int
float_order (float f)
{
  int32_t i;
  memcpy (&i, &f, sizeof i);
  return i < 0 ? INT32_MIN - i : i;
}

/* Values from the Python implementation in tools/make_sampler_golden.py:
 * words exactly; normals within one float ulp (the same double formulas;
 * another libm's log/cos/sin may differ in the last double bit, which can
 * move a float rounding; here the values are identical). */
static void
test_python_streams (void)
{
  char *path = dp_test_data_path ("sampler", "cases.json", NULL);
  JsonParser *parser = dp_test_parse_json (path);
  JsonObject *rng = json_object_get_object_member (json_node_get_object (json_parser_get_root (parser)), "rng");
  JsonArray *kat = json_object_get_array_member (rng, "kat");
  g_assert_cmpuint (json_array_get_length (kat), ==, 3);
  JsonArray *streams = json_object_get_array_member (rng, "streams");
  g_assert_cmpuint (json_array_get_length (streams), >=, 4);
  int worst = 0;
  for (guint c = 0; c < json_array_get_length (streams); c++) {
    JsonObject *o = json_array_get_object_element (streams, c);
    uint64_t seed = parse_u64 (o, "seed"), stream = parse_u64 (o, "stream");
    uint64_t offset = parse_u64 (o, "offset");
    int n = (int) json_object_get_int_member (o, "n");
    JsonArray *u = json_object_get_array_member (o, "u32"), *z = json_object_get_array_member (o, "normal");
    g_assert_cmpint (json_array_get_length (u), ==, n);
    uint32_t *words = g_new (uint32_t, n);
    float *x = g_new (float, n);
    dp_rng_u32 (seed, stream, offset, words, n);
    dp_rng_normal (seed, stream, offset, x, n);
    for (int k = 0; k < n; k++) {
      g_assert_cmpuint (words[k], ==, (uint32_t) json_array_get_int_element (u, k));
      /* "%.9g" of a float32 parses back to the same float32. */
      float want = (float) g_ascii_strtod (json_array_get_string_element (z, k), NULL);
      int ulps = abs (float_order (x[k]) - float_order (want));
      worst = MAX (worst, ulps);
      g_assert_cmpint (ulps, <=, 1);
    }
    g_free (words);
    g_free (x);
  }
  g_test_message ("normals vs Python: max difference %d float ulp", worst);
  g_object_unref (parser);
  g_free (path);
}

/* 10^6 normals: moments within about 5 standard errors. */
static void
test_normal_statistics (void)
{
  const size_t n = 1000000;
  float *x = g_new (float, n);
  dp_rng_normal (1234, 0, 0, x, n);
  double s1 = 0, s2 = 0, s3 = 0, s4 = 0, max_abs = 0;
  size_t within1 = 0;
  for (size_t i = 0; i < n; i++) {
    double v = x[i];
    g_assert_true (isfinite (v));
    s1 += v;
    s2 += v * v;
    s3 += v * v * v;
    s4 += v * v * v * v;
    within1 += fabs (v) < 1.0;
    max_abs = MAX (max_abs, fabs (v));
  }
  double mean = s1 / n, var = s2 / n - mean * mean, skew = s3 / n, kurt = s4 / n;
  double frac1 = (double) within1 / n;
  g_test_message ("mean %.5f var %.5f skew %.5f E[x^4] %.4f P(|x|<1) %.5f max %.3f", mean, var, skew,
                  kurt, frac1, max_abs);
  /* Standard errors: mean 0.001, var 0.0014, E[x^3] 0.0039, E[x^4] 0.0098,
   * P(|x| < 1) 0.00047. */
  g_assert_cmpfloat (fabs (mean), <, 0.005);
  g_assert_cmpfloat (fabs (var - 1.0), <, 0.007);
  g_assert_cmpfloat (fabs (skew), <, 0.02);
  g_assert_cmpfloat (fabs (kurt - 3.0), <, 0.05);
  g_assert_cmpfloat (fabs (frac1 - 0.6826895), <, 0.0025);
  /* Box-Muller with 32-bit u1 is bounded by sqrt(2 ln 2^32) = 6.66. */
  g_assert_cmpfloat (max_abs, <=, 6.67);
  g_assert_cmpfloat (max_abs, >, 4.0);
  g_free (x);
}

/* Every bit of the words is set half of the time (standard error 0.0005). */
static void
test_word_bits (void)
{
  const size_t n = 1000000;
  uint32_t *w = g_new (uint32_t, n);
  dp_rng_u32 (99, 5, 0, w, n);
  size_t ones[32] = { 0 };
  for (size_t i = 0; i < n; i++)
    for (int b = 0; b < 32; b++)
      ones[b] += (w[i] >> b) & 1;
  for (int b = 0; b < 32; b++)
    g_assert_cmpfloat (fabs ((double) ones[b] / n - 0.5), <, 0.003);
  g_free (w);
}

/* [a, b) on its own equals the slice of [0, n), for aligned and unaligned
 * ends, inside one block, and across the parallel chunks (4096 blocks). */
static void
test_range_independence (void)
{
  const size_t n = 3 * 4096 * 4 + 4 * 10 + 3; /* > 3 chunks, unaligned end */
  float *all = g_new (float, n), *part = g_new (float, n);
  uint32_t *wall = g_new (uint32_t, n), *wpart = g_new (uint32_t, n);
  const uint64_t seed = 0xdeadbeef12345ull, stream = 17;
  dp_rng_normal (seed, stream, 0, all, n);
  dp_rng_u32 (seed, stream, 0, wall, n);
  static const size_t ranges[][2] = {
    { 0, 1 }, { 1, 2 }, { 1, 3 }, { 3, 9 }, { 4, 8 }, { 5, 5 }, { 2, 4 }, { 6, 7 },
    { 333, 777 }, { 1001, 1002 }, { 4095, 16389 }, { 16384, 16384 + 4 * 4096 },
    { 7, 3 * 4096 * 4 + 41 }, { 0, 3 * 4096 * 4 + 4 * 10 + 3 }, { 49190, 49195 },
  };
  for (guint r = 0; r < G_N_ELEMENTS (ranges); r++) {
    size_t a = ranges[r][0], b = ranges[r][1];
    g_assert_cmpuint (b, <=, n);
    memset (part, 0xff, n * sizeof (float));
    dp_rng_normal (seed, stream, a, part, b - a);
    g_assert_cmpmem (part, (b - a) * sizeof (float), all + a, (b - a) * sizeof (float));
    /* Nothing written past the end. */
    if (b - a < n)
      g_assert_cmphex (((uint32_t *) part)[b - a], ==, 0xffffffffu);
    dp_rng_u32 (seed, stream, a, wpart, b - a);
    g_assert_cmpmem (wpart, (b - a) * sizeof (uint32_t), wall + a, (b - a) * sizeof (uint32_t));
  }
  /* Generated piecewise in odd chunks = generated at once. */
  for (size_t a = 0; a < n; a += 1237) {
    size_t len = MIN (1237, n - a);
    dp_rng_normal (seed, stream, a, part + a, len);
  }
  g_assert_cmpmem (part, n * sizeof (float), all, n * sizeof (float));
  g_free (all);
  g_free (part);
  g_free (wall);
  g_free (wpart);
}

/* Seed and stream, high words included, change the output; far offsets work. */
static void
test_streams_differ (void)
{
  enum { N = 16 };
  float ref[N], x[N];
  dp_rng_normal (1, 0, 0, ref, N);
  const uint64_t variants[][2] = { { 2, 0 }, { 1ull | (1ull << 32), 0 }, { 1, 1 }, { 1, 1ull << 32 } };
  for (guint v = 0; v < G_N_ELEMENTS (variants); v++) {
    dp_rng_normal (variants[v][0], variants[v][1], 0, x, N);
    g_assert_true (memcmp (ref, x, sizeof x) != 0);
  }
  /* Offsets beyond 2^32 elements use the counter's second word. */
  dp_rng_normal (1, 0, 1ull << 34, x, N);
  g_assert_true (memcmp (ref, x, sizeof x) != 0);
  uint32_t ctr[4] = { 0, 1, 0, 0 }, key[2] = { 1, 0 }, blk[4], words[4];
  dp_philox4x32_10 (ctr, key, blk);
  dp_rng_u32 (1, 0, 1ull << 34, words, 4);
  g_assert_cmpmem (words, sizeof words, blk, sizeof blk);
  /* n = 0 writes nothing. */
  x[0] = 42.0f;
  dp_rng_normal (1, 0, 3, x, 0);
  g_assert_cmpfloat (x[0], ==, 42.0f);
}

/* Frame-major noise: a frame range alone equals the same frames of a longer
 * range, and each frame plane is the documented slice of the stream. */
static void
test_latent_noise (void)
{
  enum { C = 3, H = 5, W = 7, F = 6, PLANE = H * W };
  float all[C * F * PLANE], part[C * 3 * PLANE], plane[PLANE];
  dp_rng_latent_noise (11, 2, 0, F, C, H, W, all);
  dp_rng_latent_noise (11, 2, 2, 3, C, H, W, part); /* frames 2, 3, 4 */
  for (int c = 0; c < C; c++)
    for (int f = 0; f < 3; f++)
      g_assert_cmpmem (part + (c * 3 + f) * PLANE, sizeof plane, all + (c * F + f + 2) * PLANE, sizeof plane);
  for (int c = 0; c < C; c++)
    for (int f = 0; f < F; f++) {
      dp_rng_normal (11, 2, (uint64_t) (f * C + c) * PLANE, plane, PLANE);
      g_assert_cmpmem (plane, sizeof plane, all + (c * F + f) * PLANE, sizeof plane);
    }
  /* Far frames of an endless video. */
  dp_rng_latent_noise (11, 2, 1000000000, 1, C, H, W, part);
  dp_rng_normal (11, 2, (uint64_t) 1000000000 * C * PLANE, plane, PLANE);
  g_assert_cmpmem (part, sizeof plane, plane, sizeof plane);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/rng/kat", test_kat);
  g_test_add_func ("/rng/normal-from-words", test_normal_from_words);
  g_test_add_func ("/rng/python-streams", test_python_streams);
  g_test_add_func ("/rng/normal-statistics", test_normal_statistics);
  g_test_add_func ("/rng/word-bits", test_word_bits);
  g_test_add_func ("/rng/range-independence", test_range_independence);
  g_test_add_func ("/rng/streams-differ", test_streams_differ);
  g_test_add_func ("/rng/latent-noise", test_latent_noise);
  return g_test_run ();
}
