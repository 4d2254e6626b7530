"""Checkpoints: state dicts plus the configs that rebuild the models (no pickled modules), written atomically."""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainer.config import NetConfig, TrainConfig
from trainer.networks import build_generator

FORMAT_VERSION = 1
MODEL_CHECKPOINT = "checkpoint.safetensors"  # in a model folder: what `train --resume models/NAME` reads
MODEL_CHECKPOINT_FORMAT = "progan-faces/checkpoint-v1"
NETS = ("G", "D", "G_ema")


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


@functools.cache
def git_commit() -> str:
    """The checkout's commit, asked of git once per process (checkpoints record it; no subprocess per save)."""
    if os.environ.get("PROGAN_COMMIT"):  # machines that get a copy of the tree without .git
        return os.environ["PROGAN_COMMIT"]
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


@dataclass
class RunState:
    """What a run's checkpoint.pt holds, live: the networks, their optimizers, the RNG and the schedule
    position. `save` and `save_snapshot` are the only writers of the training formats; `load_state` reads
    them back as a dict (the resume puts it back in trainer/loop.py: `restore`)."""

    net: NetConfig
    cfg: TrainConfig
    G: nn.Module
    D: nn.Module
    G_ema: nn.Module
    gen: torch.Generator  # this rank's draws: reals, z, penalty mixing factors, flips
    data: str
    data_index: dict[str, Any]
    num_images: int
    opt_G: torch.optim.Optimizer | None = None
    opt_D: torch.optim.Optimizer | None = None
    cur_nimg: int = 0
    steps: int = 0
    opt_phase: int = -1  # the schedule phase the optimizers were made for
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per tick

    def save(self, path: Path, res: int, gen_ranks: list[Tensor]) -> None:
        """Everything to continue exactly (`gen_ranks`: every rank's generator state, rank order)."""
        atomic_torch_save(
            {
                **self._head(res),
                "G": self.G.state_dict(),
                "D": self.D.state_dict(),
                "G_ema": self.G_ema.state_dict(),
                "opt_G": self.opt_G.state_dict() if self.opt_G else {},
                "opt_D": self.opt_D.state_dict() if self.opt_D else {},
                "cur_nimg": self.cur_nimg,
                "steps": self.steps,
                "opt_phase": self.opt_phase,
                "rng": {"gen": gen_ranks[0], "gen_ranks": gen_ranks, "torch": torch.get_rng_state()},
                "history": self.history,
                "data_index": self.data_index,
                "num_images": self.num_images,
            },
            path,
        )

    def save_snapshot(self, path: Path, res: int) -> None:
        """G_ema alone: what export and evaluate need of a finished resolution."""
        atomic_torch_save({**self._head(res), "G_ema": self.G_ema.state_dict()}, path)

    def _head(self, res: int) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "net_cfg": dataclasses.asdict(self.net),
            "train_cfg": self.cfg.to_json(),
            "res": res,
            "kimg": self.cur_nimg / 1000,
            "data": self.data,
            "commit": git_commit(),
        }


def not_fp16_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors that are not finite, or not once stored in float16 (beyond its 65504):
    such weights must never reach a model folder."""
    return [
        n
        for n, t in tensors.items()
        if t.is_floating_point() and not bool(torch.isfinite(t.detach().to(torch.float16)).all())
    ]


def save_model_checkpoint(state: dict[str, Any], path: Path) -> int:
    """G, D and G_ema in float16 with the configs and the schedule position as metadata, no optimizer
    state: what a model folder needs to be trained further. Returns the file's size in bytes."""
    from safetensors.torch import save_file

    missing = [k for k in NETS if k not in state]
    if missing:
        raise CheckpointError(
            f"{state.get('path', 'the checkpoint')} has no {', '.join(missing)} (a G_ema snapshot?): "
            "export from the run folder's checkpoint.pt to make a model that can be trained further"
        )
    tensors = {
        f"{k}.{n}": (
            t.detach().to("cpu", torch.float16) if t.is_floating_point() else t.detach().cpu()
        ).contiguous()
        for k in NETS
        for n, t in state[k].items()
    }
    bad = not_fp16_finite(tensors)
    if bad:
        raise CheckpointError(
            f"{state.get('path', 'the checkpoint')} has weights that are inf or nan in float16 "
            f"({', '.join(bad[:3])}{', …' if len(bad) > 3 else ''}): nothing was written; export an earlier, "
            "finite checkpoint"
        )
    meta = {
        **schedule_position(state),
        "format": MODEL_CHECKPOINT_FORMAT,
        "net_cfg": json.dumps(state["net_cfg"]),
        "train_cfg": json.dumps(state.get("train_cfg", {})),
        "res": str(int(state.get("res", state["net_cfg"]["max_res"]))),
        "kimg": str(float(state.get("kimg", 0.0))),
        "cur_nimg": str(int(state.get("cur_nimg", 0))),
        "steps": str(int(state.get("steps", 0))),
        "data": str(state.get("data", "")),
        "data_index": json.dumps(state.get("data_index") or {}),
        "num_images": str(state.get("num_images", "")),
        "commit": str(state.get("commit", "unknown")),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.chmod(0o644)
    os.replace(tmp, path)
    return path.stat().st_size


def schedule_position(state: dict[str, Any]) -> dict[str, str]:
    """Where in its schedule a checkpoint stands, as model-checkpoint metadata: the phase's index in the
    run's schedule, its kind (fade or stab) and resolution, and the fade's alpha (1 when stabilising). Empty
    for a checkpoint without its training config (an old snapshot)."""
    from trainer.config import locate, schedule

    if not state.get("train_cfg") or "cur_nimg" not in state:
        return {}
    if "phase" in state:  # read from a model checkpoint: what it said
        return {k: str(state[k]) for k in ("phase", "phase_kind", "phase_res", "alpha")}
    phases = schedule(net_config(state), TrainConfig.from_json(state["train_cfg"]))
    idx, alpha = locate(phases, int(state["cur_nimg"]))
    return {
        "phase": str(idx),
        "phase_kind": phases[idx].kind,
        "phase_res": str(phases[idx].res),
        "alpha": repr(float(alpha)),
    }


def _load_model_checkpoint(p: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != MODEL_CHECKPOINT_FORMAT:
                raise CheckpointError(
                    f"{p} is not a model checkpoint of this trainer ({MODEL_CHECKPOINT_FORMAT})"
                )
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{p} is damaged or not a safetensors file: {e}") from e
    state: dict[str, Any] = {k: {} for k in NETS}
    for key, t in tensors.items():
        net, name = key.split(".", 1)
        state[net][name] = t.float() if t.is_floating_point() else t
    state.update(
        format=FORMAT_VERSION,
        model_checkpoint=True,  # a model to continue or grow in a new run, with fresh Adam state
        net_cfg=json.loads(meta["net_cfg"]),
        train_cfg=json.loads(meta.get("train_cfg", "{}")),
        res=int(meta["res"]),
        kimg=float(meta.get("kimg", 0.0)),
        cur_nimg=int(meta.get("cur_nimg", 0)),
        steps=int(meta.get("steps", 0)),
        data=meta.get("data", ""),
        data_index=json.loads(meta.get("data_index", "{}")),
        commit=meta.get("commit", "unknown"),
        **(
            {
                "phase": int(meta["phase"]),
                "phase_kind": meta["phase_kind"],
                "phase_res": int(meta["phase_res"]),
                "alpha": float(meta["alpha"]),
            }
            if "phase" in meta  # written since 2026-11-29
            else {}
        ),
        opt_G={},
        opt_D={},
        history=[],
    )
    return state


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint or snapshot written by this trainer, or a model folder's checkpoint.safetensors;
    CheckpointError with a clear message if not."""
    p = Path(path)
    if p.is_dir():
        if not (p / "checkpoint.pt").exists() and (p / "manifest.json").exists():
            if not (p / MODEL_CHECKPOINT).exists():
                raise CheckpointError(
                    f"model folder {p} has no {MODEL_CHECKPOINT}, so it cannot be trained further; "
                    "export it again from its run folder (export writes the checkpoint)"
                )
            p = p / MODEL_CHECKPOINT
        else:
            p = p / "checkpoint.pt"
    if p.suffix == ".safetensors":
        if not p.exists():
            raise CheckpointError(f"checkpoint {p} does not exist")
        state = _load_model_checkpoint(p)
        state["path"] = str(p)
        return state
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


def half_state(state: dict[str, Any]) -> dict[str, Any]:
    """A training checkpoint with G, D and G_ema in float16 and no optimizer state (Adam restarts on resume):
    a third of the size, what a GPU lease carries back (scripts/gpu_checkpoint.py)."""
    small = {k: v for k, v in state.items() if k not in ("opt_G", "opt_D", "path", *NETS)}
    for k in NETS:
        small[k] = {n: t.half() if t.is_floating_point() else t for n, t in state[k].items()}
    small.update(opt_G={}, opt_D={}, opt_phase=-1)
    return small


def full_state(small: dict[str, Any]) -> dict[str, Any]:
    """`half_state`'s result with float32 weights again: a checkpoint.pt that export, evaluate and
    `train --resume` read like any other (fresh Adam state on resume)."""
    if (
        not isinstance(small, dict)
        or small.get("format") != FORMAT_VERSION
        or not all(k in small for k in NETS)
    ):
        raise CheckpointError(f"not a packed checkpoint of this trainer (format {FORMAT_VERSION})")
    state = dict(small)
    for k in NETS:
        state[k] = {n: t.float() if t.is_floating_point() else t for n, t in small[k].items()}
    return state


def packed_bytes(state: dict[str, Any]) -> bytes:
    """`half_state(state)` serialised: the bytes a GPU lease carries back in parts (scripts/gpu_checkpoint.py
    splits and hashes them; this module alone writes and reads what is inside)."""
    buf = io.BytesIO()
    torch.save(half_state(state), buf)
    return buf.getvalue()


def unpacked_state(blob: bytes) -> dict[str, Any]:
    """`packed_bytes`' result read back with float32 weights: a state `RunState`'s checkpoint.pt format
    holds (fresh Adam on resume); CheckpointError if the bytes are not one."""
    try:
        small = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for truncated or foreign bytes
        raise CheckpointError(f"the joined parts are not a packed checkpoint of this trainer: {e}") from e
    return full_state(small)


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
