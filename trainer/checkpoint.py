"""Checkpoints: state dicts plus the configs that rebuild the models (no pickled modules), written atomically."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.config import NetConfig
from trainer.networks import build_generator

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not hold what is needed."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash or a full disk never
    leaves a broken file where a good one was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint or snapshot written by this trainer; CheckpointError with a clear message if not."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoint.pt"
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many kinds for truncated or foreign files
        raise CheckpointError(f"checkpoint {p} is corrupt or not a trainer checkpoint: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or "net_cfg" not in state:
        raise CheckpointError(f"{p} is not a checkpoint of this trainer (format {FORMAT_VERSION})")
    state["path"] = str(p)
    return state


def net_config(state: dict[str, Any]) -> NetConfig:
    fields = {f.name for f in dataclasses.fields(NetConfig)}
    return NetConfig(**{k: v for k, v in state["net_cfg"].items() if k in fields})


@dataclass
class LoadedGenerator:
    G: nn.Module  # EMA generator in eval mode; G(z [N, z_dim], res=R) -> [N, 3, R, R] in about [-1, 1]
    z_dim: int
    res: int  # highest resolution trained so far
    arch: str
    net_cfg: NetConfig
    state: dict[str, Any]


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> LoadedGenerator:
    """The EMA generator of a checkpoint (or a per-resolution snapshot)."""
    state = load_state(path, map_location="cpu")
    cfg = net_config(state)
    G = build_generator(cfg)
    key = "G_ema" if "G_ema" in state else "G"
    try:
        G.load_state_dict(state[key])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{state['path']}: generator weights do not match its config: {e}") from e
    G.eval().requires_grad_(False).to(device)
    return LoadedGenerator(G, cfg.z_dim, int(state.get("res", cfg.max_res)), cfg.arch, cfg, state)
