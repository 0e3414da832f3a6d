/* ftfy.fix_text as Wan's prompt cleaning calls it (ftfy 6, default
 * TextFixerConfig), for the fixes of ordinary text.  The text goes line by
 * line (each segment ends after a "\n"); on each, these steps repeat until
 * nothing changes:
 *   unescape_html        named references ending in ";" of at most 24
 *                        letters or digits (HTML 5 names, plus upper-case
 *                        spellings such as &EACUTE;), numeric references
 *                        that html.unescape decodes whole.  Skipped on a line
 *                        with "<" in it and on every line after it (ftfy
 *                        takes "<" for HTML and turns unescaping off).
 *   fix_c1_controls      U+0080..U+009F as Windows-1252
 *   fix_latin_ligatures  ﬁ -> fi, Ĳ -> IJ, ... (not æ, œ)
 *   fix_character_width  full-width and half-width forms (U+FF01..U+FFEF) to
 *                        their NFKC form, U+3000 to a space
 *   uncurl_quotes        ‘ ’ ‚ ‛ ʼ -> ', “ ” „ ‟ -> "
 *   fix_line_breaks      CR LF, CR, U+2028, U+2029, U+0085 -> LF
 *   remove_terminal_escapes  ESC [ digits/; letter
 *   remove_control_chars U+0000..0008, 000B, 000E..001F, 007F, 206A..206F,
 *                        FEFF, FFF9..FFFC
 *   NFC normalization
 * Not done: fix_encoding (mojibake such as "cafÃ©", with restore_byte_a0,
 * replace_lossy_sequences and decode_inconsistent_utf8): a heuristic that
 * needs ftfy's character-class and badness tables; ordinary text never
 * triggers it, but text with characters typical of mojibake (a "Â" before a
 * space...) is changed by ftfy and left as it is here.  fix_surrogates has
 * nothing to do on valid UTF-8. */
#include "text_internal.h"
#include "dualparal/tokenizer.h"

#include <string.h>

/* --- unescape_html ---------------------------------------------------------- */

/* Appends what ftfy makes of the reference at p (*p == '&') when it matches
 * &#?[0-9A-Za-z]{1,24}; and returns the position after it; NULL when it does
 * not match. */
static const char *
ftfy_unescape_ref (GString *out, const char *p)
{
  const char *name = p + 1;
  gboolean numeric = *name == '#';
  const char *q = numeric ? name + 1 : name;
  gsize n = 0;
  while (g_ascii_isalnum (q[n]))
    n++;
  if (n < 1 || n > 24 || q[n] != ';')
    return NULL;
  const char *end = q + n + 1;
  if (!numeric) {
    const dp_html_entity *e = dp_html_entity_find (dp_html5_entities, dp_html5_entities_len, q, n);
    if (!e)
      e = dp_html_entity_find (dp_ftfy_upper_entities, dp_ftfy_upper_entities_len, q, n);
    if (!e)
      return NULL;
    g_string_append (out, e->value);
    return end;
  }
  /* html.unescape of the reference alone; kept when it decoded only part
   * of it (a ";" is left). */
  char *ref = g_strndup (p, end - p);
  char *dec = dp_html_unescape (ref);
  g_string_append (out, strchr (dec, ';') ? ref : dec);
  g_free (ref);
  g_free (dec);
  return end;
}

static char *
unescape_html (const char *text)
{
  return dp_text_replace_refs (text, ftfy_unescape_ref);
}

/* --- the character maps --------------------------------------------------------- */

/* fix_latin_ligatures: the replacement of c, or NULL. */
static const char *
ligature (gunichar c)
{
  switch (c) {
  case 0x0132: return "IJ";
  case 0x0133: return "ij";
  case 0x0149: return "\xca\xbcn"; /* ʼn */
  case 0x01F1: return "DZ";
  case 0x01F2: return "Dz";
  case 0x01F3: return "dz";
  case 0x01C4: return "D\xc5\xbd"; /* DŽ */
  case 0x01C5: return "D\xc5\xbe"; /* Dž */
  case 0x01C6: return "d\xc5\xbe"; /* dž */
  case 0x01C7: return "LJ";
  case 0x01C8: return "Lj";
  case 0x01C9: return "lj";
  case 0x01CA: return "NJ";
  case 0x01CB: return "Nj";
  case 0x01CC: return "nj";
  case 0xFB00: return "ff";
  case 0xFB01: return "fi";
  case 0xFB02: return "fl";
  case 0xFB03: return "ffi";
  case 0xFB04: return "ffl";
  case 0xFB05: return "\xc5\xbft"; /* ſt */
  case 0xFB06: return "st";
  default: return NULL;
  }
}

/* Appends c to out after the one-character steps, in ftfy's order:
 * C1 controls, ligatures, character width, quotes. */
static void
append_mapped (GString *out, gunichar c)
{
  if (c >= 0x80 && c <= 0x9F)
    c = dp_cp1252_80[c - 0x80];
  const char *lig = ligature (c);
  if (lig) {
    /* Only the quote step applies after: "ʼn" becomes "'n". */
    for (const char *l = lig; *l; l = g_utf8_next_char (l)) {
      gunichar lc = g_utf8_get_char (l);
      g_string_append_unichar (out, lc == 0x02BC ? '\'' : lc);
    }
    return;
  }
  if (c == 0x3000) {
    g_string_append_c (out, ' ');
    return;
  }
  if (c >= 0xFF01 && c <= 0xFFEF) {
    char buf[8];
    int len = g_unichar_to_utf8 (c, buf);
    char *nfkc = g_utf8_normalize (buf, len, G_NORMALIZE_NFKC);
    if (nfkc && strcmp (nfkc, buf) != 0) {
      /* Width forms of quotes are not curly: no further step applies. */
      g_string_append (out, nfkc);
      g_free (nfkc);
      return;
    }
    g_free (nfkc);
  }
  if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B))
    c = '\'';
  else if (c >= 0x201C && c <= 0x201F)
    c = '"';
  g_string_append_unichar (out, c);
}

static char *
map_chars (const char *text)
{
  GString *out = g_string_sized_new (strlen (text));
  for (const char *p = text; *p; p = g_utf8_next_char (p))
    append_mapped (out, g_utf8_get_char (p));
  return g_string_free (out, FALSE);
}

/* fix_line_breaks. */
static char *
fix_line_breaks (const char *text)
{
  GString *out = g_string_sized_new (strlen (text));
  for (const char *p = text; *p; p = g_utf8_next_char (p)) {
    gunichar c = g_utf8_get_char (p);
    if (c == '\r' && p[1] == '\n')
      continue; /* the LF comes next */
    if (c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85)
      c = '\n';
    g_string_append_unichar (out, c);
  }
  return g_string_free (out, FALSE);
}

/* remove_terminal_escapes (ESC [ (\d|;)* [a-zA-Z], \d being any decimal
 * digit, as in Python's re), then remove_control_chars. */
static char *
remove_escapes_and_controls (const char *text)
{
  GString *no_esc = g_string_sized_new (strlen (text));
  for (const char *p = text; *p;) {
    if (p[0] == '\033' && p[1] == '[') {
      const char *q = p + 2;
      while (*q == ';' || g_unichar_isdigit (g_utf8_get_char (q)))
        q = g_utf8_next_char (q);
      if (g_ascii_isalpha (*q)) {
        p = q + 1;
        continue;
      }
    }
    const char *next = g_utf8_next_char (p);
    g_string_append_len (no_esc, p, next - p);
    p = next;
  }
  GString *out = g_string_sized_new (no_esc->len);
  for (const char *p = no_esc->str; *p; p = g_utf8_next_char (p)) {
    gunichar c = g_utf8_get_char (p);
    if (c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F
        || (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC))
      continue;
    g_string_append_unichar (out, c);
  }
  g_string_free (no_esc, TRUE);
  return g_string_free (out, FALSE);
}

/* One segment, the steps repeated until nothing changes. */
static char *
fix_segment (const char *segment, gboolean unescape)
{
  char *text = g_strdup (segment);
  for (;;) {
    char *step, *orig = g_strdup (text);
    if (unescape) {
      step = unescape_html (text);
      g_free (text);
      text = step;
    }
    step = map_chars (text);
    g_free (text);
    text = fix_line_breaks (step);
    g_free (step);
    step = remove_escapes_and_controls (text);
    g_free (text);
    text = g_utf8_normalize (step, -1, G_NORMALIZE_NFC);
    g_free (step);
    gboolean same = strcmp (text, orig) == 0;
    g_free (orig);
    if (same)
      return text;
  }
}

char *
dp_ftfy_fix_text (const char *text)
{
  GString *out = g_string_sized_new (strlen (text));
  gboolean unescape = TRUE;
  const char *p = text;
  while (*p) {
    const char *nl = strchr (p, '\n');
    const char *end = nl ? nl + 1 : p + strlen (p);
    char *segment = g_strndup (p, end - p);
    if (strchr (segment, '<'))
      unescape = FALSE; /* for this line and the rest, as ftfy does */
    char *fixed = fix_segment (segment, unescape);
    g_string_append (out, fixed);
    g_free (fixed);
    g_free (segment);
    p = end;
  }
  return g_string_free (out, FALSE);
}
