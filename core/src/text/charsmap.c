/* sentencepiece's precompiled normalization map (the nmt_nfkc rules of T5 /
 * umT5), applied the way Hugging Face tokenizers' Precompiled normalizer
 * applies it, which is not the way sentencepiece does:
 * - the text goes by extended grapheme clusters; a cluster shorter than 6
 *   bytes is looked up whole first;
 * - a lookup takes the SHORTEST key that is a prefix of what is looked up
 *   (HF keeps the first common-prefix match), and the rest of that cluster is
 *   dropped when the whole-cluster lookup hits;
 * - otherwise each character is looked up alone and kept when absent.
 * The blob: a little-endian uint32 byte size of the double array, the array
 * (darts-clone units), then NUL-terminated replacement strings. */
#include "text_internal.h"
#include "dualparal/backend.h"

#include <string.h>

struct dp_charsmap {
  guint32 *units;
  gsize n_units;
  char *strings;
  gsize strings_len;
};

dp_charsmap *
dp_charsmap_new (const guint8 *blob, gsize len, const char *what, GError **error)
{
  if (len < 4) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: precompiled charsmap of %zu bytes is too short",
                 what, len);
    return NULL;
  }
  guint32 trie_bytes = (guint32) blob[0] | (guint32) blob[1] << 8 | (guint32) blob[2] << 16
                       | (guint32) blob[3] << 24;
  if (trie_bytes == 0 || trie_bytes % 4 != 0 || trie_bytes > len - 4) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                 "%s: precompiled charsmap says its trie has %u bytes, the blob has %zu", what,
                 trie_bytes, len - 4);
    return NULL;
  }
  dp_charsmap *map = g_new0 (dp_charsmap, 1);
  map->n_units = trie_bytes / 4;
  map->units = g_new (guint32, map->n_units);
  for (gsize i = 0; i < map->n_units; i++) {
    const guint8 *u = blob + 4 + 4 * i;
    map->units[i] = (guint32) u[0] | (guint32) u[1] << 8 | (guint32) u[2] << 16 | (guint32) u[3] << 24;
  }
  map->strings_len = len - 4 - trie_bytes;
  map->strings = g_malloc (map->strings_len + 1);
  memcpy (map->strings, blob + 4 + trie_bytes, map->strings_len);
  map->strings[map->strings_len] = '\0'; /* a last string without its NUL ends here */
  return map;
}

void
dp_charsmap_free (dp_charsmap *map)
{
  if (!map)
    return;
  g_free (map->units);
  g_free (map->strings);
  g_free (map);
}

/* darts-clone unit fields. */
static inline gsize
unit_offset (guint32 u)
{
  return (gsize) (u >> 10) << ((u & (1u << 9)) >> 6);
}
static inline guint32
unit_label (guint32 u)
{
  return u & ((1u << 31) | 0xFF);
}
static inline gboolean
unit_has_leaf (guint32 u)
{
  return (u >> 8) & 1;
}
static inline guint32
unit_value (guint32 u)
{
  return u & ((1u << 31) - 1);
}

/* The replacement of the shortest key that is a prefix of key[0..len), or
 * NULL.  Every index is checked: a corrupt map finds nothing, never reads
 * outside itself. */
static const char *
lookup (const dp_charsmap *map, const char *key, gsize len)
{
  gsize pos = unit_offset (map->units[0]);
  for (gsize i = 0; i < len; i++) {
    guint8 c = (guint8) key[i];
    if (c == 0)
      break;
    pos ^= c;
    if (pos >= map->n_units)
      return NULL;
    guint32 u = map->units[pos];
    if (unit_label (u) != c)
      return NULL;
    pos ^= unit_offset (u);
    if (unit_has_leaf (u)) {
      if (pos >= map->n_units)
        return NULL;
      guint32 v = unit_value (map->units[pos]);
      /* A replacement that is not UTF-8 (corrupt map) is ignored. */
      if (v >= map->strings_len || !g_utf8_validate (map->strings + v, -1, NULL))
        return NULL;
      return map->strings + v;
    }
  }
  return NULL;
}

/* --- extended grapheme clusters (Unicode UAX #29), as far as they matter
 * here: clusters under 6 bytes are looked up whole, so the rules that join
 * short sequences (marks, joiners, prepend characters, CR LF) must be exact;
 * Hangul, emoji and flag sequences are followed too so that the clusters after
 * them start where they should. */

static gboolean
is_prepend (gunichar c)
{
  return (c >= 0x0600 && c <= 0x0605) || c == 0x06DD || c == 0x070F || c == 0x0890 || c == 0x0891
         || c == 0x08E2 || c == 0x0D4E || c == 0x110BD || c == 0x110CD || c == 0x111C2
         || c == 0x111C3 || c == 0x1193F || c == 0x11941 || c == 0x11A3A
         || (c >= 0x11A84 && c <= 0x11A89) || c == 0x11D46 || c == 0x11F02;
}

static gboolean
is_control (gunichar c)
{
  if (c == 0x200C || c == 0x200D || is_prepend (c))
    return FALSE;
  switch (g_unichar_type (c)) {
  case G_UNICODE_CONTROL:
  case G_UNICODE_LINE_SEPARATOR:
  case G_UNICODE_PARAGRAPH_SEPARATOR:
  case G_UNICODE_FORMAT:
    return TRUE;
  default:
    return FALSE;
  }
}

/* The spacing marks UAX #29 leaves out of SpacingMark (Myanmar, Tai Tham,
 * ... vowel signs that start clusters of their own). */
static gboolean
is_spacing_mark_exception (gunichar c)
{
  return c == 0x102B || c == 0x102C || c == 0x1038 || (c >= 0x1062 && c <= 0x1064)
         || (c >= 0x1067 && c <= 0x106D) || c == 0x1083 || (c >= 0x1087 && c <= 0x108C)
         || c == 0x108F || (c >= 0x109A && c <= 0x109C) || c == 0x1A61 || c == 0x1A63
         || c == 0x1A64 || c == 0xAA7B || c == 0xAA7D || c == 0x11720 || c == 0x11721;
}

/* Extend, ZWJ and SpacingMark: never a break before them (GB9, GB9a). */
static gboolean
is_extend (gunichar c)
{
  if (c == 0x200C || c == 0x200D || c == 0xFF9E || c == 0xFF9F || (c >= 0x1F3FB && c <= 0x1F3FF)
      || (c >= 0xE0020 && c <= 0xE007F) || c == 0x0E33 || c == 0x0EB3)
    return TRUE;
  if (is_spacing_mark_exception (c))
    return FALSE;
  switch (g_unichar_type (c)) {
  case G_UNICODE_NON_SPACING_MARK:
  case G_UNICODE_ENCLOSING_MARK:
  case G_UNICODE_SPACING_MARK:
    return TRUE;
  default:
    return FALSE;
  }
}

typedef enum { H_NONE, H_L, H_V, H_T, H_LV, H_LVT } hangul_kind;

static hangul_kind
hangul (gunichar c)
{
  if ((c >= 0x1100 && c <= 0x115F) || (c >= 0xA960 && c <= 0xA97C))
    return H_L;
  if ((c >= 0x1160 && c <= 0x11A7) || (c >= 0xD7B0 && c <= 0xD7C6))
    return H_V;
  if ((c >= 0x11A8 && c <= 0x11FF) || (c >= 0xD7CB && c <= 0xD7FB))
    return H_T;
  if (c >= 0xAC00 && c <= 0xD7A3)
    return (c - 0xAC00) % 28 == 0 ? H_LV : H_LVT;
  return H_NONE;
}

static gboolean
is_regional_indicator (gunichar c)
{
  return c >= 0x1F1E6 && c <= 0x1F1FF;
}

/* Extended_Pictographic, by its blocks (close enough: it only decides whether
 * a ZWJ joins two emoji, in clusters far over 6 bytes). */
static gboolean
is_pictographic (gunichar c)
{
  return c == 0xA9 || c == 0xAE || c == 0x203C || c == 0x2049 || c == 0x2122 || c == 0x2139
         || (c >= 0x2194 && c <= 0x21AA) || (c >= 0x2300 && c <= 0x23FF)
         || (c >= 0x25AA && c <= 0x27BF) || (c >= 0x2934 && c <= 0x2935)
         || (c >= 0x2B05 && c <= 0x2B55) || c == 0x3030 || c == 0x303D || c == 0x3297
         || c == 0x3299 || (c >= 0x1F000 && c <= 0x1FAFF && !is_regional_indicator (c)
                            && !(c >= 0x1F3FB && c <= 0x1F3FF));
}

/* The end of the cluster that starts at p (p < end). */
static const char *
cluster_end (const char *p, const char *end)
{
  gunichar prev = g_utf8_get_char (p);
  const char *q = g_utf8_next_char (p);
  int ri_count = is_regional_indicator (prev) ? 1 : 0;
  gboolean emoji_zwj = FALSE; /* seen ExtPict Extend* ZWJ */
  gboolean in_emoji = is_pictographic (prev);

  if (prev == '\r')
    return (q < end && *q == '\n') ? q + 1 : q;
  if (prev == '\n' || is_control (prev))
    return q;
  while (q < end) {
    gunichar c = g_utf8_get_char (q);
    gboolean join;
    hangul_kind hp = hangul (prev), hc = hangul (c);
    if (c == '\r' || c == '\n' || is_control (c))
      join = FALSE;
    else if (is_extend (c))
      join = TRUE;
    else if (is_prepend (prev))
      join = TRUE;
    else if (hp == H_L && (hc == H_L || hc == H_V || hc == H_LV || hc == H_LVT))
      join = TRUE;
    else if ((hp == H_LV || hp == H_V) && (hc == H_V || hc == H_T))
      join = TRUE;
    else if ((hp == H_LVT || hp == H_T) && hc == H_T)
      join = TRUE;
    else if (emoji_zwj && prev == 0x200D && is_pictographic (c))
      join = TRUE;
    else if (is_regional_indicator (prev) && is_regional_indicator (c) && ri_count % 2 == 1)
      join = TRUE;
    else
      join = FALSE;
    if (!join)
      break;
    if (c == 0x200D && in_emoji)
      emoji_zwj = TRUE;
    else if (!is_extend (c)) {
      in_emoji = is_pictographic (c);
      emoji_zwj = FALSE;
    }
    ri_count = is_regional_indicator (c) ? ri_count + 1 : 0;
    prev = c;
    q = g_utf8_next_char (q);
  }
  return q;
}

void
dp_charsmap_normalize (const dp_charsmap *map, const char *text, gsize len, GString *out)
{
  const char *p = text, *end = text + len;
  while (p < end) {
    const char *ce = cluster_end (p, end);
    const char *norm = (ce - p < 6) ? lookup (map, p, ce - p) : NULL;
    if (norm) {
      g_string_append (out, norm);
      p = ce;
      continue;
    }
    while (p < ce) {
      const char *next = g_utf8_next_char (p);
      norm = lookup (map, p, next - p);
      if (norm)
        g_string_append (out, norm);
      else
        g_string_append_len (out, p, next - p);
      p = next;
    }
  }
}
