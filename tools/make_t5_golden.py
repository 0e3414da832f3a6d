#!/usr/bin/env python3
"""Golden data for the tokenizer and the umT5 text encoder (tests/test_tokenizer.c,
tests/test_umt5.c).

Trains a small sentencepiece unigram model on generated sentences about coloured
shapes moving, builds a tiny random-weight transformers UMT5EncoderModel over that
vocabulary, saves both in the diffusers Wan layout, and runs diffusers' own
WanPipeline._get_t5_prompt_embeds (prompt_clean, T5 tokenizer with padding to
max_sequence_length, encoder with the attention mask, keep seq_len rows, zeros
after) on a few prompts.  Reference only: never used at run time.

    python3 tools/make_t5_golden.py [--out tests/data/t5]

Needs the PyPI packages torch, transformers, diffusers, safetensors, sentencepiece
and protobuf (transformers converts spiece.model to its tokenizers backend with it).
Everything is seeded, sentencepiece trains on one thread without shuffling: reruns
give the same files.

Output (--out):
  model/text_encoder/   config.json + model.safetensors (save_pretrained)
  model/tokenizer/      spiece.model (what the C tokenizer reads) and
                        tokenizer_config.json.  save_pretrained also writes a
                        tokenizer.json (the sentencepiece normaliser's charsmap
                        again, 350 KB); it is left out to keep the test data small:
                        the ids below come from the tokenizer loaded from it.
  cases.json
    encoder_cases: [{name, prompt, cleaned, text_len, ids (the real tokens only),
                     seq_len}]  ids as WanPipeline tokenizes (padding="max_length",
                     truncation, EOS appended)
    clean_cases:   [[input, diffusers prompt_clean(input)], ...] (not read by the
                   tests since the C prompt_clean does ftfy's fixes: those are
                   checked against tests/data/tokenizer/golden.json)
    buckets:       {rel_min, values}: transformers' relative position bucket of
                   every relative position rel_min.. -rel_min (bidirectional,
                   the model's num_buckets / max_distance)
    ftfy:          whether ftfy was installed (prompt_clean runs it when it is);
                   the data was made without it, and the script still asks for
                   that so that reruns give the same file (ftfy changes no id
                   of these prompts, only some "cleaned" strings)
  golden.safetensors
    embeds.NAME   [seq_len, d_model] F32: the first seq_len rows of the pipeline's
                  prompt_embeds (the script checks that the rows after are zero)
"""

import argparse
import json
import os
import random
import shutil
import tempfile
import types
from html.entities import html5, name2codepoint

import sentencepiece as spm
import torch
from diffusers.pipelines.wan import pipeline_wan
from diffusers.pipelines.wan.pipeline_wan import WanPipeline, prompt_clean
from safetensors.torch import save_file
from transformers import AutoTokenizer, T5Tokenizer, UMT5Config, UMT5EncoderModel

VOCAB_SIZE = 512
SEED = 1234

MODEL = dict(vocab_size=VOCAB_SIZE, d_model=40, d_kv=12, d_ff=80, num_layers=3, num_heads=4,
             relative_attention_num_buckets=32, relative_attention_max_distance=128,
             feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0)

LONG = ("A glowing golden spiral rises slowly upwards above the ocean at 4082 metres while the "
        "light flickers; three striped crimson cubes roll gracefully to the left across the "
        "screen, a transparent teal hexagon spins calmly around the centre near the city of "
        "Kalimorven, and two woolen pink stars drift playfully back and forth under a starry "
        "sky for 42 seconds, casting long shadows over a sandy beach as music plays, while a "
        "metallic silver sphere bounces steadily towards the camera through a snowy forest "
        "beyond Quibarsto and Trilimfe, in 4K resolution at 30 frames per second (cinematic).")

ENCODER_CASES = [
    ("basic", "A red circle moves slowly to the left.", 24),
    ("basic_512", "A red circle moves slowly to the left.", 512),
    ("html", "  A  blue &amp;amp; green\tsquare &lt;spins&gt;   fast&#33; &quot;quoted&quot;"
             "&nbsp;&copy 2024 &notit; caf&eacute;\n\n", 24),
    ("long", LONG, 24),
    ("long_512", LONG, 512),
    ("empty", "", 24),
    ("blank", "  \t\n\u3000 ", 24),
    ("unknown", "a purple \u661f triangle \U0001f642\U0001f642 x", 24),
    ("specials", "x </s> <pad> y &lt;/s&gt; z<unk>w", 24),
    ("nfkc", "\uff21\uff22\uff23 \ufb01 cafe\u0301 N\u00f6 a\x1cb\x1d", 24),
]


def corpus():
    rng = random.Random(SEED)
    colours = ("red orange yellow green blue purple violet pink brown black white grey golden "
               "silver crimson teal turquoise magenta cyan beige").split()
    shapes = ("circle square triangle rectangle hexagon pentagon star diamond oval sphere cube "
              "cone cylinder pyramid ring heart crescent spiral").split()
    verbs = ("moves slides rolls bounces spins floats drifts glides jumps rotates shrinks grows "
             "wobbles zooms dances falls rises flies").split()
    dirs = ["to the left", "to the right", "upwards", "downwards", "in a circle",
            "across the screen", "towards the camera", "away from the camera",
            "along a curved path", "back and forth", "around the centre", "over the hills"]
    advs = ("slowly quickly gently smoothly suddenly gracefully steadily playfully calmly "
            "rapidly").split()
    places = ["on a dark background", "over a sandy beach", "through a snowy forest",
              "under a starry sky", "in a bright room", "above the ocean", "beside a tall tower",
              "inside a glass box", "near a small caf\u00e9", "on a wooden table"]
    extras = ["", "", " while the light flickers", " and leaves a trail of sparks",
              ", casting long shadows", " as music plays", " in 4K resolution",
              " at 30 frames per second", "; the camera pans", " (cinematic)"]
    textures = ("striped dotted glowing shiny matte transparent fuzzy metallic wooden glassy "
                "marble paper woolen rusty velvet").split()
    syllables = "ka lo mi ra ven tor sil bar nu qui zel dor pha tri mon gal bre sto ux yan fe wor lim cas".split()

    def name():
        return "".join(rng.choice(syllables) for _ in range(rng.choice([2, 3]))).capitalize()

    sentences = []
    for _ in range(800):
        n = rng.choice([1, 1, 2, 3])
        colour, shape = rng.choice(colours), rng.choice(shapes)
        subject = f"A {colour} {shape}" if n == 1 else f"{['Two', 'Three'][n - 2]} {colour} {shape}s"
        verb = rng.choice(verbs)
        if n > 1:  # plural subject: "moves" -> "move", "bounces" -> "bounce"
            verb = verb[:-2] if verb.endswith("es") and verb[-3] in "sh" else verb[:-1]
        tail = rng.choice([f" beyond {name()} and {name()}", f" near the city of {name()}",
                           f" at {rng.randint(0, 9999)} metres", f" for {rng.randint(2, 90)} seconds",
                           "", ""])
        if rng.random() < 0.4:
            subject = subject.replace(f" {colour} ", f" {rng.choice(textures)} {colour} ")
        sentences.append(f"{subject} {verb} {rng.choice(advs)} {rng.choice(dirs)} "
                         f"{rng.choice(places)}{tail}{rng.choice(extras)}.")
    return sentences


def clean_cases():
    """Inputs for prompt_clean covering what the C port implements: every HTML 4
    entity (and &apos;) with its semicolon, every legacy one without, the longest
    prefix rule, numeric references with their invalid-codepoint rules, double
    unescaping and Python's whitespace set."""
    names = sorted(set(name2codepoint) | {"apos", "AMP", "COPY", "GT", "LT", "QUOT", "REG"})
    legacy = sorted(k for k in html5 if not k.endswith(";"))
    inputs = [
        " ".join(f"&{n};" for n in names),
        " ".join(f"&{n}" for n in legacy),
        "".join(f"&{n}x" for n in legacy),
        "&notit; &notin; &ampx &amp;amp; &amp;amp;amp; &ampamp; &hellip &hellip; &Hellip; &foo; & &; &#; &#x;",
        "&#65;&#x41;&#X41&#65x&#0; &#13; &#x80;&#x9F;&#x81; &#xD800; &#xDFFF; &#1114111; &#1114112;",
        "&#99999999999999999999999; &#x1; &#11; &#x7f; &#xFDD0; &#xFFFE; &#x10FFFF; &#x1F642; &#00065;",
        "&lt&gt&quot&amp &ltx &lt; x &LT; &nbsp&nbsp; &COPY &copy; &reg &REG;",
        "&aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaamp; &caf\u00e9; &\u00e9amp; &amp\u00e9",
        "&amp;lt;b&amp;gt; &amp;#65; &amp;#x42; &#38;lt; &#38;#38;lt;",
        "&a\rmp; &a\u00a0mp; &amp\u00a0x",
        "".join(f"a{chr(c)}b" for c in [0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20,
                                         0x85, 0xa0, 0x1680, 0x2000, 0x2005, 0x200a, 0x2028,
                                         0x2029, 0x202f, 0x205f, 0x3000]),
        "keep\u200bzero\u180ewidth\u2060joiners\ufeff",
        "\u3000\u2028  lead and trail \u00a0 \t\n",
        # str.strip() removes U+001C..U+001F, the regex module's \s does not match them.
        "\x1c\x1d lead \x1c mid \x1e\x1f x\x1fy \x1f",
        "",
        "   ",
        "plain prompt",
        "\u00c9l\u00e8ve na\u00efve \u661f\u7a7a \U0001f642 \u0645\u0631\u062d\u0628\u0627",
    ]
    return [[s, prompt_clean(s)] for s in inputs]


def randomize(model):
    """Wider random weights than transformers' init, and norm weights away from 1,
    so every path (norm scales, relative bias, gate) moves the output."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.copy_(torch.randn_like(p))
            elif name == "shared.weight":
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * 1.5 / p.shape[1] ** 0.5)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "t5"))
    args = ap.parse_args()
    if pipeline_wan.is_ftfy_available():
        raise SystemExit("ftfy is installed: prompt_clean would run ftfy.fix_text, and the cleaned "
                         "strings would differ from the committed data; make it without ftfy")
    torch.manual_seed(SEED)

    out = os.path.abspath(args.out)
    shutil.rmtree(out, ignore_errors=True)
    te_dir = os.path.join(out, "model", "text_encoder")
    tok_dir = os.path.join(out, "model", "tokenizer")
    os.makedirs(tok_dir)

    with tempfile.TemporaryDirectory() as tmp:
        corpus_path = os.path.join(tmp, "corpus.txt")
        with open(corpus_path, "w", encoding="utf-8") as f:
            f.write("\n".join(corpus()) + "\n")
        # T5's special ids: pad 0, eos 1, unk 2, no bos.  Relative paths: the
        # model stores its trainer settings, input path included.
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            spm.SentencePieceTrainer.train(input="corpus.txt", model_prefix="spiece",
                                           vocab_size=VOCAB_SIZE, model_type="unigram", pad_id=0,
                                           eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
                                           num_threads=1, shuffle_input_sentence=False,
                                           minloglevel=2)
        finally:
            os.chdir(cwd)
        spm_dir = os.path.join(tmp, "spm")
        os.makedirs(spm_dir)
        shutil.copy(os.path.join(tmp, "spiece.model"), os.path.join(spm_dir, "spiece.model"))
        T5Tokenizer.from_pretrained(spm_dir, extra_ids=0).save_pretrained(os.path.join(tmp, "tok"))
        shutil.copy(os.path.join(tmp, "spiece.model"), os.path.join(tok_dir, "spiece.model"))
        shutil.copy(os.path.join(tmp, "tok", "tokenizer_config.json"), tok_dir)
        # What the pipeline uses: AutoTokenizer over the saved layout (tokenizer.json).
        tokenizer = AutoTokenizer.from_pretrained(os.path.join(tmp, "tok"))
        assert len(tokenizer) == VOCAB_SIZE, len(tokenizer)

    sp = spm.SentencePieceProcessor(model_file=os.path.join(tok_dir, "spiece.model"))
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.vocab_size()) == (0, 1, 2, VOCAB_SIZE)

    config = UMT5Config(**MODEL)
    model = UMT5EncoderModel(config).eval()
    randomize(model)
    model.save_pretrained(te_dir)

    pipe = types.SimpleNamespace(tokenizer=tokenizer, text_encoder=model)
    cases, tensors = [], {}
    for name, prompt, text_len in ENCODER_CASES:
        cleaned = prompt_clean(prompt)
        enc = tokenizer(cleaned, padding="max_length", max_length=text_len, truncation=True,
                        add_special_tokens=True, return_attention_mask=True)
        seq_len = sum(enc["attention_mask"])
        ids = enc["input_ids"][:seq_len]
        with torch.no_grad():
            embeds = WanPipeline._get_t5_prompt_embeds(pipe, prompt=prompt, max_sequence_length=text_len,
                                                       device=torch.device("cpu"), dtype=torch.float32)[0]
        assert embeds.shape == (text_len, MODEL["d_model"])
        assert torch.all(embeds[seq_len:] == 0)
        tensors[f"embeds.{name}"] = embeds[:seq_len].contiguous()
        cases.append(dict(name=name, prompt=prompt, cleaned=cleaned, text_len=text_len,
                          seq_len=seq_len, ids=ids))
        # Plain sentencepiece differs only where the prompt spells a special token
        # ("</s>"), which the HF tokenizer matches before the model: the C
        # tokenizer splits on them the same way.
        plain = sp.encode(cleaned)[:text_len - 1] + [sp.eos_id()]
        print(f"{name}: {seq_len} tokens, same as plain sentencepiece: {plain == ids}")

    attn = model.encoder.block[0].layer[0].SelfAttention
    rel_min = -600
    rel = torch.arange(rel_min, -rel_min + 1)
    buckets = attn._relative_position_bucket(rel).tolist()

    save_file(tensors, os.path.join(out, "golden.safetensors"))
    with open(os.path.join(out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(dict(encoder_cases=cases, clean_cases=clean_cases(),
                       buckets=dict(rel_min=rel_min, values=buckets),
                       ftfy=False), f, ensure_ascii=True, indent=1)
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(out) for n in ns)
    print(f"wrote {out}: {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
