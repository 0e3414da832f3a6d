#!/usr/bin/env python3
"""Writes the small safetensors fixtures under tests/data/safetensors/ with the
real `safetensors` package (PyPI), so that the C reader is checked against
files it did not write itself.

  python3 tools/make_safetensors_fixture.py [tests/data/safetensors]

Files (values are exact in their dtype, so the C test compares bit for bit):
  single.safetensors            one file, F32 / BF16 / F16 tensors + __metadata__
  sharded/                      diffusers-style: 2 shards + the index json
    diffusion_pytorch_model-00001-of-00002.safetensors
    diffusion_pytorch_model-00002-of-00002.safetensors
    diffusion_pytorch_model.safetensors.index.json
The patterns are documented next to each tensor; tests/test_safetensors.c
recomputes them.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file


def single_tensors():
    return {
        # i * 0.5 - 3, i = 0..23 (row-major)
        "f32.arange": (torch.arange(24, dtype=torch.float32) * 0.5 - 3).reshape(2, 3, 4),
        # (i - 16) * 0.125, i = 0..31: 8 significant bits at most, exact in bf16
        "bf16.pattern": ((torch.arange(32, dtype=torch.float32) - 16) * 0.125)
        .reshape(4, 8).to(torch.bfloat16),
        # (i - 7) * 0.25, i = 0..14
        "f16.pattern": ((torch.arange(15, dtype=torch.float32) - 7) * 0.25)
        .reshape(3, 5).to(torch.float16),
        # f16 extremes: max, -max, smallest subnormal 2^-24, smallest normal 2^-14
        "f16.special": torch.tensor([65504.0, -65504.0, 2.0 ** -24, 2.0 ** -14],
                                    dtype=torch.float16),
        # bf16 extremes: 2^100, -2^-100, largest finite (0x7f7f)
        "bf16.special": torch.tensor([2.0 ** 100, -(2.0 ** -100), 3.3895313892515355e38],
                                     dtype=torch.bfloat16),
        # 5 dimensions, value i + 1
        "f32.five_dims": (torch.arange(8, dtype=torch.float32) + 1).reshape(1, 2, 1, 2, 2),
        # a 0-d tensor
        "f32.scalar": torch.tensor(42.0, dtype=torch.float32),
        # no elements
        "f32.empty": torch.zeros(0, 3, dtype=torch.float32),
    }


def sharded_tensors():
    # Named like a Wan block; value per element: base + i (i row-major).
    names = {
        "blocks.0.attn1.to_q.weight": ((8, 8), 0.0),
        "blocks.0.attn1.to_q.bias": ((8,), 100.0),
        "blocks.1.attn1.to_q.weight": ((8, 8), 200.0),
        "proj_out.bias": ((4,), 300.0),
    }
    return {name: (torch.arange(int(torch.tensor(shape).prod()), dtype=torch.float32) + base)
            .reshape(shape) for name, (shape, base) in names.items()}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "safetensors")
    os.makedirs(out, exist_ok=True)
    save_file(single_tensors(), os.path.join(out, "single.safetensors"),
              metadata={"format": "pt", "producer": "make_safetensors_fixture.py"})

    shard_dir = os.path.join(out, "sharded")
    os.makedirs(shard_dir, exist_ok=True)
    tensors = sharded_tensors()
    names = sorted(tensors)
    # diffusers' naming (diffusers.utils.constants, huggingface_hub sharding).
    shards = {
        "diffusion_pytorch_model-00001-of-00002.safetensors": names[:2],
        "diffusion_pytorch_model-00002-of-00002.safetensors": names[2:],
    }
    weight_map = {}
    total = 0
    for shard, members in shards.items():
        save_file({n: tensors[n] for n in members}, os.path.join(shard_dir, shard),
                  metadata={"format": "pt"})
        for n in members:
            weight_map[n] = shard
            total += tensors[n].numel() * tensors[n].element_size()
    with open(os.path.join(shard_dir, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                  f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
