"""How far D moves when a checkpoint trained unfused trains on fused (`train --resume ... --fused-scale`).

The fused layers hold the same parameters. G computes the same function in both forms (this script
checks it); D's pooled blocks apply their activation after the pooling rather than before. This script
scores N real faces and N faces of the checkpoint's G_ema with D in both forms, each minibatch as the
trainer feeds it (reals and fakes in one pass, the minibatch-stddev groups as in training). It prints one
table: each form's mean and spread of the scores, the correlation between the two forms, and the
real-minus-generated gap.

    python scripts/fused_switch.py runs/00004-progan-gpu-256 --data .gpu/faces-178.zip --num 64
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np
import torch

from trainer.checkpoint import Checkpoint, CheckpointError
from trainer.config import TrainConfig
from trainer.data import DataError, load_images
from trainer.loop import Dist, critic_scores, fixed_reals, networks_step_context
from trainer.networks import build_networks


def scores(ck: Checkpoint, fused: bool, reals: torch.Tensor, z: torch.Tensor) -> tuple[np.ndarray, ...]:
    """D's scores of `reals` and of G_ema(z) with the networks in one form, and the generated images."""
    net = dataclasses.replace(ck.net, fused_scale=fused)
    G, D = build_networks(net)
    G.load_state_dict({k: v.float() for k, v in ck.generator.items()})
    D.load_state_dict({k: v.float() for k, v in ck.nets["D"].items()})
    ctx = networks_step_context(G, D, net, TrainConfig(), torch.device("cpu"), torch.Generator(), Dist())
    with torch.no_grad():
        fake = G(z, ck.res, 1.0)
        real_s, fake_s = critic_scores(ctx, reals, fake, ck.res, 1.0)
    return real_s.flatten().numpy(), fake_s.flatten().numpy(), fake.numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a run folder, checkpoint.pt or model folder trained unfused")
    ap.add_argument("--data", required=True, help="the faces it trained on (an archive or folder)")
    ap.add_argument("--num", type=int, default=64, help="faces a side, a multiple of 4 (default 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", help="where decoded images are cached (default: train's)")
    a = ap.parse_args(argv)
    if a.num < 4 or a.num % 4:
        ap.error(f"--num must be a positive multiple of 4 (the minibatch-stddev group), got {a.num}")
    try:
        ck = Checkpoint.load(a.checkpoint)
        if ck.net.fused_scale:
            raise CheckpointError(f"{a.checkpoint} was trained fused already: nothing switches")
        images = load_images(  # the faces it trained on: halved from its top resolution
            a.data, ck.res, top=ck.net.max_res, cache_dir=a.cache_dir, allow_upscale=True, progress=False
        )
    except (CheckpointError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(images) < a.num:
        print(f"error: {a.data} holds {len(images)} faces, fewer than --num {a.num}", file=sys.stderr)
        return 2
    reals = fixed_reals(images, a.num, a.seed)
    z = torch.randn(a.num, ck.net.z_dim, generator=torch.Generator().manual_seed(a.seed))
    ur, uf, ug = scores(ck, False, reals, z)
    fr, ff, fg = scores(ck, True, reals, z)
    print(f"{a.checkpoint} at {ck.res}x{ck.res}, {a.num} real and {a.num} generated faces")
    print(
        f"G, fused against unfused: largest difference {float(np.abs(ug - fg).max()):.1e} (images in [-1, 1])"
    )
    print("| faces | unfused mean | unfused sd | fused mean | fused sd | correlation |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, u, f in (("real", ur, fr), ("generated", uf, ff)):
        corr = float(np.corrcoef(u, f)[0, 1])
        print(f"| {name} | {u.mean():.3f} | {u.std():.3f} | {f.mean():.3f} | {f.std():.3f} | {corr:.3f} |")
    print(f"real minus generated: unfused {ur.mean() - uf.mean():.3f}, fused {fr.mean() - ff.mean():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
