/* Helpers shared by the test programs (see test_util.h). */
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include <glib/gstdio.h>

#include "test_util.h"

char *
dp_test_data_path (const char *first, ...)
{
  const char *root = g_getenv ("DP_TEST_DATA");
  GPtrArray *parts = g_ptr_array_new ();
  va_list ap;
  char *path;

  g_assert_nonnull (root);
  g_ptr_array_add (parts, (gpointer) root);
  va_start (ap, first);
  for (const char *p = first; p != NULL; p = va_arg (ap, const char *))
    g_ptr_array_add (parts, (gpointer) p);
  va_end (ap);
  g_ptr_array_add (parts, NULL);
  path = g_build_filenamev ((char **) parts->pdata);
  g_ptr_array_free (parts, TRUE);
  return path;
}

char *
dp_test_make_tmp_dir (const char *tmpl)
{
  GError *err = NULL;
  char *dir = g_dir_make_tmp (tmpl, &err);

  g_assert_no_error (err);
  return dir;
}

void
dp_test_copy_tree (const char *from, const char *to)
{
  GError *err = NULL;
  GDir *dir = g_dir_open (from, 0, &err);
  const char *name;

  g_assert_no_error (err);
  g_assert_cmpint (g_mkdir_with_parents (to, 0755), ==, 0);
  while ((name = g_dir_read_name (dir)) != NULL) {
    char *src = g_build_filename (from, name, NULL);
    char *dst = g_build_filename (to, name, NULL);

    if (g_file_test (src, G_FILE_TEST_IS_DIR)) {
      dp_test_copy_tree (src, dst);
    } else {
      gsize len;
      char *data = dp_test_read_file (src, &len);

      g_file_set_contents (dst, data, (gssize) len, &err);
      g_assert_no_error (err);
      g_free (data);
    }
    g_free (src);
    g_free (dst);
  }
  g_dir_close (dir);
}

void
dp_test_remove_tree (const char *path)
{
  if (g_file_test (path, G_FILE_TEST_IS_DIR)) {
    GDir *dir = g_dir_open (path, 0, NULL);
    const char *name;

    while (dir != NULL && (name = g_dir_read_name (dir)) != NULL) {
      char *child = g_build_filename (path, name, NULL);
      dp_test_remove_tree (child);
      g_free (child);
    }
    if (dir != NULL)
      g_dir_close (dir);
    g_rmdir (path);
  } else {
    g_unlink (path);
  }
}

char *
dp_test_read_file (const char *path, gsize *len)
{
  GError *err = NULL;
  char *data = NULL;

  g_file_get_contents (path, &data, len, &err);
  g_assert_no_error (err); /* names the file and the reason */
  return data;
}

JsonParser *
dp_test_parse_json (const char *path)
{
  GError *err = NULL;
  JsonParser *parser = json_parser_new ();

  json_parser_load_from_file (parser, path, &err);
  g_assert_no_error (err);
  return parser;
}

void
dp_test_write_json (const char *path, JsonNode *root)
{
  GError *err = NULL;
  JsonGenerator *gen = json_generator_new ();

  json_generator_set_root (gen, root);
  json_generator_to_file (gen, path, &err);
  g_assert_no_error (err);
  g_object_unref (gen);
}

struct dp_test_st_writer {
  GString *header;
  GByteArray *data;
};

dp_test_st_writer *
dp_test_st_writer_new (void)
{
  dp_test_st_writer *w = g_new0 (dp_test_st_writer, 1);

  w->header = g_string_new ("{");
  w->data = g_byte_array_new ();
  return w;
}

void
dp_test_st_writer_add (dp_test_st_writer *w, const char *name, const char *dtype, int ndim,
                       const int64_t *shape, const void *data, size_t nbytes)
{
  g_string_append_printf (w->header, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                          w->header->len > 1 ? "," : "", name, dtype);
  for (int d = 0; d < ndim; d++)
    g_string_append_printf (w->header, "%s%" G_GINT64_FORMAT, d ? "," : "", shape[d]);
  g_string_append_printf (w->header, "],\"data_offsets\":[%u,%zu]}", w->data->len,
                          w->data->len + nbytes);
  g_byte_array_append (w->data, data, (guint) nbytes);
}

void
dp_test_st_writer_save (dp_test_st_writer *w, const char *path)
{
  GError *err = NULL;
  GByteArray *file = g_byte_array_new ();
  guint8 len8[8];

  g_string_append_c (w->header, '}');
  while (w->header->len % 8)
    g_string_append_c (w->header, ' ');
  for (int i = 0; i < 8; i++)
    len8[i] = (guint8) ((guint64) w->header->len >> (8 * i));
  g_byte_array_append (file, len8, 8);
  g_byte_array_append (file, (const guint8 *) w->header->str, (guint) w->header->len);
  g_byte_array_append (file, w->data->data, w->data->len);
  g_file_set_contents (path, (const char *) file->data, file->len, &err);
  g_assert_no_error (err);
  g_byte_array_unref (file);
  g_byte_array_unref (w->data);
  g_string_free (w->header, TRUE);
  g_free (w);
}

void
dp_test_write_safetensors_copy (const char *path, const dp_safetensors *src, const char *skip)
{
  dp_test_st_writer *w = dp_test_st_writer_new ();

  for (int i = 0; i < dp_safetensors_count (src); i++) {
    const char *name = dp_safetensors_name (src, i);
    GError *err = NULL;
    dp_tensor t;

    if (skip != NULL && strcmp (name, skip) == 0)
      continue;
    dp_safetensors_get (src, name, -1, NULL, &t, &err);
    g_assert_no_error (err);
    dp_test_st_writer_add (w, name, dp_dtype_name (t.dtype), t.ndim, t.shape, t.data,
                           dp_tensor_nbytes (&t));
  }
  dp_test_st_writer_save (w, path);
}

dp_backend *
dp_test_cpu_backend (void)
{
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);

  g_assert_no_error (err);
  g_assert_nonnull (be);
  return be;
}

double
dp_test_rel_l2 (const float *a, const float *ref, size_t n)
{
  double num = 0.0, den = 0.0;

  for (size_t i = 0; i < n; i++) {
    double d = (double) a[i] - ref[i];
    num += d * d;
    den += (double) ref[i] * ref[i];
  }
  return sqrt (num / MAX (den, 1e-30));
}
