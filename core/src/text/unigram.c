/* The Unigram model as Hugging Face tokenizers runs it (models/unigram): the
 * segmentation of each pre-token with the highest sum of piece scores,
 * computed in double precision, with HF's tie-breaking:
 * - the text is walked by start position; at each, the pieces that start
 *   there are tried shortest first, and a path replaces the best one ending at
 *   the same place only when its score is strictly higher.  On an exact tie
 *   the path found first stays: the one whose last piece starts earliest;
 * - a character that no one-character piece covers becomes the unknown piece,
 *   scored the lowest piece score minus 10;
 * - adjacent unknown pieces are fused into one;
 * - with byte_fallback, an unknown piece is spelled as its bytes <0xNN> when
 *   all of them are pieces.
 * sentencepiece itself scores in float and breaks ties otherwise, which is
 * why its ids differed on near ties (issue 17, item 5). */
#include "text_internal.h"
#include "dualparal/backend.h"

#include <math.h>
#include <string.h>

/* FNV-1a, computed as a candidate piece grows byte by byte. */
#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

typedef struct {
  char *text;
  gsize len;
  double score;
  guint64 hash;
} piece;

struct dp_unigram {
  GArray *pieces;   /* piece, by id */
  int *slots;       /* open addressing over pieces: id + 1, 0 = empty */
  gsize n_slots;
  gsize max_len;    /* longest piece in bytes */
  double unk_score;
  int unk_id;
  gboolean byte_fallback;
  int byte_ids[256]; /* <0xNN> pieces, -1 when absent */
};

static guint64
hash_bytes (const char *s, gsize len)
{
  guint64 h = FNV_OFFSET;
  for (gsize i = 0; i < len; i++)
    h = (h ^ (guint8) s[i]) * FNV_PRIME;
  return h;
}

dp_unigram *
dp_unigram_new (void)
{
  dp_unigram *m = g_new0 (dp_unigram, 1);
  m->pieces = g_array_new (FALSE, FALSE, sizeof (piece));
  m->unk_id = -1;
  return m;
}

void
dp_unigram_free (dp_unigram *m)
{
  if (!m)
    return;
  for (guint i = 0; i < m->pieces->len; i++)
    g_free (g_array_index (m->pieces, piece, i).text);
  g_array_free (m->pieces, TRUE);
  g_free (m->slots);
  g_free (m);
}

gboolean
dp_unigram_add (dp_unigram *m, const char *text, gsize len, double score, GError **error)
{
  if (len == 0 || !g_utf8_validate_len (text, len, NULL) || memchr (text, 0, len)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "piece %u is empty or not UTF-8", m->pieces->len);
    return FALSE;
  }
  if (!isfinite (score)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "piece %u has a score that is not a number",
                 m->pieces->len);
    return FALSE;
  }
  piece p = { g_strndup (text, len), len, score, hash_bytes (text, len) };
  g_array_append_val (m->pieces, p);
  return TRUE;
}

/* The slot of the piece text[0..len) with hash h, or of the empty slot where
 * it would go. */
static gsize
find_slot (const dp_unigram *m, const char *text, gsize len, guint64 h)
{
  gsize mask = m->n_slots - 1, i = (gsize) h & mask;
  while (m->slots[i]) {
    const piece *p = &g_array_index (m->pieces, piece, m->slots[i] - 1);
    if (p->hash == h && p->len == len && memcmp (p->text, text, len) == 0)
      return i;
    i = (i + 1) & mask;
  }
  return i;
}

gboolean
dp_unigram_finish (dp_unigram *m, int unk_id, gboolean byte_fallback, GError **error)
{
  guint n = m->pieces->len;
  if (n == 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "the vocabulary is empty");
    return FALSE;
  }
  if (unk_id >= (int) n) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "unknown piece id %d is outside the %u pieces",
                 unk_id, n);
    return FALSE;
  }
  m->unk_id = unk_id < 0 ? -1 : unk_id;
  m->byte_fallback = byte_fallback;
  m->n_slots = 16;
  while (m->n_slots < 2 * (gsize) n)
    m->n_slots *= 2;
  m->slots = g_new0 (int, m->n_slots);
  double min_score = G_MAXDOUBLE;
  for (guint id = 0; id < n; id++) {
    const piece *p = &g_array_index (m->pieces, piece, id);
    /* A repeated piece maps to its last id, as HF's token-to-id map does. */
    m->slots[find_slot (m, p->text, p->len, p->hash)] = (int) id + 1;
    m->max_len = MAX (m->max_len, p->len);
    min_score = MIN (min_score, p->score);
  }
  m->unk_score = min_score - 10.0;
  for (int b = 0; b < 256; b++) {
    char name[8];
    g_snprintf (name, sizeof name, "<0x%02X>", b);
    m->byte_ids[b] = dp_unigram_id (m, name);
  }
  return TRUE;
}

int
dp_unigram_size (const dp_unigram *m)
{
  return (int) m->pieces->len;
}

int
dp_unigram_id (const dp_unigram *m, const char *text)
{
  gsize len = strlen (text);
  if (len == 0 || !m->slots)
    return -1;
  int s = m->slots[find_slot (m, text, len, hash_bytes (text, len))];
  return s - 1;
}

typedef struct {
  double score;
  gsize start; /* where the last piece of the best path starts */
  int id;      /* that piece; -1 for the unknown piece */
  gboolean reached;
} best_node;

static void
offer (best_node *node, double score, gsize start, int id)
{
  if (!node->reached || score > node->score) {
    node->score = score;
    node->start = start;
    node->id = id;
    node->reached = TRUE;
  }
}

/* Appends the ids of a fused stretch of unknown pieces: like HF, which turns
 * piece strings back into ids, the stretch itself when it is a piece, else
 * its bytes <0xNN> (byte_fallback), else the unknown piece. */
static gboolean
emit_unknown (const dp_unigram *m, const char *text, gsize len, GArray *ids, GError **error)
{
  int id = m->slots[find_slot (m, text, len, hash_bytes (text, len))] - 1;
  if (id >= 0) {
    g_array_append_val (ids, id);
    return TRUE;
  }
  if (m->byte_fallback) {
    gboolean all = TRUE;
    for (gsize i = 0; i < len; i++)
      all = all && m->byte_ids[(guint8) text[i]] >= 0;
    if (all) {
      for (gsize i = 0; i < len; i++)
        g_array_append_val (ids, m->byte_ids[(guint8) text[i]]);
      return TRUE;
    }
  }
  if (m->unk_id < 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "'%.*s' is not in the tokenizer's vocabulary and it has no unknown piece", (int) len,
                 text);
    return FALSE;
  }
  g_array_append_val (ids, m->unk_id);
  return TRUE;
}

gboolean
dp_unigram_encode (const dp_unigram *m, const char *text, gsize len, GArray *ids, GError **error)
{
  if (len == 0)
    return TRUE;
  best_node *best = g_new0 (best_node, len + 1);
  best[0].reached = TRUE;
  for (gsize start = 0; start < len; start = g_utf8_next_char (text + start) - text) {
    gsize char_len = g_utf8_next_char (text + start) - (text + start);
    double base = best[start].score;
    gboolean single = FALSE;
    guint64 h = FNV_OFFSET;
    gsize limit = MIN (m->max_len, len - start);
    for (gsize l = 1; l <= limit; l++) {
      h = (h ^ (guint8) text[start + l - 1]) * FNV_PRIME;
      int s = m->slots[find_slot (m, text + start, l, h)];
      if (!s)
        continue;
      const piece *p = &g_array_index (m->pieces, piece, s - 1);
      offer (&best[start + l], base + p->score, start, s - 1);
      single = single || l == char_len;
    }
    if (!single)
      offer (&best[start + char_len], base + m->unk_score, start, -1);
  }

  /* Back from the end; the pieces come out last first. */
  GArray *rev = g_array_new (FALSE, FALSE, sizeof (gsize));
  for (gsize end = len; end > 0; end = best[end].start)
    g_array_append_val (rev, end);
  gboolean ok = TRUE;
  for (guint i = rev->len; ok && i > 0; i--) {
    gsize end = g_array_index (rev, gsize, i - 1), start = best[end].start;
    if (best[end].id >= 0 && best[end].id != m->unk_id) {
      g_array_append_val (ids, best[end].id);
      continue;
    }
    /* Fuse this unknown piece with the unknown ones right after it. */
    while (i > 1) {
      gsize next_end = g_array_index (rev, gsize, i - 2);
      if (best[next_end].id >= 0 && best[next_end].id != m->unk_id)
        break;
      end = next_end;
      i--;
    }
    ok = emit_unknown (m, text + start, end - start, ids, error);
  }
  g_array_free (rev, TRUE);
  g_free (best);
  return ok;
}
