/* Wan's prompt cleaning: Python's html.unescape (twice) and whitespace collapse.
 * See dualparal/tokenizer.h for what is and is not covered. */
#include "dualparal/tokenizer.h"
#include "dualparal/backend.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *name;
  gunichar cp;
  gboolean legacy; /* also recognised without the semicolon (HTML 5 legacy names) */
} html_entity;

/* The HTML 4 entities plus &apos; and the upper-case legacy spellings, with the
 * code points of Python's html.entities.html5, sorted by name (strcmp order)
 * for bsearch. */
static const html_entity entities[] = {
  { "AElig", 0x00C6, 1 },
  { "AMP", 0x0026, 1 },
  { "Aacute", 0x00C1, 1 },
  { "Acirc", 0x00C2, 1 },
  { "Agrave", 0x00C0, 1 },
  { "Alpha", 0x0391, 0 },
  { "Aring", 0x00C5, 1 },
  { "Atilde", 0x00C3, 1 },
  { "Auml", 0x00C4, 1 },
  { "Beta", 0x0392, 0 },
  { "COPY", 0x00A9, 1 },
  { "Ccedil", 0x00C7, 1 },
  { "Chi", 0x03A7, 0 },
  { "Dagger", 0x2021, 0 },
  { "Delta", 0x0394, 0 },
  { "ETH", 0x00D0, 1 },
  { "Eacute", 0x00C9, 1 },
  { "Ecirc", 0x00CA, 1 },
  { "Egrave", 0x00C8, 1 },
  { "Epsilon", 0x0395, 0 },
  { "Eta", 0x0397, 0 },
  { "Euml", 0x00CB, 1 },
  { "GT", 0x003E, 1 },
  { "Gamma", 0x0393, 0 },
  { "Iacute", 0x00CD, 1 },
  { "Icirc", 0x00CE, 1 },
  { "Igrave", 0x00CC, 1 },
  { "Iota", 0x0399, 0 },
  { "Iuml", 0x00CF, 1 },
  { "Kappa", 0x039A, 0 },
  { "LT", 0x003C, 1 },
  { "Lambda", 0x039B, 0 },
  { "Mu", 0x039C, 0 },
  { "Ntilde", 0x00D1, 1 },
  { "Nu", 0x039D, 0 },
  { "OElig", 0x0152, 0 },
  { "Oacute", 0x00D3, 1 },
  { "Ocirc", 0x00D4, 1 },
  { "Ograve", 0x00D2, 1 },
  { "Omega", 0x03A9, 0 },
  { "Omicron", 0x039F, 0 },
  { "Oslash", 0x00D8, 1 },
  { "Otilde", 0x00D5, 1 },
  { "Ouml", 0x00D6, 1 },
  { "Phi", 0x03A6, 0 },
  { "Pi", 0x03A0, 0 },
  { "Prime", 0x2033, 0 },
  { "Psi", 0x03A8, 0 },
  { "QUOT", 0x0022, 1 },
  { "REG", 0x00AE, 1 },
  { "Rho", 0x03A1, 0 },
  { "Scaron", 0x0160, 0 },
  { "Sigma", 0x03A3, 0 },
  { "THORN", 0x00DE, 1 },
  { "Tau", 0x03A4, 0 },
  { "Theta", 0x0398, 0 },
  { "Uacute", 0x00DA, 1 },
  { "Ucirc", 0x00DB, 1 },
  { "Ugrave", 0x00D9, 1 },
  { "Upsilon", 0x03A5, 0 },
  { "Uuml", 0x00DC, 1 },
  { "Xi", 0x039E, 0 },
  { "Yacute", 0x00DD, 1 },
  { "Yuml", 0x0178, 0 },
  { "Zeta", 0x0396, 0 },
  { "aacute", 0x00E1, 1 },
  { "acirc", 0x00E2, 1 },
  { "acute", 0x00B4, 1 },
  { "aelig", 0x00E6, 1 },
  { "agrave", 0x00E0, 1 },
  { "alefsym", 0x2135, 0 },
  { "alpha", 0x03B1, 0 },
  { "amp", 0x0026, 1 },
  { "and", 0x2227, 0 },
  { "ang", 0x2220, 0 },
  { "apos", 0x0027, 0 },
  { "aring", 0x00E5, 1 },
  { "asymp", 0x2248, 0 },
  { "atilde", 0x00E3, 1 },
  { "auml", 0x00E4, 1 },
  { "bdquo", 0x201E, 0 },
  { "beta", 0x03B2, 0 },
  { "brvbar", 0x00A6, 1 },
  { "bull", 0x2022, 0 },
  { "cap", 0x2229, 0 },
  { "ccedil", 0x00E7, 1 },
  { "cedil", 0x00B8, 1 },
  { "cent", 0x00A2, 1 },
  { "chi", 0x03C7, 0 },
  { "circ", 0x02C6, 0 },
  { "clubs", 0x2663, 0 },
  { "cong", 0x2245, 0 },
  { "copy", 0x00A9, 1 },
  { "crarr", 0x21B5, 0 },
  { "cup", 0x222A, 0 },
  { "curren", 0x00A4, 1 },
  { "dArr", 0x21D3, 0 },
  { "dagger", 0x2020, 0 },
  { "darr", 0x2193, 0 },
  { "deg", 0x00B0, 1 },
  { "delta", 0x03B4, 0 },
  { "diams", 0x2666, 0 },
  { "divide", 0x00F7, 1 },
  { "eacute", 0x00E9, 1 },
  { "ecirc", 0x00EA, 1 },
  { "egrave", 0x00E8, 1 },
  { "empty", 0x2205, 0 },
  { "emsp", 0x2003, 0 },
  { "ensp", 0x2002, 0 },
  { "epsilon", 0x03B5, 0 },
  { "equiv", 0x2261, 0 },
  { "eta", 0x03B7, 0 },
  { "eth", 0x00F0, 1 },
  { "euml", 0x00EB, 1 },
  { "euro", 0x20AC, 0 },
  { "exist", 0x2203, 0 },
  { "fnof", 0x0192, 0 },
  { "forall", 0x2200, 0 },
  { "frac12", 0x00BD, 1 },
  { "frac14", 0x00BC, 1 },
  { "frac34", 0x00BE, 1 },
  { "frasl", 0x2044, 0 },
  { "gamma", 0x03B3, 0 },
  { "ge", 0x2265, 0 },
  { "gt", 0x003E, 1 },
  { "hArr", 0x21D4, 0 },
  { "harr", 0x2194, 0 },
  { "hearts", 0x2665, 0 },
  { "hellip", 0x2026, 0 },
  { "iacute", 0x00ED, 1 },
  { "icirc", 0x00EE, 1 },
  { "iexcl", 0x00A1, 1 },
  { "igrave", 0x00EC, 1 },
  { "image", 0x2111, 0 },
  { "infin", 0x221E, 0 },
  { "int", 0x222B, 0 },
  { "iota", 0x03B9, 0 },
  { "iquest", 0x00BF, 1 },
  { "isin", 0x2208, 0 },
  { "iuml", 0x00EF, 1 },
  { "kappa", 0x03BA, 0 },
  { "lArr", 0x21D0, 0 },
  { "lambda", 0x03BB, 0 },
  { "lang", 0x27E8, 0 },
  { "laquo", 0x00AB, 1 },
  { "larr", 0x2190, 0 },
  { "lceil", 0x2308, 0 },
  { "ldquo", 0x201C, 0 },
  { "le", 0x2264, 0 },
  { "lfloor", 0x230A, 0 },
  { "lowast", 0x2217, 0 },
  { "loz", 0x25CA, 0 },
  { "lrm", 0x200E, 0 },
  { "lsaquo", 0x2039, 0 },
  { "lsquo", 0x2018, 0 },
  { "lt", 0x003C, 1 },
  { "macr", 0x00AF, 1 },
  { "mdash", 0x2014, 0 },
  { "micro", 0x00B5, 1 },
  { "middot", 0x00B7, 1 },
  { "minus", 0x2212, 0 },
  { "mu", 0x03BC, 0 },
  { "nabla", 0x2207, 0 },
  { "nbsp", 0x00A0, 1 },
  { "ndash", 0x2013, 0 },
  { "ne", 0x2260, 0 },
  { "ni", 0x220B, 0 },
  { "not", 0x00AC, 1 },
  { "notin", 0x2209, 0 },
  { "nsub", 0x2284, 0 },
  { "ntilde", 0x00F1, 1 },
  { "nu", 0x03BD, 0 },
  { "oacute", 0x00F3, 1 },
  { "ocirc", 0x00F4, 1 },
  { "oelig", 0x0153, 0 },
  { "ograve", 0x00F2, 1 },
  { "oline", 0x203E, 0 },
  { "omega", 0x03C9, 0 },
  { "omicron", 0x03BF, 0 },
  { "oplus", 0x2295, 0 },
  { "or", 0x2228, 0 },
  { "ordf", 0x00AA, 1 },
  { "ordm", 0x00BA, 1 },
  { "oslash", 0x00F8, 1 },
  { "otilde", 0x00F5, 1 },
  { "otimes", 0x2297, 0 },
  { "ouml", 0x00F6, 1 },
  { "para", 0x00B6, 1 },
  { "part", 0x2202, 0 },
  { "permil", 0x2030, 0 },
  { "perp", 0x22A5, 0 },
  { "phi", 0x03C6, 0 },
  { "pi", 0x03C0, 0 },
  { "piv", 0x03D6, 0 },
  { "plusmn", 0x00B1, 1 },
  { "pound", 0x00A3, 1 },
  { "prime", 0x2032, 0 },
  { "prod", 0x220F, 0 },
  { "prop", 0x221D, 0 },
  { "psi", 0x03C8, 0 },
  { "quot", 0x0022, 1 },
  { "rArr", 0x21D2, 0 },
  { "radic", 0x221A, 0 },
  { "rang", 0x27E9, 0 },
  { "raquo", 0x00BB, 1 },
  { "rarr", 0x2192, 0 },
  { "rceil", 0x2309, 0 },
  { "rdquo", 0x201D, 0 },
  { "real", 0x211C, 0 },
  { "reg", 0x00AE, 1 },
  { "rfloor", 0x230B, 0 },
  { "rho", 0x03C1, 0 },
  { "rlm", 0x200F, 0 },
  { "rsaquo", 0x203A, 0 },
  { "rsquo", 0x2019, 0 },
  { "sbquo", 0x201A, 0 },
  { "scaron", 0x0161, 0 },
  { "sdot", 0x22C5, 0 },
  { "sect", 0x00A7, 1 },
  { "shy", 0x00AD, 1 },
  { "sigma", 0x03C3, 0 },
  { "sigmaf", 0x03C2, 0 },
  { "sim", 0x223C, 0 },
  { "spades", 0x2660, 0 },
  { "sub", 0x2282, 0 },
  { "sube", 0x2286, 0 },
  { "sum", 0x2211, 0 },
  { "sup", 0x2283, 0 },
  { "sup1", 0x00B9, 1 },
  { "sup2", 0x00B2, 1 },
  { "sup3", 0x00B3, 1 },
  { "supe", 0x2287, 0 },
  { "szlig", 0x00DF, 1 },
  { "tau", 0x03C4, 0 },
  { "there4", 0x2234, 0 },
  { "theta", 0x03B8, 0 },
  { "thetasym", 0x03D1, 0 },
  { "thinsp", 0x2009, 0 },
  { "thorn", 0x00FE, 1 },
  { "tilde", 0x02DC, 0 },
  { "times", 0x00D7, 1 },
  { "trade", 0x2122, 0 },
  { "uArr", 0x21D1, 0 },
  { "uacute", 0x00FA, 1 },
  { "uarr", 0x2191, 0 },
  { "ucirc", 0x00FB, 1 },
  { "ugrave", 0x00F9, 1 },
  { "uml", 0x00A8, 1 },
  { "upsih", 0x03D2, 0 },
  { "upsilon", 0x03C5, 0 },
  { "uuml", 0x00FC, 1 },
  { "weierp", 0x2118, 0 },
  { "xi", 0x03BE, 0 },
  { "yacute", 0x00FD, 1 },
  { "yen", 0x00A5, 1 },
  { "yuml", 0x00FF, 1 },
  { "zeta", 0x03B6, 0 },
  { "zwj", 0x200D, 0 },
  { "zwnj", 0x200C, 0 },
};

/* html.unescape maps these numeric references through the Windows-1252 table
 * (0x80-0x9f), NUL to U+FFFD and CR to itself. */
static const gunichar cp1252_80[32] = {
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
    return cp1252_80[num - 0x80];
  if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF)
    return 0xFFFD;
  if ((num >= 0x01 && num <= 0x08) || num == 0x0B || (num >= 0x0E && num <= 0x1F)
      || num == 0x7F || (num >= 0xFDD0 && num <= 0xFDEF) || (num & 0xFFFE) == 0xFFFE)
    return NO_CHAR;
  return (gunichar) num;
}

static int
entity_cmp (const void *key, const void *elem)
{
  const char *name = key;
  return strcmp (name, ((const html_entity *) elem)->name);
}

/* The entity called name[0..len), or NULL.  Only legacy ones when !semicolon. */
static const html_entity *
find_entity (const char *name, size_t len, gboolean semicolon)
{
  char buf[16];
  if (len == 0 || len >= sizeof buf)
    return NULL;
  memcpy (buf, name, len);
  buf[len] = '\0';
  const html_entity *e = bsearch (buf, entities, G_N_ELEMENTS (entities), sizeof entities[0],
                                  entity_cmp);
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
  const html_entity *e = find_entity (q, r - q, semicolon);
  if (e) {
    g_string_append_unichar (out, e->cp);
    return end;
  }
  /* Longest prefix (at least 2 characters, shorter than the whole match with
   * its semicolon) that is a legacy name; the rest is kept verbatim.  Names are
   * ASCII, so byte prefixes do. */
  size_t max_len = semicolon ? (size_t) (r - q) : (size_t) (r - q) - 1;
  for (size_t len = MIN (max_len, 8); len >= 2; len--) {
    e = find_entity (q, len, FALSE);
    if (e) {
      g_string_append_unichar (out, e->cp);
      g_string_append_len (out, q + len, end - (q + len));
      return end;
    }
  }
  g_string_append_len (out, p, end - p);
  return end;
}

char *
dp_html_unescape (const char *text)
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
    p = unescape_ref (out, amp);
  }
  return g_string_free (out, FALSE);
}

/* Python's str.isspace: what str.strip() removes. */
static gboolean
is_python_space (gunichar c)
{
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0
         || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029
         || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Unicode White_Space: what \s matches in the `regex` module diffusers uses
 * for whitespace_clean.  The same set without U+001C..U+001F. */
static gboolean
is_white_space (gunichar c)
{
  return is_python_space (c) && !(c >= 0x1C && c <= 0x1F);
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
  /* basic_clean: html.unescape twice, strip(); whitespace_clean: runs of \s
   * become one space, strip() again (a no-op by then: the ends are not space). */
  char *once = dp_html_unescape (prompt);
  char *text = dp_html_unescape (once);
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
    if (is_white_space (g_utf8_get_char (p))) {
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
