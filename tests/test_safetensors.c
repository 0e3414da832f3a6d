/* The safetensors reader: files written by the Python safetensors package
 * (tests/data/safetensors, see tools/make_safetensors_fixture.py), sharded
 * directories, in-memory images, and one test per kind of malformed file,
 * each checking the error code and that the message names the file. */
#include <math.h>
#include <string.h>

#include <sys/stat.h>

#include <glib/gstdio.h>

#include "dualparal/backend.h"
#include "dualparal/safetensors.h"

#include "test_util.h"

/* ------------------------------------------------------------------------ */
/* Helpers. */

static char *
data_path (const char *rel)
{
  return dp_test_data_path ("safetensors", rel, NULL);
}

static char *
write_bytes (const char *dir, const char *name, const void *bytes, size_t len)
{
  GError *err = NULL;
  char *path = g_build_filename (dir, name, NULL);
  g_file_set_contents (path, bytes, (gssize) len, &err);
  g_assert_no_error (err);
  return path;
}

/* u64 LE header length, header_len bytes of header, data_len bytes of data. */
static GByteArray *
build_image (const char *header, size_t header_len, const void *data, size_t data_len)
{
  GByteArray *b = g_byte_array_new ();
  uint8_t len8[8];
  for (int i = 0; i < 8; i++)
    len8[i] = (uint8_t) ((uint64_t) header_len >> (8 * i));
  g_byte_array_append (b, len8, 8);
  g_byte_array_append (b, (const guint8 *) header, (guint) header_len);
  if (data_len) {
    if (data) {
      g_byte_array_append (b, data, (guint) data_len);
    } else {
      guint old = b->len;
      g_byte_array_set_size (b, old + (guint) data_len);
      memset (b->data + old, 0, data_len);
    }
  }
  return b;
}

static char *
write_st (const char *dir, const char *name, const char *header, const void *data, size_t data_len)
{
  GByteArray *b = build_image (header, strlen (header), data, data_len);
  char *path = write_bytes (dir, name, b->data, b->len);
  g_byte_array_unref (b);
  return path;
}

/* err is code, and its message names the file (or directory) and needle. */
static void
assert_error (GError *err, int code, const char *path, const char *needle)
{
  g_assert_nonnull (err);
  g_test_message ("%s", err->message);
  g_assert_error (err, DP_ERROR, code);
  if (!strstr (err->message, path))
    g_error ("message \"%s\" does not name %s", err->message, path);
  if (needle && !strstr (err->message, needle))
    g_error ("message \"%s\" does not say \"%s\"", err->message, needle);
}

static void
assert_open_fails (const char *path, int code, const char *needle)
{
  GError *err = NULL;
  dp_safetensors *st = dp_safetensors_open (path, &err);
  g_assert_null (st);
  assert_error (err, code, path, needle);
  g_error_free (err);
}

static void
assert_open_dir_fails (const char *dir, int code, const char *named, const char *needle)
{
  GError *err = NULL;
  dp_safetensors *st = dp_safetensors_open_dir (dir, &err);
  g_assert_null (st);
  assert_error (err, code, named, needle);
  g_error_free (err);
}

/* ------------------------------------------------------------------------ */
/* Files written by the Python safetensors package. */

static void
test_python_single (void)
{
  GError *err = NULL;
  char *path = data_path ("single.safetensors");
  dp_safetensors *st = dp_safetensors_open (path, &err);
  g_assert_no_error (err);

  static const char *const sorted[] = {
    "bf16.pattern", "bf16.special", "f16.pattern", "f16.special",
    "f32.arange", "f32.empty", "f32.five_dims", "f32.scalar",
  };
  g_assert_cmpint (dp_safetensors_count (st), ==, G_N_ELEMENTS (sorted));
  for (guint i = 0; i < G_N_ELEMENTS (sorted); i++) {
    g_assert_cmpstr (dp_safetensors_name (st, (int) i), ==, sorted[i]);
    g_assert_true (dp_safetensors_contains (st, sorted[i]));
  }
  g_assert_false (dp_safetensors_contains (st, "f32"));
  g_assert_cmpstr (dp_safetensors_metadata (st, "format"), ==, "pt");
  g_assert_cmpstr (dp_safetensors_metadata (st, "producer"), ==, "make_safetensors_fixture.py");
  g_assert_null (dp_safetensors_metadata (st, "missing"));

  /* F32, borrowed from the mapping: i * 0.5 - 3. */
  dp_tensor t;
  int64_t s234[3] = { 2, 3, 4 };
  g_assert_true (dp_safetensors_get (st, "f32.arange", 3, s234, &t, &err));
  g_assert_no_error (err);
  g_assert_cmpint (t.dtype, ==, DP_F32);
  g_assert_false (t.owned);
  for (int i = 0; i < 24; i++)
    g_assert_cmpfloat (((const float *) t.data)[i], ==, i * 0.5f - 3);

  /* F32 -> BF16 / F16 on load: these values are exact in both. */
  dp_tensor b;
  g_assert_true (dp_safetensors_load (st, "f32.arange", DP_BF16, 3, s234, &b, &err));
  g_assert_true (b.owned);
  g_assert_cmpint (b.dtype, ==, DP_BF16);
  for (int i = 0; i < 24; i++)
    g_assert_cmpfloat (dp_bf16_to_f32 (((uint16_t *) b.data)[i]), ==, i * 0.5f - 3);
  dp_tensor_free (&b);
  g_assert_true (dp_safetensors_load (st, "f32.arange", DP_F16, -1, NULL, &b, &err));
  for (int i = 0; i < 24; i++)
    g_assert_cmpfloat (dp_f16_to_f32 (((uint16_t *) b.data)[i]), ==, i * 0.5f - 3);
  dp_tensor_free (&b);

  /* BF16: (i - 16) * 0.125, raw and converted to F32 (exact). */
  int64_t s48[2] = { 4, 8 };
  g_assert_true (dp_safetensors_get (st, "bf16.pattern", 2, s48, &t, &err));
  g_assert_cmpint (t.dtype, ==, DP_BF16);
  for (int i = 0; i < 32; i++)
    g_assert_cmpuint (((const uint16_t *) t.data)[i], ==, dp_f32_to_bf16 ((i - 16) * 0.125f));
  g_assert_true (dp_safetensors_load (st, "bf16.pattern", DP_F32, 2, s48, &b, &err));
  g_assert_cmpint (b.dtype, ==, DP_F32);
  for (int i = 0; i < 32; i++)
    g_assert_cmpfloat (((float *) b.data)[i], ==, (i - 16) * 0.125f);
  dp_tensor_free (&b);

  /* BF16 extremes, bits as torch wrote them: 2^100, -2^-100, largest finite. */
  static const uint16_t bf16_bits[3] = { 0x7180, 0x8d80, 0x7f7f };
  const float bf16_vals[3] = { ldexpf (1, 100), -ldexpf (1, -100), 3.3895313892515355e38f };
  g_assert_true (dp_safetensors_load (st, "bf16.special", DP_F32, -1, NULL, &b, &err));
  g_assert_true (dp_safetensors_get (st, "bf16.special", -1, NULL, &t, &err));
  for (int i = 0; i < 3; i++) {
    g_assert_cmpuint (((const uint16_t *) t.data)[i], ==, bf16_bits[i]);
    g_assert_cmpfloat (((float *) b.data)[i], ==, bf16_vals[i]);
  }
  dp_tensor_free (&b);

  /* F16: (i - 7) * 0.25, and the extremes: +-65504, 2^-24 (subnormal), 2^-14. */
  int64_t s35[2] = { 3, 5 };
  g_assert_true (dp_safetensors_load (st, "f16.pattern", DP_F32, 2, s35, &b, &err));
  for (int i = 0; i < 15; i++)
    g_assert_cmpfloat (((float *) b.data)[i], ==, (i - 7) * 0.25f);
  dp_tensor_free (&b);
  static const uint16_t f16_bits[4] = { 0x7bff, 0xfbff, 0x0001, 0x0400 };
  const float f16_vals[4] = { 65504, -65504, ldexpf (1, -24), ldexpf (1, -14) };
  g_assert_true (dp_safetensors_get (st, "f16.special", -1, NULL, &t, &err));
  g_assert_cmpint (t.dtype, ==, DP_F16);
  g_assert_true (dp_safetensors_load (st, "f16.special", DP_F32, -1, NULL, &b, &err));
  for (int i = 0; i < 4; i++) {
    g_assert_cmpuint (((const uint16_t *) t.data)[i], ==, f16_bits[i]);
    g_assert_cmpfloat (((float *) b.data)[i], ==, f16_vals[i]);
  }
  dp_tensor_free (&b);

  /* Five dimensions, a 0-d scalar, an empty tensor. */
  int64_t s5[5] = { 1, 2, 1, 2, 2 };
  g_assert_true (dp_safetensors_get (st, "f32.five_dims", 5, s5, &t, &err));
  for (int i = 0; i < 8; i++)
    g_assert_cmpfloat (((const float *) t.data)[i], ==, i + 1);
  g_assert_true (dp_safetensors_get (st, "f32.scalar", 0, NULL, &t, &err));
  g_assert_cmpint (t.ndim, ==, 0);
  g_assert_cmpfloat (*(const float *) t.data, ==, 42);
  int64_t s03[2] = { 0, 3 };
  g_assert_true (dp_safetensors_load (st, "f32.empty", DP_BF16, 2, s03, &b, &err));
  g_assert_cmpint (dp_tensor_nelem (&b), ==, 0);
  dp_tensor_free (&b);
  g_assert_no_error (err);

  /* Wrong shape: exact message; wrong rank; missing tensor. */
  int64_t s235[3] = { 2, 3, 5 };
  g_assert_false (dp_safetensors_get (st, "f32.arange", 3, s235, &t, &err));
  char *want = g_strdup_printf ("%s: tensor f32.arange has shape [2, 3, 4], expected [2, 3, 5]", path);
  g_assert_error (err, DP_ERROR, DP_ERROR_SHAPE);
  g_assert_cmpstr (err->message, ==, want);
  g_free (want);
  g_clear_error (&err);
  g_assert_false (dp_safetensors_load (st, "f32.arange", DP_F32, 2, s235, &b, &err));
  assert_error (err, DP_ERROR_SHAPE, path, "expected [2, 3]");
  g_clear_error (&err);
  g_assert_false (dp_safetensors_get (st, "blocks.0.nothing", -1, NULL, &t, &err));
  assert_error (err, DP_ERROR_MISSING, path, "blocks.0.nothing");
  g_clear_error (&err);
  g_assert_false (dp_safetensors_load (st, "blocks.0.nothing", DP_F32, -1, NULL, &b, &err));
  assert_error (err, DP_ERROR_MISSING, path, "blocks.0.nothing");
  g_clear_error (&err);

  dp_safetensors_close (st);
  g_free (path);
}

static void
test_python_sharded (void)
{
  GError *err = NULL;
  char *dir = data_path ("sharded");
  dp_safetensors *st = dp_safetensors_open_dir (dir, &err);
  g_assert_no_error (err);
  static const char *const sorted[] = {
    "blocks.0.attn1.to_q.bias", "blocks.0.attn1.to_q.weight", "blocks.1.attn1.to_q.weight",
    "proj_out.bias",
  };
  g_assert_cmpint (dp_safetensors_count (st), ==, 4);
  for (int i = 0; i < 4; i++)
    g_assert_cmpstr (dp_safetensors_name (st, i), ==, sorted[i]);
  g_assert_cmpstr (dp_safetensors_metadata (st, "format"), ==, "pt");

  /* Tensors from both shards: value base + i. */
  static const struct { const char *name; int ndim; int64_t shape[2]; float base; } want[] = {
    { "blocks.0.attn1.to_q.weight", 2, { 8, 8 }, 0 },
    { "blocks.0.attn1.to_q.bias", 1, { 8 }, 100 },
    { "blocks.1.attn1.to_q.weight", 2, { 8, 8 }, 200 },
    { "proj_out.bias", 1, { 4 }, 300 },
  };
  for (guint k = 0; k < G_N_ELEMENTS (want); k++) {
    dp_tensor t;
    g_assert_true (dp_safetensors_load (st, want[k].name, DP_F32, want[k].ndim, want[k].shape, &t, &err));
    g_assert_no_error (err);
    for (int64_t i = 0; i < dp_tensor_nelem (&t); i++)
      g_assert_cmpfloat (((float *) t.data)[i], ==, want[k].base + (float) i);
    dp_tensor_free (&t);
  }

  /* A shape error names the shard that holds the tensor. */
  dp_tensor t;
  int64_t s48[2] = { 4, 8 };
  g_assert_false (dp_safetensors_get (st, "blocks.0.attn1.to_q.weight", 2, s48, &t, &err));
  char *shard = g_build_filename (dir, "diffusion_pytorch_model-00001-of-00002.safetensors", NULL);
  char *msg = g_strdup_printf ("%s: tensor blocks.0.attn1.to_q.weight has shape [8, 8], expected [4, 8]",
                               shard);
  g_assert_error (err, DP_ERROR, DP_ERROR_SHAPE);
  g_assert_cmpstr (err->message, ==, msg);
  g_clear_error (&err);
  g_free (msg);
  g_free (shard);
  g_assert_false (dp_safetensors_get (st, "blocks.2.attn1.to_q.weight", -1, NULL, &t, &err));
  assert_error (err, DP_ERROR_MISSING, dir, "blocks.2.attn1.to_q.weight");
  g_clear_error (&err);

  dp_safetensors_close (st);
  g_free (dir);
}

/* A directory with exactly one .safetensors file and no index. */
static void
test_dir_single_file (void)
{
  char *tmp = dp_test_make_tmp_dir ("dp-safetensors-XXXXXX");
  char *src = data_path ("single.safetensors");
  gsize len;
  char *bytes = dp_test_read_file (src, &len);
  g_free (write_bytes (tmp, "diffusion_pytorch_model.safetensors", bytes, len));
  g_free (write_bytes (tmp, "config.json", "{}", 2)); /* other files do not matter */
  GError *err = NULL;
  dp_safetensors *st = dp_safetensors_open_dir (tmp, &err);
  g_assert_no_error (err);
  g_assert_cmpint (dp_safetensors_count (st), ==, 8);
  g_assert_true (dp_safetensors_contains (st, "f16.special"));
  dp_safetensors_close (st);
  g_free (bytes);
  g_free (src);
  dp_test_remove_tree (tmp);
  g_free (tmp);
}

/* ------------------------------------------------------------------------ */
/* In-memory images. */

static void
test_memory (void)
{
  /* a: F32 [2, 2] = 1..4; b: BF16 [3] = -1, 0.5, 3; e: empty, anywhere. */
  const char *header =
    "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
    "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[16,22]},"
    "\"e\":{\"dtype\":\"F16\",\"shape\":[4,0],\"data_offsets\":[8,8]},"
    "\"__metadata__\":{\"k\":\"v\"}}";
  uint8_t data[22];
  const float a[4] = { 1, 2, 3, 4 };
  const uint16_t b[3] = { dp_f32_to_bf16 (-1), dp_f32_to_bf16 (0.5f), dp_f32_to_bf16 (3) };
  memcpy (data, a, 16);
  memcpy (data + 16, b, 6);
  GByteArray *img = build_image (header, strlen (header), data, sizeof data);

  /* Once at the start of a buffer, once shifted by one byte so that the
   * tensors are misaligned: loads must still read them correctly. */
  for (int shift = 0; shift < 2; shift++) {
    uint8_t *buf = g_malloc (img->len + 1);
    memcpy (buf + shift, img->data, img->len);
    GError *err = NULL;
    dp_safetensors *st = dp_safetensors_open_memory (buf + shift, img->len, "mem.safetensors", &err);
    g_assert_no_error (err);
    g_assert_cmpint (dp_safetensors_count (st), ==, 3);
    g_assert_cmpstr (dp_safetensors_name (st, 0), ==, "a");
    g_assert_cmpstr (dp_safetensors_name (st, 2), ==, "e");
    g_assert_cmpstr (dp_safetensors_metadata (st, "k"), ==, "v");
    dp_tensor t;
    int64_t s22[2] = { 2, 2 };
    g_assert_true (dp_safetensors_get (st, "a", 2, s22, &t, &err));
    g_assert_true ((uint8_t *) t.data == buf + shift + 8 + strlen (header));
    g_assert_true (dp_safetensors_load (st, "a", DP_F32, 2, s22, &t, &err));
    for (int i = 0; i < 4; i++)
      g_assert_cmpfloat (((float *) t.data)[i], ==, i + 1);
    dp_tensor_free (&t);
    g_assert_true (dp_safetensors_load (st, "b", DP_F32, -1, NULL, &t, &err));
    g_assert_cmpfloat (((float *) t.data)[0], ==, -1);
    g_assert_cmpfloat (((float *) t.data)[1], ==, 0.5f);
    g_assert_cmpfloat (((float *) t.data)[2], ==, 3);
    dp_tensor_free (&t);
    g_assert_true (dp_safetensors_load (st, "b", DP_F16, -1, NULL, &t, &err));
    g_assert_cmpuint (((uint16_t *) t.data)[1], ==, 0x3800); /* 0.5 in f16 */
    dp_tensor_free (&t);
    g_assert_no_error (err);
    dp_safetensors_close (st);
    g_free (buf);
  }

  /* A header with no tensors is a valid, empty file; gaps in the data
   * section are allowed (only overlaps are errors). */
  GError *err = NULL;
  GByteArray *empty = build_image ("{}", 2, NULL, 0);
  dp_safetensors *st = dp_safetensors_open_memory (empty->data, empty->len, "empty", &err);
  g_assert_no_error (err);
  g_assert_cmpint (dp_safetensors_count (st), ==, 0);
  dp_safetensors_close (st);
  g_byte_array_unref (empty);
  const char *gap = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}  ";
  GByteArray *gapped = build_image (gap, strlen (gap), NULL, 12);
  st = dp_safetensors_open_memory (gapped->data, gapped->len, "gap", &err);
  g_assert_no_error (err);
  dp_safetensors_close (st);
  g_byte_array_unref (gapped);

  /* Errors name the image. */
  st = dp_safetensors_open_memory (img->data, 7, "mem.safetensors", &err);
  g_assert_null (st);
  assert_error (err, DP_ERROR_FORMAT, "mem.safetensors", "too short");
  g_clear_error (&err);
  st = dp_safetensors_open_memory (img->data, img->len - 1, "mem.safetensors", &err);
  g_assert_null (st);
  assert_error (err, DP_ERROR_FORMAT, "mem.safetensors", "outside the data section");
  g_clear_error (&err);
  g_byte_array_unref (img);
}

/* ------------------------------------------------------------------------ */
/* Malformed files. */

/* Raw byte layouts that are not even a header. */
static void
test_truncated (void)
{
  char *tmp = dp_test_make_tmp_dir ("dp-safetensors-XXXXXX");
  char *path;

  path = write_bytes (tmp, "empty.safetensors", "", 0);
  assert_open_fails (path, DP_ERROR_FORMAT, "too short");
  g_free (path);

  path = write_bytes (tmp, "five.safetensors", "\x10\0\0\0\0", 5);
  assert_open_fails (path, DP_ERROR_FORMAT, "too short");
  g_free (path);

  /* Header length 1000 in a 20-byte file. */
  path = write_bytes (tmp, "past.safetensors", "\xe8\x03\0\0\0\0\0\0{}xxxxxxxxxx", 20);
  assert_open_fails (path, DP_ERROR_FORMAT, "runs past the end");
  g_free (path);

  /* Header length 2^64 - 1 (no overflow in the bounds check). */
  path = write_bytes (tmp, "huge.safetensors", "\xff\xff\xff\xff\xff\xff\xff\xff{}", 10);
  assert_open_fails (path, DP_ERROR_FORMAT, "runs past the end");
  g_free (path);

  /* Header length 0. */
  path = write_bytes (tmp, "zero.safetensors", "\0\0\0\0\0\0\0\0", 8);
  assert_open_fails (path, DP_ERROR_FORMAT, "not valid JSON");
  g_free (path);

  /* The Python file cut inside its header, and cut inside its data. */
  char *src = data_path ("single.safetensors");
  gsize len;
  char *bytes = dp_test_read_file (src, &len);
  path = write_bytes (tmp, "cut-header.safetensors", bytes, 100);
  assert_open_fails (path, DP_ERROR_FORMAT, "runs past the end");
  g_free (path);
  path = write_bytes (tmp, "cut-data.safetensors", bytes, len - 10);
  assert_open_fails (path, DP_ERROR_FORMAT, "outside the data section");
  g_free (path);
  g_free (bytes);
  g_free (src);

  /* Not openable at all. */
  path = g_build_filename (tmp, "absent.safetensors", NULL);
  assert_open_fails (path, DP_ERROR_MISSING, "cannot open");
  g_free (path);
  assert_open_fails (tmp, DP_ERROR_IO, "directory");
  path = g_build_filename (tmp, "fifo.safetensors", NULL);
  g_assert_cmpint (mkfifo (path, 0600), ==, 0);
  assert_open_fails (path, DP_ERROR_IO, "not a regular file"); /* and does not block */
  g_free (path);

  dp_test_remove_tree (tmp);
  g_free (tmp);
}

typedef struct {
  const char *label;
  const char *header;
  size_t data_len;
  int code;
  const char *needle; /* the message must contain it */
} bad_header;

#define T(n, dt, shape, b, e) "\"" n "\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

static const bad_header bad_headers[] = {
  /* JSON */
  { "unterminated", "{\"a\": ", 0, DP_ERROR_FORMAT, "not valid JSON" },
  { "not-an-object", "[1, 2]", 0, DP_ERROR_FORMAT, "not a JSON object" },
  { "string-root", "\"x\"", 0, DP_ERROR_FORMAT, "not a JSON object" },
  { "two-roots", "{} {}", 0, DP_ERROR_FORMAT, "trailing characters" },
  { "comment", "/* c */ {}", 0, DP_ERROR_FORMAT, "not valid JSON" },
  { "assignment", "var x = {}", 0, DP_ERROR_FORMAT, "not valid JSON" },
  { "trailing-comma", "{" T ("a", "F32", "[1]", 0, 4) ",}", 4, DP_ERROR_FORMAT, "not valid JSON" },
  { "single-quotes", "{'a': 1}", 0, DP_ERROR_FORMAT, "not valid JSON" },
  { "bad-escape", "{\"a\\q\": 1}", 0, DP_ERROR_FORMAT, "bad escape" },
  { "lone-surrogate", "{\"a\\ud800\": 1}", 0, DP_ERROR_FORMAT, "surrogate" },
  { "nul-escape", "{\"a\\u0000b\":{}}", 0, DP_ERROR_FORMAT, "\\u0000" },
  { "invalid-utf8", "{\"\xff\": 1}", 0, DP_ERROR_FORMAT, "UTF-8" },
  { "huge-integer", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18446744073709551624]}}",
    8, DP_ERROR_FORMAT, "64-bit range" },
  /* entries */
  { "entry-not-object", "{\"a\": 3}", 0, DP_ERROR_FORMAT, "tensor a: header entry is not an object" },
  { "no-dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, DP_ERROR_FORMAT, "no \"dtype\"" },
  { "dtype-number", "{\"a\":{\"dtype\":3,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, DP_ERROR_FORMAT,
    "\"dtype\" is not a string" },
  { "no-shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, DP_ERROR_FORMAT, "no \"shape\"" },
  { "shape-string", "{" T ("a", "F32", "\"[1]\"", 0, 4) "}", 4, DP_ERROR_FORMAT, "\"shape\" is not an array" },
  { "shape-float", "{" T ("a", "F32", "[1.0]", 0, 4) "}", 4, DP_ERROR_FORMAT, "shape entry 0" },
  { "shape-negative", "{" T ("a", "F32", "[2, -1]", 0, 4) "}", 4, DP_ERROR_FORMAT, "shape entry 1" },
  { "no-offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, DP_ERROR_FORMAT, "no \"data_offsets\"" },
  { "offsets-three", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8,
    DP_ERROR_FORMAT, "data_offsets" },
  { "offsets-negative", "{" T ("a", "F32", "[1]", -4, 0) "}", 4, DP_ERROR_FORMAT, "data_offsets" },
  { "empty-name", "{" T ("", "F32", "[1]", 0, 4) "}", 4, DP_ERROR_FORMAT, "empty name" },
  /* dtypes and ranks */
  { "dtype-i64", "{" T ("ids", "I64", "[1]", 0, 8) "}", 8, DP_ERROR_UNSUPPORTED, "tensor ids has dtype I64" },
  { "dtype-f64", "{" T ("x", "F64", "[1]", 0, 8) "}", 8, DP_ERROR_UNSUPPORTED, "tensor x has dtype F64" },
  { "dtype-u8", "{" T ("m", "U8", "[4]", 0, 4) "}", 4, DP_ERROR_UNSUPPORTED, "tensor m has dtype U8" },
  { "dtype-unknown", "{" T ("q", "Q7", "[4]", 0, 4) "}", 4, DP_ERROR_FORMAT, "tensor q has dtype Q7" },
  { "six-dims", "{" T ("w", "F32", "[1,1,1,1,1,1]", 0, 4) "}", 4, DP_ERROR_UNSUPPORTED,
    "tensor w has 6 dimensions" },
  /* offsets */
  { "begin-after-end", "{" T ("a", "F32", "[0]", 8, 4) "}", 8, DP_ERROR_FORMAT, "begin 8 > end 4" },
  { "outside-data", "{" T ("a", "F32", "[4]", 0, 16) "}", 12, DP_ERROR_FORMAT,
    "tensor a: data_offsets [0, 16) run outside the data section of 12 bytes" },
  { "overlap", "{" T ("a", "F32", "[2]", 0, 8) "," T ("b", "F32", "[2]", 4, 12) "}", 12,
    DP_ERROR_FORMAT, "overlap" },
  { "overlap-inside", "{" T ("big", "F32", "[4]", 0, 16) "," T ("s1", "F32", "[1]", 8, 12) "}", 16,
    DP_ERROR_FORMAT, "tensors big [0, 16) and s1 [8, 12) overlap" },
  { "overlap-same", "{" T ("a", "F16", "[2]", 0, 4) "," T ("b", "BF16", "[2]", 0, 4) "}", 4,
    DP_ERROR_FORMAT, "overlap" },
  /* sizes */
  { "size-mismatch", "{" T ("a", "F32", "[3]", 0, 8) "}", 8, DP_ERROR_FORMAT,
    "tensor a: shape [3] of F32 needs 12 bytes but data_offsets span 8" },
  { "size-dtype", "{" T ("a", "BF16", "[4]", 0, 16) "}", 16, DP_ERROR_FORMAT, "needs 8 bytes" },
  { "size-overflow", "{" T ("a", "F32", "[4611686018427387904, 4]", 0, 0) "}", 0, DP_ERROR_FORMAT,
    "overflows" },
  { "size-overflow-dtype", "{" T ("a", "F32", "[4611686018427387904]", 0, 0) "}", 0, DP_ERROR_FORMAT,
    "overflows" },
  /* duplicates */
  { "duplicate-name", "{" T ("w", "F32", "[1]", 0, 4) "," T ("w", "F32", "[1]", 4, 8) "}", 8,
    DP_ERROR_FORMAT, "duplicate name \"w\"" },
  { "duplicate-key", "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
    DP_ERROR_FORMAT, "duplicate key \"dtype\"" },
  /* metadata */
  { "metadata-not-object", "{\"__metadata__\": [\"a\"]}", 0, DP_ERROR_FORMAT, "__metadata__ is not an object" },
  { "metadata-number", "{\"__metadata__\": {\"epoch\": 3}}", 0, DP_ERROR_FORMAT, "\"epoch\" is not a string" },
};

static void
test_bad_header (gconstpointer data)
{
  const bad_header *c = data;
  char *tmp = dp_test_make_tmp_dir ("dp-safetensors-XXXXXX");
  char *name = g_strdup_printf ("%s.safetensors", c->label);
  char *path = write_st (tmp, name, c->header, NULL, c->data_len);
  assert_open_fails (path, c->code, c->needle);

  /* The same image in memory. */
  gsize len;
  char *bytes = dp_test_read_file (path, &len);
  GError *err = NULL;
  g_assert_null (dp_safetensors_open_memory (bytes, len, name, &err));
  assert_error (err, c->code, name, c->needle);
  g_error_free (err);
  g_free (bytes);

  g_free (path);
  g_free (name);
  dp_test_remove_tree (tmp);
  g_free (tmp);
}

/* Header bytes that a C string cannot hold, and hostile nesting. */
static void
test_bad_header_bytes (void)
{
  GError *err = NULL;
  /* A NUL byte inside the header. */
  static const char nul_header[] = "{\"a\0\":{}}";
  GByteArray *img = build_image (nul_header, sizeof nul_header - 1, NULL, 0);
  g_assert_null (dp_safetensors_open_memory (img->data, img->len, "nul.safetensors", &err));
  assert_error (err, DP_ERROR_FORMAT, "nul.safetensors", "UTF-8");
  g_clear_error (&err);
  g_byte_array_unref (img);

  /* 100000 nested arrays: rejected before json-glib recurses over them. */
  GString *deep = g_string_new (NULL);
  for (int i = 0; i < 100000; i++)
    g_string_append_c (deep, '[');
  for (int i = 0; i < 100000; i++)
    g_string_append_c (deep, ']');
  img = build_image (deep->str, deep->len, NULL, 0);
  g_assert_null (dp_safetensors_open_memory (img->data, img->len, "deep.safetensors", &err));
  assert_error (err, DP_ERROR_FORMAT, "deep.safetensors", "nesting too deep");
  g_clear_error (&err);
  g_byte_array_unref (img);
  g_string_free (deep, TRUE);
}

/* ------------------------------------------------------------------------ */
/* Directories. */

#define GOOD_HEADER "{" T ("a", "F32", "[2]", 0, 8) "," T ("b", "F32", "[1]", 8, 12) "}"

static void
test_dir_errors (void)
{
  char *tmp = dp_test_make_tmp_dir ("dp-safetensors-XXXXXX");
  char *sub, *index;

  /* Missing directory; a directory without any safetensors. */
  sub = g_build_filename (tmp, "absent", NULL);
  assert_open_dir_fails (sub, DP_ERROR_MISSING, sub, "cannot open directory");
  g_free (sub);
  sub = g_build_filename (tmp, "none", NULL);
  g_mkdir (sub, 0700);
  g_free (write_bytes (sub, "config.json", "{}", 2));
  assert_open_dir_fails (sub, DP_ERROR_MISSING, sub, "no *.safetensors");
  g_free (sub);

  /* Two files and no index to say which tensor is where. */
  sub = g_build_filename (tmp, "two", NULL);
  g_mkdir (sub, 0700);
  g_free (write_st (sub, "a.safetensors", GOOD_HEADER, NULL, 12));
  g_free (write_st (sub, "b.safetensors", GOOD_HEADER, NULL, 12));
  assert_open_dir_fails (sub, DP_ERROR_FORMAT, sub, "2 *.safetensors files");
  g_free (sub);

  /* Two index files. */
  sub = g_build_filename (tmp, "two-index", NULL);
  g_mkdir (sub, 0700);
  g_free (write_bytes (sub, "model.safetensors.index.json", "{}", 2));
  g_free (write_bytes (sub, "diffusion_pytorch_model.safetensors.index.json", "{}", 2));
  assert_open_dir_fails (sub, DP_ERROR_FORMAT, sub, "index.json files");
  g_free (sub);

  /* Index cases: each directory holds shard s1 (tensors a, b) and an index. */
  static const struct {
    const char *label, *index;
    int code;
    const char *needle;
  } cases[] = {
    { "bad-json", "{\"weight_map\": {", DP_ERROR_FORMAT, "not valid JSON" },
    { "no-map", "{\"metadata\": {}}", DP_ERROR_FORMAT, "no \"weight_map\"" },
    { "map-array", "{\"weight_map\": []}", DP_ERROR_FORMAT, "\"weight_map\" is not an object" },
    { "map-empty", "{\"weight_map\": {}}", DP_ERROR_FORMAT, "empty" },
    { "map-number", "{\"weight_map\": {\"a\": 1}}", DP_ERROR_FORMAT, "entry for a is not a file name" },
    { "missing-shard", "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\"}}",
      DP_ERROR_MISSING, "maps b to shard" },
    { "missing-tensor", "{\"weight_map\": {\"a\": \"s1.safetensors\", \"zz\": \"s1.safetensors\"}}",
      DP_ERROR_MISSING, "tensor zz to" },
    { "escape", "{\"weight_map\": {\"a\": \"../s1.safetensors\"}}", DP_ERROR_FORMAT,
      "not a file name in this directory" },
    { "duplicate", "{\"weight_map\": {\"a\": \"s1.safetensors\", \"a\": \"s1.safetensors\"}}",
      DP_ERROR_FORMAT, "duplicate key \"a\"" },
  };
  for (guint i = 0; i < G_N_ELEMENTS (cases); i++) {
    sub = g_build_filename (tmp, cases[i].label, NULL);
    g_mkdir (sub, 0700);
    g_free (write_st (sub, "s1.safetensors", GOOD_HEADER, NULL, 12));
    index = write_bytes (sub, "model.safetensors.index.json", cases[i].index, strlen (cases[i].index));
    assert_open_dir_fails (sub, cases[i].code, index, cases[i].needle);
    g_free (index);
    g_free (sub);
  }

  /* A malformed shard: the error names the shard. */
  sub = g_build_filename (tmp, "bad-shard", NULL);
  g_mkdir (sub, 0700);
  g_free (write_st (sub, "s1.safetensors", GOOD_HEADER, NULL, 12));
  char *shard = write_st (sub, "s2.safetensors", GOOD_HEADER, NULL, 11);
  const char *map = "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\"}}";
  g_free (write_bytes (sub, "model.safetensors.index.json", map, strlen (map)));
  assert_open_dir_fails (sub, DP_ERROR_FORMAT, shard, "outside the data section");
  g_free (shard);

  /* The same directory with s2 repaired opens; names in a shard that the map
   * does not list are not exposed, lookups cross shards. */
  g_free (write_st (sub, "s2.safetensors", GOOD_HEADER, NULL, 12));
  GError *err = NULL;
  dp_safetensors *st = dp_safetensors_open_dir (sub, &err);
  g_assert_no_error (err);
  g_assert_cmpint (dp_safetensors_count (st), ==, 2);
  dp_tensor ta, tb;
  g_assert_true (dp_safetensors_get (st, "a", -1, NULL, &ta, &err));
  g_assert_true (dp_safetensors_get (st, "b", -1, NULL, &tb, &err));
  g_assert_cmpint (tb.shape[0], ==, 1);
  g_assert_true (ta.data != tb.data);
  dp_safetensors_close (st);
  g_free (sub);

  dp_test_remove_tree (tmp);
  g_free (tmp);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/safetensors/python-single", test_python_single);
  g_test_add_func ("/safetensors/python-sharded", test_python_sharded);
  g_test_add_func ("/safetensors/dir-single-file", test_dir_single_file);
  g_test_add_func ("/safetensors/memory", test_memory);
  g_test_add_func ("/safetensors/truncated", test_truncated);
  for (guint i = 0; i < G_N_ELEMENTS (bad_headers); i++) {
    char *name = g_strdup_printf ("/safetensors/bad-header/%s", bad_headers[i].label);
    g_test_add_data_func (name, &bad_headers[i], test_bad_header);
    g_free (name);
  }
  g_test_add_func ("/safetensors/bad-header-bytes", test_bad_header_bytes);
  g_test_add_func ("/safetensors/dir-errors", test_dir_errors);
  return g_test_run ();
}
