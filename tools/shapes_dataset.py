#!/usr/bin/env python3
"""Procedural "moving shapes" clips with captions, for training models/shapes-tiny.

Every clip is drawn on the fly from a seed: one coloured shape (ball, square or
triangle) on a black, plain-coloured or gradient background, doing one motion
(moving left/right/up/down, bouncing inside the frame, circling, growing), and a
caption that says colour, shape, motion and (when it is not black) the
background, e.g. "a blue square moving to the left on a yellow background".

Frames are float32 RGB in [-1, 1], shape [3, T, H, W] (the layout the Wan VAE
takes), 16 fps.  Linear motions wrap around the frame (an object leaving on one
side comes back on the other) in a minority of clips, so that a model trained on
short windows can continue such a motion for as long as it is asked to.

Used by tools/train_shapes_model.py; also runnable to write a contact sheet:
        python3 tools/shapes_dataset.py --out /tmp/sheet.png
"""

import argparse
import math

import numpy as np

FPS = 16

# Shape colours (RGB in [0, 1]).  Few and far apart, so that a pixel test can
# tell them apart.
COLOURS = {
        "red": (0.92, 0.12, 0.10),
        "green": (0.10, 0.80, 0.15),
        "blue": (0.12, 0.25, 0.95),
        "yellow": (0.95, 0.88, 0.10),
        "white": (0.95, 0.95, 0.95),
}
SHAPES = ("ball", "square", "triangle")
MOTIONS = {
        "right": "moving to the right",
        "left": "moving to the left",
        "up": "moving up",
        "down": "moving down",
        "bounce": "bouncing",
        "circle": "circling",
        "grow": "growing",
}
# Plain backgrounds are the palette colours darkened, so the shape stays the
# brightest thing of its hue; "gray" is only a background, and there is no
# white one (darkened, it would be gray).
BACKGROUND_SCALE = 0.55
BACKGROUND_COLOURS = ("red", "green", "blue", "yellow", "gray")


def background_rgb(name):
    if name == "gray":
        return np.array((0.35, 0.35, 0.35), np.float32)
    return np.array(COLOURS[name], np.float32) * BACKGROUND_SCALE


def caption_for(colour, shape, motion, background):
    """background: None (black), a name from BACKGROUND_COLOURS, or 'gradient'."""
    text = "a %s %s %s" % (colour, shape, MOTIONS[motion])
    if background is not None:
        text += " on a %s background" % background
    return text


def all_captions():
    """Every caption the generator can produce (for the tokenizer's training)."""
    out = []
    for c in COLOURS:
        for s in SHAPES:
            for m in MOTIONS:
                out.append(caption_for(c, s, m, None))
                out.append(caption_for(c, s, m, "gradient"))
                for b in BACKGROUND_COLOURS:
                    if b != c:
                        out.append(caption_for(c, s, m, b))
    return out


def _shape_alpha(shape, xs, ys, cx, cy, r):
    """Anti-aliased coverage of one shape of half-size r centred at (cx, cy).

    xs, ys: pixel-centre coordinate grids [H, W]; cx, cy, r: arrays [T] (one per
    frame).  Returns [T, H, W] in [0, 1]; edges are a 1-pixel ramp of the signed
    distance, which keeps them smooth at any position."""
    dx = xs[None] - cx[:, None, None]
    dy = ys[None] - cy[:, None, None]
    rr = r[:, None, None]
    if shape == "ball":
        sd = rr - np.sqrt(dx * dx + dy * dy)
    elif shape == "square":
        sd = rr - np.maximum(np.abs(dx), np.abs(dy))
    else:
        # Upward equilateral triangle inscribed in the circle of radius r*1.25
        # (about the area of the ball): distance to its three edges.
        R = rr * 1.25
        k = math.sqrt(3.0) / 2.0
        # Apex at (0, -R) (y grows downwards), base at dy = R/2; the inradius is
        # R/2 and the outward edge normals are (0, 1) and (+-sqrt(3)/2, -1/2).
        d_bottom = (R * 0.5) - dy
        d_left = (R * 0.5) - (-k * dx - 0.5 * dy)
        d_right = (R * 0.5) - (k * dx - 0.5 * dy)
        sd = np.minimum(np.minimum(d_bottom, d_left), d_right)
    return np.clip(sd + 0.5, 0.0, 1.0).astype(np.float32)


def _wrap(p, lo, hi):
    return lo + np.mod(p - lo, hi - lo)


def _reflect(p, lo, hi):
    span = hi - lo
    q = np.mod(p - lo, 2.0 * span)
    return lo + np.where(q > span, 2.0 * span - q, q)


def make_clip(rng, frames=17, size=128, spec=None):
    """Draws one clip.  rng: numpy Generator.  spec: optional dict fixing any of
    colour, shape, motion, background (None = black).  Returns
    (video float32 [3, frames, size, size] in [-1, 1], caption, spec dict)."""
    spec = dict(spec or {})
    colour = spec.get("colour") or rng.choice(list(COLOURS))
    shape = spec.get("shape") or rng.choice(SHAPES)
    motion = spec.get("motion") or rng.choice(list(MOTIONS))
    if "background" in spec:
        background = spec["background"]
    else:
        u = rng.random()
        if u < 0.45:
            background = None
        elif u < 0.80:
            background = rng.choice([b for b in BACKGROUND_COLOURS if b != colour])
        else:
            background = "gradient"
    colour = str(colour)
    shape = str(shape)
    motion = str(motion)
    background = None if background is None else str(background)

    s = size / 128.0  # all distances below are in 128-pixel units
    t = np.arange(frames, dtype=np.float32)
    r0 = rng.uniform(10.0, 17.0) * s
    r = np.full(frames, r0, np.float32)
    lo, hi = r0, size - r0

    if motion in ("right", "left", "up", "down"):
        v = rng.uniform(2.0, 3.5) * s * (1 if motion in ("right", "down") else -1)
        across = rng.uniform(lo, hi)
        travel = abs(v) * (frames - 1)
        if rng.random() < 0.8 and travel < hi - lo:
            # Fully visible all along.
            start = rng.uniform(lo, hi - travel)
            if v < 0:
                start = size - start
        else:
            start = rng.uniform(-r0, size + r0)
        along = _wrap(start + v * t, -r0, size + r0)
        if motion in ("right", "left"):
            cx, cy = along, np.full(frames, across, np.float32)
        else:
            cx, cy = np.full(frames, across, np.float32), along
    elif motion == "bounce":
        speed = rng.uniform(3.0, 4.5) * s
        ang = rng.uniform(0, 2 * math.pi)
        # Keep both components clearly non-zero so the bounce is visible.
        vx = speed * math.copysign(max(abs(math.cos(ang)), 0.4), math.cos(ang))
        vy = speed * math.copysign(max(abs(math.sin(ang)), 0.4), math.sin(ang))
        x0, y0 = rng.uniform(lo, hi), rng.uniform(lo, hi)
        cx = _reflect(x0 + vx * t, lo, hi)
        cy = _reflect(y0 + vy * t, lo, hi)
    elif motion == "circle":
        rad = rng.uniform(24.0, 38.0) * s
        cxc = size / 2 + rng.uniform(-12, 12) * s
        cyc = size / 2 + rng.uniform(-12, 12) * s
        w = rng.uniform(0.12, 0.2) * (1 if rng.random() < 0.5 else -1)
        ph = rng.uniform(0, 2 * math.pi)
        cx = cxc + rad * np.cos(ph + w * t)
        cy = cyc + rad * np.sin(ph + w * t)
    else:  # grow
        r0 = rng.uniform(5.0, 9.0) * s
        g = rng.uniform(0.05, 0.09)
        r = np.minimum(r0 * (1.0 + g * t), 44.0 * s).astype(np.float32)
        cx = np.full(frames, size / 2 + rng.uniform(-20, 20) * s, np.float32)
        cy = np.full(frames, size / 2 + rng.uniform(-20, 20) * s, np.float32)

    # Background.
    if background is None:
        bg = np.zeros((3, size, size), np.float32)
    elif background == "gradient":
        a = rng.uniform(0.0, 0.5, size=3).astype(np.float32)
        b = rng.uniform(0.0, 0.5, size=3).astype(np.float32)
        ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
        if rng.random() < 0.5:
            ramp2 = ramp[:, None] * np.ones((1, size), np.float32)
        else:
            ramp2 = np.ones((size, 1), np.float32) * ramp[None, :]
        bg = a[:, None, None] * (1 - ramp2[None]) + b[:, None, None] * ramp2[None]
    else:
        bg = np.broadcast_to(background_rgb(background)[:, None, None],
                             (3, size, size)).astype(np.float32)

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    alpha = _shape_alpha(shape, xs, ys, cx.astype(np.float32),
                         cy.astype(np.float32), r)  # [T, H, W]
    fg = np.array(COLOURS[colour], np.float32)
    video = bg[:, None] * (1 - alpha[None]) + fg[:, None, None, None] * alpha[None]
    video = video * 2.0 - 1.0
    caption = caption_for(colour, shape, motion, background)
    return (video.astype(np.float32), caption,
            dict(colour=colour, shape=shape, motion=motion, background=background))


def _contact_sheet(path, n=8, frames=17, size=128, seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        v, cap, _ = make_clip(rng, frames, size)
        strip = np.concatenate([v[:, i] for i in range(0, frames, 4)], axis=2)
        rows.append(strip)
        print(cap)
    img = np.concatenate(rows, axis=1)
    img = ((img.transpose(1, 2, 0) + 1) * 127.5).clip(0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="PNG contact sheet to write")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    _contact_sheet(a.out, seed=a.seed)
