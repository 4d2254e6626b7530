"""Images from a model: a trainer checkpoint (torch, EMA generator) or an exported model folder (ONNX +
manifest.json), both as uint8 [N, R, R, 3] from z = default_rng(seed).standard_normal, batch by batch."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class ModelError(ValueError):
    """A model path that is neither a checkpoint nor an exported model folder, or that cannot give `res`."""


class Sampler(Protocol):
    z_dim: int
    resolutions: list[int]  # what the model can generate
    arch: str

    def __call__(self, z: np.ndarray, res: int) -> np.ndarray: ...  # [N, z_dim] f32 -> [N, res, res, 3] u8

    def describe(self) -> dict[str, Any]: ...


@dataclass
class _ModelSampler:
    """What both samplers hold; z_dim, resolutions and arch are read from the model in __post_init__."""

    path: Path
    device: str
    z_dim: int = 0
    resolutions: list[int] = field(default_factory=list)
    arch: str = ""


@dataclass
class CheckpointSampler(_ModelSampler):
    """The EMA generator of a trainer checkpoint, run in torch."""

    def __post_init__(self) -> None:
        from trainer.checkpoint import load_generator
        from trainer.export import trained_resolutions

        self.lg = load_generator(self.path, device=self.device)
        self.z_dim, self.arch = self.lg.z_dim, self.lg.arch
        self.resolutions = trained_resolutions(self.lg)
        self.alpha = self.lg.ckpt.top_alpha()  # a mid-fade checkpoint is sampled as the blend it is

    def __call__(self, z: np.ndarray, res: int) -> np.ndarray:
        import torch

        from trainer.export import to_uint8_nhwc

        with torch.inference_mode():
            zt = torch.from_numpy(z).to(self.device)
            alpha = self.alpha if res == max(self.resolutions) else 1.0
            img = self.lg.G(zt, res) if self.arch == "dcgan" else self.lg.G(zt, res, alpha)  # [N, 3, R, R]
            return to_uint8_nhwc(img.float()).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        ck = self.lg.ckpt
        return {
            "kind": "checkpoint",
            "path": str(self.path),
            "arch": self.arch,
            "kimg": None if ck.cur_nimg is None else round(ck.cur_nimg / 1000, 3),
            "alpha": self.alpha,
        }


@dataclass
class OnnxSampler(_ModelSampler):
    """An exported model folder: one ONNX graph per resolution, described by manifest.json."""

    def __post_init__(self) -> None:
        from contract import ManifestError, read_manifest  # pydantic: only where a model folder is read

        try:
            self.manifest = read_manifest(self.path)
        except ManifestError as e:
            raise ModelError(str(e)) from e
        self.z_dim = self.manifest.z_dim
        self.resolutions = sorted(self.manifest.resolutions)
        self.arch = self.manifest.provenance.architecture
        self._sessions: dict[int, Any] = {}

    def _session(self, res: int) -> Any:
        if res not in self._sessions:
            import onnxruntime as ort

            wanted = ["CUDAExecutionProvider"] if self.device.startswith("cuda") else []
            providers = [p for p in wanted if p in ort.get_available_providers()] + ["CPUExecutionProvider"]
            f = self.path / self.manifest.resolutions[res].file
            try:
                self._sessions[res] = ort.InferenceSession(str(f), providers=providers)
            except Exception as e:  # onnxruntime raises its own exception types for bad or missing files
                raise ModelError(f"onnxruntime cannot load {f}: {e}") from e
        return self._sessions[res]

    def __call__(self, z: np.ndarray, res: int) -> np.ndarray:
        sess = self._session(res)
        (img,) = sess.run([self.manifest.output.name], {self.manifest.input.name: z})
        return np.asarray(img)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "onnx",
            "path": str(self.path),
            "name": self.manifest.name,
            "arch": self.arch,
            "kimg": self.manifest.provenance.kimg,
        }


def open_model(path: str | Path, device: str = "cpu") -> Sampler:
    """A model folder with manifest.json (ONNX), or a run folder / checkpoint.pt / G_ema-RES.pt (torch)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"model {p} does not exist; give a model folder (manifest.json) or a checkpoint")
    if p.is_dir() and (p / "manifest.json").is_file():
        return OnnxSampler(p, device)
    if p.is_file() or (p / "checkpoint.pt").is_file():
        return CheckpointSampler(p, device)
    raise ModelError(
        f"{p} holds neither manifest.json (an exported model) nor checkpoint.pt (a training run)"
    )


def sample_batches(
    model: Sampler, num: int, res: int, batch: int, seed: int = 0, truncation: float | None = None
) -> Iterator[np.ndarray]:
    """`num` images in batches of `batch`, z drawn from numpy's default_rng(seed), as the service does; with
    `truncation` t, each entry beyond [-t, t] redrawn as the service's `truncation` does (contract.truncate)."""
    # imported here: training imports this module, and a GPU machine has no pydantic, which contract needs
    from contract import truncate

    rng = np.random.default_rng(seed)
    done = 0
    while done < num:
        n = min(batch, num - done)
        z = truncate(rng.standard_normal((n, model.z_dim), dtype=np.float32), rng, truncation)  # [n, z_dim]
        img = model(z, res)
        assert img.shape == (n, res, res, 3) and img.dtype == np.uint8, f"model gave {img.shape} {img.dtype}"
        yield img
        done += n
