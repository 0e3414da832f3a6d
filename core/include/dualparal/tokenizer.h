/* dualparal: the umT5 tokenizer and Wan's prompt cleaning.
 *
 * Tokenization is sentencepiece itself (Debian's libsentencepiece) over the
 * model's tokenizer/spiece.model, wrapped so that the ids equal what diffusers'
 * WanPipeline gets from its Hugging Face T5 tokenizer:
 *
 *   ids = sentencepiece(prompt_clean(prompt))[:text_len - 1] + [EOS], then pad
 *
 * - The pieces the HF tokenizer treats as special tokens (sentencepiece's
 *   control pieces and the unknown piece: "<pad>", "</s>", "<unk>" for T5) are
 *   matched literally in the text first, as HF does, and the text between them
 *   is encoded piece by piece.  Plain sentencepiece would spell "</s>" out.
 * - Truncation keeps the EOS last, like HF's truncation=True.
 * - An empty prompt (or one that is empty after cleaning, e.g. only spaces) is
 *   valid and gives the single token EOS, exactly as the pipeline encodes the
 *   usual empty negative prompt.
 * - A prompt that is not valid UTF-8 is an error (DP_ERROR_INVALID), never
 *   guessed at or silently repaired.
 *
 * Prompt cleaning follows diffusers' pipeline_wan.prompt_clean without ftfy
 * (which is Python only; diffusers skips it too when ftfy is not installed):
 * html.unescape applied twice, the ends stripped of Python whitespace
 * (str.isspace: \t\n\v\f\r, U+001C-U+001F, space, U+0085, U+00A0, U+1680,
 * U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000), then every run of
 * Unicode White_Space (the same set less U+001C-U+001F: diffusers uses the
 * `regex` module's \s) becomes one space.  The unescaping is Python's
 * html.unescape for every numeric reference (&#65; &#x41; with its rules for invalid code points) and
 * for the named references of HTML 4 plus &apos;, including the legacy forms
 * without a semicolon ("&amp", "&copy") and the longest-prefix rule ("&notit;"
 * -> "¬it;").  The other ~2000 HTML 5 names (&NotNestedLessLess; ...) are left
 * as they are.  What ftfy would repair (mojibake such as "cafÃ©") is not
 * repaired.
 */
#ifndef DUALPARAL_TOKENIZER_H
#define DUALPARAL_TOKENIZER_H

#include <stdint.h>
#include <glib.h>

G_BEGIN_DECLS

typedef struct dp_tokenizer dp_tokenizer;

/* Loads model_dir/tokenizer/spiece.model (diffusers layout).  Errors:
 * DP_ERROR_MISSING when the file is absent, DP_ERROR_FORMAT when it is not a
 * sentencepiece model or has no EOS piece. */
dp_tokenizer *dp_tokenizer_load (const char *model_dir, GError **error);
/* Loads a sentencepiece model file given by its path. */
dp_tokenizer *dp_tokenizer_load_file (const char *spiece_path, GError **error);
void dp_tokenizer_free (dp_tokenizer *tok);

int dp_tokenizer_vocab_size (const dp_tokenizer *tok);
int dp_tokenizer_eos_id (const dp_tokenizer *tok);
/* The padding id (0 for T5; 0 too when the model defines none). */
int dp_tokenizer_pad_id (const dp_tokenizer *tok);

/* Cleans prompt (dp_prompt_clean), tokenizes it, appends EOS, truncates to
 * text_len tokens keeping EOS last, and writes text_len ids to ids (caller's
 * array of text_len elements): the real tokens, then the pad id.  Returns the
 * number of real tokens, EOS included (1 <= n <= text_len), or -1 with an error
 * (DP_ERROR_INVALID: text_len < 1 or prompt not UTF-8). */
int dp_tokenizer_encode (const dp_tokenizer *tok, const char *prompt, int text_len, int32_t *ids,
                         GError **error);

/* diffusers' prompt_clean (see above).  Returns a newly allocated string
 * (g_free), or NULL with DP_ERROR_INVALID when prompt is not valid UTF-8. */
char *dp_prompt_clean (const char *prompt, GError **error);
/* One pass of Python's html.unescape over valid UTF-8 text (see above).
 * Returns a newly allocated string. */
char *dp_html_unescape (const char *text);

G_END_DECLS

#endif
