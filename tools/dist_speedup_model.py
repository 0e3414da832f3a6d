#!/usr/bin/env python3
"""Expected speed-up of the DualParal pipeline over processes / GPUs
(docs/distributed.md, "Expected speed-up"): a model, not a measurement.

Inputs (each stated in docs/distributed.md with where it comes from):
- the time of one guided DiT pass of a whole window on one GPU (measured on
  an H200 for Wan2.1-1.3B shapes, docs/performance.md; 14B scaled by FLOPs);
- the bytes a pass sends between stages (computed from the shapes);
- a link bandwidth (NVLink, PCIe, 100 Gb/s Ethernet);
- the VAE's decode time per frame on stage 0 (measured, docs/performance.md).

Model: a video of B blocks takes B*T passes.  With N stages each pass is
split into N parts of t_pass / N (plus, per stage, the transfer of its
hidden states, which overlaps the next pass's compute: the engine posts the
receive of pass k+1 before it computes pass k, so a stage is limited by
max(compute, transfer)).  Stage 0 also steps the samplers (negligible) and
decodes each finished block with the VAE between its passes (not
overlapped today).  The pipeline fills and drains once: N - 1 extra slots.

  one GPU:  B*T*t_pass + B*t_vae_block
  N stages: (B*T + N - 1) * max(t_pass/N, t_link) + B*t_vae_block

Usage: python3 tools/dist_speedup_model.py [--blocks B] [--steps T]
"""
import argparse

# Measured (docs/performance.md, H200, bf16, Wan2.1-1.3B shapes, guided
# batch 2): full 30-layer forward of a DualParal window.
#   P+C = 8+2 (10 latent frames, 15,600 query tokens): 327 ms
#   P+C = 4+2 ( 6 latent frames,  9,360 query tokens): 165 ms
# The default P+C = 10+5 window (15 frames, 23,400 tokens) is extrapolated
# from these two, linearly in tokens (attention grows faster; so this is a
# floor): 165 + (23400 - 9360) * (327 - 165) / (15600 - 9360) ms.
T_PASS_13B_MS = 165 + (23400 - 9360) * (327 - 165) / (15600 - 9360)
# 14B: per-layer GEMM FLOPs scale with dim^2 (5120 / 1536)^2 = 11.1, the
# attention FLOPs with heads * head_dim (40 / 12 = 3.33); measured split of
# a 1.3B layer at 81 frames: 69 % attention, 24 % GEMMs, 7 % the rest (kept
# as GEMM-like).  40 layers instead of 30.
SCALE_14B = (40 / 30) * (0.69 * (40 / 12) + 0.31 * (5120 / 1536) ** 2)
T_PASS_14B_MS = T_PASS_13B_MS * SCALE_14B
# VAE decode, 832 x 480, measured 181 ms per frame (H200); a block of P = 10
# latent frames is 40 frames.
T_VAE_BLOCK_MS = 181 * 40

TOKENS = 23400  # 15 latent frames of 30 x 52 patches
LINKS_GBPS = {  # usable one-direction bandwidth, GB/s (stated, not measured)
    "NVLink (H100 SXM, NCCL p2p)": 350.0,
    "PCIe 5.0 x16": 50.0,
    "PCIe 4.0 x16": 25.0,
    "100 Gb/s Ethernet": 11.0,
}


def hidden_bytes(dim, dtype_bytes):
    return 2 * TOKENS * dim * dtype_bytes  # batch 2 (guided)


def model(t_pass_ms, link_ms, n, blocks, steps, vae_ms):
    one = blocks * steps * t_pass_ms + blocks * vae_ms
    many = (blocks * steps + n - 1) * max(t_pass_ms / n, link_ms) + blocks * vae_ms
    return one / many


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=26, help="blocks (26 x 40 = 1025 frames at P=10, C=5)")
    ap.add_argument("--steps", type=int, default=50)
    a = ap.parse_args()
    print(f"one pass of a P+C = 10+5 window on one GPU: 1.3B {T_PASS_13B_MS:.0f} ms, "
          f"14B {T_PASS_14B_MS:.0f} ms (x{SCALE_14B:.1f}); VAE per block {T_VAE_BLOCK_MS / 1000:.1f} s")
    print(f"{a.blocks} blocks, {a.steps} steps\n")
    print("Speed-up over one GPU (the links below never limit: see the second table)\n")
    print("| model | one pass, 1 GPU | 2 GPUs | 4 GPUs | 8 GPUs | 8 GPUs, DiT only (VAE elsewhere) |")
    print("|---|---|---|---|---|---|")
    for name, t_pass in (("1.3B", T_PASS_13B_MS), ("14B", T_PASS_14B_MS)):
        cells = [f"{model(t_pass, 0.0, n, a.blocks, a.steps, T_VAE_BLOCK_MS):.2f}x" for n in (2, 4, 8)]
        print(f"| {name} | {t_pass:.0f} ms | " + " | ".join(cells) +
              f" | {model(t_pass, 0.0, 8, a.blocks, a.steps, 0.0):.2f}x |")
    print("\nOne hidden-state message per pass and stage, against a stage's compute per pass at 8 GPUs\n")
    print("| model | wire | message | " + " | ".join(LINKS_GBPS) + " | compute per stage, 8 GPUs |")
    print("|---|---|---|" + "---|" * len(LINKS_GBPS) + "---|")
    for name, dim, t_pass in (("1.3B", 1536, T_PASS_13B_MS), ("14B", 5120, T_PASS_14B_MS)):
        for wire, nbytes in (("F32", 4), ("BF16", 2)):
            size = hidden_bytes(dim, nbytes)
            times = [f"{size / (gbps * 1e9) * 1e3:.1f} ms" for gbps in LINKS_GBPS.values()]
            print(f"| {name} | {wire} | {size / 1e6:.0f} MB | " + " | ".join(times) + f" | {t_pass / 8:.0f} ms |")

if __name__ == "__main__":
    main()
