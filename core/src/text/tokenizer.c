/* The umT5 tokenizer as transformers 5 builds it for Wan (T5Tokenizer over
 * the Hugging Face tokenizers library), from the model's tokenizer/ folder:
 *   added (special) tokens split out of the text, precompiled-charsmap
 *   normalization, WhitespaceSplit, Metaspace ("▁" prepended to every word,
 *   split before each "▁"), the Unigram model on each piece, EOS appended.
 * Behaviour and sources: dualparal/tokenizer.h. */
#include "dualparal/tokenizer.h"
#include "dualparal/backend.h"
#include "text_internal.h"

#include <json-glib/json-glib.h>
#include <string.h>

#define METASPACE "\xe2\x96\x81" /* U+2581, sentencepiece's word start */

typedef struct {
  char *content;   /* as matched: normalized already when normalized is set */
  int id;
  gboolean normalized, lstrip, rstrip, single_word;
} added_token;

struct dp_tokenizer {
  char *path;
  dp_unigram *model;
  dp_charsmap *charsmap; /* NULL: no normalization */
  GArray *added;         /* added_token */
  int eos_id, pad_id;
};

void
dp_tokenizer_free (dp_tokenizer *tok)
{
  if (!tok)
    return;
  g_free (tok->path);
  dp_unigram_free (tok->model);
  dp_charsmap_free (tok->charsmap);
  if (tok->added) {
    for (guint i = 0; i < tok->added->len; i++)
      g_free (g_array_index (tok->added, added_token, i).content);
    g_array_free (tok->added, TRUE);
  }
  g_free (tok);
}

static gboolean
has_added (const dp_tokenizer *tok, const char *content)
{
  for (guint i = 0; i < tok->added->len; i++)
    if (strcmp (g_array_index (tok->added, added_token, i).content, content) == 0)
      return TRUE;
  return FALSE;
}

static void
add_token (dp_tokenizer *tok, const char *content, int id, gboolean normalized, gboolean lstrip,
           gboolean rstrip, gboolean single_word)
{
  added_token t = { NULL, id, normalized, lstrip, rstrip, single_word };
  if (normalized && tok->charsmap) {
    GString *s = g_string_new (NULL);
    dp_charsmap_normalize (tok->charsmap, content, strlen (content), s);
    t.content = g_string_free (s, FALSE);
  } else {
    t.content = g_strdup (content);
  }
  if (*t.content == '\0' || has_added (tok, t.content)) {
    g_free (t.content);
    return;
  }
  g_array_append_val (tok->added, t);
}

/* --- JSON members of the expected type, NULL / FALSE otherwise: a malformed
 * file gives an error message, never a GLib critical. */

static JsonNode *
member (JsonObject *o, const char *key)
{
  return o ? json_object_get_member (o, key) : NULL;
}

static const char *
json_str (JsonObject *o, const char *key)
{
  JsonNode *n = member (o, key);
  return n && JSON_NODE_HOLDS_VALUE (n) && json_node_get_value_type (n) == G_TYPE_STRING
             ? json_node_get_string (n) : NULL;
}

static JsonObject *
json_obj (JsonObject *o, const char *key)
{
  JsonNode *n = member (o, key);
  return n && JSON_NODE_HOLDS_OBJECT (n) ? json_node_get_object (n) : NULL;
}

static JsonArray *
json_arr (JsonObject *o, const char *key)
{
  JsonNode *n = member (o, key);
  return n && JSON_NODE_HOLDS_ARRAY (n) ? json_node_get_array (n) : NULL;
}

static gboolean
json_int (JsonObject *o, const char *key, gint64 *value)
{
  JsonNode *n = member (o, key);
  if (!n || !JSON_NODE_HOLDS_VALUE (n) || json_node_get_value_type (n) != G_TYPE_INT64)
    return FALSE;
  *value = json_node_get_int (n);
  return TRUE;
}

static gboolean
json_bool (JsonObject *o, const char *key)
{
  JsonNode *n = member (o, key);
  return n && JSON_NODE_HOLDS_VALUE (n) && json_node_get_value_type (n) == G_TYPE_BOOLEAN
         && json_node_get_boolean (n);
}

/* --- tokenizer_config.json: the names of the EOS, pad and unknown tokens -- */

typedef struct {
  char *eos, *pad, *unk;
} special_names;

/* A token name: a string, or an object with a "content" string. */
static char *
config_token (JsonObject *cfg, const char *key, const char *fallback)
{
  const char *name = json_str (cfg, key);
  if (!name)
    name = json_str (json_obj (cfg, key), "content");
  return g_strdup (name ? name : fallback);
}

/* Reads dir/tokenizer_config.json when present; T5's names otherwise. */
static gboolean
read_special_names (const char *dir, special_names *names, GError **error)
{
  char *path = g_build_filename (dir, "tokenizer_config.json", NULL);
  JsonParser *parser = NULL;
  JsonObject *cfg = NULL;
  gboolean ok = TRUE;
  if (g_file_test (path, G_FILE_TEST_EXISTS)) {
    GError *err = NULL;
    parser = json_parser_new ();
    if (!json_parser_load_from_file (parser, path, &err)) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: %s", path, err->message);
      g_error_free (err);
      ok = FALSE;
    } else if (JSON_NODE_HOLDS_OBJECT (json_parser_get_root (parser))) {
      cfg = json_node_get_object (json_parser_get_root (parser));
    }
  }
  names->eos = config_token (cfg, "eos_token", "</s>");
  names->pad = config_token (cfg, "pad_token", "<pad>");
  names->unk = config_token (cfg, "unk_token", "<unk>");
  if (parser)
    g_object_unref (parser);
  g_free (path);
  return ok;
}

static void
special_names_clear (special_names *names)
{
  g_free (names->eos);
  g_free (names->pad);
  g_free (names->unk);
}

/* EOS and pad ids; the configured special tokens become added tokens (as
 * transformers registers them) when the vocabulary has them. */
static gboolean
finish_specials (dp_tokenizer *tok, const special_names *names, GError **error)
{
  const char *list[] = { names->pad, names->eos, names->unk };
  for (guint i = 0; i < G_N_ELEMENTS (list); i++) {
    int id = dp_unigram_id (tok->model, list[i]);
    if (id >= 0)
      add_token (tok, list[i], id, FALSE, FALSE, FALSE, FALSE);
  }
  tok->eos_id = dp_unigram_id (tok->model, names->eos);
  for (guint i = 0; tok->eos_id < 0 && i < tok->added->len; i++)
    if (strcmp (g_array_index (tok->added, added_token, i).content, names->eos) == 0)
      tok->eos_id = g_array_index (tok->added, added_token, i).id;
  if (tok->eos_id < 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: no end-of-sequence token '%s'", tok->path,
                 names->eos);
    return FALSE;
  }
  tok->pad_id = MAX (dp_unigram_id (tok->model, names->pad), 0);
  return TRUE;
}

/* --- tokenizer.json -------------------------------------------------------- */

/* The Precompiled normalizer's charsmap, alone or inside a Sequence (the only
 * normalizer transformers 5 keeps for T5). */
static const char *
json_charsmap (JsonObject *root)
{
  JsonObject *norm = json_obj (root, "normalizer");
  const char *type = json_str (norm, "type");
  if (type && strcmp (type, "Precompiled") == 0)
    return json_str (norm, "precompiled_charsmap");
  JsonArray *seq = type && strcmp (type, "Sequence") == 0 ? json_arr (norm, "normalizers") : NULL;
  for (guint i = 0; seq && i < json_array_get_length (seq); i++) {
    JsonNode *e = json_array_get_element (seq, i);
    JsonObject *o = JSON_NODE_HOLDS_OBJECT (e) ? json_node_get_object (e) : NULL;
    type = json_str (o, "type");
    if (type && strcmp (type, "Precompiled") == 0)
      return json_str (o, "precompiled_charsmap");
  }
  return NULL;
}

static gboolean
load_json (dp_tokenizer *tok, GError **error)
{
  GError *err = NULL;
  JsonParser *parser = json_parser_new ();
  gboolean ok = FALSE;
  if (!json_parser_load_from_file (parser, tok->path, &err)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: %s", tok->path, err->message);
    g_error_free (err);
    goto out;
  }
  JsonNode *root_node = json_parser_get_root (parser);
  JsonObject *root = root_node && JSON_NODE_HOLDS_OBJECT (root_node) ? json_node_get_object (root_node) : NULL;
  JsonObject *model = json_obj (root, "model");
  if (!model) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: no \"model\" object", tok->path);
    goto out;
  }
  const char *type = json_str (model, "type") ? json_str (model, "type") : "(none)";
  if (strcmp (type, "Unigram") != 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                 "%s: model type %s is not supported (umT5 tokenizers are Unigram)", tok->path, type);
    goto out;
  }
  JsonArray *vocab = json_arr (model, "vocab");
  if (!vocab) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: the Unigram model has no vocab list", tok->path);
    goto out;
  }
  for (guint i = 0; i < json_array_get_length (vocab); i++) {
    JsonNode *e = json_array_get_element (vocab, i);
    JsonArray *pair = JSON_NODE_HOLDS_ARRAY (e) ? json_node_get_array (e) : NULL;
    JsonNode *p0 = pair && json_array_get_length (pair) == 2 ? json_array_get_element (pair, 0) : NULL;
    JsonNode *p1 = p0 ? json_array_get_element (pair, 1) : NULL;
    if (!p0 || json_node_get_value_type (p0) != G_TYPE_STRING || !JSON_NODE_HOLDS_VALUE (p1)
        || (json_node_get_value_type (p1) != G_TYPE_DOUBLE && json_node_get_value_type (p1) != G_TYPE_INT64)) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: vocab entry %u is not [piece, score]",
                   tok->path, i);
      goto out;
    }
    const char *piece = json_node_get_string (p0);
    if (!dp_unigram_add (tok->model, piece, strlen (piece), json_node_get_double (p1), &err)) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: %s", tok->path, err->message);
      g_error_free (err);
      goto out;
    }
  }
  gint64 unk_id = -1; /* null or absent: no unknown piece */
  if (!json_int (model, "unk_id", &unk_id) && member (model, "unk_id")
      && !JSON_NODE_HOLDS_NULL (member (model, "unk_id"))) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: unk_id is not an integer", tok->path);
    goto out;
  }
  if (unk_id < -1 || unk_id > G_MAXINT)
    unk_id = G_MAXINT; /* refused below as outside the vocabulary */
  if (!dp_unigram_finish (tok->model, (int) unk_id, json_bool (model, "byte_fallback"), &err)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: %s", tok->path, err->message);
    g_error_free (err);
    goto out;
  }

  const char *b64 = json_charsmap (root);
  if (b64) {
    gsize len = 0;
    guchar *blob = g_base64_decode (b64, &len);
    tok->charsmap = dp_charsmap_new (blob, len, tok->path, error);
    g_free (blob);
    if (!tok->charsmap)
      goto out;
  }

  JsonArray *added = json_arr (root, "added_tokens");
  for (guint i = 0; added && i < json_array_get_length (added); i++) {
    JsonNode *e = json_array_get_element (added, i);
    JsonObject *o = JSON_NODE_HOLDS_OBJECT (e) ? json_node_get_object (e) : NULL;
    const char *content = json_str (o, "content");
    gint64 id = -1;
    if (!content || !json_int (o, "id", &id) || id < 0 || id >= dp_unigram_size (tok->model)) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                   "%s: added token %u has no content or an id outside the vocabulary", tok->path, i);
      goto out;
    }
    add_token (tok, content, (int) id, json_bool (o, "normalized"), json_bool (o, "lstrip"),
               json_bool (o, "rstrip"), json_bool (o, "single_word"));
  }
  ok = TRUE;
out:
  g_object_unref (parser);
  return ok;
}

/* --- spiece.model ------------------------------------------------------------ */

static gboolean
load_spiece (dp_tokenizer *tok, GError **error)
{
  GError *err = NULL;
  dp_spiece_model *sp = dp_spiece_model_read (tok->path, error);
  if (!sp)
    return FALSE;
  gboolean ok = TRUE;
  int unk_id = -1;
  for (guint i = 0; ok && i < sp->pieces->len; i++) {
    const dp_spiece_piece *p = &g_array_index (sp->pieces, dp_spiece_piece, i);
    ok = dp_unigram_add (tok->model, p->piece, strlen (p->piece), p->score, &err);
    if (p->type == DP_SPIECE_UNKNOWN && unk_id < 0)
      unk_id = (int) i;
  }
  ok = ok && dp_unigram_finish (tok->model, unk_id, FALSE, &err);
  if (!ok) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: %s", tok->path, err->message);
    g_error_free (err);
  }
  if (ok && sp->charsmap) {
    gsize len;
    const guint8 *blob = g_bytes_get_data (sp->charsmap, &len);
    tok->charsmap = dp_charsmap_new (blob, len, tok->path, error);
    ok = tok->charsmap != NULL;
  }
  /* transformers' converter makes the control pieces special tokens. */
  for (guint i = 0; ok && i < sp->pieces->len; i++) {
    const dp_spiece_piece *p = &g_array_index (sp->pieces, dp_spiece_piece, i);
    if (p->type == DP_SPIECE_CONTROL)
      add_token (tok, p->piece, (int) i, FALSE, FALSE, FALSE, FALSE);
  }
  dp_spiece_model_free (sp);
  return ok;
}

dp_tokenizer *
dp_tokenizer_load_file (const char *path, GError **error)
{
  if (!g_file_test (path, G_FILE_TEST_IS_REGULAR)) {
    g_set_error (error, DP_ERROR, DP_ERROR_MISSING, "tokenizer file %s not found", path);
    return NULL;
  }
  dp_tokenizer *tok = g_new0 (dp_tokenizer, 1);
  tok->path = g_strdup (path);
  tok->model = dp_unigram_new ();
  tok->added = g_array_new (FALSE, FALSE, sizeof (added_token));
  special_names names = { 0 };
  char *dir = g_path_get_dirname (path);
  gboolean ok = g_str_has_suffix (path, ".json") ? load_json (tok, error) : load_spiece (tok, error);
  ok = ok && read_special_names (dir, &names, error) && finish_specials (tok, &names, error);
  special_names_clear (&names);
  g_free (dir);
  if (!ok) {
    dp_tokenizer_free (tok);
    return NULL;
  }
  return tok;
}

dp_tokenizer *
dp_tokenizer_load (const char *model_dir, GError **error)
{
  char *json = g_build_filename (model_dir, "tokenizer", "tokenizer.json", NULL);
  char *spiece = g_build_filename (model_dir, "tokenizer", "spiece.model", NULL);
  dp_tokenizer *tok = NULL;
  if (g_file_test (json, G_FILE_TEST_IS_REGULAR))
    tok = dp_tokenizer_load_file (json, error);
  else if (g_file_test (spiece, G_FILE_TEST_IS_REGULAR))
    tok = dp_tokenizer_load_file (spiece, error);
  else
    g_set_error (error, DP_ERROR, DP_ERROR_MISSING,
                 "%s/tokenizer has neither tokenizer.json nor spiece.model", model_dir);
  g_free (json);
  g_free (spiece);
  return tok;
}

int
dp_tokenizer_vocab_size (const dp_tokenizer *tok)
{
  return dp_unigram_size (tok->model);
}

int
dp_tokenizer_eos_id (const dp_tokenizer *tok)
{
  return tok->eos_id;
}

int
dp_tokenizer_pad_id (const dp_tokenizer *tok)
{
  return tok->pad_id;
}

/* --- encoding ------------------------------------------------------------------ */

static gboolean
is_word_char (gunichar c)
{
  return c == '_' || g_unichar_isalnum (c);
}

/* The longest added token of the given kind starting at p (in text), whose
 * single_word condition holds; NULL if none. */
static const added_token *
match_added (const dp_tokenizer *tok, gboolean normalized, const char *text, const char *p,
             const char *end)
{
  const added_token *best = NULL;
  gsize best_len = 0;
  for (guint i = 0; i < tok->added->len; i++) {
    const added_token *t = &g_array_index (tok->added, added_token, i);
    gsize len = strlen (t->content);
    if (t->normalized != normalized || len <= best_len || len > (gsize) (end - p)
        || memcmp (p, t->content, len) != 0)
      continue;
    if (t->single_word
        && ((p > text && is_word_char (g_utf8_get_char (g_utf8_prev_char (p))))
            || (p + len < end && is_word_char (g_utf8_get_char (p + len)))))
      continue;
    best = t;
    best_len = len;
  }
  return best;
}

typedef gboolean (*span_fn) (const dp_tokenizer *tok, const char *text, gsize len, GArray *ids,
                             GError **error);

/* Splits text[0..len) on the added tokens of the given kind (leftmost,
 * longest), appends their ids and hands the text between them to fn. */
static gboolean
split_added (const dp_tokenizer *tok, gboolean normalized, const char *text, gsize len, GArray *ids,
             span_fn fn, GError **error)
{
  const char *end = text + len, *start = text, *p = text;
  while (p < end) {
    const added_token *t = match_added (tok, normalized, text, p, end);
    if (!t) {
      p = g_utf8_next_char (p);
      continue;
    }
    const char *span_end = p, *after = p + strlen (t->content);
    if (t->lstrip)
      while (span_end > start && dp_text_is_white_space (g_utf8_get_char (g_utf8_prev_char (span_end))))
        span_end = g_utf8_prev_char (span_end);
    if (t->rstrip)
      while (after < end && dp_text_is_white_space (g_utf8_get_char (after)))
        after = g_utf8_next_char (after);
    if (span_end > start && !fn (tok, start, span_end - start, ids, error))
      return FALSE;
    g_array_append_val (ids, t->id);
    p = start = after;
  }
  return start >= end || fn (tok, start, end - start, ids, error);
}

static gboolean
starts_with_metaspace (const char *p, const char *end)
{
  return end - p >= 3 && memcmp (p, METASPACE, 3) == 0;
}

/* WhitespaceSplit, Metaspace (prepend "▁" unless there, split before each
 * "▁"), Unigram on each piece. */
static gboolean
encode_words (const dp_tokenizer *tok, const char *text, gsize len, GArray *ids, GError **error)
{
  const char *end = text + len, *p = text;
  GString *word = g_string_new (NULL);
  gboolean ok = TRUE;
  while (ok && p < end) {
    while (p < end && dp_text_is_white_space (g_utf8_get_char (p)))
      p = g_utf8_next_char (p);
    if (p >= end)
      break;
    const char *w = p;
    while (p < end && !dp_text_is_white_space (g_utf8_get_char (p)))
      p = g_utf8_next_char (p);
    g_string_truncate (word, 0);
    if (!starts_with_metaspace (w, p))
      g_string_append (word, METASPACE);
    g_string_append_len (word, w, p - w);
    /* Pieces start at each "▁"; the word starts with one. */
    const char *piece = word->str, *wend = word->str + word->len;
    while (ok && piece < wend) {
      const char *next = piece + 3;
      while (next < wend && !starts_with_metaspace (next, wend))
        next = g_utf8_next_char (next);
      ok = dp_unigram_encode (tok->model, piece, next - piece, ids, error);
      piece = next;
    }
  }
  g_string_free (word, TRUE);
  return ok;
}

/* A stretch between non-normalized added tokens: normalize, then split on
 * the normalized added tokens. */
static gboolean
encode_raw_span (const dp_tokenizer *tok, const char *text, gsize len, GArray *ids, GError **error)
{
  if (!tok->charsmap)
    return split_added (tok, TRUE, text, len, ids, encode_words, error);
  GString *norm = g_string_sized_new (len);
  dp_charsmap_normalize (tok->charsmap, text, len, norm);
  gboolean ok = split_added (tok, TRUE, norm->str, norm->len, ids, encode_words, error);
  g_string_free (norm, TRUE);
  return ok;
}

int
dp_tokenizer_encode (const dp_tokenizer *tok, const char *prompt, int text_len, int32_t *ids,
                     GError **error)
{
  if (text_len < 1) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "text length %d: must be at least 1 (room for EOS)",
                 text_len);
    return -1;
  }
  char *cleaned = dp_prompt_clean (prompt, error);
  if (!cleaned)
    return -1;
  GArray *pieces = g_array_new (FALSE, FALSE, sizeof (int));
  int n = -1;
  if (split_added (tok, FALSE, cleaned, strlen (cleaned), pieces, encode_raw_span, error)) {
    /* HF truncation=True: the text keeps text_len - 1 tokens, EOS comes last. */
    n = (int) MIN (pieces->len, (guint) text_len - 1);
    for (int i = 0; i < n; i++)
      ids[i] = g_array_index (pieces, int, i);
    ids[n++] = tok->eos_id;
    for (int i = n; i < text_len; i++)
      ids[i] = tok->pad_id;
  }
  g_array_free (pieces, TRUE);
  g_free (cleaned);
  return n;
}
