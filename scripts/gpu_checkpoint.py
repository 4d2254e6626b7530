"""Carry a training checkpoint off a lent GPU machine and back into a run folder.

A lease returns at most 8 files of 16 MiB. `pack` turns a run's checkpoint.pt into G, D and G_ema in
float16 plus everything else a resume needs except the optimizer state (Adam restarts at every phase
anyway), split into parts under 15 MiB with a sha256 over the whole. `unpack` joins the parts into a
checkpoint.pt (float32 weights; fresh Adam state on resume) that `export`, `evaluate` and `train --resume`
read like any other, and draws the run's loss plot (losses.png) from the history the checkpoint keeps, so
that the plot need not take one of the lease's eight files.

    python scripts/gpu_checkpoint.py pack runs/00003-progan-gpu-64 $OUT
    python scripts/gpu_checkpoint.py unpack $FILES/ckpt.part* --out runs/00003-progan-gpu-64
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from trainer.checkpoint import Checkpoint, CheckpointError
from trainer.viz import plot_losses

PART_BYTES = 15 * 2**20


def pack(run_dir: Path, out: Path) -> list[Path]:
    ck = Checkpoint.load(run_dir)
    blob = ck.packed()
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(0, len(blob), PART_BYTES):
        p = out / f"ckpt.part{i // PART_BYTES}"
        p.write_bytes(blob[i : i + PART_BYTES])
        parts.append(p)
    (out / "ckpt.json").write_text(
        json.dumps(
            {
                "sha256": hashlib.sha256(blob).hexdigest(),
                "bytes": len(blob),
                "parts": len(parts),
                "kimg": ck.kimg,
                "res": ck.res,
            }
        )
    )
    return parts


def unpack(parts: list[Path], out_dir: Path) -> Path:
    parts = sorted(parts, key=lambda p: int(p.name.rsplit("part", 1)[1]))
    blob = b"".join(p.read_bytes() for p in parts)
    meta_path = parts[0].parent / "ckpt.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if hashlib.sha256(blob).hexdigest() != meta["sha256"] or len(parts) != meta["parts"]:
            raise SystemExit(f"error: the parts do not match {meta_path} (missing or damaged part)")
    path = out_dir / "checkpoint.pt"
    ck = Checkpoint.unpacked(blob)
    ck.save(path)
    if ck.history:
        plot_losses(ck.history, out_dir / "losses.png")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("run_dir", type=Path)
    p.add_argument("out", type=Path)
    u = sub.add_parser("unpack")
    u.add_argument("parts", type=Path, nargs="+")
    u.add_argument("--out", type=Path, required=True, help="run folder to write checkpoint.pt into")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "pack":
            parts = pack(a.run_dir, a.out)
            print(f"packed {a.run_dir / 'checkpoint.pt'} into {len(parts)} parts under {a.out}")
        else:
            print(f"wrote {unpack(a.parts, a.out)}")
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
