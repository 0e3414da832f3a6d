/* Wan's prompt cleaning: ftfy.fix_text (fix_text.c), Python's html.unescape
 * (twice) and whitespace collapse.  See dualparal/tokenizer.h for what is and
 * is not covered. */
#include "dualparal/tokenizer.h"
#include "dualparal/backend.h"
#include "text_internal.h"

#include <stdlib.h>
#include <string.h>

/* html.unescape maps these numeric references through the Windows-1252 table
 * (0x80-0x9f), NUL to U+FFFD and CR to itself; ftfy maps the characters so. */
const gunichar dp_cp1252_80[32] = {
  0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
  0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008D, 0x017D, 0x008F,
  0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
  0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
};

#define NO_CHAR ((gunichar) -1)

/* Python's html._replace_charref for a numeric reference: the character to
 * emit, or NO_CHAR for the code points it drops. */
static gunichar
numeric_ref_char (guint64 num)
{
  if (num == 0)
    return 0xFFFD;
  if (num == 0x0D)
    return 0x0D;
  if (num >= 0x80 && num <= 0x9F)
    return dp_cp1252_80[num - 0x80];
  if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF)
    return 0xFFFD;
  if ((num >= 0x01 && num <= 0x08) || num == 0x0B || (num >= 0x0E && num <= 0x1F)
      || num == 0x7F || (num >= 0xFDD0 && num <= 0xFDEF) || (num & 0xFFFE) == 0xFFFE)
    return NO_CHAR;
  return (gunichar) num;
}

/* The key of a bsearch: a name that is not NUL-terminated. */
typedef struct {
  const char *name;
  gsize len;
} name_key;

static int
entity_cmp (const void *key, const void *elem)
{
  const name_key *k = key;
  const char *name = ((const dp_html_entity *) elem)->name;
  int c = strncmp (k->name, name, k->len);
  return c != 0 ? c : (name[k->len] == '\0' ? 0 : -1);
}

const dp_html_entity *
dp_html_entity_find (const dp_html_entity *table, gsize n, const char *name, gsize len)
{
  name_key key = { name, len };
  if (len == 0)
    return NULL;
  return bsearch (&key, table, n, sizeof table[0], entity_cmp);
}

/* The entity called name[0..len), or NULL.  Only legacy ones when !semicolon. */
static const dp_html_entity *
find_entity (const char *name, size_t len, gboolean semicolon)
{
  const dp_html_entity *e = dp_html_entity_find (dp_html5_entities, dp_html5_entities_len, name, len);
  if (e && !semicolon && !e->legacy)
    return NULL;
  return e;
}

/* Characters that end a named reference in html.unescape's pattern
 * &([^\t\n\f <&#;]{1,32};?). */
static gboolean
ends_name (char c)
{
  return c == '\0' || c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&'
         || c == '#' || c == ';';
}

/* Handles the reference starting at p (*p == '&'); appends its replacement and
 * returns the position after what it consumed. */
static const char *
unescape_ref (GString *out, const char *p)
{
  const char *q = p + 1;

  if (*q == '#') {
    gboolean hex = (q[1] == 'x' || q[1] == 'X') && g_ascii_isxdigit (q[2]);
    const char *digits = hex ? q + 2 : q + 1;
    if (!hex && !g_ascii_isdigit (*digits)) {
      g_string_append_c (out, '&'); /* "&#" without digits is not a reference */
      return p + 1;
    }
    /* Saturate: every value past U+10FFFF gives U+FFFD, however long. */
    guint64 num = 0;
    const char *r = digits;
    for (; hex ? g_ascii_isxdigit (*r) : g_ascii_isdigit (*r); r++) {
      int d = hex ? g_ascii_xdigit_value (*r) : g_ascii_digit_value (*r);
      num = MIN (num * (hex ? 16 : 10) + (guint64) d, (guint64) 0x110000);
    }
    if (*r == ';')
      r++;
    gunichar c = numeric_ref_char (num);
    if (c != NO_CHAR)
      g_string_append_unichar (out, c);
    return r;
  }

  /* Named: up to 32 code points, then an optional semicolon. */
  const char *r = q;
  int count = 0;
  while (count < 32 && !ends_name (*r)) {
    r = g_utf8_next_char (r);
    count++;
  }
  if (count == 0) {
    g_string_append_c (out, '&');
    return p + 1;
  }
  gboolean semicolon = *r == ';';
  const char *end = semicolon ? r + 1 : r;
  const dp_html_entity *e = find_entity (q, r - q, semicolon);
  if (e) {
    g_string_append (out, e->value);
    return end;
  }
  /* Longest prefix (at least 2 characters, shorter than the whole match with
   * its semicolon) that is a legacy name; the rest is kept verbatim.  Names are
   * ASCII, so byte prefixes do. */
  size_t max_len = semicolon ? (size_t) (r - q) : (size_t) (r - q) - 1;
  for (size_t len = max_len; len >= 2; len--) {
    e = find_entity (q, len, FALSE);
    if (e) {
      g_string_append (out, e->value);
      g_string_append_len (out, q + len, end - (q + len));
      return end;
    }
  }
  g_string_append_len (out, p, end - p);
  return end;
}

char *
dp_text_replace_refs (const char *text, const char *(*decode_ref) (GString *out, const char *p))
{
  GString *out = g_string_sized_new (strlen (text));
  const char *p = text;
  while (*p) {
    const char *amp = strchr (p, '&');
    if (!amp) {
      g_string_append (out, p);
      break;
    }
    g_string_append_len (out, p, amp - p);
    const char *after = decode_ref (out, amp);
    if (!after) {
      g_string_append_c (out, '&');
      after = amp + 1;
    }
    p = after;
  }
  return g_string_free (out, FALSE);
}

char *
dp_html_unescape (const char *text)
{
  return dp_text_replace_refs (text, unescape_ref);
}

/* Python's str.isspace: what str.strip() removes. */
static gboolean
is_python_space (gunichar c)
{
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0
         || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029
         || c == 0x202F || c == 0x205F || c == 0x3000;
}

char *
dp_prompt_clean (const char *prompt, GError **error)
{
  const char *bad = NULL;
  if (!prompt) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "prompt is NULL");
    return NULL;
  }
  if (!g_utf8_validate (prompt, -1, &bad)) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "prompt is not valid UTF-8 (bad byte 0x%02x at offset %td)",
                 (guint) (guchar) *bad, bad - prompt);
    return NULL;
  }
  /* basic_clean: ftfy.fix_text, html.unescape twice, strip(); whitespace_clean:
   * runs of \s become one space, strip() again (a no-op by then: the ends are
   * not space). */
  char *fixed = dp_ftfy_fix_text (prompt);
  char *once = dp_html_unescape (fixed);
  char *text = dp_html_unescape (once);
  g_free (fixed);
  g_free (once);

  const char *begin = text, *end = text + strlen (text);
  while (begin < end && is_python_space (g_utf8_get_char (begin)))
    begin = g_utf8_next_char (begin);
  while (end > begin) {
    const char *prev = g_utf8_prev_char (end);
    if (!is_python_space (g_utf8_get_char (prev)))
      break;
    end = prev;
  }

  GString *out = g_string_sized_new (end - begin);
  gboolean in_space = FALSE;
  for (const char *p = begin; p < end; p = g_utf8_next_char (p)) {
    if (dp_text_is_white_space (g_utf8_get_char (p))) {
      if (!in_space)
        g_string_append_c (out, ' ');
      in_space = TRUE;
      continue;
    }
    in_space = FALSE;
    g_string_append_len (out, p, g_utf8_next_char (p) - p);
  }
  g_free (text);
  return g_string_free (out, FALSE);
}
