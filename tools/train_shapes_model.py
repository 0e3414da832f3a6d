#!/usr/bin/env python3
"""Trains models/shapes-tiny: a small Wan2.1-architecture text-to-video model on
procedural moving-shape clips (tools/shapes_dataset.py), in the diffusers layout
that WanPipeline.from_pretrained and the C loader read.

Stages (one process, seeded; see docs/model-card-shapes-tiny.md):
  1. tokenizer/: sentencepiece unigram model trained on every caption the
     generator can write (T5 ids: pad 0, eos 1, unk 2, no bos), plus the
     transformers T5Tokenizer files (tokenizer.json, tokenizer_config.json).
  2. text_encoder/: a tiny umT5 encoder (UMT5EncoderModel), randomly
     initialised here and trained with the DiT in stage 4.  Captions are
     tokenized and encoded exactly as WanPipeline._get_t5_prompt_embeds does
     (padding to --text-len, rows after the real tokens zero).
  3. vae/: AutoencoderKLWan (Wan2.1 structure, base_dim 12, He-initialised
     convolutions, inflated in time: it starts as a per-frame autoencoder,
     see inflate_time) trained on reconstruction (L1 + L2 on frames, pixels
     off the background colour weighted 5x, tiny KL) of the posterior mean
     plus a little noise (--vae-latent-noise, see noisy_latent), and L1 on
     the frame-to-frame changes (--vae-motion-weight, see frame_change_loss): half of the
     steps on batches of 16 single-frame 32x32 crops, half on 17-frame 32x32
     clips (crops around the shape half of the time), through the same
     causal chunked encode and frame-by-frame decode the pipeline uses;
     latents_mean / latents_std are then measured on encoded full 33-frame
     clips and written into vae/config.json.
  4. transformer/: WanTransformer3DModel trained with flow matching on the
     normalised latents (z - mean) / std: x_t = (1 - s) x0 + s eps, target
     eps - x0, s drawn uniformly then shifted by --flow-shift (what the
     scheduler uses at inference); in --frame-sigma-share of the batches
     each latent frame gets its own s (per-token timesteps), and in
     --first-clean-share of those latent frame 0 is nearly clean while the
     others are very noisy: where the object goes is then told by the
     motion words alone, which is what teaches them (see train_dit).  Latent
     positions off the clip's background weigh up to 1 + --dit-object-weight
     in the loss (see object_weighted_mse).  The caption is replaced by the empty prompt
     10% of the time (classifier-free guidance).  Windows of 5 latent frames are
     cut from 9-latent (33-frame) clips, at the clip start half of the time and
     anywhere otherwise, so the model also knows mid-video windows (what
     block-wise long-video generation feeds it).  EMA weights are saved.
  5. vae/ again: the decoder alone (encoder frozen, so the DiT's latents stay
     valid) on 17-frame clips, half of them 8 latent frames into a longer
     clip, so that colours hold over long decodes.
  6. scheduler/ (UniPCMultistepScheduler, flow prediction) and model_index.json
     (with "_dualparal": size, text length, frame rate, and the DualParal P
     and C whose window is the DiT's training window).

Frames are 64 x 64 by default (--size; 128 x 128 costs four times as much
per DiT sample, too much for this CPU budget).

A wall-clock budget (--minutes) caps everything: the VAE gets --vae-frac of it,
the decoder stage --dec-frac, the DiT the rest less 4 minutes for the final
checks; the model directory is written after the VAE stage and every
--save-every minutes, so a stopped run still leaves a usable model.  Step
counts (--vae-steps, --dit-steps, --dec-steps) set the work; the learning rate
anneals by step or by elapsed share of the stage's budget, whichever is
further, so on a busy machine a stage stops early but annealed.  The log says
how many steps each stage really ran.  All random draws are seeded (numpy
Generator for the clips, torch for init and noise); runs are repeatable up to
torch's kernels and where the budget cuts.  --dit-only and --decoder-only run
one stage on the model already in --out (for example the DiT on a lent GPU).

    nice -n 19 python3 tools/train_shapes_model.py --out models/shapes-tiny
    python3 tools/train_shapes_model.py --out models/shapes-tiny --check-only
"""

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes_dataset as sd  # noqa: E402

SIZE = 64           # frame height and width (pixels); --size, or the model's when checking
CLIP_FRAMES = 33    # frames per encoded training clip (9 latent frames)
WINDOW_LATENTS = 5  # latent frames per DiT training window (17 video frames)
Z_DIM = 16

VAE_CONFIG = dict(base_dim=12, z_dim=Z_DIM, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                  attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
TEXT_CONFIG = dict(d_model=64, d_kv=32, num_heads=2, d_ff=128, num_layers=2,
                   relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", dropout_rate=0.0,
                   layer_norm_epsilon=1e-6, initializer_factor=1.0, is_encoder_decoder=False,
                   use_cache=False, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
                   decoder_start_token_id=0)
DIT_CONFIG = dict(patch_size=[1, 2, 2], num_attention_heads=4, attention_head_dim=32,
                  in_channels=Z_DIM, out_channels=Z_DIM, text_dim=TEXT_CONFIG["d_model"],
                  freq_dim=256, ffn_dim=512, num_layers=4, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None,
                  added_kv_proj_dim=None, rope_max_seq_len=1024)

LOG = None
DEVICE = torch.device("cpu")


def log(msg):
    line = "[%7.1fs] %s" % (time.time() - START, msg)
    print(line, flush=True)
    if LOG is not None:
        LOG.write(line + "\n")
        LOG.flush()


START = time.time()


# --------------------------------------------------------------------------
# Tokenizer and text encoder


def build_tokenizer(tok_dir, vocab_size):
    import sentencepiece as spm
    from transformers import AutoTokenizer, T5Tokenizer

    os.makedirs(tok_dir, exist_ok=True)
    captions = sd.all_captions()
    # The captions alone leave the unigram trainer at character-sized pieces
    # (651 sentences over 23 words); each word repeated on its own line makes
    # whole words the likely pieces, so a caption is about 12 tokens.
    words = sorted({w for c in captions for w in c.split()})
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "corpus.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(captions + words * 50) + "\n")
        cwd = os.getcwd()
        os.chdir(tmp)  # the model records its input path: keep it relative
        try:
            spm.SentencePieceTrainer.train(
                input="corpus.txt", model_prefix="spiece", vocab_size=vocab_size,
                model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                character_coverage=1.0, num_threads=1, shuffle_input_sentence=False,
                hard_vocab_limit=False, minloglevel=2)
        finally:
            os.chdir(cwd)
        spm_dir = os.path.join(tmp, "spm")
        os.makedirs(spm_dir)
        shutil.copy(os.path.join(tmp, "spiece.model"), spm_dir)
        T5Tokenizer.from_pretrained(spm_dir, extra_ids=0).save_pretrained(tok_dir)
        shutil.copy(os.path.join(tmp, "spiece.model"), tok_dir)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tok_dir, "spiece.model"))
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    assert len(tokenizer) == sp.vocab_size(), (len(tokenizer), sp.vocab_size())
    # The C tokenizer reads spiece.model: it must give the ids the pipeline's
    # tokenizer gives, for every caption.
    for c in captions:
        hf = tokenizer(c, add_special_tokens=True).input_ids
        assert hf == sp.encode(c) + [1], (c, hf, sp.encode(c))
        assert 2 not in hf, c
    return tokenizer, sp.vocab_size()


def build_text_encoder(te_dir, vocab_size, seed):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    cfg = UMT5Config(vocab_size=vocab_size, **TEXT_CONFIG)
    # transformers' T5 init (embeddings N(0, factor), scaled normals
    # elsewhere), seeded.  It is trained with the DiT (stage 4).
    model = UMT5EncoderModel(cfg)
    model.save_pretrained(te_dir, safe_serialization=True)
    return model


def tokenize_prompts(tokenizer, prompts, text_len):
    """Token ids and attention masks [len(prompts), text_len], exactly as
    WanPipeline._get_t5_prompt_embeds builds them."""
    try:
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean
    except (ImportError, RuntimeError):
        # Same cleaning (the pipeline module can fail to import where an
        # incompatible peft is installed); ftfy is not used for our ASCII.
        import html
        import re

        def prompt_clean(text):
            return re.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip()

    t = tokenizer([prompt_clean(p) for p in prompts], padding="max_length", max_length=text_len,
                  truncation=True, add_special_tokens=True, return_attention_mask=True,
                  return_tensors="pt")
    return t.input_ids, t.attention_mask


def encode_context(text_encoder, ids, mask):
    """[B, text_len, d] text context as the pipeline hands it to the DiT: the
    encoder's rows for the real tokens (EOS included), zero rows after them."""
    h = text_encoder(ids, mask).last_hidden_state.float()
    return h * mask.unsqueeze(-1).to(h.dtype)


# --------------------------------------------------------------------------
# VAE


def he_init_convs(model):
    """He-normal weights, zero biases for every convolution.  PyTorch's
    default (uniform, gain 1/sqrt(3)) shrinks the signal at each of the
    VAE's ~30 convolutions; the per-pixel RMS norms rescale it, but the
    decoder then sits for hundreds of steps on a near-constant output
    (measured: a fixed batch of 16 crops reached 13 dB after 120 steps with
    the default init, 20 dB with this one)."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


@torch.no_grad()
def inflate_time(vae):
    """Starts the VAE as a per-frame image autoencoder: every causal 3 x 3 x 3
    convolution keeps only its current-frame tap (He-scaled for a 3 x 3
    kernel), the encoder's time downsampling picks one frame of each pair and
    the decoder's time upsampling copies the frame into both of its outputs
    (the identity inits of Wan2.1's own Resample code).  From random time
    taps, the 4-frame chunks after the first frame learn hue last: after 21
    minutes red and green came out the same orange from frame 8 on, while
    the single-frame first chunk had them right.  Inflated, every chunk
    starts with what the first-frame path learns, and the time taps learn
    the motion on top."""
    for name, m in vae.named_modules():
        if not isinstance(m, torch.nn.Conv3d) or m.kernel_size[0] != 3:
            continue
        w = m.weight
        if name.endswith("time_conv"):
            eye = torch.eye(w.shape[1], dtype=w.dtype)
            w.zero_()
            if w.shape[0] == 2 * w.shape[1]:  # upsample3d: two frames out
                w[:w.shape[1], :, 2, 0, 0] = eye
                w[w.shape[1]:, :, 2, 0, 0] = eye
            else:  # downsample3d, stride 2 over [previous, x0, x1]
                w[:, :, 1, 0, 0] = eye
        else:  # causal padding puts the current frame at tap 2
            w[:, :, :2] = 0.0
            w[:, :, 2] *= math.sqrt(3.0)
        if m.bias is not None:
            m.bias.zero_()


def vae_encode_mu_logvar(vae, x):
    h = vae._encode(x)  # causal, chunked exactly as AutoencoderKLWan.encode
    mu, logvar = torch.chunk(h, 2, dim=1)
    return mu, torch.clamp(logvar, -30.0, 20.0)


def vae_decode_unclamped(vae, z, warm=0):
    """AutoencoderKLWan._decode without the final clamp (so the loss keeps its
    gradient where the decoder overshoots).  The first `warm` latent frames
    only fill the causal caches (no gradient, output dropped): the frames
    returned, of latent frames warm.., are those of video frame
    4 * warm - 3 on (frame 0 when warm is 0)."""
    vae.clear_cache()
    outs = []
    for i in range(z.shape[2]):
        vae._conv_idx = [0]
        with torch.set_grad_enabled(torch.is_grad_enabled() and i >= warm):
            y = vae.decoder(vae.post_quant_conv(z[:, :, i:i + 1]), feat_cache=vae._feat_map,
                            feat_idx=vae._conv_idx, first_chunk=(i == 0))
        if i >= warm:
            outs.append(y)
    vae.clear_cache()
    return torch.cat(outs, 2)


def vae_batch(rng, batch, frames, crop):
    """Random clips, cropped to crop x crop around the shape (with jitter) so
    that most of the pixels the loss sees are near an edge."""
    xs = []
    for _ in range(batch):
        v, _, _ = sd.make_clip(rng, frames, SIZE)
        if crop < SIZE:
            # Locate the shape roughly: the pixels farthest from the median.
            mid = v[:, frames // 2]
            dev = np.abs(mid - np.median(mid.reshape(3, -1), axis=1)[:, None, None]).sum(0)
            yy, xx = np.nonzero(dev > 0.3)
            if len(yy) and rng.random() < 0.5:
                cy, cx = yy.mean(), xx.mean()
            else:
                cy, cx = rng.uniform(0, SIZE), rng.uniform(0, SIZE)
            cy += rng.uniform(-crop / 4, crop / 4)
            cx += rng.uniform(-crop / 4, crop / 4)
            y0 = int(np.clip(cy - crop / 2, 0, SIZE - crop))
            x0 = int(np.clip(cx - crop / 2, 0, SIZE - crop))
            v = v[:, :, y0:y0 + crop, x0:x0 + crop]
        xs.append(torch.from_numpy(np.ascontiguousarray(v)))
    return torch.stack(xs)


def schedule(step, steps, warmup, t_start, deadline):
    """Linear warmup, then cosine from 1 to 0.1.  Progress is the step
    fraction or the elapsed share of the stage's time budget, whichever is
    further, so that a run slowed down by a busy machine still anneals before
    its deadline (on an idle machine the step count decides)."""
    prog = max(step / steps, (time.time() - t_start) / max(deadline - t_start, 1e-6))
    prog = min(prog, 1.0)
    return min(1.0, step / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))


def train_vae(vae, args, deadline, rng):
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, betas=(0.9, 0.99),
                            weight_decay=0.0)
    steps = args.vae_steps
    t0 = time.time()
    hist = []
    step = 0
    for step in range(1, steps + 1):
        lr = args.vae_lr * schedule(step, steps, 50, t0, deadline)
        for g in opt.param_groups:
            g["lr"] = lr
        # Single frames (the first-chunk path; cheap, and the VAE needs
        # many steps before it reproduces colours at all) and 9-frame clips
        # for the causal temporal path (cached frames).
        if rng.random() < args.vae_image_frac:
            x = vae_batch(rng, args.vae_image_batch, 1, args.vae_image_crop).to(DEVICE)
        else:
            x = vae_batch(rng, args.vae_batch, args.vae_frames, args.vae_crop).to(DEVICE)
        mu, logvar = vae_encode_mu_logvar(vae, x)
        # Decode the posterior mean (what the DiT is trained on).  Sampling
        # z ~ N(mu, exp(logvar)) from the start drowns the latent in unit noise
        # (logvar starts near 0, mu near 0.2) and stalls the decoder for
        # hundreds of steps; the tiny KL term only keeps the scale in check.
        y = vae_decode_unclamped(vae, noisy_latent(mu, args.vae_latent_noise * min(1.0, step / 300)))
        l1 = (y - x).abs().mean()
        l2 = ((y - x) ** 2).mean()
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).mean()
        loss = (weighted_recon_loss(y, x) + args.vae_motion_weight * frame_change_loss(y, x)
                + args.vae_kl * kl)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # Loose clip: only against the rare spikes (the gradient norm sits
        # near 0.1-0.7); a clip at 1.0 with the default init stalled run 5.
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 5.0)
        opt.step()
        hist.append((l1.item(), l2.item(), kl.item()))
        if step % 100 == 0 or step == steps:
            h = np.mean(hist[-100:], axis=0)
            log("vae step %d/%d  l1 %.4f  l2 %.5f  kl %.3f  lr %.2e  (%.2f s/step)"
                % (step, steps, h[0], h[1], h[2], lr, (time.time() - t0) / step))
        if time.time() > deadline:
            log("vae: time budget reached at step %d" % step)
            break
    vae.eval()
    h = np.mean(hist[-50:], axis=0)
    return step, dict(l1=float(h[0]), l2=float(h[1]), kl=float(h[2]))


def noisy_latent(mu, rel):
    """mu plus Gaussian noise of rel x each channel's spread over the batch
    (detached, so the encoder cannot outgrow it by scaling up).  A decoder
    trained on this must not depend on latent differences smaller than the
    noise, so the encoder spreads what matters (the hue of a small shape)
    over directions of the latent that the DiT's loss sees."""
    if rel <= 0:
        return mu
    spread = mu.detach().transpose(0, 1).flatten(1).std(dim=1).view(1, -1, 1, 1, 1)
    return mu + rel * spread * torch.randn_like(mu)


def weighted_recon_loss(y, x):
    """L1 + L2 with pixels away from the clip's background colour weighted
    5x: with plain L1/L2 the decoder sits for hundreds of steps on the "mean
    colour" plateau, since the shape is a small share of the pixels."""
    bg = x.flatten(2).median(dim=2).values[:, :, None, None, None]
    w = 1.0 + 4.0 * ((x - bg).abs().sum(1, keepdim=True) > 0.1).float()
    return ((y - x).abs() * w).mean() / w.mean() + (((y - x) ** 2) * w).mean() / w.mean()


def frame_change_loss(y, x):
    """L1 between the frame-to-frame changes of the decoded and the original
    clip, moving pixels weighted 5x.  Per-frame reconstruction lets the
    decoder draw all four frames of a latent frame alike and move the object
    at the latent frame's edge (run 20's VAE on real clips: 6.1 levels of
    change across latent edges, 1.5 inside, 1.2 everywhere in the original);
    this term asks for the motion itself, frame by frame."""
    if y.shape[2] < 2:
        return y.new_zeros(())
    dy, dx = y[:, :, 1:] - y[:, :, :-1], x[:, :, 1:] - x[:, :, :-1]
    moving = ((dx.abs().sum(1, keepdim=True) > 0.1) | (dy.abs().sum(1, keepdim=True) > 0.1)).float()
    w = 1.0 + 4.0 * moving
    return ((dy - dx).abs() * w).mean() / w.mean()


def finetune_decoder(vae, args, deadline, rng):
    """Decoder (and post_quant_conv) only, on longer clips, the encoder
    frozen so that the latents, and a DiT trained on them, stay valid.  The
    joint stage sees 9-frame clips (3 latent frames); decoding more latent
    frames than that, the causal cache let the colours drift from the
    fourth latent frame on (background hue, trails), and one trained on
    17-frame clips loses red and green after about 17 frames (the causal
    caches carry a latent frame's influence 40 frames on).  So half of the
    steps decode --dec-frames frames from the start, the other half the same
    number of frames after --dec-warm latent frames decoded without gradient
    (cheap), which puts them deep into a long video."""
    for p in vae.parameters():
        p.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    vae.train()
    opt = torch.optim.AdamW(params, lr=args.dec_lr, betas=(0.9, 0.99), weight_decay=0.0)
    t0 = time.time()
    hist = []
    step = 0
    for step in range(1, args.dec_steps + 1):
        lr = args.dec_lr * schedule(step, args.dec_steps, 20, t0, deadline)
        for g in opt.param_groups:
            g["lr"] = lr
        warm = 0 if rng.random() < 0.5 else args.dec_warm
        x = vae_batch(rng, args.dec_batch, args.dec_frames + 4 * warm, args.dec_crop).to(DEVICE)
        with torch.no_grad():
            mu, _ = vae_encode_mu_logvar(vae, x)
        y = vae_decode_unclamped(vae, noisy_latent(mu, args.vae_latent_noise), warm)
        x = x[:, :, x.shape[2] - y.shape[2]:]
        loss = weighted_recon_loss(y, x) + args.vae_motion_weight * frame_change_loss(y, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        hist.append(((y - x) ** 2).mean().item())
        if step % 50 == 0 or step == args.dec_steps:
            log("decoder step %d/%d  l2 %.5f  lr %.2e  (%.2f s/step)"
                % (step, args.dec_steps, float(np.mean(hist[-50:])), lr, (time.time() - t0) / step))
        if time.time() > deadline:
            log("decoder: time budget reached at step %d" % step)
            break
    for p in vae.parameters():
        p.requires_grad_(True)
    vae.eval()
    return step


@torch.no_grad()
def vae_eval(vae, seed, n=4, frames=17):
    """Reconstruction error of full-size clips through the pipeline's own
    encode / decode (decode clamps to [-1, 1])."""
    rng = np.random.default_rng(seed)
    x = torch.stack([torch.from_numpy(sd.make_clip(rng, frames, SIZE)[0]) for _ in range(n)]).to(DEVICE)
    mu = vae.encode(x).latent_dist.mode()
    y = vae.decode(mu).sample
    return float((y - x).abs().mean()), float(((y - x) ** 2).mean())


@torch.no_grad()
def vae_colour_kept(vae, seed, frames=65):
    """Share of the shape's pixels (within 0.1 of its palette colour) that
    the reconstruction keeps within 0.3 of it (the checks' colour test),
    per shape colour, on one bouncing shape per colour on black."""
    kept = {}
    for k, colour in enumerate(sd.COLOURS):
        rng = np.random.default_rng(seed + k)
        v = sd.make_clip(rng, frames, SIZE, dict(colour=colour, motion="bounce", background=None))[0]
        x = torch.from_numpy(v)[None].to(DEVICE)
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        ref = torch.tensor(sd.COLOURS[colour], device=DEVICE).view(1, 3, 1, 1, 1) * 2 - 1
        shape = ((x - ref).norm(dim=1) < 0.2)  # 0.1 in [0, 1] units
        kept[colour] = float(((y - ref).norm(dim=1) < 0.6)[shape].float().mean())
    return kept


@torch.no_grad()
def encode_clip_latents(vae, rng, n, text_index):
    """n fresh 33-frame clips -> (latents [n, 16, 9, 16, 16] (posterior mean),
    caption indices [n])."""
    xs, caps = [], []
    for _ in range(n):
        v, cap, _ = sd.make_clip(rng, CLIP_FRAMES, SIZE)
        xs.append(torch.from_numpy(v))
        caps.append(text_index[cap])
    mu, _ = vae_encode_mu_logvar(vae, torch.stack(xs).to(DEVICE))
    return mu, torch.tensor(caps)


# --------------------------------------------------------------------------
# DiT


def shift_sigma(s, shift):
    return shift * s / (1 + (shift - 1) * s)


def object_weighted_mse(pred, target, x0, weight):
    """MSE with latent positions that differ from the clip's background
    weighted up to 1 + weight: the object covers one or two of the 16 tokens
    of a 64 x 64 latent frame, so with a plain mean the loss is mostly
    background and where the object is (its motion) is a small share of it.
    The background is each channel's median over the window; a position's
    weight grows with its distance from it, relative to the clip's largest."""
    if weight <= 0:
        return F.mse_loss(pred, target)
    bg = x0.flatten(2).median(dim=2).values[:, :, None, None, None]
    dev = (x0 - bg).abs().mean(dim=1, keepdim=True)
    w = 1.0 + weight * dev / dev.flatten(1).amax(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1, 1)
    return (((pred - target) ** 2) * w).mean() / w.mean()


def train_dit(dit, te, bank, bank_caps, mean, std, ids, mask, empty_idx, args, deadline,
              rng, refresh, save_cb):
    """Flow matching on the DiT and the text encoder together: a random text
    encoder gives the cross-attention a bag of word vectors in which "a red
    ball on a yellow background" and "a yellow ball on a red background" look
    alike (run 9 swapped them); trained, it learns which colour goes where."""
    dit.train()
    te.train()
    params = list(dit.parameters()) + list(te.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.dit_lr, betas=(0.9, 0.99), weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed + 7)
    steps = args.dit_steps
    t0 = time.time()
    last_save = time.time()
    hist = []
    step = 0
    n_bank = bank.shape[0]
    # torch.compile fuses the many small elementwise ops around the GEMMs
    # (about 10 % per step at batch 32, 64 x 64, on the 2-core VM); the
    # module keeps its parameters, so EMA and saving see the same tensors.
    forward = torch.compile(dit) if args.compile else dit
    for step in range(1, steps + 1):
        lr = args.dit_lr * schedule(step, steps, 200, t0, deadline)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.from_numpy(rng.integers(0, n_bank, args.dit_batch))
        lat = []
        for i in idx.tolist():
            off = 0 if rng.random() < 0.5 else int(rng.integers(0, bank.shape[2] - WINDOW_LATENTS + 1))
            lat.append(bank[i, :, off:off + WINDOW_LATENTS])
        x0 = (torch.stack(lat) - mean) / std
        caps = bank_caps[idx].tolist()
        caps = [empty_idx if rng.random() < args.cfg_drop else c for c in caps]
        caps = torch.tensor(caps)
        ctx = encode_context(te, ids[caps].to(DEVICE), mask[caps].to(DEVICE))
        eps = torch.randn(x0.shape, generator=gen).to(DEVICE)
        if torch.rand(1, generator=gen).item() < args.frame_sigma_share:
            # One sigma per latent frame, given to the DiT per token: from a
            # clearer frame the model must place the object in the noisier
            # ones, which only the caption's motion words tell (with one
            # sigma for all frames, motion barely enters the loss: --diagnose).
            # Block-wise DualParal also shows the DiT cached frames of other
            # noise levels.
            u = torch.rand(args.dit_batch, WINDOW_LATENTS, generator=gen)
            if torch.rand(1, generator=gen).item() < args.first_clean_share:
                # Latent frame 0 nearly clean, the others very noisy: where
                # the object goes next is then told by the motion words alone
                # (with independent sigmas two readable frames show the way,
                # so the words go unused).
                u[:, 0] *= 0.15
                u[:, 1:] = 0.7 + 0.3 * u[:, 1:]
            sig_f = shift_sigma(u, args.flow_shift).to(DEVICE)
            s5 = sig_f.view(args.dit_batch, 1, WINDOW_LATENTS, 1, 1)
            patch = DIT_CONFIG["patch_size"]
            tokens = x0.shape[3] * x0.shape[4] // (patch[1] * patch[2])
            timestep = sig_f.repeat_interleave(tokens, dim=1) * 1000.0  # [batch, seq]
        else:
            sig = shift_sigma(torch.rand(args.dit_batch, generator=gen), args.flow_shift).to(DEVICE)
            s5 = sig.view(-1, 1, 1, 1, 1)
            timestep = sig * 1000.0
        xt = (1 - s5) * x0 + s5 * eps
        # Timesteps as the scheduler passes them: sigma * 1000.
        pred = forward(hidden_states=xt, timestep=timestep, encoder_hidden_states=ctx,
                       return_dict=False)[0]
        loss = object_weighted_mse(pred, eps - x0, x0, args.dit_object_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        hist.append(loss.item())
        if args.refresh_every and step % args.refresh_every == 0:
            refresh()
        if step % 50 == 0 or step == steps:
            log("dit step %d/%d  loss %.4f  lr %.2e  (%.2f s/step)"
                % (step, steps, float(np.mean(hist[-50:])), lr, (time.time() - t0) / step))
        if time.time() - last_save > args.save_every * 60:
            save_cb(ema, step, float(np.mean(hist[-200:])))
            last_save = time.time()
        if time.time() > deadline:
            log("dit: time budget reached at step %d" % step)
            break
    dit.eval()
    te.eval()
    return step, float(np.mean(hist[-200:])), ema


def write_dit(dit, te, ema, out_dir):
    """Saves the EMA weights of the DiT and the text encoder (ema: their
    parameters in that order), keeping the training weights in the modules."""
    params = list(dit.parameters()) + list(te.parameters())
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    for module, sub in ((dit, "transformer"), (te, "text_encoder")):
        module.to("cpu").save_pretrained(os.path.join(out_dir, sub), safe_serialization=True)
        module.to(DEVICE)
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)


def write_scheduler_and_index(out_dir, args):
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
        flow_shift=args.flow_shift, solver_order=2, solver_type="bh2", predict_x0=True,
        lower_order_final=True, final_sigmas_type="zero", timestep_spacing="linspace")
    sched.save_pretrained(os.path.join(out_dir, "scheduler"))
    index = {
        "_class_name": "WanPipeline",
        "_diffusers_version": __import__("diffusers").__version__,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": [None, None],
        "vae": ["diffusers", "AutoencoderKLWan"],
        "boundary_ratio": None,
        "expand_timesteps": False,
        # Read by the C generator (core/src/generator.c): the model's native
        # size, text length and frame rate.  diffusers ignores "_" keys.
        # block_frames / context_frames: the DualParal P and C whose window
        # (C + P + C latent frames) is the DiT's training window.
        "_dualparal": {"width": SIZE, "height": SIZE, "text_len": args.text_len, "fps": sd.FPS,
                       "block_frames": WINDOW_LATENTS - 2, "context_frames": 1},
    }
    with open(os.path.join(out_dir, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")


# --------------------------------------------------------------------------
# Checks on generated videos


def colour_track(frames, colour, thresh=0.3):
    """frames: [T, H, W, 3] in [0, 1].  Pixels within `thresh` (Euclidean, RGB
    in [0, 1]) of the palette colour: per-frame fraction and centroid (x, y)."""
    ref = np.array(sd.COLOURS[colour], np.float32)
    d = np.sqrt(((frames - ref) ** 2).sum(-1))
    m = d < thresh
    frac = m.mean(axis=(1, 2))
    T, H, W = m.shape
    ys, xs = np.mgrid[0:H, 0:W]
    cen = np.full((T, 2), np.nan)
    for t in range(T):
        if m[t].sum() >= 8:
            cen[t] = (xs[m[t]].mean(), ys[m[t]].mean())
    return frac, cen


# Fill of the bounding box by the largest object of the colour mask, on the
# training clips themselves (tests/test_shapes_model.c SHAPE_FILL_*): the
# shape a video shows is the one whose fill is nearest.
SHAPE_FILL = dict(ball=0.79, square=1.00, triangle=0.54)


def objects_in_mask(m, min_pixels):
    """Connected components of a boolean mask [H, W] on the torus (8-connected;
    an object crossing an edge is one), as tests/video_metrics.c
    vm_objects_in_mask: (objects of >= min_pixels pixels, specks, fill of the
    largest one's bounding box or nan)."""
    H, W = m.shape
    seen = np.zeros_like(m, bool)
    sizes = []
    for y0, x0 in zip(*np.nonzero(m)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        q = [(x0, y0)]
        i = 0
        while i < len(q):
            x, y = q[i]
            i += 1
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ux, uy = x + dx, y + dy
                    if m[uy % H, ux % W] and not seen[uy % H, ux % W]:
                        seen[uy % H, ux % W] = True
                        q.append((ux, uy))
        xs = [p[0] for p in q]
        ys = [p[1] for p in q]
        box = min(max(xs) - min(xs) + 1, W) * min(max(ys) - min(ys) + 1, H)
        sizes.append((len(q), len(q) / box))
    objects = [s for s in sizes if s[0] >= min_pixels]
    fill = max(objects)[1] if objects else float("nan")
    return len(objects), len(sizes) - len(objects), fill


def measure_shape_fills(seed, clips=40, thresh=0.3):
    """SHAPE_FILL measured: the largest object's fill on the training clips
    themselves, per shape (clips of 5 frames, every other frame, random
    colour, size, background and straight or bouncing motion), at 64 and
    128 pixels.  Prints the median and the 10th and 90th percentiles."""
    rng = np.random.default_rng(seed)
    for size in (64, 128):
        min_pixels = max(1, round(32 * (size / 128.0) ** 2))
        for shape in sd.SHAPES:
            fills = []
            for _ in range(clips):
                motion = str(rng.choice(["left", "right", "up", "down", "bounce"]))
                video, _, spec = sd.make_clip(rng, 5, size, dict(shape=shape, motion=motion))
                ref = np.array(sd.COLOURS[spec["colour"]], np.float32)
                for f in ((video.transpose(1, 2, 3, 0) + 1) / 2)[::2]:
                    fill = objects_in_mask(np.sqrt(((f - ref) ** 2).sum(-1)) < thresh, min_pixels)[2]
                    if not math.isnan(fill):
                        fills.append(fill)
            log("shape fill on training clips, %dx%d, %-8s %3d frames: median %.3f, 10th-90th percentile "
                "%.3f-%.3f" % (size, size, shape, len(fills), np.median(fills), np.percentile(fills, 10),
                                np.percentile(fills, 90)))


def shape_and_ghosts(frames, colour, shape, thresh=0.3):
    """The shape check (median fill of the largest object's bounding box, the
    nearest SHAPE_FILL) and the ghost check (frames with a second object of
    the colour; specks under 8 px at 64 x 64, scaled by area, ignored)."""
    ref = np.array(sd.COLOURS[colour], np.float32)
    masks = np.sqrt(((frames - ref) ** 2).sum(-1)) < thresh
    min_pixels = max(1, round(32 * (SIZE / 128.0) ** 2))
    per_frame = [objects_in_mask(m, min_pixels) for m in masks]
    fills = [f for _, _, f in per_frame if not math.isnan(f)]
    fill = float(np.median(fills)) if fills else float("nan")
    seen = (min(SHAPE_FILL, key=lambda k: abs(SHAPE_FILL[k] - fill)) if fills else None)
    ghosts = sum(n > 1 for n, _, _ in per_frame)
    return dict(fill_median=fill, shape_seen=seen, shape_ok=seen == shape, ghost_frames=int(ghosts),
                frames_without_object=int(sum(n == 0 for n, _, _ in per_frame)))


def judge(spec, frac, cen):
    """Did the video show the named colour, and did it move as named?"""
    res = dict(colour_fraction_mean=float(frac.mean()),
               colour_fraction_min=float(frac.min()))
    ok_col = frac.min() > 0.002  # at least ~33 of 16384 pixels (128 x 128) in every frame
    px = SIZE / 128.0  # the clips' speeds and sizes scale with the frame
    good = ~np.isnan(cen[:, 0])
    res["frames_with_colour"] = int(good.sum())
    if good.sum() < 2:
        res.update(ok=False, why="colour not found")
        return res
    c = cen[good]
    d = np.diff(c, axis=0)
    # Median step: robust to a wrap-around jump.
    med = np.median(d, axis=0)
    res["median_step_px"] = [float(med[0]), float(med[1])]
    res["net_move_px"] = [float(c[-1, 0] - c[0, 0]), float(c[-1, 1] - c[0, 1])]
    path = float(np.sqrt((d ** 2).sum(1)).sum())
    res["path_px"] = path
    m = spec["motion"]
    axis = {"right": (0, 1), "left": (0, -1), "down": (1, 1), "up": (1, -1)}
    if m in axis:
        a, sgn = axis[m]
        ok_mot = sgn * med[a] > 0.5 * px and abs(med[a]) > abs(med[1 - a])
    elif m == "grow":
        res["fraction_ratio_last_first"] = float(frac[-1] / max(frac[0], 1e-6))
        ok_mot = frac[-1] > 1.5 * frac[0]
    else:  # bouncing, circling: it moves
        ok_mot = path > 20.0 * px
    res.update(ok=bool(ok_col and ok_mot), colour_ok=bool(ok_col), motion_ok=bool(ok_mot))
    return res


CHECK_PROMPTS = [
    dict(colour="red", shape="ball", motion="right", background=None),
    dict(colour="blue", shape="square", motion="left", background="yellow"),
    dict(colour="green", shape="triangle", motion="down", background=None),
    dict(colour="yellow", shape="ball", motion="up", background="gray"),
    dict(colour="white", shape="square", motion="circle", background=None),
    dict(colour="red", shape="square", motion="bounce", background="gradient"),
]


def run_checks(out_dir, frames, steps, guidance, seed, png_dir=None):
    from diffusers import WanPipeline

    try:
        import accelerate  # noqa: F401
        pipe = WanPipeline.from_pretrained(out_dir)
    except ImportError:
        # diffusers 0.42 refuses to load any Wan transformer without
        # accelerate (its fp32-kept modules need low_cpu_mem_usage).  All our
        # weights are fp32, so loading without that special case is the same.
        from diffusers import WanTransformer3DModel
        keep = WanTransformer3DModel._keep_in_fp32_modules
        WanTransformer3DModel._keep_in_fp32_modules = None
        try:
            pipe = WanPipeline.from_pretrained(out_dir)
        finally:
            WanTransformer3DModel._keep_in_fp32_modules = keep
        log("note: accelerate missing; loaded without diffusers' fp32-kept-modules path")
    pipe.set_progress_bar_config(disable=True)
    with open(os.path.join(out_dir, "model_index.json")) as f:
        text_len = json.load(f)["_dualparal"]["text_len"]
    results = []
    for k, spec in enumerate(CHECK_PROMPTS):
        prompt = sd.caption_for(spec["colour"], spec["shape"], spec["motion"], spec["background"])
        t0 = time.time()
        video = pipe(prompt, height=SIZE, width=SIZE, num_frames=frames, max_sequence_length=text_len,
                     num_inference_steps=steps, guidance_scale=guidance,
                     generator=torch.Generator().manual_seed(seed + k),
                     output_type="np").frames[0]
        dt = time.time() - t0
        frac, cen = colour_track(video, spec["colour"])
        r = judge(spec, frac, cen)
        r.update(shape_and_ghosts(video, spec["colour"], spec["shape"]))
        r.update(prompt=prompt, seconds=round(dt, 1))
        results.append(r)
        log("check %-55s ok=%s  colour %.3f (min %.3f)  median step %s px/frame  net %s px  path %.0f px  "
            "fill %.3f (%s)  ghost frames %d"
            % ('"%s"' % prompt, r["ok"], r["colour_fraction_mean"], r["colour_fraction_min"],
               np.round(r.get("median_step_px", [np.nan, np.nan]), 2).tolist(),
               np.round(r.get("net_move_px", [np.nan, np.nan]), 1).tolist(),
               r.get("path_px", float("nan")), r["fill_median"], r["shape_seen"], r["ghost_frames"]))
        if png_dir:
            from PIL import Image
            os.makedirs(png_dir, exist_ok=True)
            strip = np.concatenate(list(video[::2]), axis=1)
            Image.fromarray((strip * 255).round().clip(0, 255).astype(np.uint8)).save(
                os.path.join(png_dir, "sample_%d.png" % k))
    return results


@torch.no_grad()
def diagnose(out_dir, seed, n=32):
    """How much the DiT uses its text, without sampling.  (1) The flow-matching
    loss on n fresh clips with their own captions, shuffled captions and the
    empty prompt, at several sigma: a DiT that ignores its text scores the
    three alike.  (2) At sigma 1 the ideal prediction of x0 is the mean clip
    of the caption, so its decoded background must be the named one: the mean
    RGB of the decoded one-step x0 of the frame border against the colour the
    caption names (binding: "a blue square on a yellow background" must not
    come out blue)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel
    dit = WanTransformer3DModel.from_pretrained(os.path.join(out_dir, "transformer")).eval()
    te = UMT5EncoderModel.from_pretrained(os.path.join(out_dir, "text_encoder")).eval()
    vae = AutoencoderKLWan.from_pretrained(os.path.join(out_dir, "vae")).eval()
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(out_dir, "tokenizer"))
    with open(os.path.join(out_dir, "model_index.json")) as f:
        text_len = json.load(f)["_dualparal"]["text_len"]
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    clips, caps = zip(*[sd.make_clip(rng, 17, SIZE)[:2] for _ in range(n)])
    torch.set_grad_enabled(False)
    x0 = (vae_encode_mu_logvar(vae, torch.from_numpy(np.stack(clips)))[0] - mean) / std
    perm = torch.randperm(n, generator=gen).tolist()
    ctx = {}
    for name, prompts in (("own", list(caps)), ("shuffled", [caps[i] for i in perm]),
                          ("empty", [""] * n)):
        ctx[name] = encode_context(te, *tokenize_prompts(tokenizer, prompts, text_len))
    def losses(clean, contexts, sig):
        """Flow-matching loss at one sigma, the same noise for each context."""
        eps = torch.randn(clean.shape, generator=gen)
        xt = (1 - sig) * clean + sig * eps
        out = []
        for name, c in contexts.items():
            v = dit(hidden_states=xt, timestep=torch.full((clean.shape[0],), sig * 1000.0),
                    encoder_hidden_states=c, return_dict=False)[0]
            out.append("%s %.3f" % (name, float(((v - (eps - clean)) ** 2).mean())))
        return ", ".join(out)

    for sig in (0.3, 0.6, 0.9, 1.0):
        log("diagnose: sigma %.1f  loss with caption %s" % (sig, losses(x0, ctx, sig)))
    # (1b) Motion: straight-moving clips with their caption and with the
    # opposite direction named; a DiT that ignores the motion words scores
    # both alike.
    opposite = {"right": "left", "left": "right", "up": "down", "down": "up"}
    specs = [dict(motion=m) for m in opposite for _ in range(n // 4)]
    clips, caps, got = zip(*[sd.make_clip(rng, 17, SIZE, spec) for spec in specs])
    flipped = [sd.caption_for(g["colour"], g["shape"], opposite[g["motion"]], g["background"])
               for g in got]
    x0m = (vae_encode_mu_logvar(vae, torch.from_numpy(np.stack(clips)))[0] - mean) / std
    cm = {name: encode_context(te, *tokenize_prompts(tokenizer, list(p), text_len))
          for name, p in (("own", caps), ("opposite", flipped))}
    for sig in (0.3, 0.6, 0.9):
        log("diagnose: sigma %.1f  straight motion, loss with direction %s"
            % (sig, losses(x0m, cm, sig)))
    # (1c) Colour: clips of each shape colour with their caption and with
    # the shape colour swapped (red <-> green, blue <-> yellow, white -> red),
    # per colour: a DiT that cannot tell two colours apart scores both alike.
    swap = {"red": "green", "green": "red", "blue": "yellow", "yellow": "blue", "white": "red"}
    for colour, other in swap.items():
        got = [sd.make_clip(rng, 17, SIZE, dict(colour=colour, background=None)) for _ in range(n // 4)]
        clips, caps, specs = zip(*got)
        swapped = [sd.caption_for(other, g["shape"], g["motion"], None) for g in specs]
        x0c = (vae_encode_mu_logvar(vae, torch.from_numpy(np.stack(clips)))[0] - mean) / std
        cc = {name: encode_context(te, *tokenize_prompts(tokenizer, list(p), text_len))
              for name, p in (("own", caps), ("swapped", swapped))}
        log("diagnose: sigma 0.8  %s shapes on black, loss with colour %s"
            % (colour, losses(x0c, cc, 0.8)))
    specs = [("blue", "yellow"), ("yellow", "blue"), ("green", "red"), ("red", "green"),
             ("white", "gray"), ("red", None)]  # (shape colour, background)
    prompts = [sd.caption_for(c, "square", "left", b) for c, b in specs]
    c = encode_context(te, *tokenize_prompts(tokenizer, prompts, text_len))
    eps = torch.randn(len(prompts), Z_DIM, 5, SIZE // 8, SIZE // 8, generator=gen)
    v = dit(hidden_states=eps, timestep=torch.full((len(prompts),), 1000.0),
            encoder_hidden_states=c, return_dict=False)[0]
    video = (vae.decode((eps - v) * std + mean).sample.clamp(-1, 1) + 1) / 2
    border = torch.ones(SIZE, SIZE, dtype=torch.bool)
    border[12:-12, 12:-12] = False
    for k, (prompt, (_, b)) in enumerate(zip(prompts, specs)):
        got = video[k][:, :, border].mean(dim=(1, 2)).numpy()
        want = sd.background_rgb(b) if b else np.zeros(3, np.float32)
        log("diagnose: one-step mean at sigma 1, border RGB %s (named %s): %s"
            % ([round(float(x), 2) for x in got], [round(float(x), 2) for x in want], prompt))


# --------------------------------------------------------------------------


def decoder_stage(vae, args, deadline, out):
    """Runs finetune_decoder with its own random stream, evaluates on full
    clips and saves vae/ (config, latents_mean / latents_std included)."""
    def evaluate(when):
        l2_long = vae_eval(vae, args.seed + 3, n=2, frames=65)[1]
        l1, l2 = vae_eval(vae, args.seed + 3)
        kept = vae_colour_kept(vae, args.seed + 3)
        log("decoder stage: %s, full-clip eval (%dx%dx17, clamped) l1 %.4f l2 %.5f psnr %.1f dB; "
            "65 frames: psnr %.1f dB, shape colour kept %s"
            % (when, SIZE, SIZE, l1, l2, 10 * math.log10(4.0 / l2), 10 * math.log10(4.0 / l2_long),
               " ".join("%s %.2f" % kv for kv in kept.items())))
        return l1, l2

    evaluate("before")
    steps = finetune_decoder(vae, args, deadline, np.random.default_rng(args.seed + 6))
    log("decoder done: %d steps" % steps)
    l1, l2 = evaluate("after")
    vae.to("cpu").save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
    vae.to(DEVICE)
    return steps, l1, l2


def main():
    global LOG, SIZE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="models/shapes-tiny")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--minutes", type=float, default=85.0, help="wall-clock budget, all stages")
    ap.add_argument("--vae-frac", type=float, default=0.15, help="share of the budget for the VAE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=SIZE, help="frame height and width, a multiple of 16")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU is lent")
    ap.add_argument("--text-len", type=int, default=32,
                    help="text rows the DiT attends to (captions are at most 17 tokens; 512 zero-padded rows dilute the cross-attention)")
    ap.add_argument("--vocab-size", type=int, default=64)
    ap.add_argument("--vae-steps", type=int, default=3000)
    ap.add_argument("--vae-batch", type=int, default=3)
    ap.add_argument("--vae-frames", type=int, default=17)
    ap.add_argument("--vae-crop", type=int, default=32, help="crop size of the clips")
    ap.add_argument("--vae-image-batch", type=int, default=16)
    ap.add_argument("--vae-image-crop", type=int, default=32)
    ap.add_argument("--vae-image-frac", type=float, default=0.5,
                    help="share of VAE steps on single frames (batch doubled)")
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-kl", type=float, default=1e-6)
    ap.add_argument("--vae-latent-noise", type=float, default=0.15,
                    help="noise added to the latent before decoding, x each channel's spread")
    ap.add_argument("--vae-motion-weight", type=float, default=1.0,
                    help="weight of the frame-to-frame change loss (VAE and decoder stages)")
    ap.add_argument("--dec-frac", type=float, default=0.08,
                    help="share of the budget for the decoder stage (after the DiT)")
    ap.add_argument("--dec-steps", type=int, default=1500)
    ap.add_argument("--dec-batch", type=int, default=2)
    ap.add_argument("--dec-frames", type=int, default=17, help="frames decoded with gradient, 4k+1")
    ap.add_argument("--dec-warm", type=int, default=8,
                    help="latent frames decoded before them without gradient, in half of the steps")
    ap.add_argument("--dec-crop", type=int, default=32, help="crop size of the decoder stage's clips")
    ap.add_argument("--dec-lr", type=float, default=3e-4)
    ap.add_argument("--decoder-only", action="store_true",
                    help="run only the decoder stage on the model in --out (budget: --minutes)")
    ap.add_argument("--dit-only", action="store_true",
                    help="train only the DiT, on the tokenizer, text encoder and VAE in --out")
    ap.add_argument("--dit-resume", action="store_true",
                    help="with --dit-only: start from the transformer in --out instead of random weights")
    ap.add_argument("--bank", type=int, default=1000, help="encoded clips kept for the DiT")
    ap.add_argument("--bank-cache", default=None,
                    help="file keeping the encoded bank between --dit-only runs on the same VAE")
    ap.add_argument("--refresh-every", type=int, default=16,
                    help="DiT steps between replacing one bank clip by a fresh one (0: never)")
    ap.add_argument("--dit-steps", type=int, default=20000)
    ap.add_argument("--dit-batch", type=int, default=32)
    ap.add_argument("--dit-lr", type=float, default=1e-3)
    ap.add_argument("--frame-sigma-share", type=float, default=0.6,
                    help="share of DiT batches with one noise level per latent frame")
    ap.add_argument("--first-clean-share", type=float, default=0.6,
                    help="share of those batches with latent frame 0 nearly clean, the rest very noisy")
    ap.add_argument("--dit-object-weight", type=float, default=4.0,
                    help="extra loss weight on latent positions off the background (0: plain MSE)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="torch.compile the DiT for training (needs a C compiler)")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--cfg-drop", type=float, default=0.1)
    ap.add_argument("--flow-shift", type=float, default=2.0)
    ap.add_argument("--save-every", type=float, default=5.0, help="minutes between DiT saves")
    ap.add_argument("--check-frames", type=int, default=17)
    ap.add_argument("--check-steps", type=int, default=20)
    ap.add_argument("--check-guidance", type=float, default=5.0)
    ap.add_argument("--check-png", default=None, help="folder for sample PNG strips")
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--diagnose", action="store_true",
                    help="measure how much the DiT in --out uses its text (no sampling)")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--measure-shape-fills", action="store_true",
                    help="print the shape check's fills on training clips (SHAPE_FILL) and stop")
    ap.add_argument("--check-reserve", type=float, default=240.0,
                    help="seconds of the budget kept for the final checks (4 minutes on this CPU; "
                         "a GPU needs well under one)")
    args = ap.parse_args()

    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if args.measure_shape_fills:
        measure_shape_fills(1)
        return
    out = args.out
    os.makedirs(out, exist_ok=True)
    LOG = open(os.path.join(out, "training_log.txt"),
               "a" if args.check_only or args.decoder_only or args.diagnose else "w")

    if args.check_only or args.diagnose:
        with open(os.path.join(out, "model_index.json")) as f:
            SIZE = json.load(f)["_dualparal"]["width"]
    else:
        SIZE = args.size
    if args.check_only:
        res = run_checks(out, args.check_frames, args.check_steps, args.check_guidance,
                         args.seed, args.check_png)
        with open(os.path.join(out, "checks.json"), "w") as f:
            json.dump(res, f, indent=1)
        return
    if args.diagnose:
        diagnose(out, args.seed)
        return

    log("command: %s" % " ".join([os.path.basename(sys.executable)] + sys.argv))
    log("machine: %s, %s, %d cpus, torch %s (%d threads)"
        % (platform.node(), platform.processor() or platform.machine(), os.cpu_count(),
           torch.__version__, torch.get_num_threads()))
    if args.decoder_only:
        from diffusers import AutoencoderKLWan
        vae = AutoencoderKLWan.from_pretrained(os.path.join(out, "vae")).to(DEVICE)
        decoder_stage(vae, args, START + args.minutes * 60, out)
        return
    deadline_all = START + args.minutes * 60
    deadline_vae = START + args.minutes * args.vae_frac * 60
    rng = np.random.default_rng(args.seed)

    # 1-2. Tokenizer and text encoder (trained with the DiT).
    from transformers import AutoTokenizer, UMT5EncoderModel
    if args.dit_only:
        tokenizer = AutoTokenizer.from_pretrained(os.path.join(out, "tokenizer"))
        te = UMT5EncoderModel.from_pretrained(os.path.join(out, "text_encoder"))
        vocab = len(tokenizer)
    else:
        tokenizer, vocab = build_tokenizer(os.path.join(out, "tokenizer"), args.vocab_size)
        te = build_text_encoder(os.path.join(out, "text_encoder"), vocab, args.seed + 1)
    prompts = sd.all_captions() + [""]
    ids, mask = tokenize_prompts(tokenizer, prompts, args.text_len)
    te.to(DEVICE)
    text_index = {p: i for i, p in enumerate(prompts)}
    empty_idx = text_index[""]
    log("tokenizer: %d pieces; %d captions, longest %d tokens (EOS included); text_len %d"
        % (vocab, len(prompts) - 1, int(mask.sum(1).max()), args.text_len))

    # 3. VAE.
    from diffusers import AutoencoderKLWan
    if args.dit_only:
        vae = AutoencoderKLWan.from_pretrained(os.path.join(out, "vae")).to(DEVICE).eval()
        vae_steps, vae_loss = 0, dict(l1=float("nan"), l2=float("nan"), kl=float("nan"))
        deadline_vae = time.time()
    else:
        torch.manual_seed(args.seed + 2)
        vae = AutoencoderKLWan(**VAE_CONFIG)
        he_init_convs(vae)
        inflate_time(vae)
        vae.to(DEVICE)
        log("vae: %.2f M parameters" % (sum(p.numel() for p in vae.parameters()) / 1e6))
        vae_steps, vae_loss = train_vae(vae, args, deadline_vae, rng)
    l1, l2 = vae_eval(vae, args.seed + 3)
    log("vae done: %d steps; train l1 %.4f l2 %.5f; full-clip eval (%dx%dx17, clamped) l1 %.4f l2 %.5f psnr %.1f dB; "
        "shape colour kept over 65 frames: %s"
        % (vae_steps, vae_loss["l1"], vae_loss["l2"], SIZE, SIZE, l1, l2, 10 * math.log10(4.0 / l2),
           " ".join("%s %.2f" % kv for kv in vae_colour_kept(vae, args.seed + 3).items())))

    # Latent statistics on encoded full clips (posterior means).
    t0 = time.time()
    if args.bank_cache and os.path.exists(args.bank_cache):
        bank, bank_caps = torch.load(args.bank_cache)
        bank = bank[:args.bank].to(DEVICE)
        bank_caps = bank_caps[:args.bank]
    else:
        bank, bank_caps = [], []
        for i in range(0, args.bank, 8):
            z, c = encode_clip_latents(vae, rng, min(8, args.bank - i), text_index)
            bank.append(z)
            bank_caps.append(c)
        bank = torch.cat(bank)
        bank_caps = torch.cat(bank_caps)
        if args.bank_cache:
            torch.save((bank.cpu(), bank_caps), args.bank_cache)
    if args.dit_only:  # the statistics the VAE's config already holds
        mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32)
        std = torch.tensor(vae.config.latents_std, dtype=torch.float32)
    else:
        mean = bank.mean(dim=(0, 2, 3, 4)).cpu()
        std = bank.std(dim=(0, 2, 3, 4)).cpu()
    log("latent bank: %d clips [16, %d, %d, %d] in %.0f s; mean %s; std %s"
        % (bank.shape[0], bank.shape[2], bank.shape[3], bank.shape[4], time.time() - t0,
           np.round(mean.numpy(), 3).tolist(), np.round(std.numpy(), 3).tolist()))
    vae.register_to_config(latents_mean=[round(float(v), 5) for v in mean],
                           latents_std=[round(float(v), 5) for v in std])
    vae.to("cpu").save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
    vae.to(DEVICE)
    write_scheduler_and_index(out, args)
    mean5 = mean.view(1, -1, 1, 1, 1).to(DEVICE)
    std5 = std.view(1, -1, 1, 1, 1).to(DEVICE)

    # 4. DiT.
    from diffusers import WanTransformer3DModel
    torch.manual_seed(args.seed + 4)
    if args.dit_resume:  # go on from the transformer already in --out
        dit = WanTransformer3DModel.from_pretrained(os.path.join(out, "transformer")).to(DEVICE)
    else:
        dit = WanTransformer3DModel(**DIT_CONFIG).to(DEVICE)
    log("dit: %.2f M parameters" % (sum(p.numel() for p in dit.parameters()) / 1e6))
    refresh_rng = np.random.default_rng(args.seed + 5)

    def refresh():
        z, c = encode_clip_latents(vae, refresh_rng, 1, text_index)
        j = int(refresh_rng.integers(0, bank.shape[0]))
        bank[j] = z[0]
        bank_caps[j] = c[0]

    def save_cb(ema, step, loss):
        write_dit(dit, te, ema, out)
        log("saved transformer (EMA) at step %d, loss %.4f" % (step, loss))

    # The final checks get --check-reserve, the decoder stage its share; a DiT-only
    # run (usually on a lent GPU, --skip-check) uses all of its budget.
    deadline_dit = (deadline_all - 5 if args.dit_only
                    else deadline_all - args.check_reserve - args.minutes * args.dec_frac * 60)
    dit_steps, dit_loss, ema = train_dit(dit, te, bank, bank_caps, mean5, std5, ids, mask, empty_idx,
                                         args, deadline_dit, rng, refresh, save_cb)
    write_dit(dit, te, ema, out)
    log("dit done: %d steps; final loss (mean of last 200 steps) %.4f" % (dit_steps, dit_loss))

    # 5. Decoder on longer clips (encoder frozen: the DiT's latents stay valid).
    dec_steps = 0
    if not args.dit_only:
        dec_steps, l1, l2 = decoder_stage(vae, args, deadline_all - args.check_reserve, out)
    log("summary: vae_steps %d vae_l1 %.4f vae_l2 %.5f | dit_steps %d dit_loss %.4f | decoder_steps %d eval_l1 %.4f eval_l2 %.5f | wall %.1f min"
        % (vae_steps, vae_loss["l1"], vae_loss["l2"], dit_steps, dit_loss, dec_steps, l1, l2,
           (time.time() - START) / 60))
    # This run's own options (a GPU recipe's sizes and batches too), with the
    # step counts it reached and no time limit.
    kept, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a in ("--minutes", "--vae-steps", "--dit-steps", "--dec-steps", "--seed", "--out"):
            skip = True
        elif not a.startswith(("--minutes=", "--vae-steps=", "--dit-steps=", "--dec-steps=", "--seed=",
                               "--out=")):
            kept.append(a)
    log("reproduce: nice -n 19 python3 tools/train_shapes_model.py --out %s --seed %d %s--vae-steps %d "
        "--dit-steps %d --dec-steps %d --minutes 10000"
        % (out, args.seed, "".join(a + " " for a in kept), vae_steps, dit_steps, dec_steps))

    if not args.skip_check:
        res = run_checks(out, args.check_frames, args.check_steps, args.check_guidance,
                         args.seed, args.check_png)
        with open(os.path.join(out, "checks.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
