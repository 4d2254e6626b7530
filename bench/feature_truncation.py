"""Would a truncation that acts on ProGAN help? Measured before building it.

The service's `truncation` redraws the entries of z beyond [-t, t]; ProGAN's G normalises z to the sphere
first, so that changes only the mix of directions (`scripts/truncation.py` measures what it does). The
analogue of StyleGAN's truncation for this G pulls the first block's 4x4 features towards their mean over
many z: x4 = mean + psi (x4 - mean), the rest of G as trained. Serving it would need a graph input and a
manifest field; this measures first whether it buys fidelity for the variety it costs.

    python bench/feature_truncation.py models/celeba --data .gpu/faces-178.zip --psi 1 0.8 0.6 \\
        --num 2048 --plot /tmp/feature-truncation.png

Every psi generates from the same z (evaluate's: seed + 1) against the same real faces and their cached
statistics (evaluate's subset of `--real-num`); psi 1 is G as it is. The model is a model folder with its
`checkpoint.safetensors` or a run folder; G runs in torch on the CPU at its top resolution.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.checkpoint import CheckpointError, load_generator  # noqa: E402
from trainer.data import DataError  # noqa: E402
from trainer.evaluate import Distance, Instruments, Measuring, measure, real_side  # noqa: E402
from trainer.export import to_uint8_nhwc  # noqa: E402
from trainer.networks import Generator, res_key  # noqa: E402

MEAN_Z = 4096  # latents the 4x4 features' mean is taken over (its own seed, apart from the measured z)
STRIP = 6  # faces per row of the picture


def first_features(G: Generator, z: torch.Tensor) -> torch.Tensor:
    """The 4x4 block's output [N, C, 4, 4] for z [N, z_dim]."""
    return G.blocks[res_key(4)](G.norm(z))


@torch.inference_mode()
def feature_mean(G: Generator, z_dim: int, seed: int = 12345, batch: int = 512) -> torch.Tensor:
    """The mean 4x4 features [1, C, 4, 4] over MEAN_Z latents."""
    gen = torch.Generator().manual_seed(seed)
    total = None
    for _ in range(MEAN_Z // batch):
        x = first_features(G, torch.randn(batch, z_dim, generator=gen)).sum(0, keepdim=True)
        total = x if total is None else total + x
    assert total is not None
    return total / MEAN_Z


@torch.inference_mode()
def generate(G: Generator, z: np.ndarray, mean: torch.Tensor, psi: float) -> np.ndarray:
    """uint8 [N, R, R, 3] at G's top resolution with the 4x4 features pulled towards `mean` by psi."""
    x = first_features(G, torch.from_numpy(z))
    x = mean + psi * (x - mean)
    for r in G.cfg.resolutions[1:]:
        x = G.blocks[res_key(r)](x)
    img = G.to_rgb[res_key(G.cfg.max_res)](x)
    return to_uint8_nhwc(img.float()).numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a model folder with checkpoint.safetensors, or a run folder")
    ap.add_argument("--data", required=True, help="the training faces (an archive)")
    ap.add_argument("--psi", nargs="+", type=float, default=[1.0, 0.8, 0.6], help="pulls (1: G as it is)")
    ap.add_argument("--num", type=int, default=2048, help="generated images per psi (FID needs 2,048)")
    ap.add_argument("--real-num", type=int, default=2048, help="real faces (evaluate's subset)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--plot", type=Path, help="a row of the same z's faces per psi, into this PNG")
    a = ap.parse_args(argv)
    try:
        if not all(0.0 <= p <= 1.0 for p in a.psi):
            raise ValueError(f"--psi values must be between 0 and 1, got {a.psi}")
        lg = load_generator(a.model)
        if lg.arch != "progan":
            raise ValueError(f"{a.model} is a {lg.arch} model; this measures ProGAN's 4x4 features")
        G = lg.G
        assert isinstance(G, Generator)
        res = G.cfg.max_res
        how = Measuring(batch=a.batch).checked(a.num)
        tools = Instruments.open(how, "cpu")
        real = real_side(a.data, res, a.real_num, how, tools).measures
    except (CheckpointError, DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mean = feature_mean(G, lg.z_dim)
    rng = np.random.default_rng(how.seed + 1)  # evaluate's z
    zs = [
        rng.standard_normal((min(how.batch, a.num - i), lg.z_dim), dtype=np.float32)
        for i in range(0, a.num, how.batch)
    ]
    print(f"{a.num} generated at {res}x{res} per psi against {real.num} real faces of {Path(a.data).name}")
    print(
        f"| psi | FID | KID x10^3 | MS-SSIM (real {real.ms_ssim:.4f}) | face rate (real {real.face_rate:.1%}) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for psi in a.psi:
        m = measure((generate(G, z, mean, psi) for z in zs), a.num, tools, f"psi {psi:g}")
        d = Distance.between(real, m, how.seed, f"psi {psi:g}", "real")
        fid = "-" if d.fid is None else f"{d.fid:.2f}"
        print(
            f"| {psi:g} | {fid} | {d.kid * 1e3:.2f} ± {d.kid_std * 1e3:.2f} | {m.ms_ssim:.4f} | {m.face_rate:.1%} |"
        )
    if a.plot:
        from PIL import Image

        rows = [np.concatenate(list(generate(G, zs[0][:STRIP], mean, psi)), axis=1) for psi in a.psi]
        a.plot.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, axis=0)).save(a.plot)
        print(f"wrote {a.plot} (a row per psi: {', '.join(f'{p:g}' for p in a.psi)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
