/* config.json access with errors that name the file and key. */
#include "dualparal/config.h"
#include "dualparal/backend.h"

#include <json-glib/json-glib.h>
#include <string.h>

struct dp_config {
  char *path;
  JsonParser *parser;
  JsonObject *root;
};

dp_config *
dp_config_load (const char *path, GError **error)
{
  JsonParser *parser = json_parser_new ();
  GError *err = NULL;
  if (!g_file_test (path, G_FILE_TEST_EXISTS)) {
    g_set_error (error, DP_ERROR, DP_ERROR_MISSING, "%s: file not found", path);
    g_object_unref (parser);
    return NULL;
  }
  if (!json_parser_load_from_file (parser, path, &err)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: not valid JSON: %s", path, err->message);
    g_error_free (err);
    g_object_unref (parser);
    return NULL;
  }
  JsonNode *root = json_parser_get_root (parser);
  if (!root || !JSON_NODE_HOLDS_OBJECT (root)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: expected a JSON object", path);
    g_object_unref (parser);
    return NULL;
  }
  dp_config *cfg = g_new0 (dp_config, 1);
  cfg->path = g_strdup (path);
  cfg->parser = parser;
  cfg->root = json_node_get_object (root);
  return cfg;
}

void
dp_config_free (dp_config *cfg)
{
  if (!cfg)
    return;
  g_object_unref (cfg->parser);
  g_free (cfg->path);
  g_free (cfg);
}

const char *
dp_config_path (const dp_config *cfg)
{
  return cfg->path;
}

gboolean
dp_config_has (const dp_config *cfg, const char *key)
{
  return json_object_has_member (cfg->root, key) &&
         !JSON_NODE_HOLDS_NULL (json_object_get_member (cfg->root, key));
}

/* The member, or NULL with DP_ERROR_MISSING when it is absent or null. */
static JsonNode *
get_member (const dp_config *cfg, const char *key, GError **error)
{
  if (!dp_config_has (cfg, key)) {
    g_set_error (error, DP_ERROR, DP_ERROR_MISSING, "%s: missing key \"%s\"", cfg->path, key);
    return NULL;
  }
  return json_object_get_member (cfg->root, key);
}

/* The member as a number, or an error. */
static gboolean
get_number (const dp_config *cfg, const char *key, gboolean want_int, double *out, GError **error)
{
  JsonNode *n = get_member (cfg, key, error);
  if (!n)
    return FALSE;
  GType t = JSON_NODE_HOLDS_VALUE (n) ? json_node_get_value_type (n) : G_TYPE_INVALID;
  if (t == G_TYPE_INT64) {
    *out = (double) json_node_get_int (n);
    return TRUE;
  }
  if (t == G_TYPE_DOUBLE && !want_int) {
    *out = json_node_get_double (n);
    return TRUE;
  }
  g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: key \"%s\" must be %s", cfg->path, key,
               want_int ? "an integer" : "a number");
  return FALSE;
}

gboolean
dp_config_int (const dp_config *cfg, const char *key, int64_t *out, GError **error)
{
  JsonNode *n = get_member (cfg, key, error);
  if (!n)
    return FALSE;
  if (!JSON_NODE_HOLDS_VALUE (n) || json_node_get_value_type (n) != G_TYPE_INT64) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: key \"%s\" must be an integer", cfg->path, key);
    return FALSE;
  }
  *out = json_node_get_int (n);
  return TRUE;
}

gboolean
dp_config_int_or (const dp_config *cfg, const char *key, int64_t def, int64_t *out, GError **error)
{
  if (!dp_config_has (cfg, key)) {
    *out = def;
    return TRUE;
  }
  return dp_config_int (cfg, key, out, error);
}

static gboolean
check_range (const dp_config *cfg, const char *key, int64_t v, int min, int max, int *out, GError **error)
{
  if (v < min || v > max) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: \"%s\" = %" G_GINT64_FORMAT " is out of range [%d, %d]",
                 cfg->path, key, v, min, max);
    return FALSE;
  }
  *out = (int) v;
  return TRUE;
}

gboolean
dp_config_int_range (const dp_config *cfg, const char *key, int min, int max, int *out, GError **error)
{
  int64_t v;
  return dp_config_int (cfg, key, &v, error) && check_range (cfg, key, v, min, max, out, error);
}

gboolean
dp_config_int_range_or (const dp_config *cfg, const char *key, int64_t def, int min, int max, int *out,
                        GError **error)
{
  int64_t v;
  return dp_config_int_or (cfg, key, def, &v, error) && check_range (cfg, key, v, min, max, out, error);
}

gboolean
dp_config_double (const dp_config *cfg, const char *key, double *out, GError **error)
{
  return get_number (cfg, key, FALSE, out, error);
}

gboolean
dp_config_double_or (const dp_config *cfg, const char *key, double def, double *out, GError **error)
{
  if (!dp_config_has (cfg, key)) {
    *out = def;
    return TRUE;
  }
  return get_number (cfg, key, FALSE, out, error);
}

gboolean
dp_config_bool_or (const dp_config *cfg, const char *key, gboolean def, gboolean *out, GError **error)
{
  if (!dp_config_has (cfg, key)) {
    *out = def;
    return TRUE;
  }
  JsonNode *n = json_object_get_member (cfg->root, key);
  if (!JSON_NODE_HOLDS_VALUE (n) || json_node_get_value_type (n) != G_TYPE_BOOLEAN) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: key \"%s\" must be true or false", cfg->path, key);
    return FALSE;
  }
  *out = json_node_get_boolean (n);
  return TRUE;
}

const char *
dp_config_string (const dp_config *cfg, const char *key, GError **error)
{
  JsonNode *n = get_member (cfg, key, error);
  if (!n)
    return NULL;
  if (!JSON_NODE_HOLDS_VALUE (n) || json_node_get_value_type (n) != G_TYPE_STRING) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: key \"%s\" must be a string", cfg->path, key);
    return NULL;
  }
  return json_node_get_string (n);
}

gboolean
dp_config_expect_string (const dp_config *cfg, const char *key, const char *expected, GError **error)
{
  if (!dp_config_has (cfg, key))
    return TRUE;
  const char *value = dp_config_string (cfg, key, error);
  if (!value)
    return FALSE;
  if (strcmp (value, expected) != 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "%s: %s is \"%s\", expected \"%s\"", cfg->path, key,
                 value, expected);
    return FALSE;
  }
  return TRUE;
}

static JsonArray *
get_array (const dp_config *cfg, const char *key, GError **error)
{
  JsonNode *n = get_member (cfg, key, error);
  if (!n)
    return NULL;
  if (!JSON_NODE_HOLDS_ARRAY (n)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: key \"%s\" must be an array", cfg->path, key);
    return NULL;
  }
  return json_node_get_array (n);
}

static gboolean
element_number (const dp_config *cfg, const char *key, JsonArray *a, guint i, gboolean want_int,
                double *out, GError **error)
{
  JsonNode *n = json_array_get_element (a, i);
  GType t = JSON_NODE_HOLDS_VALUE (n) ? json_node_get_value_type (n) : G_TYPE_INVALID;
  if (t == G_TYPE_INT64) {
    *out = (double) json_node_get_int (n);
    return TRUE;
  }
  if (t == G_TYPE_DOUBLE && !want_int) {
    *out = json_node_get_double (n);
    return TRUE;
  }
  g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: element %u of \"%s\" must be %s", cfg->path, i,
               key, want_int ? "an integer" : "a number");
  return FALSE;
}

gboolean
dp_config_double_array (const dp_config *cfg, const char *key, double *out, int n, GError **error)
{
  JsonArray *a = get_array (cfg, key, error);
  if (!a)
    return FALSE;
  if ((int) json_array_get_length (a) != n) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: \"%s\" has %u elements, expected %d", cfg->path,
                 key, json_array_get_length (a), n);
    return FALSE;
  }
  for (int i = 0; i < n; i++)
    if (!element_number (cfg, key, a, i, FALSE, &out[i], error))
      return FALSE;
  return TRUE;
}

/* The array of at most max_n elements, its length in *n, or an error. */
static JsonArray *
get_array_max (const dp_config *cfg, const char *key, int max_n, int *n, GError **error)
{
  JsonArray *a = get_array (cfg, key, error);
  if (!a)
    return NULL;
  *n = (int) json_array_get_length (a);
  if (*n > max_n) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: \"%s\" has %d elements, at most %d expected",
                 cfg->path, key, *n, max_n);
    return NULL;
  }
  return a;
}

gboolean
dp_config_int_array (const dp_config *cfg, const char *key, int64_t *out, int max_n, int *n_out,
                     GError **error)
{
  int n;
  JsonArray *a = get_array_max (cfg, key, max_n, &n, error);
  if (!a)
    return FALSE;
  for (int i = 0; i < n; i++) {
    double v;
    if (!element_number (cfg, key, a, i, TRUE, &v, error))
      return FALSE;
    out[i] = (int64_t) v;
  }
  *n_out = n;
  return TRUE;
}

gboolean
dp_config_bool_array (const dp_config *cfg, const char *key, gboolean *out, int max_n, int *n_out,
                      GError **error)
{
  int n;
  JsonArray *a = get_array_max (cfg, key, max_n, &n, error);
  if (!a)
    return FALSE;
  for (int i = 0; i < n; i++) {
    JsonNode *e = json_array_get_element (a, i);
    if (!JSON_NODE_HOLDS_VALUE (e) || json_node_get_value_type (e) != G_TYPE_BOOLEAN) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: element %d of \"%s\" must be true or false",
                   cfg->path, i, key);
      return FALSE;
    }
    out[i] = json_node_get_boolean (e);
  }
  *n_out = n;
  return TRUE;
}
