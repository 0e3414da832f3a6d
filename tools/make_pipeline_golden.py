#!/usr/bin/env python3
"""Golden data for the classic text-to-video pipeline (tests/test_pipeline.c) and the
tiny model the pipeline, tool and GStreamer element tests run (tests/data/pipeline/tiny-wan).

Builds a tiny random-weight WanPipeline in the real diffusers layout (save_pretrained):

  tokenizer/     a sentencepiece unigram model (512 pieces) trained by this script on
                 generated sentences about coloured shapes (the corpus of
                 tools/make_t5_golden.py), identity normalisation so that spiece.model
                 stays small (7 KB instead of 250 KB with the NFKC charsmap), converted
                 to transformers' T5 tokenizer (tokenizer.json) as the pipeline uses it
  text_encoder/  UMT5EncoderModel, d_model 32, 2 layers, 4 heads x 8   (F32)
  transformer/   WanTransformer3DModel, 2 heads x 12, 2 layers, ffn 48, text_dim 32 (F32)
  vae/           AutoencoderKLWan with Wan2.1's structure at base_dim 4 (encoder kept:
                 it is part of the real layout; F16 on disk to keep the data small,
                 which also exercises the F16 -> F32 conversion of the loaders)
  scheduler/     UniPCMultistepScheduler configured as Wan2.1-T2V (flow_shift 3.0)
  model_index.json  plus a private key diffusers ignores (keys starting with "_"):
                 "_dualparal": {"width": 48, "height": 32, "text_len": 32, "fps": 16}
                 the model's native size, its text length (WanPipeline's
                 max_sequence_length) and frame rate (docs/usage.md)

Every parameter is re-drawn so that all paths of all models matter.  The pipeline
is then reloaded from the saved directory with WanPipeline.from_pretrained (so the
files are exactly what made the data) and run in float32 with the initial noise
passed as `latents=` (torch's generator and dualparal's Philox differ), at 48x32
pixels, 9 frames (3 latent frames of 4x6), max_sequence_length 32, for the cases:

  unipc_g5   UniPC (the scheduler/ config), 4 steps, guidance 5, negative prompt
  euler_g5   FlowMatchEulerDiscreteScheduler(shift=3.0) (Wan's shift), 3 steps, guidance 5
  unipc_g1   UniPC, 4 steps, guidance 1: the conditional pass alone

Reference only: never used at run time.

    python3 tools/make_pipeline_golden.py [--out tests/data/pipeline]

Output (--out):
  tiny-wan/            the model directory (above)
  cases.json           {prompt, negative_prompt, cleaned prompts, width, height,
                        num_frames, text_len, ids_cond / ids_uncond (the real tokens,
                        EOS included, as WanPipeline tokenizes them), cases: [{name,
                        sampler, steps, guidance, shift, timesteps, sigmas}]}
  golden.safetensors
    noise                 [16, 3, 4, 6] F32  initial latents (x_0)
    embeds.cond           [32, 32] F32       prompt_embeds the pipeline used (zeros after the tokens)
    embeds.uncond         [32, 32] F32       negative_prompt_embeds
    NAME.latents          [N, 16, 3, 4, 6] F32  latents after step i (callback_on_step_end)
    unipc_g5.video        [9, 32, 48, 3] F32   output_type="np" frames (in [0, 1]), first case only
    NAME.frames           [9, 32, 48, 3] F16   uint8 frames as numpy_to_pil makes them,
                                               (v * 255).round() (half to even), stored as
                                               F16 (exact for 0..255)

Deterministic: everything is seeded and runs on one thread.
Needs torch, diffusers, transformers, safetensors, sentencepiece, protobuf, numpy.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import sentencepiece as spm
import torch
from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler,
                       WanPipeline, WanTransformer3DModel)
from diffusers.pipelines.wan import pipeline_wan
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from safetensors.torch import save_file
from transformers import AutoTokenizer, T5Tokenizer, UMT5Config, UMT5EncoderModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_t5_golden import corpus  # noqa: E402  (the same shape sentences)

SEED = 4242
VOCAB_SIZE = 512
WIDTH, HEIGHT, NUM_FRAMES, TEXT_LEN, FPS = 48, 32, 9, 32, 16
FLOW_SHIFT = 3.0

PROMPT = "A red circle moves slowly to the left &amp; a blue square spins."
NEGATIVE = "static, blurred, low quality"

TEXT_ENCODER = dict(vocab_size=VOCAB_SIZE, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0)
TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                   out_channels=16, text_dim=32, freq_dim=256, ffn_dim=48, num_layers=2,
                   cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                   rope_max_seq_len=1024)
VAE = dict(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
           temperal_downsample=[False, True, True])

CASES = [
    dict(name="unipc_g5", sampler="unipc", steps=4, guidance=5.0),
    dict(name="euler_g5", sampler="euler", steps=3, guidance=5.0),
    dict(name="unipc_g1", sampler="unipc", steps=4, guidance=1.0),
]


def train_tokenizer():
    """Trains the sentencepiece model; returns (the transformers T5 tokenizer made
    from it, as the pipeline uses it, the spiece.model bytes the C tokenizer reads)."""
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "corpus.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(corpus()) + "\n")
        cwd = os.getcwd()
        os.chdir(tmp)  # the model records its input path: keep it relative
        try:
            spm.SentencePieceTrainer.train(input="corpus.txt", model_prefix="spiece",
                                           vocab_size=VOCAB_SIZE, model_type="unigram", pad_id=0,
                                           eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
                                           num_threads=1, shuffle_input_sentence=False,
                                           normalization_rule_name="identity", minloglevel=2)
        finally:
            os.chdir(cwd)
        spm_dir = os.path.join(tmp, "spm")
        os.makedirs(spm_dir)
        shutil.copy(os.path.join(tmp, "spiece.model"), os.path.join(spm_dir, "spiece.model"))
        T5Tokenizer.from_pretrained(spm_dir, extra_ids=0).save_pretrained(os.path.join(tmp, "tok"))
        tokenizer = AutoTokenizer.from_pretrained(os.path.join(tmp, "tok"))
        with open(os.path.join(tmp, "spiece.model"), "rb") as f:
            spiece = f.read()
    assert len(tokenizer) == VOCAB_SIZE, len(tokenizer)
    return tokenizer, spiece


def randomize_text_encoder(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif "relative_attention_bias" in name or name == "shared.weight":
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * 1.5 / p.shape[1] ** 0.5)


def randomize_transformer(model):
    """diffusers zero-initialises some layers; re-draw everything."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale_shift_table"):
                p.copy_(torch.randn_like(p) * 0.3)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)


def randomize_vae(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
        # Most output pixels inside the [-1, 1] clamp: the comparison then sees
        # real values, not the clamp bounds.
        model.decoder.conv_out.weight.mul_(0.6)


def build(model_dir):
    tokenizer, spiece = train_tokenizer()

    text_encoder = UMT5EncoderModel(UMT5Config(**TEXT_ENCODER)).eval()
    randomize_text_encoder(text_encoder)
    transformer = WanTransformer3DModel(**TRANSFORMER).float().eval()
    randomize_transformer(transformer)
    mean = [round(v, 4) for v in (torch.randn(16) * 0.5).tolist()]
    std = [round(v, 4) for v in (0.5 + 2.0 * torch.rand(16)).tolist()]
    vae = AutoencoderKLWan(latents_mean=mean, latents_std=std, **VAE).eval()
    randomize_vae(vae)
    vae = vae.half()  # stored as F16; the reference runs it in F32 after reloading
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=FLOW_SHIFT)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                       vae=vae, scheduler=scheduler)
    pipe.save_pretrained(model_dir, safe_serialization=True)

    # The sentencepiece model itself, what the C tokenizer reads (the fast
    # tokenizer's save_pretrained writes only tokenizer.json).
    with open(os.path.join(model_dir, "tokenizer", "spiece.model"), "wb") as f:
        f.write(spiece)
    index_path = os.path.join(model_dir, "model_index.json")
    with open(index_path) as f:
        index = json.load(f)
    index["_dualparal"] = dict(width=WIDTH, height=HEIGHT, text_len=TEXT_LEN, fps=FPS)
    with open(index_path, "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")


def use_sampler(pipe, sampler, unipc_config):
    """The case's scheduler: UniPC from the model's config, or Euler at FLOW_SHIFT."""
    if sampler == "unipc":
        pipe.scheduler = UniPCMultistepScheduler.from_config(unipc_config)
    else:
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=FLOW_SHIFT)


def run_pipeline(pipe, case, noise, height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES, **kwargs):
    """WanPipeline on PROMPT / NEGATIVE from the initial latents `noise` (kwargs go to the
    pipeline): its output, and what the step callback saw (the latents after every step, the
    prompt embeddings at step 0; uncond None when unguided)."""
    captured = dict(latents=[])

    def on_step(p, i, t, kw):
        captured["latents"].append(kw["latents"][0].clone())
        if i == 0:
            captured["cond"] = kw["prompt_embeds"][0].clone()
            ne = kw["negative_prompt_embeds"]
            captured["uncond"] = None if ne is None else ne[0].clone()
        return {}

    with torch.no_grad():
        out = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=height, width=width,
                   num_frames=num_frames, num_inference_steps=case["steps"],
                   guidance_scale=case["guidance"], latents=noise.clone(), output_type="np",
                   max_sequence_length=TEXT_LEN, callback_on_step_end=on_step,
                   callback_on_step_end_tensor_inputs=["latents", "prompt_embeds",
                                                       "negative_prompt_embeds"], **kwargs)
    return out, captured


def run_case(pipe, case, noise):
    use_sampler(pipe, case["sampler"], pipe.scheduler_config_unipc)
    out, captured = run_pipeline(pipe, case, noise)
    video = out.frames[0]  # [F, H, W, 3] float32 in [0, 1]
    frames = (video * 255).round().astype(np.uint8)  # numpy_to_pil
    sched = pipe.scheduler
    info = dict(case, shift=FLOW_SHIFT, timesteps=[float(t) for t in sched.timesteps],
                sigmas=[float(s) for s in sched.sigmas])
    return captured, video, frames, info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                                                  "pipeline"))
    args = ap.parse_args()
    if pipeline_wan.is_ftfy_available():
        raise SystemExit("ftfy is installed: prompt_clean would run ftfy.fix_text, which the C port "
                         "does not do; make the data in an environment without ftfy")
    torch.set_num_threads(1)
    torch.manual_seed(SEED)

    out = os.path.abspath(args.out)
    shutil.rmtree(out, ignore_errors=True)
    model_dir = os.path.join(out, "tiny-wan")
    os.makedirs(out)
    build(model_dir)

    # Reload: the data comes from the files as saved.
    # Without accelerate, diffusers refuses to load a model class that declares
    # _keep_in_fp32_modules; everything here is loaded as float32 anyway.
    WanTransformer3DModel._keep_in_fp32_modules = None
    pipe = WanPipeline.from_pretrained(model_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler_config_unipc = pipe.scheduler.config
    assert isinstance(pipe.scheduler, UniPCMultistepScheduler)
    assert pipe.vae.dtype == torch.float32 and pipe.transformer.dtype == torch.float32

    # The C tokenizer reads spiece.model: it must tokenize like the pipeline's tokenizer.
    sp = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer", "spiece.model"))
    ids = {}
    for key, text in (("cond", PROMPT), ("uncond", NEGATIVE)):
        enc = pipe.tokenizer(prompt_clean(text), padding="max_length", max_length=TEXT_LEN,
                             truncation=True, add_special_tokens=True, return_attention_mask=True)
        n = sum(enc["attention_mask"])
        ids[key] = enc["input_ids"][:n]
        assert ids[key] == sp.encode(prompt_clean(text)) + [sp.eos_id()], key
        assert n < TEXT_LEN, f"{key} prompt is truncated ({n} tokens)"

    lat_f = (NUM_FRAMES - 1) // 4 + 1
    noise = torch.randn(1, 16, lat_f, HEIGHT // 8, WIDTH // 8)
    tensors = {"noise": noise[0]}
    infos = []
    for case in CASES:
        captured, video, frames, info = run_case(pipe, case, noise)
        infos.append(info)
        if case["guidance"] > 1.0:
            tensors["embeds.cond"] = captured["cond"]
            tensors["embeds.uncond"] = captured["uncond"]
        else:
            assert captured["uncond"] is None
            assert torch.equal(captured["cond"], tensors["embeds.cond"])
        lat = torch.stack(captured["latents"])
        tensors[f"{case['name']}.latents"] = lat
        if case is CASES[0]:  # one float video is enough (and keeps the data small)
            tensors[f"{case['name']}.video"] = torch.from_numpy(video)
        tensors[f"{case['name']}.frames"] = torch.from_numpy(frames.astype(np.float16))
        clamped = float(((video <= 0.0) | (video >= 1.0)).mean())
        print(f"{case['name']}: final latent rms {lat[-1].pow(2).mean().sqrt():.3f}, "
              f"frames {video.shape} mean {video.mean():.3f} std {video.std():.3f}, "
              f"at clamp bounds {100 * clamped:.1f}%")
    for k in ("embeds.cond", "embeds.uncond"):
        assert tensors[k].shape == (TEXT_LEN, TEXT_ENCODER["d_model"])
    tensors = {k: (v if v.dtype == torch.float16 else v.float()).contiguous()
               for k, v in tensors.items()}
    save_file(tensors, os.path.join(out, "golden.safetensors"),
              metadata={"generator": "tools/make_pipeline_golden.py"})

    import diffusers
    import transformers
    with open(os.path.join(out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(dict(prompt=PROMPT, negative_prompt=NEGATIVE, cleaned_prompt=prompt_clean(PROMPT),
                       cleaned_negative_prompt=prompt_clean(NEGATIVE), width=WIDTH, height=HEIGHT,
                       num_frames=NUM_FRAMES, text_len=TEXT_LEN, fps=FPS, ids_cond=ids["cond"],
                       ids_uncond=ids["uncond"], cases=infos,
                       versions=dict(torch=torch.__version__, diffusers=diffusers.__version__,
                                     transformers=transformers.__version__)),
                  f, ensure_ascii=True, indent=1)
        f.write("\n")
    with open(os.path.join(out, "README"), "w") as f:
        f.write(f"Generated by tools/make_pipeline_golden.py (torch {torch.__version__}, diffusers "
                f"{diffusers.__version__}, transformers {transformers.__version__}); rerunning it "
                "gives the same files.\n"
                "tiny-wan/  a complete random-weight Wan2.1 text-to-video model in diffusers layout "
                f"(native {WIDTH}x{HEIGHT}, text length {TEXT_LEN}: model_index.json \"_dualparal\"),\n"
                "           used by tests/test_pipeline.c, tests/test_generate_tool.c and the "
                "GStreamer element tests.\n"
                "cases.json, golden.safetensors  WanPipeline's tokens, text embeddings, per-step "
                "latents (UniPC, Euler) and frames for tests/test_pipeline.c.\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(out) for n in ns)
    print(f"wrote {out}: {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
