#!/usr/bin/env python3
"""Golden data for the C tokenizer and prompt cleaning (tests/test_tokenizer.c).

For each model directory below, loads its tokenizer/ the way diffusers'
WanPipeline does (transformers.AutoTokenizer: T5Tokenizer over the Hugging Face
`tokenizers` Unigram model) and records the ids WanPipeline._get_t5_prompt_embeds
gets for a set of awkward prompts: prompt_clean (ftfy.fix_text, html.unescape
twice, whitespace runs to one space), then tokenizer(padding="max_length",
max_length=text_len, truncation=True, add_special_tokens=True), real tokens only.

The prompt set has non-ASCII text, emoji, whitespace runs, special tokens spelled
out, literal "▁", text the charsmap rewrites, and ties: prompts where two
segmentations score the same or within 1e-4 (found by searching each
vocabulary, see find_ties), where sentencepiece's float Viterbi and HF's
double-precision one may disagree, and 40 seeded random prompts.

Separately, clean_cases: [input, prompt_clean(input)] with ftfy installed (and a
third string, the output without ftfy's mojibake repair, where that repair
changed something), for
the ftfy fixes the C prompt cleaning does (see docs/architecture.md, "Text"),
and the prompts of tests/data/t5 (made without ftfy) again.

Reference only, never used at build or run time:

    python3 -m venv /tmp/tokvenv
    /tmp/tokvenv/bin/pip install transformers tokenizers ftfy regex sentencepiece protobuf
    (sentencepiece and protobuf: transformers converts a spiece.model with them)
    /tmp/tokvenv/bin/python tools/make_tokenizer_golden.py [--out tests/data/tokenizer/golden.json]

Deterministic: the same package versions give the same file (they are recorded
in it).
"""
import argparse
import html
import itertools
import json
import os
import random
import sys

import ftfy
import regex
import tokenizers
import transformers
from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Model directories (relative to the repository) whose tokenizer/ is tested.
MODELS = [
    "models/shapes-tiny",           # the shipped default: tokenizer.json with the nmt_nfkc charsmap
    "tests/data/pipeline/tiny-wan",  # tokenizer.json without a normalizer
    "tests/data/t5/model",          # spiece.model only: transformers converts it
]

PROMPTS = [
    "A red circle moves slowly to the left.",
    "un café rouge",
    "Un CAFÉ rouge, s'il vous plaît !",
    "日本語のテキスト",
    "日本語 😀 ok",
    "a red fox 🦊 in the snow ❄️",
    "family 👩‍👩‍👧 and flag 🇫🇷 and skin tone 👍🏽",
    "a   b\t\tc\n\nd",
    "   leading and trailing   ",
    "a\u3000b\u00a0c\u2003d",
    "</s> in the middle </s>",
    "<pad><unk></s>",
    "x</s>y <pad> z",
    "▁literal ▁▁meta▁ space▁",
    "▁",
    "e\u0301 versus é",
    # Clusters under 6 bytes are looked up whole and the shortest key wins:
    # "①" + U+0301 becomes "1", the accent dropped (HF's Precompiled).
    "\u2460\u0301 \u00b2\u0301 \u2460\u0301\u0301\u0301 x\u0301\u0301",
    "Å Å Å",
    "\u00a8umlaut alone \u00a8",
    "zero\u200bwidth\u200cjoiners\u200d",
    "ﬁne ﬂowers ﬀ",
    "Ｆｕｌｌ ｗｉｄｔｈ ＡＢＣ １２３",
    "ｶﾀｶﾅ ﾊﾟﾝ",
    "“curly” ‘quotes’ and „low“",
    "&bigstar; &amp;amp; &hellip; &NotNestedLessLess; &EACUTE;",
    "&lt;b&gt;bold&lt;/b&gt;",
    "½ ⅓ ¼ ² ³ ㍻ ℃",
    "한국어 텍스트",
    "हिन्दी पाठ",
    "العربية",
    "Ελληνικά και русский",
    "straße STRASSE",
    "tab\tand\x07bell\x1b[31mred\x1b[0m",
    "line\r\nbreaks\rhere\u2028and\u2029there",
    "a" * 40,
    "...---!!!???",
    "0123456789 3.14159",
    "",
]

# Random prompts (seeded) from pieces that exercise every stage: entities,
# quotes, ligatures, widths, controls, line breaks, combining marks, emoji
# sequences, CJK, special tokens, "▁", the digit runs that tie.  No mojibake
# (ftfy's repair of it is not done in C: docs/architecture.md).
RANDOM_POOL = list("abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789.,!?'\"-") + [
    "  ", "\t", "\n", "é", "e\u0301", "\u0301", "ü", "ß", "日", "本", "語", "😀", "👩‍👩‍👧", "🇫🇷",
    "👍🏽", "▁", "</s>", "<pad>", "<unk>", "Ｆ", "ﬁ", "“", "”", "‘", "’", "&amp;", "&bigstar;", "&lt;",
    "<", "&EACUTE;", "\u00a0", "\u3000", "①", "²", "한", "हि", "\u200b", "\u200d", "\x07", "\x1b[1m",
    "½", "…", "Å", "ｶﾞ", "\r\n", "\u2028", "\x85", "\x92", "1", "11", "111", "o", "oo", "reen", "721"]


def random_prompts(n, seed=17):
    rng = random.Random(seed)
    return ["".join(rng.choice(RANDOM_POOL) for _ in range(rng.randint(1, 25))) for _ in range(n)]


# Prompts cut short to test truncation (EOS kept last).
TRUNCATED = [("A red circle moves slowly to the left and a blue square follows it.", 6),
             ("un café rouge 日本語 😀", 4)]

# Inputs of prompt_clean alone (ftfy, html.unescape twice, whitespace).
CLEAN_INPUTS = [
    "“Hello,” she said — ‘it’s fine’.",
    "ʼapostrophe‛ ‟double‟",
    "ﬁ ﬂ ﬀ ﬃ ﬄ ﬅ ﬆ Ĳ ĳ ŉ Ǳ ǲ ǳ Ǆ ǅ ǆ Ǉ ǈ ǉ Ǌ ǋ ǌ",
    "Ｆｕｌｌ　ｗｉｄｔｈ！ ＡＢＣ１２３ ｶﾀｶﾅ ﾟ ￠ ￦ ￨",
    "&bigstar; &starf; &NotNestedLessLess; &CounterClockwiseContourIntegral;",
    "&EACUTE; &NTILDE; &nTILDE; &SZLIG; &AMP; &Amp;",
    "&amp;amp;amp;amp; &amp;lt;x&amp;gt;",
    "&#65;&#x42;&#0;&#1;&#xD800;&#x110000; &#xZZ;",
    "a < b &amp; c",
    "line one &amp;\nline two <tag> &amp;\nline three &amp;",
    "x &amp; y\n<z> &amp;",
    "&notit; &notin; &ampx &amp &copy2024",
    "\x80\x85\x91\x92\x93\x94\x81\x8d\x9f",
    "CRLF\r\nCR\rLS\u2028PS\u2029NEL\u0085end",
    "\x1b[36;44mcolour\x1b[0m \x1b[1A",
    "\x01\x08\x0b\x0c\x0e\x1f\x7f|\u206a\u206f|\ufeff|\ufff9\ufffc\ufffd",
    "e\u0301 a\u0308 \u212b \u1e9b\u0323",
    "\u00a0 nbsp \u3000 ideographic \u2003 em",
    "tab\there\vvertical\ffeed",
    "\x1c\x1d\x1e\x1f",
    "😀 👩‍👩‍👧 🇫🇷",
    "日本語",
]

def wan_prompt_clean(text, fix_encoding=True):
    """diffusers' pipeline_wan.prompt_clean with ftfy installed; without
    ftfy's mojibake repair when fix_encoding is False."""
    text = ftfy.fix_text(text, fix_encoding=fix_encoding)
    text = html.unescape(html.unescape(text))
    text = text.strip()
    text = regex.sub(r"\s+", " ", text)
    return text.strip()


def hf_ids(tok, prompt, text_len):
    enc = tok([wan_prompt_clean(prompt)], padding="max_length", max_length=text_len,
              truncation=True, add_special_tokens=True, return_attention_mask=True)
    ids, mask = enc.input_ids[0], enc.attention_mask[0]
    n = sum(mask)
    assert all(i == tok.pad_token_id for i in ids[n:])
    return ids[:n]


def two_best(word, vocab, unk_id, unk_score):
    """The two best segmentations of word as (score, ids), HF's lattice: the
    vocabulary pieces, plus the unknown piece over a character no
    one-character piece covers."""
    best = [[] for _ in range(len(word) + 1)]
    best[0] = [(0.0, ())]
    for pos in range(len(word)):
        steps = [(vocab[word[pos:end]], end) for end in range(pos + 1, len(word) + 1)
                 if word[pos:end] in vocab]
        if not any(end == pos + 1 for _, end in steps):
            steps.append(((unk_id, unk_score), pos + 1))
        for (pid, score), end in steps:
            for s, ids in best[pos]:
                best[end].append((s + score, ids + (pid,)))
            best[end] = sorted(set(best[end]), key=lambda x: -x[0])[:2]
    return best[len(word)]


def find_ties(tok, limit=4, near=2, eps=1e-4):
    """Words whose two best segmentations score within eps, plus the `near`
    closest others: where float scoring or tie-breaking can change the ids.
    Candidates: a word-start piece and a piece; a word-start piece and two
    pieces that commute ("o" + "oo" = "oo" + "o": an exact tie), with and
    without an emoji (an unknown piece) in between.  Returned without the
    leading "▁" Metaspace adds, exact ties first."""
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    pieces = [p for p, _ in model["vocab"] if not (p.startswith("<") and p.endswith(">"))]
    vocab = {p: (i, s) for i, (p, s) in enumerate(model["vocab"])}
    unk_score = min(s for _, s in model["vocab"]) - 10.0
    starts = [p for p in pieces if p.startswith("▁")]
    inner = [p for p in pieces if "▁" not in p]
    commuting = [x + y for x in inner for y in inner if x != y and x + y == y + x]
    words = [a + b for a in starts for b in inner]
    words += [a + e + c for a in starts for c in commuting for e in ("", "😀")]
    gaps = {}
    for word in words:
        if word not in gaps:
            segs = two_best(word, vocab, model["unk_id"], unk_score)
            if len(segs) == 2:
                gaps[word] = segs[0][0] - segs[1][0]
    ranked = sorted((g, w) for w, g in gaps.items())
    ties = [w for g, w in ranked if g <= eps]
    ties = ([w for w in ties if "😀" not in w][: limit // 2]
            + [w for w in ties if "😀" in w][: limit - limit // 2])
    close = [w for g, w in ranked if g > eps][:near]
    return [w[1:] for w in ties + close]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "tokenizer", "golden.json"))
    args = ap.parse_args()

    models = []
    for rel in MODELS:
        model_dir = os.path.join(ROOT, rel)
        tok = AutoTokenizer.from_pretrained(os.path.join(model_dir, "tokenizer"))
        ties = find_ties(tok)
        cases = []
        prompts = [(p, 512, "set") for p in PROMPTS] + [(p, n, "truncated") for p, n in TRUNCATED]
        prompts += [(t, 512, "tie") for t in ties] + [(" ".join(ties), 512, "tie")]
        prompts += [(p, 512, "random") for p in random_prompts(40)]
        for prompt, text_len, kind in prompts:
            ids = hf_ids(tok, prompt, text_len)
            cases.append(dict(kind=kind, prompt=prompt, cleaned=wan_prompt_clean(prompt),
                              text_len=text_len, ids=ids))
        print(f"{rel}: {type(tok).__name__}, {len(cases)} prompts, {len(ties)} ties {ties}",
              file=sys.stderr)
        models.append(dict(dir=rel, vocab_size=len(tok.backend_tokenizer.get_vocab()),
                           eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, cases=cases))

    # The older golden prompts (tests/data/t5, made without ftfy) again, with it.
    with open(os.path.join(ROOT, "tests", "data", "t5", "cases.json"), encoding="utf-8") as f:
        t5 = json.load(f)
    inputs = CLEAN_INPUTS + PROMPTS + [c[0] for c in t5["clean_cases"]]
    inputs += [c["prompt"] for c in t5["encoder_cases"]]
    # [input, prompt_clean] and, where ftfy's mojibake repair (not done in C,
    # docs/architecture.md) changed it, what it gives without that repair.
    clean = []
    for s in inputs:
        full, plain = wan_prompt_clean(s), wan_prompt_clean(s, fix_encoding=False)
        clean.append([s, full] if full == plain else [s, full, plain])
    versions = dict(transformers=transformers.__version__, tokenizers=tokenizers.__version__,
                    ftfy=ftfy.__version__, python=sys.version.split()[0])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    # One case per line: small, and diffs read well.
    def one_line(x):
        return json.dumps(x, ensure_ascii=True)
    lines = ["{", f' "versions": {one_line(versions)},', ' "models": [']
    for k, m in enumerate(models):
        head = {key: v for key, v in m.items() if key != "cases"}
        lines.append("  " + one_line(head)[:-1] + ', "cases": [')
        lines += ["   " + one_line(c) + ("," if i + 1 < len(m["cases"]) else "")
                  for i, c in enumerate(m["cases"])]
        lines.append("  ]}" + ("," if k + 1 < len(models) else ""))
    lines.append(" ],")
    lines.append(' "clean_cases": [')
    lines += ["  " + one_line(c) + ("," if i + 1 < len(clean) else "") for i, c in enumerate(clean)]
    lines += [" ]", "}"]
    with open(args.out, "w", encoding="ascii") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
