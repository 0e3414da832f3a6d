/* The umT5 tokenizer: a thin C wrapper over libsentencepiece (C++).
 * Behaviour and its match with the Hugging Face tokenizer: dualparal/tokenizer.h. */
#include "dualparal/tokenizer.h"
#include "dualparal/backend.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <exception>
#include <string>
#include <utility>
#include <vector>

struct dp_tokenizer {
  sentencepiece::SentencePieceProcessor sp;
  std::string path;
  int eos_id = -1;
  int pad_id = 0;
  /* Surface strings of the control and unknown pieces, matched literally in
   * the text the way HF matches its special tokens. */
  std::vector<std::pair<std::string, int>> specials;
};

extern "C" dp_tokenizer *
dp_tokenizer_load_file (const char *spiece_path, GError **error)
{
  if (!g_file_test (spiece_path, G_FILE_TEST_IS_REGULAR)) {
    g_set_error (error, DP_ERROR, DP_ERROR_MISSING, "tokenizer model %s not found", spiece_path);
    return NULL;
  }
  dp_tokenizer *tok = NULL;
  try {
    tok = new dp_tokenizer;
    tok->path = spiece_path;
    auto status = tok->sp.Load (spiece_path);
    if (!status.ok ()) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "cannot load sentencepiece model %s: %s",
                   spiece_path, status.ToString ().c_str ());
      delete tok;
      return NULL;
    }
    tok->eos_id = tok->sp.eos_id ();
    int n = tok->sp.GetPieceSize ();
    if (tok->eos_id < 0 || tok->eos_id >= n) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                   "sentencepiece model %s has no end-of-sequence piece", spiece_path);
      delete tok;
      return NULL;
    }
    tok->pad_id = tok->sp.pad_id () >= 0 ? tok->sp.pad_id () : 0;
    for (int id = 0; id < n; id++) {
      if (tok->sp.IsControl (id) || tok->sp.IsUnknown (id)) {
        const std::string &piece = tok->sp.IdToPiece (id);
        if (!piece.empty ())
          tok->specials.emplace_back (piece, id);
      }
    }
  } catch (const std::exception &e) {
    g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "cannot load sentencepiece model %s: %s",
                 spiece_path, e.what ());
    delete tok;
    return NULL;
  }
  return tok;
}

extern "C" dp_tokenizer *
dp_tokenizer_load (const char *model_dir, GError **error)
{
  char *path = g_build_filename (model_dir, "tokenizer", "spiece.model", NULL);
  dp_tokenizer *tok = dp_tokenizer_load_file (path, error);
  g_free (path);
  return tok;
}

extern "C" void
dp_tokenizer_free (dp_tokenizer *tok)
{
  delete tok;
}

extern "C" int
dp_tokenizer_vocab_size (const dp_tokenizer *tok)
{
  return tok->sp.GetPieceSize ();
}

extern "C" int
dp_tokenizer_eos_id (const dp_tokenizer *tok)
{
  return tok->eos_id;
}

extern "C" int
dp_tokenizer_pad_id (const dp_tokenizer *tok)
{
  return tok->pad_id;
}

/* Appends the ids of text: special pieces where they are spelled out (longest
 * match first, leftmost), sentencepiece for the text between them. */
static bool
tokenize (const dp_tokenizer *tok, const std::string &text, std::vector<int> &ids, GError **error)
{
  size_t start = 0, pos = 0;
  auto encode_segment = [&] (size_t end) {
    if (end <= start)
      return true;
    std::vector<int> seg;
    auto status = tok->sp.Encode (absl::string_view (text.data () + start, end - start), &seg);
    if (!status.ok ()) {
      g_set_error (error, DP_ERROR, DP_ERROR_FAILED, "sentencepiece (%s) failed: %s",
                   tok->path.c_str (), status.ToString ().c_str ());
      return false;
    }
    ids.insert (ids.end (), seg.begin (), seg.end ());
    return true;
  };
  while (pos < text.size ()) {
    const std::pair<std::string, int> *best = NULL;
    for (const auto &s : tok->specials) {
      if (text.compare (pos, s.first.size (), s.first) == 0
          && (!best || s.first.size () > best->first.size ()))
        best = &s;
    }
    if (!best) {
      pos++;
      continue;
    }
    if (!encode_segment (pos))
      return false;
    ids.push_back (best->second);
    pos += best->first.size ();
    start = pos;
  }
  return encode_segment (text.size ());
}

extern "C" int
dp_tokenizer_encode (const dp_tokenizer *tok, const char *prompt, int text_len, int32_t *ids,
                     GError **error)
{
  if (text_len < 1) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "text length %d: must be at least 1 (room for EOS)",
                 text_len);
    return -1;
  }
  char *cleaned = dp_prompt_clean (prompt, error);
  if (!cleaned)
    return -1;
  int n = -1;
  try {
    std::vector<int> pieces;
    std::string text (cleaned);
    if (tokenize (tok, text, pieces, error)) {
      /* HF truncation=True: the text keeps text_len - 1 tokens, EOS comes last. */
      n = (int) std::min (pieces.size (), (size_t) text_len - 1);
      for (int i = 0; i < n; i++)
        ids[i] = pieces[i];
      ids[n++] = tok->eos_id;
      for (int i = n; i < text_len; i++)
        ids[i] = tok->pad_id;
    }
  } catch (const std::exception &e) {
    g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "tokenizer: %s", e.what ());
    n = -1;
  }
  g_free (cleaned);
  return n;
}
