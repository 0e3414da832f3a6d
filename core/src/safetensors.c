/* safetensors reader: mmap, strict header validation, sharded directories.
 *
 * Layout of a file: u64 little-endian header length N, N bytes of UTF-8 JSON
 * (an object: tensor name -> {"dtype", "shape", "data_offsets": [begin, end]},
 * plus an optional "__metadata__" object of strings), then the data section;
 * offsets are relative to the start of the data section.
 *
 * Everything a lookup later trusts is checked once at open time, so that no
 * input, however broken, leads to an out-of-bounds read.  json-glib is lenient
 * (comments, several roots, "var x =" assignments, silently wrapped integers,
 * duplicate keys keeping the last value), so the header first goes through a
 * small strict RFC 8259 syntax check that also bounds the nesting depth, and
 * the parse detects duplicate keys itself.
 */
#include "dualparal/safetensors.h"
#include "dualparal/backend.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib/gstdio.h>
#include <json-glib/json-glib.h>

/* The reference implementation's limit; real headers are a few 100 KB. */
#define HEADER_MAX_BYTES 100000000u
/* Valid headers nest 3 deep (root, entry, shape array). */
#define JSON_MAX_DEPTH 32

typedef struct {
  char *name;
  dp_dtype dtype;
  int ndim;
  int64_t shape[DP_MAX_DIMS];
  uint64_t begin, end;  /* in the data section */
  const uint8_t *data;  /* base + 8 + N + begin */
  const char *file;     /* display path of the file holding it */
} st_entry;

typedef struct {
  char *path;           /* for messages */
  void *map;            /* mmap'd region or NULL (memory image / empty file) */
  size_t map_len;
  const uint8_t *base;
  size_t size;
  st_entry *entries;
  int n_entries;
  GHashTable *by_name;  /* name -> st_entry* */
  GHashTable *metadata; /* key -> value, both owned; NULL when absent */
} st_file;

struct dp_safetensors {
  char *path;           /* the file or directory, for messages */
  GPtrArray *files;     /* st_file*, owned */
  GHashTable *by_name;  /* name -> st_entry* (owned by a file) */
  GPtrArray *sorted;    /* st_entry*, by name */
};

/* ------------------------------------------------------------------------ */
/* Strict JSON syntax check. */

static gboolean
is_json_space (char c)
{
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int
hex_value (char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Reads \uXXXX at s[*i] (pointing at the 'u'); -1 if malformed. */
static int
read_u_escape (const char *s, size_t len, size_t *i)
{
  if (len - *i < 5)
    return -1;
  int v = 0;
  for (int k = 1; k <= 4; k++) {
    int h = hex_value (s[*i + k]);
    if (h < 0)
      return -1;
    v = v * 16 + h;
  }
  *i += 5;
  return v;
}

/* A string starting at s[*i] == '"'; leaves *i after the closing quote. */
static const char *
check_string (const char *s, size_t len, size_t *i)
{
  (*i)++;
  while (*i < len) {
    unsigned char c = (unsigned char) s[*i];
    if (c == '"') {
      (*i)++;
      return NULL;
    }
    if (c < 0x20)
      return "control character in a string";
    if (c != '\\') {
      (*i)++;
      continue;
    }
    (*i)++;
    if (*i >= len)
      break;
    char e = s[*i];
    if (e == 'u') {
      int v = read_u_escape (s, len, i);
      if (v < 0)
        return "bad \\u escape";
      if (v == 0)
        return "\\u0000 in a string";
      if (v >= 0xdc00 && v <= 0xdfff)
        return "unpaired UTF-16 surrogate escape";
      if (v >= 0xd800 && v <= 0xdbff) {
        if (len - *i < 2 || s[*i] != '\\' || s[*i + 1] != 'u')
          return "unpaired UTF-16 surrogate escape";
        (*i)++;
        int lo = read_u_escape (s, len, i);
        if (lo < 0xdc00 || lo > 0xdfff)
          return "unpaired UTF-16 surrogate escape";
      }
    } else if (strchr ("\"\\/bfnrt", e) && e != '\0') {
      (*i)++;
    } else {
      return "bad escape in a string";
    }
  }
  return "unterminated string";
}

/* A number at s[*i]; integers (no fraction or exponent) must fit in int64,
 * because json-glib wraps larger ones silently. */
static const char *
check_number (const char *s, size_t len, size_t *i)
{
  gboolean negative = FALSE, integer = TRUE;
  uint64_t magnitude = 0;
  gboolean overflow = FALSE;
  if (s[*i] == '-') {
    negative = TRUE;
    (*i)++;
  }
  if (*i >= len || !g_ascii_isdigit (s[*i]))
    return "bad number";
  if (s[*i] == '0') {
    (*i)++;
  } else {
    while (*i < len && g_ascii_isdigit (s[*i])) {
      unsigned d = (unsigned) (s[*i] - '0');
      if (magnitude > (UINT64_MAX - d) / 10)
        overflow = TRUE;
      else
        magnitude = magnitude * 10 + d;
      (*i)++;
    }
  }
  if (*i < len && s[*i] == '.') {
    integer = FALSE;
    (*i)++;
    if (*i >= len || !g_ascii_isdigit (s[*i]))
      return "bad number";
    while (*i < len && g_ascii_isdigit (s[*i]))
      (*i)++;
  }
  if (*i < len && (s[*i] == 'e' || s[*i] == 'E')) {
    integer = FALSE;
    (*i)++;
    if (*i < len && (s[*i] == '+' || s[*i] == '-'))
      (*i)++;
    if (*i >= len || !g_ascii_isdigit (s[*i]))
      return "bad number";
    while (*i < len && g_ascii_isdigit (s[*i]))
      (*i)++;
  }
  if (integer && (overflow || magnitude > (negative ? (uint64_t) INT64_MAX + 1 : (uint64_t) INT64_MAX)))
    return "integer out of the 64-bit range";
  return NULL;
}

/* Checks that s[0, len) is exactly one RFC 8259 JSON value (surrounded by
 * white space) nesting at most JSON_MAX_DEPTH deep.  Iterative, so hostile
 * nesting cannot exhaust the stack.  Returns NULL or the problem, with the
 * byte offset in *at. */
static const char *
json_check_syntax (const char *s, size_t len, size_t *at)
{
  char stack[JSON_MAX_DEPTH]; /* '{' or '[' */
  int depth = 0;
  size_t i = 0;
  const char *problem = NULL;

#define SKIP_SPACE() while (i < len && is_json_space (s[i])) i++
value:
  SKIP_SPACE ();
  if (i >= len) {
    problem = "unexpected end, expected a value";
    goto out;
  }
  switch (s[i]) {
    case '{':
    case '[':
      if (depth == JSON_MAX_DEPTH) {
        problem = "nesting too deep";
        goto out;
      }
      stack[depth++] = s[i++];
      SKIP_SPACE ();
      if (i < len && s[i] == (stack[depth - 1] == '{' ? '}' : ']')) {
        i++;
        depth--;
        goto after_value;
      }
      if (stack[depth - 1] == '{')
        goto member;
      goto value;
    case '"':
      if ((problem = check_string (s, len, &i)))
        goto out;
      goto after_value;
    case 't':
    case 'f':
    case 'n': {
      const char *word = s[i] == 't' ? "true" : s[i] == 'f' ? "false" : "null";
      size_t wl = strlen (word);
      if (len - i < wl || memcmp (s + i, word, wl) != 0) {
        problem = "unexpected character";
        goto out;
      }
      i += wl;
      goto after_value;
    }
    default:
      if (s[i] == '-' || g_ascii_isdigit (s[i])) {
        if ((problem = check_number (s, len, &i)))
          goto out;
        goto after_value;
      }
      problem = "unexpected character";
      goto out;
  }

member: /* at a member name inside an object */
  SKIP_SPACE ();
  if (i >= len || s[i] != '"') {
    problem = "expected a member name";
    goto out;
  }
  if ((problem = check_string (s, len, &i)))
    goto out;
  SKIP_SPACE ();
  if (i >= len || s[i] != ':') {
    problem = "expected ':'";
    goto out;
  }
  i++;
  goto value;

after_value:
  SKIP_SPACE ();
  if (depth == 0) {
    if (i != len)
      problem = "trailing characters after the value";
    goto out;
  }
  if (i >= len) {
    problem = "unexpected end inside an object or array";
    goto out;
  }
  if (s[i] == ',') {
    i++;
    if (stack[depth - 1] == '{')
      goto member;
    goto value;
  }
  if (s[i] == (stack[depth - 1] == '{' ? '}' : ']')) {
    i++;
    depth--;
    goto after_value;
  }
  problem = stack[depth - 1] == '{' ? "expected ',' or '}'" : "expected ',' or ']'";
#undef SKIP_SPACE

out:
  *at = i;
  return problem;
}

/* ------------------------------------------------------------------------ */
/* json-glib parse with duplicate-key detection.  A JsonParser subclass counts
 * the members reported per object: when the object holds fewer members than
 * were parsed into it, the last name was a duplicate. */

typedef struct {
  JsonParser parent;
  GHashTable *counts;    /* JsonObject* -> number of members parsed */
  char *duplicate;       /* the first duplicated name */
  JsonObject *dup_owner; /* the object it was in (not referenced) */
} DpStParser;

typedef struct {
  JsonParserClass parent_class;
} DpStParserClass;

static GType dp_st_parser_get_type (void);
G_DEFINE_TYPE (DpStParser, dp_st_parser, JSON_TYPE_PARSER)

static void
dp_st_parser_object_member (JsonParser *parser, JsonObject *object, const gchar *name)
{
  DpStParser *self = (DpStParser *) parser;
  guint n = GPOINTER_TO_UINT (g_hash_table_lookup (self->counts, object)) + 1;
  g_hash_table_insert (self->counts, object, GUINT_TO_POINTER (n));
  if (n != json_object_get_size (object) && !self->duplicate) {
    self->duplicate = g_strdup (name);
    self->dup_owner = object;
  }
}

static void
dp_st_parser_finalize (GObject *object)
{
  DpStParser *self = (DpStParser *) object;
  g_hash_table_unref (self->counts);
  g_free (self->duplicate);
  G_OBJECT_CLASS (dp_st_parser_parent_class)->finalize (object);
}

static void
dp_st_parser_class_init (DpStParserClass *klass)
{
  G_OBJECT_CLASS (klass)->finalize = dp_st_parser_finalize;
  JSON_PARSER_CLASS (klass)->object_member = dp_st_parser_object_member;
}

static void
dp_st_parser_init (DpStParser *self)
{
  self->counts = g_hash_table_new (NULL, NULL);
}

/* Parses text[0, len) (any bytes) into a JSON object.  On success returns the
 * root node (owned by the caller).  what names the text in messages
 * ("header", "index"). */
static JsonNode *
parse_json_object (const char *path, const char *what, const char *text, size_t len,
                   GError **error)
{
  if (!g_utf8_validate_len (text, len, NULL)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: %s is not valid UTF-8 (or contains NUL bytes)",
                 path, what);
    return NULL;
  }
  size_t at;
  const char *problem = json_check_syntax (text, len, &at);
  if (problem) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: %s is not valid JSON: %s at byte %" G_GSIZE_FORMAT,
                 path, what, problem, at);
    return NULL;
  }

  DpStParser *parser = g_object_new (dp_st_parser_get_type (), NULL);
  GError *err = NULL;
  JsonNode *root = NULL;
  if (!json_parser_load_from_data (JSON_PARSER (parser), text, (gssize) len, &err)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: %s is not valid JSON: %s", path, what,
                 err->message);
    g_error_free (err);
    goto out;
  }
  JsonNode *r = json_parser_get_root (JSON_PARSER (parser));
  if (!r || !JSON_NODE_HOLDS_OBJECT (r)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: %s is not a JSON object", path, what);
    goto out;
  }
  if (parser->duplicate) {
    if (parser->dup_owner == json_node_get_object (r))
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: duplicate name \"%s\" in the %s", path,
                   parser->duplicate, what);
    else
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                   "%s: duplicate key \"%s\" inside an object of the %s", path,
                   parser->duplicate, what);
    goto out;
  }
  root = json_node_ref (r); /* outlives the parser */
out:
  g_object_unref (parser);
  return root;
}

/* ------------------------------------------------------------------------ */
/* One file's header. */

static gboolean
node_is_int (JsonNode *n)
{
  return n && JSON_NODE_HOLDS_VALUE (n) && json_node_get_value_type (n) == G_TYPE_INT64;
}

static gboolean
node_is_string (JsonNode *n)
{
  return n && JSON_NODE_HOLDS_VALUE (n) && json_node_get_value_type (n) == G_TYPE_STRING;
}

/* The supported dtypes; other known safetensors dtypes are "unsupported",
 * unknown strings "malformed". */
static int
parse_dtype (const char *s, dp_dtype *out)
{
  static const char *const others[] = {
    "F64", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL",
    "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64", "E8M0",
  };
  if (!strcmp (s, "F32")) { *out = DP_F32; return 1; }
  if (!strcmp (s, "BF16")) { *out = DP_BF16; return 1; }
  if (!strcmp (s, "F16")) { *out = DP_F16; return 1; }
  for (size_t i = 0; i < G_N_ELEMENTS (others); i++)
    if (!strcmp (s, others[i]))
      return 0;
  return -1;
}

static char *
shape_string (int ndim, const int64_t *shape)
{
  GString *s = g_string_new ("[");
  for (int i = 0; i < ndim; i++)
    g_string_append_printf (s, i ? ", %" G_GINT64_FORMAT : "%" G_GINT64_FORMAT, shape[i]);
  g_string_append_c (s, ']');
  return g_string_free (s, FALSE);
}

/* Fills e from the header entry obj; data_size bounds the offsets. */
static gboolean
parse_entry (const char *path, const char *name, JsonNode *node, uint64_t data_size, st_entry *e,
             GError **error)
{
  if (!JSON_NODE_HOLDS_OBJECT (node)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: tensor %s: header entry is not an object",
                 path, name);
    return FALSE;
  }
  JsonObject *obj = json_node_get_object (node);

  JsonNode *dtype = json_object_get_member (obj, "dtype");
  if (!node_is_string (dtype)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: tensor %s: %s", path, name,
                 dtype ? "\"dtype\" is not a string" : "no \"dtype\"");
    return FALSE;
  }
  const char *dts = json_node_get_string (dtype);
  int known = parse_dtype (dts, &e->dtype);
  if (known <= 0) {
    g_set_error (error, DP_ERROR, known == 0 ? DP_ERROR_UNSUPPORTED : DP_ERROR_FORMAT,
                 "%s: tensor %s has dtype %s, %s (F32, BF16 and F16 are supported)", path, name,
                 dts, known == 0 ? "which is not supported" : "which is not a safetensors dtype");
    return FALSE;
  }

  JsonNode *shape = json_object_get_member (obj, "shape");
  if (!shape || !JSON_NODE_HOLDS_ARRAY (shape)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: tensor %s: %s", path, name,
                 shape ? "\"shape\" is not an array" : "no \"shape\"");
    return FALSE;
  }
  JsonArray *sa = json_node_get_array (shape);
  guint ndim = json_array_get_length (sa);
  if (ndim > DP_MAX_DIMS) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                 "%s: tensor %s has %u dimensions, more than the %d supported", path, name, ndim,
                 DP_MAX_DIMS);
    return FALSE;
  }
  e->ndim = (int) ndim;
  uint64_t nelem = 1;
  gboolean overflow = FALSE;
  for (guint i = 0; i < ndim; i++) {
    JsonNode *d = json_array_get_element (sa, i);
    if (!node_is_int (d) || json_node_get_int (d) < 0) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                   "%s: tensor %s: shape entry %u is not a non-negative integer", path, name, i);
      return FALSE;
    }
    e->shape[i] = json_node_get_int (d);
    if (!g_uint64_checked_mul (&nelem, nelem, (uint64_t) e->shape[i]))
      overflow = TRUE;
  }

  JsonNode *offsets = json_object_get_member (obj, "data_offsets");
  JsonArray *oa = offsets && JSON_NODE_HOLDS_ARRAY (offsets) ? json_node_get_array (offsets) : NULL;
  if (!oa || json_array_get_length (oa) != 2 || !node_is_int (json_array_get_element (oa, 0)) ||
      !node_is_int (json_array_get_element (oa, 1)) ||
      json_array_get_int_element (oa, 0) < 0 || json_array_get_int_element (oa, 1) < 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                 "%s: tensor %s: %s", path, name,
                 offsets ? "\"data_offsets\" is not [begin, end] with non-negative integers"
                         : "no \"data_offsets\"");
    return FALSE;
  }
  e->begin = (uint64_t) json_array_get_int_element (oa, 0);
  e->end = (uint64_t) json_array_get_int_element (oa, 1);
  if (e->begin > e->end) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                 "%s: tensor %s: data_offsets begin %" G_GUINT64_FORMAT " > end %" G_GUINT64_FORMAT,
                 path, name, e->begin, e->end);
    return FALSE;
  }
  if (e->end > data_size) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                 "%s: tensor %s: data_offsets [%" G_GUINT64_FORMAT ", %" G_GUINT64_FORMAT
                 ") run outside the data section of %" G_GUINT64_FORMAT " bytes",
                 path, name, e->begin, e->end, data_size);
    return FALSE;
  }
  uint64_t nbytes = 0;
  if (!overflow && !g_uint64_checked_mul (&nbytes, nelem, dp_dtype_size (e->dtype)))
    overflow = TRUE;
  if (overflow || nbytes != e->end - e->begin) {
    char *ss = shape_string (e->ndim, e->shape);
    if (overflow)
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                   "%s: tensor %s: the byte size of shape %s of %s overflows 64 bits", path, name,
                   ss, dts);
    else
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                   "%s: tensor %s: shape %s of %s needs %" G_GUINT64_FORMAT
                   " bytes but data_offsets span %" G_GUINT64_FORMAT,
                   path, name, ss, dts, nbytes, e->end - e->begin);
    g_free (ss);
    return FALSE;
  }
  return TRUE;
}

static gint
compare_entry_begin (gconstpointer a, gconstpointer b)
{
  const st_entry *x = *(st_entry *const *) a, *y = *(st_entry *const *) b;
  if (x->begin != y->begin)
    return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

static void
st_file_free (st_file *f)
{
  if (!f)
    return;
  for (int i = 0; i < f->n_entries; i++)
    g_free (f->entries[i].name);
  g_free (f->entries);
  if (f->by_name)
    g_hash_table_unref (f->by_name);
  if (f->metadata)
    g_hash_table_unref (f->metadata);
  if (f->map)
    munmap (f->map, f->map_len);
  g_free (f->path);
  g_free (f);
}

/* Validates the image f->base[0, f->size) and fills the entries. */
static gboolean
st_file_parse (st_file *f, GError **error)
{
  const char *path = f->path;
  if (f->size < 8) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                 "%s: file is %" G_GSIZE_FORMAT " bytes, too short for the 8-byte header length",
                 path, f->size);
    return FALSE;
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--)
    n = (n << 8) | f->base[i];
  if (n > (uint64_t) f->size - 8) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                 "%s: header length %" G_GUINT64_FORMAT " runs past the end of the file (%"
                 G_GSIZE_FORMAT " bytes): truncated or not a safetensors file",
                 path, n, f->size);
    return FALSE;
  }
  if (n > HEADER_MAX_BYTES) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                 "%s: header length %" G_GUINT64_FORMAT " exceeds the format's limit of %u bytes",
                 path, n, HEADER_MAX_BYTES);
    return FALSE;
  }
  const uint8_t *data = f->base + 8 + n;
  uint64_t data_size = (uint64_t) f->size - 8 - n;

  /* json-glib gets a NUL-terminated copy: the header may end exactly at the
   * end of a caller's buffer. */
  char *text = g_try_malloc ((size_t) n + 1);
  if (!text) {
    g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "%s: cannot allocate %" G_GUINT64_FORMAT
                 " bytes for the header", path, n);
    return FALSE;
  }
  memcpy (text, f->base + 8, (size_t) n);
  text[n] = '\0';
  JsonNode *root = parse_json_object (path, "header", text, (size_t) n, error);
  g_free (text);
  if (!root)
    return FALSE;
  JsonObject *obj = json_node_get_object (root);
  gboolean ok = FALSE;
  GList *members = json_object_get_members (obj);
  guint n_members = json_object_get_size (obj);
  GPtrArray *by_begin = NULL;

  f->entries = g_new0 (st_entry, n_members);
  f->by_name = g_hash_table_new (g_str_hash, g_str_equal);
  for (GList *l = members; l; l = l->next) {
    const char *name = l->data;
    JsonNode *node = json_object_get_member (obj, name);
    if (!strcmp (name, "__metadata__")) {
      if (!JSON_NODE_HOLDS_OBJECT (node)) {
        g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: __metadata__ is not an object", path);
        goto out;
      }
      JsonObject *mo = json_node_get_object (node);
      GList *keys = json_object_get_members (mo);
      f->metadata = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
      for (GList *k = keys; k; k = k->next) {
        JsonNode *v = json_object_get_member (mo, k->data);
        if (!node_is_string (v)) {
          g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                       "%s: __metadata__ value for \"%s\" is not a string", path,
                       (const char *) k->data);
          g_list_free (keys);
          goto out;
        }
        g_hash_table_insert (f->metadata, g_strdup (k->data), g_strdup (json_node_get_string (v)));
      }
      g_list_free (keys);
      continue;
    }
    if (!*name) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: a tensor has an empty name", path);
      goto out;
    }
    st_entry *e = &f->entries[f->n_entries];
    if (!parse_entry (path, name, node, data_size, e, error))
      goto out;
    e->name = g_strdup (name);
    e->data = data + e->begin;
    e->file = f->path;
    f->n_entries++;
    g_hash_table_insert (f->by_name, e->name, e);
  }

  /* Overlap: sorted by begin, every non-empty tensor must start at or after
   * the furthest end seen so far.  Empty tensors occupy no bytes. */
  by_begin = g_ptr_array_new ();
  for (int i = 0; i < f->n_entries; i++)
    if (f->entries[i].end > f->entries[i].begin)
      g_ptr_array_add (by_begin, &f->entries[i]);
  g_ptr_array_sort (by_begin, compare_entry_begin);
  const st_entry *furthest = NULL;
  for (guint i = 0; i < by_begin->len; i++) {
    const st_entry *e = g_ptr_array_index (by_begin, i);
    if (furthest && e->begin < furthest->end) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                   "%s: tensors %s [%" G_GUINT64_FORMAT ", %" G_GUINT64_FORMAT ") and %s [%"
                   G_GUINT64_FORMAT ", %" G_GUINT64_FORMAT ") overlap in the data section",
                   path, furthest->name, furthest->begin, furthest->end, e->name, e->begin, e->end);
      goto out;
    }
    if (!furthest || e->end > furthest->end)
      furthest = e;
  }
  ok = TRUE;
out:
  if (by_begin)
    g_ptr_array_unref (by_begin);
  g_list_free (members);
  json_node_unref (root);
  return ok;
}

/* ------------------------------------------------------------------------ */
/* Opening. */

static gint
compare_entry_name (gconstpointer a, gconstpointer b)
{
  const st_entry *x = *(st_entry *const *) a, *y = *(st_entry *const *) b;
  return strcmp (x->name, y->name);
}

static dp_safetensors *
st_new (const char *path)
{
  dp_safetensors *st = g_new0 (dp_safetensors, 1);
  st->path = g_strdup (path);
  st->files = g_ptr_array_new_with_free_func ((GDestroyNotify) st_file_free);
  st->by_name = g_hash_table_new (g_str_hash, g_str_equal);
  st->sorted = g_ptr_array_new ();
  return st;
}

/* Exposes every tensor of f (a single-file model). */
static void
st_add_all (dp_safetensors *st, st_file *f)
{
  for (int i = 0; i < f->n_entries; i++) {
    g_hash_table_insert (st->by_name, f->entries[i].name, &f->entries[i]);
    g_ptr_array_add (st->sorted, &f->entries[i]);
  }
  g_ptr_array_sort (st->sorted, compare_entry_name);
}

static st_file *
st_file_open (const char *path, GError **error)
{
  /* O_NONBLOCK: opening a FIFO must not block; it is rejected below. */
  int fd = g_open (path, O_RDONLY | O_CLOEXEC | O_NONBLOCK, 0);
  if (fd < 0) {
    int e = errno;
    g_set_error (error, DP_ERROR, e == ENOENT ? DP_ERROR_MISSING : DP_ERROR_IO,
                 "%s: cannot open: %s", path, g_strerror (e));
    return NULL;
  }
  struct stat sb;
  if (fstat (fd, &sb) != 0) {
    int e = errno;
    g_set_error (error, DP_ERROR, DP_ERROR_IO, "%s: cannot stat: %s", path, g_strerror (e));
    close (fd);
    return NULL;
  }
  if (!S_ISREG (sb.st_mode)) {
    g_set_error (error, DP_ERROR, DP_ERROR_IO, "%s: %s", path,
                 S_ISDIR (sb.st_mode) ? "is a directory, not a file" : "is not a regular file");
    close (fd);
    return NULL;
  }
  if ((uint64_t) sb.st_size > (uint64_t) SIZE_MAX) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "%s: too large to map", path);
    close (fd);
    return NULL;
  }
  st_file *f = g_new0 (st_file, 1);
  f->path = g_strdup (path);
  f->size = (size_t) sb.st_size;
  if (f->size > 0) {
    void *m = mmap (NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      int e = errno;
      g_set_error (error, DP_ERROR, DP_ERROR_IO, "%s: cannot map %" G_GSIZE_FORMAT " bytes: %s",
                   path, f->size, g_strerror (e));
      close (fd);
      st_file_free (f);
      return NULL;
    }
    f->map = m;
    f->map_len = f->size;
    f->base = m;
  }
  close (fd);
  if (!st_file_parse (f, error)) {
    st_file_free (f);
    return NULL;
  }
  return f;
}

dp_safetensors *
dp_safetensors_open (const char *path, GError **error)
{
  g_return_val_if_fail (path != NULL, NULL);
  st_file *f = st_file_open (path, error);
  if (!f)
    return NULL;
  dp_safetensors *st = st_new (path);
  g_ptr_array_add (st->files, f);
  st_add_all (st, f);
  return st;
}

dp_safetensors *
dp_safetensors_open_memory (const void *data, size_t size, const char *name, GError **error)
{
  g_return_val_if_fail (data != NULL || size == 0, NULL);
  if (!name)
    name = "<memory>";
  st_file *f = g_new0 (st_file, 1);
  f->path = g_strdup (name);
  f->base = data;
  f->size = size;
  if (!st_file_parse (f, error)) {
    st_file_free (f);
    return NULL;
  }
  dp_safetensors *st = st_new (name);
  g_ptr_array_add (st->files, f);
  st_add_all (st, f);
  return st;
}

/* For g_ptr_array_sort, which passes pointers to the elements. */
static gint
compare_strings (gconstpointer a, gconstpointer b)
{
  return strcmp (*(const char *const *) a, *(const char *const *) b);
}

static gboolean
has_suffix (const char *s, const char *suffix)
{
  return g_str_has_suffix (s, suffix) && strlen (s) > strlen (suffix);
}

/* Sharded: the index's weight_map names every tensor's shard. */
static dp_safetensors *
open_index (const char *dir, const char *index_name, GError **error)
{
  char *index_path = g_build_filename (dir, index_name, NULL);
  dp_safetensors *st = NULL;
  /* shard file name -> st_file* (owned by st) */
  GHashTable *shards = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  char *text = NULL;
  gsize len = 0;
  JsonNode *root = NULL;
  GList *names = NULL;
  GError *err = NULL;

  if (!g_file_get_contents (index_path, &text, &len, &err)) {
    g_set_error (error, DP_ERROR, DP_ERROR_IO, "%s: cannot read: %s", index_path, err->message);
    g_error_free (err);
    goto fail;
  }
  root = parse_json_object (index_path, "index", text, len, error);
  if (!root)
    goto fail;
  JsonNode *wm = json_object_get_member (json_node_get_object (root), "weight_map");
  if (!wm || !JSON_NODE_HOLDS_OBJECT (wm)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: %s", index_path,
                 wm ? "\"weight_map\" is not an object" : "no \"weight_map\"");
    goto fail;
  }
  JsonObject *map = json_node_get_object (wm);
  if (json_object_get_size (map) == 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: \"weight_map\" is empty", index_path);
    goto fail;
  }

  st = st_new (dir);
  names = json_object_get_members (map);
  for (GList *l = names; l; l = l->next) {
    const char *name = l->data;
    JsonNode *v = json_object_get_member (map, name);
    if (!node_is_string (v)) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                   "%s: weight_map entry for %s is not a file name", index_path, name);
      goto fail;
    }
    const char *shard = json_node_get_string (v);
    /* Shards live next to the index: no paths, no escaping the directory. */
    if (!*shard || strchr (shard, '/') || !strcmp (shard, ".") || !strcmp (shard, "..")) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                   "%s: weight_map maps %s to \"%s\", which is not a file name in this directory",
                   index_path, name, shard);
      goto fail;
    }
    st_file *f = g_hash_table_lookup (shards, shard);
    if (!f) {
      char *shard_path = g_build_filename (dir, shard, NULL);
      if (!g_file_test (shard_path, G_FILE_TEST_EXISTS)) {
        g_set_error (error, DP_ERROR, DP_ERROR_MISSING,
                     "%s: weight_map maps %s to shard %s, which does not exist", index_path, name,
                     shard_path);
        g_free (shard_path);
        goto fail;
      }
      f = st_file_open (shard_path, error);
      g_free (shard_path);
      if (!f)
        goto fail;
      g_ptr_array_add (st->files, f);
      g_hash_table_insert (shards, g_strdup (shard), f);
    }
    st_entry *e = g_hash_table_lookup (f->by_name, name);
    if (!e) {
      g_set_error (error, DP_ERROR, DP_ERROR_MISSING,
                   "%s: weight_map maps tensor %s to %s, which does not contain it", index_path,
                   name, f->path);
      goto fail;
    }
    g_hash_table_insert (st->by_name, e->name, e);
    g_ptr_array_add (st->sorted, e);
  }
  g_ptr_array_sort (st->sorted, compare_entry_name);
  goto done;

fail:
  dp_safetensors_close (st);
  st = NULL;
done:
  g_list_free (names);
  if (root)
    json_node_unref (root);
  g_hash_table_unref (shards);
  g_free (text);
  g_free (index_path);
  return st;
}

dp_safetensors *
dp_safetensors_open_dir (const char *dir, GError **error)
{
  g_return_val_if_fail (dir != NULL, NULL);
  GError *err = NULL;
  GDir *d = g_dir_open (dir, 0, &err);
  if (!d) {
    g_set_error (error, DP_ERROR, g_error_matches (err, G_FILE_ERROR, G_FILE_ERROR_NOENT)
                 ? DP_ERROR_MISSING : DP_ERROR_IO, "%s: cannot open directory: %s", dir, err->message);
    g_error_free (err);
    return NULL;
  }
  GPtrArray *indexes = g_ptr_array_new_with_free_func (g_free);
  GPtrArray *files = g_ptr_array_new_with_free_func (g_free);
  const char *entry;
  while ((entry = g_dir_read_name (d))) {
    if (has_suffix (entry, ".safetensors.index.json"))
      g_ptr_array_add (indexes, g_strdup (entry));
    else if (has_suffix (entry, ".safetensors"))
      g_ptr_array_add (files, g_strdup (entry));
  }
  g_dir_close (d);
  g_ptr_array_sort (indexes, compare_strings);
  g_ptr_array_sort (files, compare_strings);

  dp_safetensors *st = NULL;
  if (indexes->len > 1) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                 "%s: %u *.safetensors.index.json files (%s, %s...); expected at most one", dir,
                 indexes->len, (char *) indexes->pdata[0], (char *) indexes->pdata[1]);
  } else if (indexes->len == 1) {
    st = open_index (dir, indexes->pdata[0], error);
  } else if (files->len == 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_MISSING,
                 "%s: no *.safetensors file and no *.safetensors.index.json", dir);
  } else if (files->len > 1) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                 "%s: %u *.safetensors files (%s, %s...) but no *.safetensors.index.json to say "
                 "which tensor is where", dir, files->len, (char *) files->pdata[0],
                 (char *) files->pdata[1]);
  } else {
    char *path = g_build_filename (dir, files->pdata[0], NULL);
    st = dp_safetensors_open (path, error);
    g_free (path);
  }
  g_ptr_array_unref (indexes);
  g_ptr_array_unref (files);
  return st;
}

void
dp_safetensors_close (dp_safetensors *st)
{
  if (!st)
    return;
  g_ptr_array_unref (st->sorted);
  g_hash_table_unref (st->by_name);
  g_ptr_array_unref (st->files);
  g_free (st->path);
  g_free (st);
}

/* ------------------------------------------------------------------------ */
/* Lookups. */

int
dp_safetensors_count (const dp_safetensors *st)
{
  g_return_val_if_fail (st != NULL, 0);
  return (int) st->sorted->len;
}

const char *
dp_safetensors_name (const dp_safetensors *st, int i)
{
  g_return_val_if_fail (st != NULL && i >= 0 && (guint) i < st->sorted->len, NULL);
  return ((const st_entry *) g_ptr_array_index (st->sorted, i))->name;
}

gboolean
dp_safetensors_contains (const dp_safetensors *st, const char *name)
{
  g_return_val_if_fail (st != NULL && name != NULL, FALSE);
  return g_hash_table_contains (st->by_name, name);
}

gboolean
dp_safetensors_get (const dp_safetensors *st, const char *name, int ndim, const int64_t *shape,
                    dp_tensor *out, GError **error)
{
  g_return_val_if_fail (st != NULL && name != NULL && out != NULL, FALSE);
  g_return_val_if_fail (ndim <= DP_MAX_DIMS && (ndim <= 0 || shape != NULL), FALSE);
  const st_entry *e = g_hash_table_lookup (st->by_name, name);
  if (!e) {
    g_set_error (error, DP_ERROR, DP_ERROR_MISSING, "%s: no tensor %s", st->path, name);
    return FALSE;
  }
  if (ndim >= 0) {
    gboolean same = ndim == e->ndim;
    for (int i = 0; same && i < ndim; i++)
      same = shape[i] == e->shape[i];
    if (!same) {
      char *have = shape_string (e->ndim, e->shape), *want = shape_string (ndim, shape);
      g_set_error (error, DP_ERROR, DP_ERROR_SHAPE, "%s: tensor %s has shape %s, expected %s",
                   e->file, name, have, want);
      g_free (have);
      g_free (want);
      return FALSE;
    }
  }
  /* The mapping is read-only; dp_tensor has no const flavour. */
  *out = dp_tensor_view ((void *) e->data, e->dtype, e->ndim, e->shape);
  return TRUE;
}

gboolean
dp_safetensors_load (const dp_safetensors *st, const char *name, dp_dtype dtype, int ndim,
                     const int64_t *shape, dp_tensor *out, GError **error)
{
  dp_tensor file;
  if (!dp_safetensors_get (st, name, ndim, shape, &file, error))
    return FALSE;
  dp_tensor t = dp_tensor_view (NULL, dtype, file.ndim, file.shape);
  size_t nbytes = dp_tensor_nbytes (&t), file_bytes = dp_tensor_nbytes (&file);
  t.data = g_try_malloc (MAX (nbytes, 1));
  if (!t.data) {
    g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "%s: tensor %s: cannot allocate %" G_GSIZE_FORMAT
                 " bytes", st->path, name, nbytes);
    return FALSE;
  }
  t.owned = TRUE;
  size_t esize = dp_dtype_size (file.dtype);
  if (file.dtype == dtype) {
    memcpy (t.data, file.data, nbytes);
  } else if ((uintptr_t) file.data % esize == 0) {
    dp_convert (t.data, dtype, file.data, file.dtype, (size_t) dp_tensor_nelem (&t));
  } else {
    /* The format does not promise aligned tensors: convert from an aligned
     * copy rather than read misaligned elements. */
    void *aligned = g_try_malloc (MAX (file_bytes, 1));
    if (!aligned) {
      g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "%s: tensor %s: cannot allocate %"
                   G_GSIZE_FORMAT " bytes", st->path, name, file_bytes);
      dp_tensor_free (&t);
      return FALSE;
    }
    memcpy (aligned, file.data, file_bytes);
    dp_convert (t.data, dtype, aligned, file.dtype, (size_t) dp_tensor_nelem (&t));
    g_free (aligned);
  }
  *out = t;
  return TRUE;
}

const char *
dp_safetensors_metadata (const dp_safetensors *st, const char *key)
{
  g_return_val_if_fail (st != NULL && key != NULL, NULL);
  for (guint i = 0; i < st->files->len; i++) {
    const st_file *f = g_ptr_array_index (st->files, i);
    const char *v = f->metadata ? g_hash_table_lookup (f->metadata, key) : NULL;
    if (v)
      return v;
  }
  return NULL;
}
