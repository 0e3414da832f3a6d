#!/usr/bin/env python3
"""Golden data for the tiled VAE decode (tests/test_wan_vae.c, "tiled").

Loads the tiny Wan2.1 VAE and latent of tests/data/vae (made by
tools/make_vae_golden.py) and decodes the first LATENT_FRAMES latent frames
with diffusers' AutoencoderKLWan.enable_tiling at two tile settings, exactly
as WanPipeline would (latents de-normalised, vae.decode, clamped):

  a: tile 24 x 24 pixels, stride 16 x 16   (latent 4 x 6: a 2 x 3 grid)
  b: tile 16 x 24 pixels, stride 8 x 16    (a 4 x 3 grid, uneven edge tiles)

Reference only: never used at run time.

    python3 tools/make_vae_tiled_golden.py [--data tests/data/vae]

Writes <data>/tiled.safetensors (F32): latent [16, 2, 4, 6] and
video_a, video_b, video_untiled [3, 5, 32, 48].
"""

import argparse
import os

import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file, save_file

LATENT_FRAMES = 2
SETTINGS = {"a": (24, 24, 16, 16), "b": (16, 24, 8, 16)}  # tile h, tile w, stride h, stride w


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "vae"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = AutoencoderKLWan.from_pretrained(os.path.join(args.data, "vae")).float().eval()
    latent = load_file(os.path.join(args.data, "io.safetensors"))["latent"][:, :LATENT_FRAMES].contiguous()
    z_dim = latent.shape[0]
    mean = torch.tensor(model.config.latents_mean).view(1, z_dim, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(model.config.latents_std).view(1, z_dim, 1, 1, 1)
    z = latent[None] / inv_std + mean
    out = {"latent": latent}
    with torch.no_grad():
        out["video_untiled"] = model.decode(z, return_dict=False)[0][0]
        for name, (th, tw, sh, sw) in SETTINGS.items():
            model.enable_tiling(tile_sample_min_height=th, tile_sample_min_width=tw,
                                tile_sample_stride_height=sh, tile_sample_stride_width=sw)
            out["video_" + name] = model.decode(z, return_dict=False)[0][0]
            d = out["video_" + name] - out["video_untiled"]
            print(f"{name}: tile {th}x{tw} stride {sh}x{sw}: max |tiled - untiled| {d.abs().max().item():.4g}, "
                  f"rel L2 {(d.norm() / out['video_untiled'].norm()).item():.4g}")
    out = {k: v.float().contiguous() for k, v in out.items()}
    save_file(out, os.path.join(args.data, "tiled.safetensors"),
              metadata={"generator": "tools/make_vae_tiled_golden.py"})


if __name__ == "__main__":
    main()
