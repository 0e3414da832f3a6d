/* libFuzzer target for the text path: any byte string, as a prompt, is
 * either refused with a GError (not UTF-8) or cleaned and tokenized by the
 * embedded model's tokenizer (models/shapes-tiny: the nmt_nfkc charsmap, HTML
 * entities, ftfy's fixes, the Unigram lattice) into valid ids; as a
 * precompiled charsmap it is either refused or normalizes text without
 * reading outside itself; as a sentencepiece model file it is either refused
 * or gives UTF-8 pieces.  The first byte (mod 3) picks the mode.
 *
 * Built with -Dfuzz=true and CC=clang; run e.g.
 *   build-fuzz/tests/fuzz/fuzz_tokenizer -max_total_time=60 NEW_DIR tests/fuzz/corpus/tokenizer
 */
#include <stdint.h>
#include <string.h>

#include "dualparal/backend.h"
#include "dualparal/tokenizer.h"
#include "text/text_internal.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

#define TEXT_LEN 64

static dp_tokenizer *
tokenizer (void)
{
  static dp_tokenizer *tok;
  if (!tok) {
    GError *err = NULL;
    tok = dp_tokenizer_load (DP_FUZZ_MODEL_DIR, &err);
    if (!tok)
      g_error ("%s", err->message);
  }
  return tok;
}

static void
fuzz_prompt (const uint8_t *data, size_t size)
{
  char *prompt = g_strndup ((const char *) data, size); /* up to the first NUL */
  GError *err = NULL;
  int32_t ids[TEXT_LEN];
  dp_tokenizer *tok = tokenizer ();
  int n = dp_tokenizer_encode (tok, prompt, TEXT_LEN, ids, &err);
  if (n < 0) {
    if (!err || g_utf8_validate (prompt, -1, NULL))
      __builtin_trap (); /* only invalid UTF-8 may fail */
    g_error_free (err);
  } else {
    if (n < 1 || n > TEXT_LEN || ids[n - 1] != dp_tokenizer_eos_id (tok))
      __builtin_trap ();
    for (int i = 0; i < TEXT_LEN; i++)
      if (ids[i] < 0 || ids[i] >= dp_tokenizer_vocab_size (tok))
        __builtin_trap ();
  }
  g_free (prompt);
}

static void
fuzz_charsmap (const uint8_t *data, size_t size)
{
  static const char text[] = "A caf\xc3\xa9 e\xcc\x81 \xef\xac\x81 \xe2\x91\xa0\xcc\x81 \xe6\x97\xa5 "
                             "\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7 \r\n\x01";
  uint8_t *copy = g_malloc (size ? size : 1); /* ends where the input ends: ASan redzone */
  memcpy (copy, data, size);
  GError *err = NULL;
  dp_charsmap *map = dp_charsmap_new (copy, size, "fuzz", &err);
  if (!map) {
    if (!err || !strstr (err->message, "fuzz"))
      __builtin_trap ();
    g_error_free (err);
  } else {
    GString *out = g_string_new (NULL);
    dp_charsmap_normalize (map, text, sizeof text - 1, out);
    if (!g_utf8_validate (out->str, out->len, NULL))
      __builtin_trap ();
    g_string_free (out, TRUE);
    dp_charsmap_free (map);
  }
  g_free (copy);
}

static void
fuzz_spiece (const uint8_t *data, size_t size)
{
  uint8_t *copy = g_malloc (size ? size : 1);
  memcpy (copy, data, size);
  GError *err = NULL;
  dp_spiece_model *m = dp_spiece_model_parse (copy, size, "fuzz", &err);
  if (!m) {
    if (!err || !strstr (err->message, "fuzz"))
      __builtin_trap ();
    g_error_free (err);
  } else {
    for (guint i = 0; i < m->pieces->len; i++)
      if (!g_utf8_validate (g_array_index (m->pieces, dp_spiece_piece, i).piece, -1, NULL))
        __builtin_trap ();
    dp_spiece_model_free (m);
  }
  g_free (copy);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (size == 0)
    return 0;
  switch (data[0] % 3) {
  case 0:
    fuzz_prompt (data + 1, size - 1);
    break;
  case 1:
    fuzz_charsmap (data + 1, size - 1);
    break;
  default:
    fuzz_spiece (data + 1, size - 1);
    break;
  }
  return 0;
}
