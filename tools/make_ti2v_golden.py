#!/usr/bin/env python3
"""Golden data for Wan2.2 TI2V-5B text-to-video (tests/test_wan_dit.c "/wan_dit/ti2v/*",
tests/test_pipeline.c "/pipeline/ti2v/*"): a tiny random-weight WanPipeline with
expand_timesteps (a timestep per token) and the Wan2.2 VAE, in the real diffusers layout,
and diffusers' results with fixed inputs.

The model (tests/data/ti2v/tiny-ti2v):
  tokenizer/, text_encoder/, scheduler/
                 copied from tests/data/pipeline/tiny-wan (tools/make_pipeline_golden.py)
  transformer/   WanTransformer3DModel of tiny-wan's shape (2 heads x 12, 2 layers, ffn 48,
                 text_dim 32) but TI2V-5B's channels: in/out 48, patch (1, 2, 2); random weights
  vae/           AutoencoderKLWan shaped like tools/make_vae22_golden.py's (TI2V-5B's
                 structure: is_residual, z_dim 48, patch_size 2, 16x spatial / 4x temporal,
                 base_dim 4), weights and latents mean / std drawn afresh
                 (transformer and VAE stored as F16 to keep the data small; both sides load
                 them as float32, which is exact)
  model_index.json  WanPipeline with "expand_timesteps": true, as WanPipeline(
                 expand_timesteps=True) saves it, plus "_dualparal" size hints for the tests

Cases (float32, one thread):
  DiT: the transformer alone on a latent [48, 5, 4, 4] (5 latent frames of 2 x 2 tokens)
       with a 2-D timestep (batch, seq_len) whose frames are at 900, 900, 0, 375, 900: four
       runs, three distinct values, one value in two runs; conditional and unconditional
       contexts (random, [32, 32]).
  Pipeline: WanPipeline(expand_timesteps=True) text-to-video, 64x64 pixels, 9 frames
       (3 latent frames of 4x4), text length 32, the prompts of make_pipeline_golden.py,
       initial latents passed as `latents=`:
       ti2v_unipc  UniPC 4 steps, guidance 5 (frames kept)
       ti2v_euler  FlowMatchEulerDiscreteScheduler(shift=3.0) 3 steps, guidance 5
       A forward pre-hook checks that every transformer call got a 2-D timestep.

Output (--out, default tests/data/ti2v):
  tiny-ti2v/           the model directory
  cases.json           prompts and tokens, size, cases (as tools/make_wan22_golden.py)
  golden.safetensors
    noise                    [48, 3, 4, 4] F32  initial latents
    embeds.cond / .uncond    [32, 32] F32       the text embeddings the pipeline used
    NAME.latents             [N, 48, 3, 4, 4] F32  latents after step i
    ti2v_unipc.frames        [9, 64, 64, 3] F16  uint8 frames as numpy_to_pil makes them
    dit.latent               [48, 5, 4, 4] F32
    dit.context              [2, 32, 32] F32  conditional, unconditional
    dit.frame_timesteps      [5] F32
    dit.cond / dit.uncond    [48, 5, 4, 4] F32  the transformer's output for each context

Reference only: never used at run time.  Deterministic (seeded, one thread).  Needs torch,
diffusers (>= 0.35), transformers, safetensors, numpy; run it without ftfy.

    python3 tools/make_ti2v_golden.py [--out tests/data/ti2v]
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from diffusers.pipelines.wan import pipeline_wan
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_pipeline_golden import (FLOW_SHIFT, NEGATIVE, PROMPT, TEXT_LEN,  # noqa: E402
                                  TRANSFORMER, randomize_transformer, run_pipeline, use_sampler)
from make_vae_golden import randomize as randomize_vae  # noqa: E402
from make_vae22_golden import MODEL as VAE22  # noqa: E402

SEED = 5005
Z = 48
WIDTH, HEIGHT, NUM_FRAMES, FPS = 64, 64, 9, 24
TI2V_TRANSFORMER = dict(TRANSFORMER, in_channels=Z, out_channels=Z)
DIT_FRAMES, DIT_TIMESTEPS = 5, [900.0, 900.0, 0.0, 375.0, 900.0]
HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(HERE, "..", "tests", "data", "pipeline", "tiny-wan")

CASES = [
    dict(name="ti2v_unipc", sampler="unipc", steps=4, guidance=5.0, frames=True),
    dict(name="ti2v_euler", sampler="euler", steps=3, guidance=5.0, frames=False),
]


def build(model_dir):
    os.makedirs(model_dir)
    for part in ("tokenizer", "text_encoder", "scheduler"):
        shutil.copytree(os.path.join(BASE, part), os.path.join(model_dir, part))
    t = WanTransformer3DModel(**TI2V_TRANSFORMER).float().eval()
    randomize_transformer(t)
    t.half().save_pretrained(os.path.join(model_dir, "transformer"), safe_serialization=True)
    mean = [round(v, 4) for v in (torch.randn(Z) * 0.5).tolist()]
    std = [round(v, 4) for v in (0.5 + 2.5 * torch.rand(Z)).tolist()]
    vae = AutoencoderKLWan(latents_mean=mean, latents_std=std, **VAE22).float().eval()
    randomize_vae(vae, out_scale=0.5)
    vae.half().save_pretrained(os.path.join(model_dir, "vae"), safe_serialization=True)
    with open(os.path.join(BASE, "model_index.json")) as f:
        index = json.load(f)
    index["expand_timesteps"] = True
    index["_dualparal"] = dict(width=WIDTH, height=HEIGHT, text_len=TEXT_LEN, fps=FPS)
    with open(os.path.join(model_dir, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")


def run_case(pipe, case, noise, unipc_config):
    use_sampler(pipe, case["sampler"], unipc_config)
    shapes = []

    def pre_hook(module, args, kwargs):
        shapes.append(tuple(kwargs["timestep"].shape))

    hook = pipe.transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    out, captured = run_pipeline(pipe, case, noise, height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES)
    hook.remove()
    seq = noise.shape[2] * (noise.shape[3] // 2) * (noise.shape[4] // 2)
    assert shapes == [(1, seq)] * (2 * case["steps"]), shapes  # per-token timesteps, cond + uncond
    frames = (out.frames[0] * 255).round().astype(np.uint8)
    info = dict(name=case["name"], sampler=case["sampler"], steps=case["steps"],
                guidance=case["guidance"], guidance_2=None, shift=FLOW_SHIFT,
                timesteps=[float(t) for t in pipe.scheduler.timesteps])
    return captured, frames, info


def dit_case(transformer):
    hp, wp = 2, 2
    latent = torch.randn(1, Z, DIT_FRAMES, 2 * hp, 2 * wp)
    context = torch.randn(2, TEXT_LEN, TRANSFORMER["text_dim"])
    ts = torch.tensor(DIT_TIMESTEPS).repeat_interleave(hp * wp)[None]  # (1, seq_len)
    with torch.no_grad():
        cond = transformer(hidden_states=latent, timestep=ts, encoder_hidden_states=context[:1],
                           return_dict=False)[0]
        uncond = transformer(hidden_states=latent, timestep=ts, encoder_hidden_states=context[1:],
                             return_dict=False)[0]
        # The per-token path must matter: one timestep for every token differs.
        flat = transformer(hidden_states=latent, timestep=torch.full_like(ts, 900.0),
                           encoder_hidden_states=context[:1], return_dict=False)[0]
    diff = ((flat - cond).norm() / cond.norm()).item()
    assert diff > 1e-2, diff
    print(f"dit: per-token vs all-900 relative difference {diff:.3f}")
    return {"dit.latent": latent[0], "dit.context": context,
            "dit.frame_timesteps": torch.tensor(DIT_TIMESTEPS), "dit.cond": cond[0], "dit.uncond": uncond[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "data", "ti2v"))
    args = ap.parse_args()
    if pipeline_wan.is_ftfy_available():
        raise SystemExit("ftfy is installed: make the data in an environment without ftfy")
    torch.set_num_threads(1)
    torch.manual_seed(SEED)

    out = os.path.abspath(args.out)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model_dir = os.path.join(out, "tiny-ti2v")
    build(model_dir)

    WanTransformer3DModel._keep_in_fp32_modules = None
    pipe = WanPipeline.from_pretrained(model_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.expand_timesteps and pipe.transformer_2 is None
    assert pipe.vae.config.z_dim == Z and pipe.vae.config.is_residual
    assert pipe.vae_scale_factor_spatial == 16 and pipe.vae_scale_factor_temporal == 4
    assert pipe.transformer.dtype == torch.float32 and pipe.vae.dtype == torch.float32
    unipc_config = pipe.scheduler.config
    assert isinstance(pipe.scheduler, UniPCMultistepScheduler)

    tensors = dit_case(pipe.transformer)
    lat_f = (NUM_FRAMES - 1) // 4 + 1
    noise = torch.randn(1, Z, lat_f, HEIGHT // 16, WIDTH // 16)
    tensors["noise"] = noise[0]
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
        print(f"{case['name']}: timesteps {info['timesteps']}, final latent rms "
              f"{lat[-1].pow(2).mean().sqrt():.3f}, frames mean {frames.mean():.1f} "
              f"at 0/255 {100 * np.mean((frames == 0) | (frames == 255)):.1f}%")
    tensors = {k: (v if v.dtype == torch.float16 else v.float()).contiguous()
               for k, v in tensors.items()}
    save_file(tensors, os.path.join(out, "golden.safetensors"),
              metadata={"generator": "tools/make_ti2v_golden.py"})

    import diffusers
    import transformers
    ids = {}
    for key, text in (("ids_cond", PROMPT), ("ids_uncond", NEGATIVE)):
        enc = pipe.tokenizer(pipeline_wan.prompt_clean(text), padding="max_length",
                             max_length=TEXT_LEN, truncation=True, add_special_tokens=True,
                             return_attention_mask=True)
        ids[key] = enc["input_ids"][:sum(enc["attention_mask"])]
    with open(os.path.join(out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(dict(prompt=PROMPT, negative_prompt=NEGATIVE, width=WIDTH, height=HEIGHT,
                       ids_cond=ids["ids_cond"], ids_uncond=ids["ids_uncond"],
                       num_frames=NUM_FRAMES, text_len=TEXT_LEN, fps=FPS, cases=infos,
                       dit=dict(frames=DIT_FRAMES, height=4, width=4, frame_timesteps=DIT_TIMESTEPS),
                       versions=dict(torch=torch.__version__, diffusers=diffusers.__version__,
                                     transformers=transformers.__version__)),
                  f, ensure_ascii=True, indent=1)
        f.write("\n")
    with open(os.path.join(out, "README"), "w") as f:
        f.write(f"Generated by tools/make_ti2v_golden.py (torch {torch.__version__}, diffusers "
                f"{diffusers.__version__}, transformers {transformers.__version__}); rerunning it "
                "gives the same files.\n"
                "tiny-ti2v/  a random-weight Wan2.2 TI2V-5B-style model (expand_timesteps, "
                "48 latent channels, the Wan2.2 VAE) in diffusers layout; its tokenizer, text "
                "encoder and scheduler are tests/data/pipeline/tiny-wan's.\n"
                "cases.json, golden.safetensors  the transformer's output with per-token "
                "timesteps (dit.*) and WanPipeline's per-step latents and frames for "
                "tests/test_wan_dit.c (/wan_dit/ti2v/*) and tests/test_pipeline.c "
                "(/pipeline/ti2v/*).\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(out) for n in ns)
    print(f"wrote {out}: {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
