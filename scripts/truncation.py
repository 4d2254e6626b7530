"""What the service's `truncation` does to a model's faces: FID, KID, MS-SSIM and face rate at each t.

The service draws z from a normal truncated to [-t, t] (contract.TRUNCATION_DOC) when a request sets
`truncation`, and says "less variety, more fidelity". ProGAN's G normalises z to the sphere before
anything else (PixelNorm), so shrinking z does nothing there; what truncation changes is only the mix of
directions (no entry beyond t of the others). This measures what that buys, with `evaluate` itself at each t
against the same real faces (their statistics cached after the first), and draws the figures and a row of
samples per t from one seed (the entries within [-t, t] keep their values, the others are drawn again, so
the faces differ).

    python scripts/truncation.py models/celeba --data .gpu/faces-178.zip --res 256 --num 2048 \\
        --values none 1.5 1.0 0.7 0.5 --plot docs/figures/truncation.png
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.data import DataError  # noqa: E402
from trainer.evaluate import Measuring, evaluate  # noqa: E402
from trainer.metrics.inception import InceptionError  # noqa: E402
from trainer.metrics.samplers import ModelError, open_model, sample_batches  # noqa: E402

SAMPLES = 8  # faces per row of the picture


def parse_value(text: str) -> float | None:
    """A truncation from the command line: a number, or `none` for the plain normal."""
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a truncation is a number or 'none', got {text!r}") from None


def label(t: float | None) -> str:
    return "none" if t is None else f"{t:g}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| truncation | FID | KID x10^3 | MS-SSIM (real) | face rate (real) | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m in rows:
        fid = "n/a" if m["fid"] is None else f"{m['fid']:.2f}"  # too few images for FID
        lines.append(
            f"| {label(m['truncation'])} | {fid} | {m['kid'] * 1e3:.2f} +- {m['kid_std'] * 1e3:.2f} "
            f"| {m['ms_ssim']:.4f} ({m['ms_ssim_real']:.4f}) | {m['face_rate']:.1%} ({m['face_rate_real']:.1%}) "
            f"| {m['seconds']:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], samples: dict[str, np.ndarray], path: Path, seed: int) -> None:
    """Left: FID and KID against t; middle: face rate and MS-SSIM with the real faces' as dotted lines;
    right: a row of faces per t, drawn from the same seed (the entries a truncation keeps are the same)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [label(m["truncation"]) for m in rows]
    x = np.arange(len(rows))
    fig = plt.figure(figsize=(15, 4.8))
    grid = fig.add_gridspec(1, 3, width_ratios=[1, 1, 1.6])
    ax = fig.add_subplot(grid[0])
    ax.plot(x, [np.nan if m["fid"] is None else m["fid"] for m in rows], "o-", color="tab:blue", label="FID")
    ax.set_ylabel("FID (lower is better)", color="tab:blue")
    ax.set_ylim(0, 1.2 * max(m["fid"] or 0.0 for m in rows) or 1.0)  # from 0, so a change shows at scale
    ax2 = ax.twinx()
    ax2.errorbar(
        x, [m["kid"] * 1e3 for m in rows], [m["kid_std"] * 1e3 for m in rows], fmt="s--", color="tab:red"
    )
    ax2.set_ylabel("KID x10^3", color="tab:red")
    ax2.set_ylim(0, 1.2 * max((m["kid"] + m["kid_std"]) * 1e3 for m in rows) or 1.0)
    ax.set_xticks(x, names)
    ax.set_xlabel("truncation t")
    ax.set_title(f"{rows[0]['num']:,} samples at {rows[0]['resolution']} px each")
    ax = fig.add_subplot(grid[1])
    ax.plot(x, [m["face_rate"] * 100 for m in rows], "o-", color="tab:green")
    ax.axhline(rows[0]["face_rate_real"] * 100, color="tab:green", ls=":")
    ax.set_ylabel("face rate % (dotted: real)", color="tab:green")
    ax.set_ylim(0, 100)
    ax2 = ax.twinx()
    ax2.plot(x, [m["ms_ssim"] for m in rows], "s-", color="tab:purple")
    ax2.axhline(rows[0]["ms_ssim_real"], color="tab:purple", ls=":")
    ax2.set_ylabel("MS-SSIM (higher: less variety; dotted: real)", color="tab:purple")
    ax2.set_ylim(0, max(0.5, 1.2 * max(m["ms_ssim"] for m in rows)))
    ax.set_xticks(x, names)
    ax.set_xlabel("truncation t")
    ax = fig.add_subplot(grid[2])
    strip = np.concatenate([np.concatenate(list(samples[n]), axis=1) for n in names], axis=0)
    ax.imshow(strip)
    side = samples[names[0]].shape[1]
    ax.set_yticks([side * (i + 0.5) for i in range(len(names))], [f"t {n}" for n in names])
    ax.set_xticks([])
    ax.set_title(f"samples at each t (seed {seed})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a model folder (manifest.json) or a run folder")
    ap.add_argument("--data", required=True, help="the training faces: an archive or anything --data reads")
    ap.add_argument("--res", type=int, help="resolution (default: the model's highest)")
    ap.add_argument("--num", type=int, default=2048, help="generated and real images per t (default 2048)")
    ap.add_argument(
        "--values",
        nargs="+",
        type=parse_value,
        default=[None, 1.5, 1.0, 0.7, 0.5],
        help="t's ('none': plain)",
    )
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0, help="as evaluate's --seed")
    ap.add_argument("--plot", type=Path, help="draw the figures and sample rows into this PNG")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    how = Measuring(batch=a.batch, seed=a.seed, progress=not a.quiet)
    rows = []
    try:
        bad = [t for t in a.values if t is not None and not math.isfinite(t)]
        if bad:
            raise ValueError(f"--values must be finite numbers or 'none', got {bad}")
        for t in a.values:
            rows.append(evaluate(a.model, a.data, res=a.res, num=a.num, how=how, truncation=t))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        samples: dict[str, np.ndarray] = {}
        if a.plot:
            model = open_model(a.model)
            res = rows[0]["resolution"]
            for t in a.values:
                samples[label(t)] = next(
                    sample_batches(model, SAMPLES, res, SAMPLES, seed=a.seed, truncation=t)
                )
    except (DataError, ModelError, InceptionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"\n{a.model} at {rows[0]['resolution']} px, {a.num:,} samples per t against {rows[0]['num_real']:,} real"
    )
    print(table(rows))
    if a.plot:
        plot(rows, samples, a.plot, a.seed)
        print(f"wrote {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
