#!/usr/bin/env python3
"""Golden data for the samplers and the noise generator (tests/test_sampler.c,
tests/test_rng.c).

Runs diffusers' UniPCMultistepScheduler configured as Wan2.1 (flow_prediction,
use_flow_sigmas, solver_order 2, bh2, lower_order_final, final sigma zero,
flow_shift 3.0 or 5.0) and FlowMatchEulerDiscreteScheduler (shift as Wan's) on a
small latent with a deterministic fake "model", v = 0.7 x + 0.1 sin(t / 100) +
0.05 cos(3 x), evaluated in torch float32, exactly as WanPipeline drives the
scheduler (set_timesteps(N), set_begin_index(0), step(v, t, x) per timestep).
The velocities are recorded, so the C test feeds the same v_i and compares every
x_i without the fake model in the loop.  Reference only: never used at run time.

    python3 tools/make_sampler_golden.py [--out tests/data/sampler]

Needs the PyPI packages torch, diffusers, numpy and safetensors.  Everything is
seeded: reruns give the same files.

Output (--out):
  wan/scheduler/scheduler_config.json    UniPCMultistepScheduler as Wan2.1-T2V
        (prediction_type flow_prediction, use_flow_sigmas, flow_shift 3.0;
        the settings of diffusers' convert_wan_to_diffusers.py), save_config()
  euler/scheduler/scheduler_config.json  FlowMatchEulerDiscreteScheduler(shift=5.0)
  cases.json
    trajectories: [{name, kind ("unipc" | "euler"), shift, num_train_timesteps,
                    steps, solver_order, solver_type, lower_order_final,
                    final_sigmas_type, sigmas (explicit input list or null),
                    shape}]
    schedules:    [{kind, shift, steps}]: schedule-only cases
    rng:          {kat: Random123 philox4x32-10 vectors [counter, key, output]
                   as hex words, streams: [{seed, stream, offset, n, u32 [n],
                   normal [n] (float32 values as "%.9g")}]}
  golden.safetensors  (F32)
    NAME.sigmas     [N + 1]    scheduler.sigmas (float32 in diffusers)
    NAME.timesteps  [N]        scheduler.timesteps (UniPC int64 and Euler
                               float32 values are exact in F32)
    NAME.x          [N + 1, *shape]  x_0 (the initial noise) .. x_N
    NAME.v          [N, *shape]      the velocity fed at step i
    sched.KIND.sS.nN.sigmas / .timesteps   the schedule-only cases
"""
import argparse
import json
import math
import os

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from safetensors.numpy import save_file

SHAPE = (2, 1, 4, 4)  # [C, F, H, W]: 32 elements keeps a 50-step run at 13 KB

# ---- Philox4x32-10 (independent Python version of core/src/sampler/philox.c) --

M32 = 0xFFFFFFFF
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)

# Random123 tests/kat_vectors, "philox4x32 10" lines: counter, key, output.
KAT = [
    ("00000000 00000000 00000000 00000000", "00000000 00000000",
     "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    ("ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff",
     "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    ("243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0",
     "d16cfe09 94fdcceb 5001e420 24126ea1"),
]


def philox4x32_10(ctr, key):
    c = list(ctr)
    k = list(key)
    for r in range(10):
        if r:
            k = [(k[0] + PHILOX_W[0]) & M32, (k[1] + PHILOX_W[1]) & M32]
        p0 = PHILOX_M[0] * c[0]
        p1 = PHILOX_M[1] * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k[0]) & M32, p1 & M32,
             ((p0 >> 32) ^ c[3] ^ k[1]) & M32, p0 & M32]
    return c


def words(text):
    return [int(w, 16) for w in text.split()]


def stream_block(seed, stream, block):
    ctr = [block & M32, block >> 32, stream & M32, stream >> 32]
    key = [seed & M32, seed >> 32]
    return philox4x32_10(ctr, key)


def box_muller(a, c):
    u1 = (a + 1.0) / 4294967296.0
    u2 = c / 4294967296.0
    r = math.sqrt(-2.0 * math.log(u1))
    theta = 2.0 * math.pi * u2
    return r * math.cos(theta), r * math.sin(theta)


def rng_stream(seed, stream, offset, n):
    u32, normal = [], []
    for j in range(offset, offset + n):
        w = stream_block(seed, stream, j >> 2)
        lane = j & 3
        u32.append(w[lane])
        pair = box_muller(w[lane & 2], w[(lane & 2) + 1])
        normal.append(float(np.float32(pair[lane & 1])))
    return u32, normal


def rng_data():
    for ctr, key, out in KAT:
        got = philox4x32_10(words(ctr), words(key))
        assert got == words(out), (ctr, key, ["%08x" % g for g in got])
    streams = []
    for seed, stream, offset, n in [(0, 0, 0, 16), (42, 0, 0, 64), (42, 1, 5, 23),
                                    ((1 << 40) + 7, (1 << 35) + 3, (1 << 33) + 1, 37),
                                    (2**64 - 1, 2**64 - 1, 2**62 - 8, 8)]:
        u32, normal = rng_stream(seed, stream, offset, n)
        streams.append({"seed": str(seed), "stream": str(stream), "offset": str(offset), "n": n,
                        "u32": u32, "normal": ["%.9g" % v for v in normal]})
    return {"kat": [list(k) for k in KAT], "streams": streams}


# ---- schedulers -------------------------------------------------------------


def wan_unipc(shift, **overrides):
    # Wan2.1's diffusers scheduler (scripts/convert_wan_to_diffusers.py).
    kw = dict(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
              flow_shift=shift)
    kw.update(overrides)
    return UniPCMultistepScheduler(**kw)


def wan_euler(shift):
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def make_scheduler(case):
    if case["kind"] == "unipc":
        return wan_unipc(case["shift"], solver_order=case["solver_order"],
                         solver_type=case["solver_type"],
                         lower_order_final=case["lower_order_final"],
                         final_sigmas_type=case["final_sigmas_type"])
    return wan_euler(case["shift"])


def set_timesteps(sch, case):
    if case["sigmas"] is None:
        sch.set_timesteps(case["steps"])
    elif case["kind"] == "unipc":
        # UniPC needs an array (it multiplies the list by the shift).
        sch.set_timesteps(sigmas=np.array(case["sigmas"], dtype=np.float64))
    else:
        sch.set_timesteps(sigmas=list(case["sigmas"]))


def fake_model(x, t):
    tf = torch.as_tensor(t).to(torch.float32)
    return 0.7 * x + 0.1 * torch.sin(tf / 100.0) + 0.05 * torch.cos(3.0 * x)


def trajectory(case, seed):
    sch = make_scheduler(case)
    set_timesteps(sch, case)
    sch.set_begin_index(0)  # as WanPipeline
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=gen, dtype=torch.float32)
    xs, vs = [x.clone()], []
    for t in sch.timesteps:
        v = fake_model(x, t)
        vs.append(v.clone())
        x = sch.step(v, t, x, return_dict=False)[0]
        assert x.dtype == torch.float32
        xs.append(x.clone())
    assert torch.isfinite(x).all(), case["name"]
    return sch, torch.stack(xs).numpy(), torch.stack(vs).numpy()


def case(name, kind, shift, steps=None, sigmas=None, solver_order=2, solver_type="bh2",
         lower_order_final=True, final_sigmas_type="zero"):
    return {"name": name, "kind": kind, "shift": shift, "num_train_timesteps": 1000,
            "steps": steps if sigmas is None else len(sigmas), "solver_order": solver_order,
            "solver_type": solver_type, "lower_order_final": lower_order_final,
            "final_sigmas_type": final_sigmas_type, "sigmas": sigmas, "shape": list(SHAPE)}


# Few-step distilled Wan checkpoints use denoising steps 1000, 750, 500, 250.
FEW_STEP = [1.0, 0.75, 0.5, 0.25]

TRAJECTORIES = [
    case("unipc_s3_n10", "unipc", 3.0, 10),
    case("unipc_s5_n10", "unipc", 5.0, 10),
    case("unipc_s3_n50", "unipc", 3.0, 50),
    case("unipc_s5_n50", "unipc", 5.0, 50),
    case("unipc_s3_n1", "unipc", 3.0, 1),
    case("unipc_s3_n2", "unipc", 3.0, 2),
    # bh1 into sigma 0 is NaN in diffusers (alpha B(h) = 1 * -inf times a zero
    # residual), so its golden run ends at sigma_min.
    case("unipc_bh1_sigmamin_s3_n12", "unipc", 3.0, 12, solver_type="bh1",
         final_sigmas_type="sigma_min"),
    case("unipc_o1_s3_n12", "unipc", 3.0, 12, solver_order=1),
    case("unipc_sigmamin_s3_n12", "unipc", 3.0, 12, final_sigmas_type="sigma_min"),
    case("unipc_nolof_sigmamin_s5_n12", "unipc", 5.0, 12, lower_order_final=False,
         final_sigmas_type="sigma_min"),
    case("unipc_fewstep_s5", "unipc", 5.0, sigmas=FEW_STEP),
    case("euler_s3_n10", "euler", 3.0, 10),
    case("euler_s5_n10", "euler", 5.0, 10),
    case("euler_s3_n50", "euler", 3.0, 50),
    case("euler_s5_n50", "euler", 5.0, 50),
    case("euler_s3_n1", "euler", 3.0, 1),
    case("euler_fewstep_s5", "euler", 5.0, sigmas=FEW_STEP),
]

SCHEDULE_SHIFTS = [1.0, 2.0, 3.0, 5.0, 7.0, 12.0]
SCHEDULE_STEPS = [1, 2, 3, 4, 5, 7, 10, 16, 20, 25, 30, 40, 50, 64, 100]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                                                  "sampler"))
    args = ap.parse_args()
    out = os.path.normpath(args.out)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)

    wan_unipc(3.0).save_config(os.path.join(out, "wan", "scheduler"))
    wan_euler(5.0).save_config(os.path.join(out, "euler", "scheduler"))

    tensors = {}
    for k, c in enumerate(TRAJECTORIES):
        sch, xs, vs = trajectory(c, seed=1000 + k)
        n = len(sch.timesteps)
        assert n == c["steps"] and len(sch.sigmas) == n + 1
        tensors[c["name"] + ".sigmas"] = sch.sigmas.numpy().astype(np.float32)
        ts = sch.timesteps.numpy()
        assert np.all(ts.astype(np.float32).astype(ts.dtype) == ts)  # exact in F32
        tensors[c["name"] + ".timesteps"] = ts.astype(np.float32)
        tensors[c["name"] + ".x"] = xs
        tensors[c["name"] + ".v"] = vs
        print("%-28s N=%-3d t=%s... x_N rms %.4f" % (c["name"], n, ts[:4].tolist(),
                                                    float(np.sqrt(np.mean(xs[-1] ** 2)))))

    schedules = []
    for kind in ("unipc", "euler"):
        for shift in SCHEDULE_SHIFTS:
            for steps in SCHEDULE_STEPS:
                sch = wan_unipc(shift) if kind == "unipc" else wan_euler(shift)
                sch.set_timesteps(steps)
                key = "sched.%s.s%g.n%d" % (kind, shift, steps)
                tensors[key + ".sigmas"] = sch.sigmas.numpy().astype(np.float32)
                ts = sch.timesteps.numpy()
                assert np.all(ts.astype(np.float32).astype(ts.dtype) == ts)
                tensors[key + ".timesteps"] = ts.astype(np.float32)
                schedules.append({"kind": kind, "shift": shift, "steps": steps})

    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    save_file(tensors, os.path.join(out, "golden.safetensors"))
    os.chmod(os.path.join(out, "golden.safetensors"), 0o644)
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({"trajectories": TRAJECTORIES, "schedules": schedules, "rng": rng_data()}, f,
                  indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(out) for n in ns)
    print("wrote %s (%d bytes)" % (out, total))


if __name__ == "__main__":
    main()
