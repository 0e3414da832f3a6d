#!/usr/bin/env python3
"""How far PyTorch's own bfloat16 run of the small test models lands from
their float32 run (relative L2 over the output).  tests/test_gpu_models.c
compares the CUDA backend (bf16 weights and activations) with the CPU backend
(float32); these figures set its whole-model tolerances, since no bf16
implementation can be closer to float32 than the model's own sensitivity
allows.  The tiny random umT5 in tests/data/t5 is unusually sensitive: its
unscaled attention logits are large, so rounding the weights alone moves the
output by several percent.

    python3 tools/bf16_sensitivity.py      (from the repository root)
"""
import json

import diffusers
import torch
import transformers
from diffusers import AutoencoderKLWan
from transformers import UMT5EncoderModel


def rel(a, b):
    return float((a.float() - b).norm() / b.norm())


def main():
    diffusers.utils.logging.set_verbosity_error()  # the test VAE has no encoder weights
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    te = "tests/data/t5/model/text_encoder"
    f32 = UMT5EncoderModel.from_pretrained(te).eval()
    bf16 = UMT5EncoderModel.from_pretrained(te, torch_dtype=torch.bfloat16).eval()
    rounded = UMT5EncoderModel.from_pretrained(te).eval()
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.bfloat16().float())
    for c in json.load(open("tests/data/t5/cases.json"))["encoder_cases"]:
        ids = torch.tensor([c["ids"][:c["seq_len"]]])
        with torch.no_grad():
            ref = f32(ids).last_hidden_state
            print("umT5 %-10s bf16: %.2e   bf16-rounded weights, f32 activations: %.2e"
                  % (c["name"], rel(bf16(ids).last_hidden_state, ref), rel(rounded(ids).last_hidden_state, ref)))
    v32 = AutoencoderKLWan.from_pretrained("tests/data/vae/vae").eval()
    v16 = AutoencoderKLWan.from_pretrained("tests/data/vae/vae", torch_dtype=torch.bfloat16).eval()
    for s in range(3):
        # The test's latents: sum of two uniforms on [-1, 1], shape [16, 4, 4, 6].
        z = (torch.rand(1, 16, 4, 4, 6) * 2 - 1) + (torch.rand(1, 16, 4, 4, 6) * 2 - 1)
        with torch.no_grad():
            print("VAE decode latent %d bf16: %.2e" % (s, rel(v16.decode(z.bfloat16()).sample, v32.decode(z).sample)))


if __name__ == "__main__":
    main()
