/* Reads a sentencepiece model file (a ModelProto in protobuf wire format):
 * the pieces (1: piece, 2: score, 3: type) and the normalizer's precompiled
 * charsmap (normalizer_spec 3, field 2).  The rest (trainer settings, tests)
 * is skipped.  Only what transformers' converter takes from the file is kept:
 * the Hugging Face tokenizer does not use the other settings either. */
#include "text_internal.h"
#include "dualparal/backend.h"

#include <string.h>

typedef struct {
  const guint8 *p, *end;
} reader;

static gboolean
read_varint (reader *r, guint64 *v)
{
  *v = 0;
  for (int shift = 0; shift < 64 && r->p < r->end; shift += 7) {
    guint8 b = *r->p++;
    *v |= (guint64) (b & 0x7F) << shift;
    if (!(b & 0x80))
      return TRUE;
  }
  return FALSE;
}

/* Reads one field's key and value: *len_data for length-delimited fields,
 * *value for the others.  FALSE on malformed input. */
static gboolean
read_field (reader *r, guint *field, guint *wire, guint64 *value, reader *len_data)
{
  guint64 key;
  if (!read_varint (r, &key))
    return FALSE;
  *field = (guint) (key >> 3);
  *wire = (guint) (key & 7);
  switch (*wire) {
  case 0:
    return read_varint (r, value);
  case 1:
    if (r->end - r->p < 8)
      return FALSE;
    memcpy (value, r->p, 8);
    r->p += 8;
    return TRUE;
  case 2: {
    guint64 n;
    if (!read_varint (r, &n) || n > (guint64) (r->end - r->p))
      return FALSE;
    len_data->p = r->p;
    len_data->end = r->p + n;
    r->p += n;
    return TRUE;
  }
  case 5: {
    guint32 v;
    if (r->end - r->p < 4)
      return FALSE;
    v = (guint32) r->p[0] | (guint32) r->p[1] << 8 | (guint32) r->p[2] << 16 | (guint32) r->p[3] << 24;
    *value = v;
    r->p += 4;
    return TRUE;
  }
  default:
    return FALSE; /* groups (3, 4) are not in ModelProto */
  }
}

static gboolean
read_piece (reader r, dp_spiece_piece *out)
{
  guint field, wire;
  guint64 value;
  reader data = { 0 };
  out->piece = NULL;
  out->score = 0.0f;
  out->type = DP_SPIECE_NORMAL;
  while (r.p < r.end) {
    if (!read_field (&r, &field, &wire, &value, &data))
      return FALSE;
    if (field == 1 && wire == 2) {
      g_free (out->piece);
      out->piece = g_strndup ((const char *) data.p, data.end - data.p);
      if (strlen (out->piece) != (gsize) (data.end - data.p)
          || !g_utf8_validate (out->piece, -1, NULL))
        return FALSE;
    } else if (field == 2 && wire == 5) {
      guint32 bits = (guint32) value;
      memcpy (&out->score, &bits, sizeof bits);
    } else if (field == 3 && wire == 0) {
      out->type = (dp_spiece_type) value;
    }
  }
  return out->piece != NULL;
}

static gboolean
read_normalizer (reader r, GBytes **charsmap)
{
  guint field, wire;
  guint64 value;
  reader data = { 0 };
  while (r.p < r.end) {
    if (!read_field (&r, &field, &wire, &value, &data))
      return FALSE;
    if (field == 2 && wire == 2) {
      g_clear_pointer (charsmap, g_bytes_unref);
      if (data.end > data.p)
        *charsmap = g_bytes_new (data.p, data.end - data.p);
    }
  }
  return TRUE;
}

void
dp_spiece_model_free (dp_spiece_model *m)
{
  if (!m)
    return;
  for (guint i = 0; i < m->pieces->len; i++)
    g_free (g_array_index (m->pieces, dp_spiece_piece, i).piece);
  g_array_free (m->pieces, TRUE);
  if (m->charsmap)
    g_bytes_unref (m->charsmap);
  g_free (m);
}

dp_spiece_model *
dp_spiece_model_parse (const guint8 *data, gsize len, const char *what, GError **error)
{
  dp_spiece_model *m = g_new0 (dp_spiece_model, 1);
  m->pieces = g_array_new (FALSE, FALSE, sizeof (dp_spiece_piece));
  reader r = { data, data + len };
  gboolean ok = TRUE;
  while (ok && r.p < r.end) {
    guint field, wire;
    guint64 value;
    reader sub = { 0 };
    ok = read_field (&r, &field, &wire, &value, &sub);
    if (ok && field == 1 && wire == 2) {
      dp_spiece_piece piece;
      ok = read_piece (sub, &piece);
      if (ok)
        g_array_append_val (m->pieces, piece);
      else
        g_free (piece.piece);
    } else if (ok && field == 3 && wire == 2) {
      ok = read_normalizer (sub, &m->charsmap);
    }
  }
  if (!ok || m->pieces->len == 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s is not a sentencepiece model (%s)", what,
                 ok ? "no pieces" : "malformed protobuf");
    dp_spiece_model_free (m);
    return NULL;
  }
  return m;
}

dp_spiece_model *
dp_spiece_model_read (const char *path, GError **error)
{
  char *contents = NULL;
  gsize len = 0;
  GError *io = NULL;
  if (!g_file_get_contents (path, &contents, &len, &io)) {
    g_set_error (error, DP_ERROR,
                 g_error_matches (io, G_FILE_ERROR, G_FILE_ERROR_NOENT) ? DP_ERROR_MISSING : DP_ERROR_IO,
                 "tokenizer model %s: %s", path, io->message);
    g_error_free (io);
    return NULL;
  }
  dp_spiece_model *m = dp_spiece_model_parse ((const guint8 *) contents, len, path, error);
  g_free (contents);
  return m;
}
