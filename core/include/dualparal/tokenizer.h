/* dualparal: the umT5 tokenizer and Wan's prompt cleaning.
 *
 * The ids equal what diffusers' WanPipeline gets from transformers (5.x:
 * T5Tokenizer over the Hugging Face `tokenizers` library):
 *
 *   ids = unigram(pretokenize(normalize(prompt_clean(prompt))))[:text_len - 1]
 *         + [EOS], then pad
 *
 * read from the model's tokenizer/tokenizer.json, or tokenizer/spiece.model
 * when there is no tokenizer.json (what transformers converts it to):
 * - added tokens (special tokens such as "</s>", "<pad>", "<unk>"; for
 *   spiece.model its control pieces) are split out of the text first, leftmost
 *   longest, as HF does; the text between them is encoded on its own;
 * - normalize: the Precompiled normalizer's charsmap (sentencepiece's
 *   nmt_nfkc) applied as HF does it, by grapheme cluster; no normalization
 *   when the file has none.  Other normalizers of tokenizer.json are not
 *   read: transformers 5 builds T5Tokenizer's pipeline itself and keeps only
 *   this charsmap;
 * - pretokenize: split on Unicode White_Space; "▁" prepended to every word
 *   not starting with one; each word split before every "▁";
 * - unigram: the best segmentation of each piece, in double precision with
 *   HF's tie-breaking; unknown characters fused into one unknown piece
 *   (core/src/text/unigram.c).
 * - Truncation keeps the EOS last, like HF's truncation=True.
 * - An empty prompt (or one that is empty after cleaning, e.g. only spaces) is
 *   valid and gives the single token EOS, exactly as the pipeline encodes the
 *   usual empty negative prompt.
 * - A prompt that is not valid UTF-8 is an error (DP_ERROR_INVALID), never
 *   guessed at or silently repaired.
 *
 * Prompt cleaning is diffusers' (and Wan's) prompt_clean with ftfy installed:
 * ftfy.fix_text with its default settings except the mojibake repair
 * (core/src/text/fix_text.c lists each step), Python's html.unescape applied
 * twice (every HTML 5 name, the legacy forms without a semicolon such as
 * "&amp" and the longest-prefix rule "&notit;" -> "¬it;", numeric references
 * with Python's rules for invalid code points), the ends stripped of Python
 * whitespace (str.isspace: \t\n\v\f\r, U+001C-U+001F, space, U+0085, U+00A0,
 * U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000), then every
 * run of Unicode White_Space (the same set less U+001C-U+001F: diffusers uses
 * the `regex` module's \s) becomes one space.  docs/architecture.md ("Text")
 * lists what differs from Python and why.
 */
#ifndef DUALPARAL_TOKENIZER_H
#define DUALPARAL_TOKENIZER_H

#include <stdint.h>
#include <glib.h>

G_BEGIN_DECLS

typedef struct dp_tokenizer dp_tokenizer;

/* Loads model_dir/tokenizer/tokenizer.json, else model_dir/tokenizer/spiece.model
 * (diffusers layout), with tokenizer_config.json's eos / pad / unk token names
 * when present (T5's "</s>", "<pad>", "<unk>" otherwise).  Errors:
 * DP_ERROR_MISSING when neither file is there, DP_ERROR_FORMAT when the file
 * is malformed or has no EOS token, DP_ERROR_UNSUPPORTED for a model that is
 * not Unigram. */
dp_tokenizer *dp_tokenizer_load (const char *model_dir, GError **error);
/* Loads a tokenizer file given by its path: a name ending in ".json" is a
 * tokenizer.json, anything else a sentencepiece model.  tokenizer_config.json
 * is looked for next to it. */
dp_tokenizer *dp_tokenizer_load_file (const char *path, GError **error);
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

/* diffusers' prompt_clean with ftfy (see above).  Returns a newly allocated string
 * (g_free), or NULL with DP_ERROR_INVALID when prompt is not valid UTF-8. */
char *dp_prompt_clean (const char *prompt, GError **error);
/* One pass of Python's html.unescape over valid UTF-8 text (see above).
 * Returns a newly allocated string. */
char *dp_html_unescape (const char *text);

G_END_DECLS

#endif
