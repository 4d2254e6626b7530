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
from typing import Any, Literal

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
    """A run in progress: the networks, their optimizers, the RNG and the schedule position, live.
    `checkpoint` turns it into a `Checkpoint` to write; a resume puts one back (trainer/loop.py: `restore`)."""

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

    def checkpoint(self, res: int, gen_ranks: list[Tensor] | None = None) -> Checkpoint:
        """The run as it stands: with `gen_ranks` (every rank's generator state, rank order) everything to
        continue exactly (kind "run"); without, a snapshot of G_ema alone (what export and evaluate need of
        a finished resolution). The tensors are shared, not copied: save it before the next step."""
        snapshot = Checkpoint(
            net=self.net,
            res=res,
            nets={"G_ema": self.G_ema.state_dict()},
            kind="snapshot",
            train_cfg=self.cfg.to_json(),
            kimg=self.cur_nimg / 1000,
            data=self.data,
            commit=git_commit(),
        )
        if gen_ranks is None:
            return snapshot
        return dataclasses.replace(
            snapshot,
            nets={"G": self.G.state_dict(), "D": self.D.state_dict(), **snapshot.nets},
            kind="run",
            cur_nimg=self.cur_nimg,
            steps=self.steps,
            opt_phase=self.opt_phase,
            opt={"G": self.opt_G.state_dict(), "D": self.opt_D.state_dict()}
            if self.opt_G and self.opt_D
            else {},
            rng={"gen": gen_ranks[0], "gen_ranks": gen_ranks, "torch": torch.get_rng_state()},
            history=self.history,
            data_index=self.data_index,
            num_images=self.num_images,
        )

    def save(self, path: Path, res: int, gen_ranks: list[Tensor]) -> None:
        """Everything to continue exactly, as the run folder's checkpoint.pt."""
        self.checkpoint(res, gen_ranks).save(path)

    def save_snapshot(self, path: Path, res: int) -> None:
        """G_ema alone, as G_ema-RES.pt."""
        self.checkpoint(res).save(path)


def not_fp16_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors that are not finite, or not once stored in float16 (beyond its 65504):
    such weights must never reach a model folder."""
    return [
        n
        for n, t in tensors.items()
        if t.is_floating_point() and not bool(torch.isfinite(t.detach().to(torch.float16)).all())
    ]


@dataclass
class Checkpoint:
    """One checkpoint of this trainer, whichever file holds it: the only type that writes and reads them.

    - kind "run": a run folder's checkpoint.pt (torch, float32): G, D, G_ema, both Adams, every rank's RNG,
      the history: everything to continue exactly. Written by `RunState.save` through `save`.
    - kind "snapshot": a finished resolution's G_ema alone (G_ema-RES.pt), what export and evaluate need.
    - kind "model": a model folder's checkpoint.safetensors: G, D and G_ema in float16, the configs and the
      schedule position as metadata, no optimizer state; what `train --resume models/NAME` grows
      (`save_model`). Adam starts fresh.
    - the packed bytes a GPU lease carries back in parts (`packed` / `unpacked`): a run checkpoint in
      float16 without Adam, read back as a run checkpoint with float32 weights.

    `load` reads any of the three files (a run or model folder finds its own); a file this trainer did not
    write, or a damaged one, is a `CheckpointError` with a clear message."""

    net: NetConfig
    res: int  # the highest resolution trained so far
    nets: dict[str, dict[str, Tensor]]  # "G", "D", "G_ema": state dicts (a snapshot: G_ema alone)
    kind: Literal["run", "snapshot", "model"] = "run"
    train_cfg: dict[str, Any] = field(default_factory=dict)  # TrainConfig.to_json(); {} in old snapshots
    kimg: float = 0.0
    cur_nimg: int | None = None  # images shown; None in a snapshot, which does not record it
    steps: int = 0
    opt_phase: int | None = None  # the schedule phase the optimizers were made for (None: not recorded)
    opt: dict[str, dict[str, Any]] = field(default_factory=dict)  # "G", "D": Adam; empty: Adam starts fresh
    rng: dict[str, Any] = field(default_factory=dict)  # "gen_ranks" (every rank's draws), "torch"
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per tick
    data: str = ""
    data_index: dict[str, Any] = field(default_factory=dict)  # a prepare-data archive's index
    num_images: int | None = None
    commit: str = "unknown"
    stored_position: SchedulePosition | None = None  # what a model checkpoint's metadata said
    path: str = ""  # where it was read from ("" until saved or loaded)

    # ------------------------------------------------------------------------ what it holds

    @property
    def is_model(self) -> bool:
        """A model folder's checkpoint: grown or fine-tuned in a new run with fresh Adam state."""
        return self.kind == "model"

    @property
    def trainable(self) -> bool:
        """Holds G, D and G_ema (not a snapshot), so a model folder made from it can be trained further."""
        return all(k in self.nets for k in NETS)

    @property
    def train(self) -> TrainConfig:
        return TrainConfig.from_json(self.train_cfg)

    @property
    def generator(self) -> dict[str, Tensor]:
        """The weights to sample with: the EMA generator's."""
        return self.nets["G_ema"] if "G_ema" in self.nets else self.nets["G"]

    def position(self) -> SchedulePosition | None:
        """Where in its schedule it stands (a model checkpoint: as its metadata says); None for a checkpoint
        without its training config or image count (a snapshot)."""
        from trainer.config import locate, schedule

        if self.stored_position is not None:
            return self.stored_position
        if not self.train_cfg or self.cur_nimg is None:
            return None
        phases = schedule(self.net, self.train)
        idx, alpha = locate(phases, self.cur_nimg)
        return SchedulePosition(idx, phases[idx].kind, phases[idx].res, float(alpha))

    def top_alpha(self) -> float:
        """alpha of the top resolution when it was written (a mid-fade checkpoint is the blend it was)."""
        pos = self.position()  # a DCGAN's one phase stabilises: alpha 1
        return pos.alpha if pos is not None and pos.res == self.res else 1.0

    # ------------------------------------------------------------------------ writing

    def save(self, path: Path) -> None:
        """A run's checkpoint.pt (kind "run") or a G_ema snapshot (kind "snapshot"), written atomically."""
        if self.kind not in ("run", "snapshot"):
            raise CheckpointError(f"a {self.kind} checkpoint is written with save_model, not save")
        atomic_torch_save(self._torch_dict(), path)
        self.path = str(path)

    def save_model(self, path: Path) -> int:
        """The model folder's checkpoint.safetensors: G, D and G_ema in float16 with the configs and the
        schedule position as metadata, no optimizer state. Nothing is written if a weight is not finite in
        float16. Returns the file's size in bytes."""
        from safetensors.torch import save_file

        missing = [k for k in NETS if k not in self.nets]
        if missing:
            raise CheckpointError(
                f"{self.path or 'the checkpoint'} has no {', '.join(missing)} (a G_ema snapshot?): "
                "export from the run folder's checkpoint.pt to make a model that can be trained further"
            )
        tensors = {
            f"{k}.{n}": (
                t.detach().to("cpu", torch.float16) if t.is_floating_point() else t.detach().cpu()
            ).contiguous()
            for k in NETS
            for n, t in self.nets[k].items()
        }
        bad = not_fp16_finite(tensors)
        if bad:
            raise CheckpointError(
                f"{self.path or 'the checkpoint'} has weights that are inf or nan in float16 "
                f"({', '.join(bad[:3])}{', …' if len(bad) > 3 else ''}): nothing was written; export an "
                "earlier, finite checkpoint"
            )
        pos = self.position()
        meta = {
            **(
                {
                    "phase": str(pos.phase),
                    "phase_kind": pos.kind,
                    "phase_res": str(pos.res),
                    "alpha": repr(pos.alpha),
                }
                if pos
                else {}
            ),
            "format": MODEL_CHECKPOINT_FORMAT,
            "net_cfg": json.dumps(dataclasses.asdict(self.net)),
            "train_cfg": json.dumps(self.train_cfg),
            "res": str(self.res),
            "kimg": str(float(self.kimg)),
            "cur_nimg": str(self.cur_nimg or 0),
            "steps": str(self.steps),
            "data": self.data,
            "data_index": json.dumps(self.data_index),
            "num_images": "" if self.num_images is None else str(self.num_images),
            "commit": self.commit,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.chmod(0o644)
        os.replace(tmp, path)
        return path.stat().st_size

    def packed(self) -> bytes:
        """A run checkpoint as the bytes a GPU lease carries back in parts: G, D and G_ema in float16, no
        Adam state (a third of the size; scripts/gpu_checkpoint.py splits and hashes them)."""
        if self.kind != "run":
            raise CheckpointError(
                f"{self.path or 'the checkpoint'} is a {self.kind} checkpoint; what is packed is a run "
                "folder's checkpoint.pt"
            )
        small = dataclasses.replace(self, nets=_floats_as(self.nets, torch.float16), opt={}, opt_phase=-1)
        buf = io.BytesIO()
        torch.save(small._torch_dict(), buf)
        return buf.getvalue()

    @classmethod
    def unpacked(cls, blob: bytes) -> Checkpoint:
        """`packed`'s bytes read back as a run checkpoint with float32 weights (fresh Adam on resume)."""
        try:
            raw = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds for truncated or foreign bytes
            raise CheckpointError(f"the joined parts are not a packed checkpoint of this trainer: {e}") from e
        if (
            not isinstance(raw, dict)
            or raw.get("format") != FORMAT_VERSION
            or not all(k in raw for k in NETS)
        ):
            raise CheckpointError(f"not a packed checkpoint of this trainer (format {FORMAT_VERSION})")
        ck = cls._from_torch_dict(raw, "the joined parts")
        ck.nets = _floats_as(ck.nets, torch.float32)
        return ck

    def _torch_dict(self) -> dict[str, Any]:
        head = {
            "format": FORMAT_VERSION,
            "net_cfg": dataclasses.asdict(self.net),
            "train_cfg": self.train_cfg,
            "res": self.res,
            "kimg": self.kimg,
            "data": self.data,
            "commit": self.commit,
        }
        if self.kind == "snapshot":
            return {**head, "G_ema": self.nets["G_ema"]}
        return {
            **head,
            **{k: self.nets[k] for k in NETS},
            "opt_G": self.opt.get("G", {}),
            "opt_D": self.opt.get("D", {}),
            "cur_nimg": self.cur_nimg or 0,
            "steps": self.steps,
            **({"opt_phase": self.opt_phase} if self.opt_phase is not None else {}),
            "rng": self.rng,
            "history": self.history,
            "data_index": self.data_index,
            "num_images": self.num_images,
        }

    # ------------------------------------------------------------------------ reading

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
        """A run folder's checkpoint.pt, a snapshot, or a model folder's checkpoint.safetensors (the folder or
        the file); CheckpointError with a clear message for anything else."""
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
        if not p.exists():
            raise CheckpointError(f"checkpoint {p} does not exist")
        if p.suffix == ".safetensors":
            return cls._load_model(p)
        try:
            raw = torch.load(p, map_location=map_location, weights_only=True)
        except Exception as e:  # torch raises many kinds for truncated or foreign files
            raise CheckpointError(f"checkpoint {p} is corrupt or not a trainer checkpoint: {e}") from e
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION or "net_cfg" not in raw:
            raise CheckpointError(f"{p} is not a checkpoint of this trainer (format {FORMAT_VERSION})")
        return cls._from_torch_dict(raw, str(p))

    @classmethod
    def _from_torch_dict(cls, raw: dict[str, Any], path: str) -> Checkpoint:
        nets = {k: raw[k] for k in NETS if k in raw}
        if not nets:
            raise CheckpointError(f"{path} holds no network weights (format {FORMAT_VERSION})")
        return cls(
            net=_net_config(raw["net_cfg"]),
            res=int(raw.get("res", raw["net_cfg"].get("max_res", 0))),
            nets=nets,
            kind="run" if all(k in nets for k in NETS) else "snapshot",
            train_cfg=raw.get("train_cfg") or {},
            kimg=float(raw.get("kimg", 0.0)),
            cur_nimg=int(raw["cur_nimg"]) if "cur_nimg" in raw else None,
            steps=int(raw.get("steps", 0)),
            opt_phase=int(raw["opt_phase"]) if "opt_phase" in raw else None,
            opt={k: raw[f"opt_{k}"] for k in ("G", "D") if raw.get(f"opt_{k}")},
            rng=raw.get("rng") or {},
            history=list(raw.get("history") or []),
            data=str(raw.get("data", "")),
            data_index=raw.get("data_index") or {},
            num_images=raw.get("num_images"),
            commit=str(raw.get("commit", "unknown")),
            path=path,
        )

    @classmethod
    def _load_model(cls, p: Path) -> Checkpoint:
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
        nets: dict[str, dict[str, Tensor]] = {k: {} for k in NETS}
        for key, t in tensors.items():
            net, name = key.split(".", 1)
            nets[net][name] = t
        nets = _floats_as(nets, torch.float32)
        stored = None
        if "phase" in meta:  # written since 2026-11-29
            stored = SchedulePosition(
                int(meta["phase"]), meta["phase_kind"], int(meta["phase_res"]), float(meta["alpha"])
            )
        return cls(
            net=_net_config(json.loads(meta["net_cfg"])),
            res=int(meta["res"]),
            nets=nets,
            kind="model",
            train_cfg=json.loads(meta.get("train_cfg", "{}")),
            kimg=float(meta.get("kimg", 0.0)),
            cur_nimg=int(meta.get("cur_nimg", 0)),
            steps=int(meta.get("steps", 0)),
            data=meta.get("data", ""),
            data_index=json.loads(meta.get("data_index", "{}")),
            num_images=int(meta["num_images"]) if meta.get("num_images", "").isdigit() else None,
            commit=meta.get("commit", "unknown"),
            stored_position=stored,
            path=str(p),
        )


@dataclass(frozen=True)
class SchedulePosition:
    """Where a checkpoint stands in its run's schedule: the phase's index, its kind (fade or stab) and
    resolution, and the fade's alpha (1 when stabilising)."""

    phase: int
    kind: str
    res: int
    alpha: float


def _floats_as(nets: dict[str, dict[str, Tensor]], dtype: torch.dtype) -> dict[str, dict[str, Tensor]]:
    """The state dicts with their floating tensors in `dtype` (integer buffers as they are)."""
    return {
        k: {n: t.to(dtype) if t.is_floating_point() else t for n, t in sd.items()} for k, sd in nets.items()
    }


def _net_config(saved: dict[str, Any]) -> NetConfig:
    """The NetConfig a checkpoint saved (keys an older trainer wrote and this one lacks are dropped; keys it
    did not write take their defaults)."""
    fields = {f.name for f in dataclasses.fields(NetConfig)}
    return NetConfig(**{k: v for k, v in saved.items() if k in fields})


@dataclass
class LoadedGenerator:
    G: nn.Module  # EMA generator in eval mode; G(z [N, z_dim], res=R) -> [N, 3, R, R] in about [-1, 1]
    ckpt: Checkpoint  # what it was read from

    @property
    def net_cfg(self) -> NetConfig:
        return self.ckpt.net

    @property
    def z_dim(self) -> int:
        return self.ckpt.net.z_dim

    @property
    def res(self) -> int:
        """The highest resolution trained so far."""
        return self.ckpt.res

    @property
    def arch(self) -> str:
        return self.ckpt.net.arch


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> LoadedGenerator:
    """The EMA generator of a checkpoint (or a per-resolution snapshot)."""
    ck = Checkpoint.load(path, map_location="cpu")
    G = build_generator(ck.net)
    try:
        G.load_state_dict(ck.generator)
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{ck.path}: generator weights do not match its config: {e}") from e
    G.eval().requires_grad_(False).to(device)
    return LoadedGenerator(G, ck)
