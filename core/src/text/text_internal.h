/* Pieces of the umT5 tokenizer shared inside core/src/text (not installed).
 * What the whole does and how it matches Hugging Face: dualparal/tokenizer.h. */
#ifndef DUALPARAL_TEXT_INTERNAL_H
#define DUALPARAL_TEXT_INTERNAL_H

#include <stdint.h>
#include <glib.h>

G_BEGIN_DECLS

/* Unicode White_Space: what Rust's char::is_whitespace (HF WhitespaceSplit)
 * and the `regex` module's \s (diffusers' whitespace_clean) match. */
static inline gboolean
dp_text_is_white_space (gunichar c)
{
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680
         || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F
         || c == 0x205F || c == 0x3000;
}

/* --- prompt cleaning (prompt_clean.c, fix_text.c, html_entities.c) ------ */

typedef struct {
  const char *name;  /* without "&" and ";" */
  const char *value; /* UTF-8, one or two code points */
  gboolean legacy;   /* also recognised without the semicolon */
} dp_html_entity;

/* Python's html.entities.html5, by name (strcmp order). */
extern const dp_html_entity dp_html5_entities[];
extern const gsize dp_html5_entities_len;
/* The upper-case spellings ftfy adds (&EACUTE; ...), by name. */
extern const dp_html_entity dp_ftfy_upper_entities[];
extern const gsize dp_ftfy_upper_entities_len;
/* The entity called name[0..len) in table, or NULL. */
const dp_html_entity *dp_html_entity_find (const dp_html_entity *table, gsize n, const char *name,
                                           gsize len);

/* What html.unescape and ftfy make of the C1 code points U+0080..U+009F:
 * Windows-1252, the five bytes it leaves undefined kept as they are. */
extern const gunichar dp_cp1252_80[32];

/* ftfy.fix_text with its default settings, less the mojibake repair
 * (fix_text.c says what is done).  text is valid UTF-8; returns a new
 * string. */
char *dp_ftfy_fix_text (const char *text);

/* Copies text, handing each '&' to decode_ref (out, p): it appends what the
 * reference at p stands for and returns where the text goes on, or NULL
 * when p starts no reference (the '&' is then kept).  The loop of both
 * unescapers (Python's html.unescape in prompt_clean.c, ftfy's in
 * fix_text.c). */
char *dp_text_replace_refs (const char *text, const char *(*decode_ref) (GString *out, const char *p));

/* --- sentencepiece's precompiled normalization map (charsmap.c) --------- */

typedef struct dp_charsmap dp_charsmap;

/* Parses a precompiled_charsmap blob (a darts-clone double array, then the
 * replacement strings); copies it.  NULL with DP_ERROR_FORMAT when malformed;
 * what names the file. */
dp_charsmap *dp_charsmap_new (const guint8 *blob, gsize len, const char *what, GError **error);
void dp_charsmap_free (dp_charsmap *map);
/* Appends the normalization of text[0..len) (valid UTF-8) to out, the way HF
 * tokenizers' Precompiled normalizer does it: grapheme cluster by cluster. */
void dp_charsmap_normalize (const dp_charsmap *map, const char *text, gsize len, GString *out);

/* --- the Unigram model (unigram.c) -------------------------------------- */

typedef struct dp_unigram dp_unigram;

/* An empty model; pieces are added in id order. */
dp_unigram *dp_unigram_new (void);
void dp_unigram_free (dp_unigram *m);
/* Appends a piece (the next id).  FALSE with DP_ERROR_FORMAT when the piece
 * is empty or not UTF-8, or the score is not finite. */
gboolean dp_unigram_add (dp_unigram *m, const char *piece, gsize len, double score, GError **error);
/* unk_id: the unknown piece's id, -1 when the model has none. */
gboolean dp_unigram_finish (dp_unigram *m, int unk_id, gboolean byte_fallback, GError **error);
int dp_unigram_size (const dp_unigram *m);
/* The id of a piece, -1 when it is not in the vocabulary. */
int dp_unigram_id (const dp_unigram *m, const char *piece);
/* Appends to ids the best segmentation of one pre-token text[0..len) (valid
 * UTF-8).  FALSE with DP_ERROR_INVALID when a character is not in the
 * vocabulary and the model has no unknown piece. */
gboolean dp_unigram_encode (const dp_unigram *m, const char *text, gsize len, GArray *ids,
                            GError **error);

/* --- sentencepiece model files (spiece_model.c) ------------------------- */

typedef enum {
  DP_SPIECE_NORMAL = 1,
  DP_SPIECE_UNKNOWN = 2,
  DP_SPIECE_CONTROL = 3,
  DP_SPIECE_USER_DEFINED = 4,
  DP_SPIECE_UNUSED = 5,
  DP_SPIECE_BYTE = 6,
} dp_spiece_type;

typedef struct {
  char *piece;
  float score;
  dp_spiece_type type;
} dp_spiece_piece;

typedef struct {
  GArray *pieces;     /* dp_spiece_piece */
  GBytes *charsmap;   /* NULL when the model has none */
} dp_spiece_model;

/* Reads the pieces and the normalizer's charsmap of a sentencepiece
 * ModelProto file.  DP_ERROR_MISSING / DP_ERROR_FORMAT. */
dp_spiece_model *dp_spiece_model_read (const char *path, GError **error);
/* The same from bytes; what names them in errors. */
dp_spiece_model *dp_spiece_model_parse (const guint8 *data, gsize len, const char *what,
                                        GError **error);
void dp_spiece_model_free (dp_spiece_model *m);

G_END_DECLS

#endif
