#!/usr/bin/env python3
"""Golden data for Wan2.2 T2V-A14B's two experts (tests/test_pipeline.c, "/pipeline/wan22/*",
and the DualParal engine's stage checks): a tiny random-weight WanPipeline with two
transformers whose weights differ, in the real diffusers layout (save_pretrained), and
diffusers' whole-pipeline results with fixed initial latents.

The model (tests/data/wan22/tiny-wan22):
  tokenizer/, text_encoder/, vae/, scheduler/
                 copied from tests/data/pipeline/tiny-wan (tools/make_pipeline_golden.py):
                 the Wan2.1 parts are shared by Wan2.2 T2V-A14B
  transformer/   the high-noise expert: WanTransformer3DModel of tiny-wan's shape (2 heads x 12,
                 2 layers, ffn 48, text_dim 32), weights drawn afresh
  transformer_2/ the low-noise expert, the same shape, other weights
                 (both stored as F16 to keep the data small; loaded as float32 by both sides,
                 which is exact)
  model_index.json  tiny-wan's, with "boundary_ratio": 0.9 and "transformer_2" set, as
                 WanPipeline(boundary_ratio=...) saves it: transformer runs the steps with
                 t >= 0.9 * 1000 = 900, transformer_2 the others.  The boundary equals one of
                 UniPC's timesteps (999, 900, 750, 500 for 4 steps), so the case also checks
                 that the comparison is >=, not >.

The pipeline is reloaded from the saved directory with WanPipeline.from_pretrained and
run in float32 with the initial noise passed as `latents=`, 48x32 pixels, 9 frames
(3 latent frames of 4x6), text length 32, the prompts of tools/make_pipeline_golden.py:

  a22_unipc  UniPC 4 steps, guidance_scale 5, guidance_scale_2 3: experts 0 0 1 1
  a22_euler  FlowMatchEulerDiscreteScheduler(shift=3.0) 3 steps, guidance_scale 5 and
             guidance_scale_2 not given (diffusers then uses guidance_scale): experts 0 1 1

Which expert ran each step is recorded from forward hooks on the two transformers (not
computed from the rule), into cases.json ("experts").

Output (--out, default tests/data/wan22):
  tiny-wan22/          the model directory
  cases.json           prompts, their tokens (ids_cond / ids_uncond), size, boundary_ratio, cases [{name, sampler, steps, guidance,
                       guidance_2 (null: not given), shift, timesteps, experts}]
  golden.safetensors
    noise                 [16, 3, 4, 6] F32  initial latents
    embeds.cond / .uncond [32, 32] F32       the text embeddings the pipeline used
    NAME.latents          [N, 16, 3, 4, 6] F32  latents after step i
    a22_unipc.frames      [9, 32, 48, 3] F16 uint8 frames as numpy_to_pil makes them

Reference only: never used at run time.  Deterministic (seeded, one thread).
Needs torch, diffusers (>= 0.35: boundary_ratio), transformers, safetensors, numpy; run it
without ftfy (see make_pipeline_golden.py).

    python3 tools/make_wan22_golden.py [--out tests/data/wan22]
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch
from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from diffusers.pipelines.wan import pipeline_wan
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_pipeline_golden import (FLOW_SHIFT, FPS, HEIGHT, NEGATIVE, NUM_FRAMES, PROMPT,  # noqa: E402
                                  TEXT_LEN, TRANSFORMER, WIDTH, randomize_transformer, run_pipeline,
                                  use_sampler)

SEED = 2222
BOUNDARY_RATIO = 0.9
HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(HERE, "..", "tests", "data", "pipeline", "tiny-wan")

CASES = [
    dict(name="a22_unipc", sampler="unipc", steps=4, guidance=5.0, guidance_2=3.0, frames=True),
    dict(name="a22_euler", sampler="euler", steps=3, guidance=5.0, guidance_2=None, frames=False),
]


def build(model_dir):
    os.makedirs(model_dir)
    for part in ("tokenizer", "text_encoder", "vae", "scheduler"):
        shutil.copytree(os.path.join(BASE, part), os.path.join(model_dir, part))
    experts = []
    for part in ("transformer", "transformer_2"):
        t = WanTransformer3DModel(**TRANSFORMER).float().eval()
        randomize_transformer(t)
        t.half().save_pretrained(os.path.join(model_dir, part), safe_serialization=True)
        experts.append(t)
    with open(os.path.join(BASE, "model_index.json")) as f:
        index = json.load(f)
    index["boundary_ratio"] = BOUNDARY_RATIO
    index["transformer_2"] = ["diffusers", "WanTransformer3DModel"]
    with open(os.path.join(model_dir, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")


def run_case(pipe, case, noise, unipc_config):
    use_sampler(pipe, case["sampler"], unipc_config)
    calls = []
    hooks = [pipe.transformer.register_forward_pre_hook(lambda m, a: calls.append(0)),
             pipe.transformer_2.register_forward_pre_hook(lambda m, a: calls.append(1))]
    kwargs = {} if case["guidance_2"] is None else dict(guidance_scale_2=case["guidance_2"])
    out, captured = run_pipeline(pipe, case, noise, **kwargs)
    for h in hooks:
        h.remove()
    # Guided: two forwards (cond, uncond) of the same expert per step.
    assert len(calls) == 2 * case["steps"], calls
    experts = calls[::2]
    assert experts == calls[1::2], calls
    video = out.frames[0]
    frames = (video * 255).round().astype(np.uint8)
    info = dict(name=case["name"], sampler=case["sampler"], steps=case["steps"],
                guidance=case["guidance"], guidance_2=case["guidance_2"], shift=FLOW_SHIFT,
                timesteps=[float(t) for t in pipe.scheduler.timesteps], experts=experts)
    return captured, frames, info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "data", "wan22"))
    args = ap.parse_args()
    if pipeline_wan.is_ftfy_available():
        raise SystemExit("ftfy is installed: make the data in an environment without ftfy")
    torch.set_num_threads(1)
    torch.manual_seed(SEED)

    out = os.path.abspath(args.out)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model_dir = os.path.join(out, "tiny-wan22")
    build(model_dir)

    WanTransformer3DModel._keep_in_fp32_modules = None
    pipe = WanPipeline.from_pretrained(model_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.boundary_ratio == BOUNDARY_RATIO
    assert pipe.transformer_2 is not None and pipe.transformer.dtype == torch.float32
    # The experts differ.
    w1 = dict(pipe.transformer.named_parameters())
    assert all(not torch.equal(p, w1[n]) for n, p in pipe.transformer_2.named_parameters())
    unipc_config = pipe.scheduler.config
    assert isinstance(pipe.scheduler, UniPCMultistepScheduler)

    lat_f = (NUM_FRAMES - 1) // 4 + 1
    noise = torch.randn(1, 16, lat_f, HEIGHT // 8, WIDTH // 8)
    tensors = {"noise": noise[0]}
    infos = []
    for case in CASES:
        captured, frames, info = run_case(pipe, case, noise, unipc_config)
        infos.append(info)
        tensors["embeds.cond"] = captured["cond"]
        tensors["embeds.uncond"] = captured["uncond"]
        lat = torch.stack(captured["latents"])
        tensors[f"{case['name']}.latents"] = lat
        if case["frames"]:
            tensors[f"{case['name']}.frames"] = torch.from_numpy(frames.astype(np.float16))
        print(f"{case['name']}: timesteps {info['timesteps']} experts {info['experts']}, final "
              f"latent rms {lat[-1].pow(2).mean().sqrt():.3f}")
    tensors = {k: (v if v.dtype == torch.float16 else v.float()).contiguous()
               for k, v in tensors.items()}
    save_file(tensors, os.path.join(out, "golden.safetensors"),
              metadata={"generator": "tools/make_wan22_golden.py"})

    import diffusers
    import transformers
    # The tokens (EOS included) as WanPipeline tokenizes the prompts: the same
    # tokenizer as tiny-wan, whose golden tool checks them against spiece.model.
    ids = {}
    for key, text in (("ids_cond", PROMPT), ("ids_uncond", NEGATIVE)):
        enc = pipe.tokenizer(pipeline_wan.prompt_clean(text), padding="max_length",
                             max_length=TEXT_LEN, truncation=True, add_special_tokens=True,
                             return_attention_mask=True)
        ids[key] = enc["input_ids"][:sum(enc["attention_mask"])]
    with open(os.path.join(out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(dict(prompt=PROMPT, negative_prompt=NEGATIVE, width=WIDTH, height=HEIGHT,
                       ids_cond=ids["ids_cond"], ids_uncond=ids["ids_uncond"],
                       num_frames=NUM_FRAMES, text_len=TEXT_LEN, fps=FPS, boundary_ratio=BOUNDARY_RATIO,
                       cases=infos,
                       versions=dict(torch=torch.__version__, diffusers=diffusers.__version__,
                                     transformers=transformers.__version__)),
                  f, ensure_ascii=True, indent=1)
        f.write("\n")
    with open(os.path.join(out, "README"), "w") as f:
        f.write(f"Generated by tools/make_wan22_golden.py (torch {torch.__version__}, diffusers "
                f"{diffusers.__version__}, transformers {transformers.__version__}); rerunning it "
                "gives the same files.\n"
                "tiny-wan22/  a random-weight Wan2.2 T2V-A14B-style model (two experts, "
                f"boundary_ratio {BOUNDARY_RATIO}) in diffusers layout; its tokenizer, text "
                "encoder, VAE and scheduler are tests/data/pipeline/tiny-wan's.\n"
                "cases.json, golden.safetensors  WanPipeline's per-step latents, experts and "
                "frames for tests/test_pipeline.c (/pipeline/wan22/*).\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(out) for n in ns)
    print(f"wrote {out}: {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
