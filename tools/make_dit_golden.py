#!/usr/bin/env python3
"""Golden data for the Wan2.1 DiT (tests/test_wan_dit.c).

Builds small random-weight diffusers WanTransformer3DModel configurations, saves
each in the real diffusers layout (config.json + safetensors, one of them
sharded with an index), runs diffusers on fixed inputs and stores inputs and
outputs as safetensors.  Reference only: never used at run time.

    python3 tools/make_dit_golden.py [--out tests/data/dit]

Per configuration NAME the output directory holds:
  NAME/transformer/            config.json + diffusion_pytorch_model*.safetensors
  NAME/io.safetensors          (all F32; batch dimension dropped)
    latent        [C, F, H, W]     input latent
    timestep      [1]              diffusion timestep (an integer value, as the pipeline passes)
    guidance      [1]              guidance scale g
    context_cond  [Lt, text_dim]   prompt embedding, zero rows after the prompt length
    context_uncond[Lt, text_dim]   negative-prompt embedding, zero rows after its length
    out_cond      [C, F, H, W]     diffusers output with the cond context
    out_uncond    [C, F, H, W]     diffusers output with the uncond context
    out_guided    [C, F, H, W]     out_uncond + g * (out_cond - out_uncond)
    embed         [L, dim]         tokens after the patch embedding (cond run)
    hidden.N      [L, dim]         hidden states after block N (cond run)
    self_k.N      [L, dim]         block N self-attention to_k output (before norm_k / RoPE)
    self_v.N      [L, dim]         block N self-attention to_v output
"""

import argparse
import json
import os
import shutil

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

CONFIGS = [
    # 4 heads x 16, square-ish patches on a non-square latent (6x10 -> 3x5), one file.
    dict(name="tiny_a", seed=1234, shard=None,
         model=dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16,
                    in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=128,
                    num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                    eps=1e-6, rope_max_seq_len=1024),
         frames=4, height=6, width=10, text_len=12, cond_len=7, uncond_len=3,
         timestep=937, guidance=5.0),
    # 3 heads x 24, other channel counts and freq_dim, 3 layers, 10x6 latent -> 5x3, sharded.
    dict(name="tiny_b", seed=4321, shard="200KB",
         model=dict(patch_size=(1, 2, 2), num_attention_heads=3, attention_head_dim=24,
                    in_channels=8, out_channels=12, text_dim=40, freq_dim=128, ffn_dim=160,
                    num_layers=3, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                    eps=1e-6, rope_max_seq_len=64),
         frames=5, height=10, width=6, text_len=10, cond_len=6, uncond_len=10,
         timestep=421, guidance=3.5),
]


def randomize(model):
    """Re-draw every parameter: diffusers zero-initialises some layers, which
    would leave paths of the model untested."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale_shift_table"):
                p.copy_(torch.randn_like(p) * 0.3)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)


def context(cfg, length, text_dim):
    c = torch.zeros(1, cfg["text_len"], text_dim)
    c[0, :length] = torch.randn(length, text_dim)
    return c


def make(cfg, out):
    torch.manual_seed(cfg["seed"])
    model = WanTransformer3DModel(**cfg["model"]).float().eval()
    randomize(model)

    root = os.path.join(out, cfg["name"])
    tdir = os.path.join(root, "transformer")
    shutil.rmtree(root, ignore_errors=True)
    kw = {"max_shard_size": cfg["shard"]} if cfg["shard"] else {}
    model.save_pretrained(tdir, safe_serialization=True, **kw)

    m = cfg["model"]
    latent = torch.randn(1, m["in_channels"], cfg["frames"], cfg["height"], cfg["width"])
    ctx_c = context(cfg, cfg["cond_len"], m["text_dim"])
    ctx_u = context(cfg, cfg["uncond_len"], m["text_dim"])
    t = torch.tensor([cfg["timestep"]], dtype=torch.int64)
    g = cfg["guidance"]

    captured = {}
    hooks = [model.patch_embedding.register_forward_hook(
        lambda mod, i, o: captured.__setitem__("embed", o.flatten(2).transpose(1, 2)[0].clone()))]
    for n, blk in enumerate(model.blocks):
        hooks.append(blk.register_forward_hook(
            lambda mod, i, o, n=n: captured.__setitem__(f"hidden.{n}", o[0].clone())))
        hooks.append(blk.attn1.to_k.register_forward_hook(
            lambda mod, i, o, n=n: captured.__setitem__(f"self_k.{n}", o[0].clone())))
        hooks.append(blk.attn1.to_v.register_forward_hook(
            lambda mod, i, o, n=n: captured.__setitem__(f"self_v.{n}", o[0].clone())))

    with torch.no_grad():
        out_c = model(latent, t, ctx_c, return_dict=False)[0]
        for h in hooks:
            h.remove()
        out_u = model(latent, t, ctx_u, return_dict=False)[0]
    out_g = out_u + g * (out_c - out_u)

    io = {
        "latent": latent[0],
        "timestep": torch.tensor([float(cfg["timestep"])]),
        "guidance": torch.tensor([g]),
        "context_cond": ctx_c[0],
        "context_uncond": ctx_u[0],
        "out_cond": out_c[0],
        "out_uncond": out_u[0],
        "out_guided": out_g[0],
    }
    io.update(captured)
    io = {k: v.float().contiguous() for k, v in io.items()}
    save_file(io, os.path.join(root, "io.safetensors"),
              metadata={"generator": "tools/make_dit_golden.py",
                        "cond_len": str(cfg["cond_len"]), "uncond_len": str(cfg["uncond_len"])})
    # Record what produced the data.
    import diffusers
    with open(os.path.join(root, "README"), "w") as f:
        f.write(f"Generated by tools/make_dit_golden.py with torch {torch.__version__}, "
                f"diffusers {diffusers.__version__}.\n{json.dumps({k: v for k, v in cfg.items() if k != 'model'})}\n")
    rms = out_c.pow(2).mean().sqrt().item()
    print(f"{cfg['name']}: {sum(p.numel() for p in model.parameters())} parameters, "
          f"output {tuple(out_c.shape)} rms {rms:.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "dit"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    for cfg in CONFIGS:
        make(cfg, args.out)


if __name__ == "__main__":
    main()
