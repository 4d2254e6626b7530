"""Write tests/service/fixtures/tiny: a hand-built model folder the service tests run on, a few KB.

    python scripts/make_service_fixture.py [OUT]

Three graphs (4, 8 and 16 px, z_dim 32) laid out as the exporter lays out a real model: float32 z in,
uint8 NHWC out, float16 weights stored once in a shared external-data file, a manifest built from the
contract's types. Each graph is linear map -> 4x4 RGB, bilinear up-sampling to R, a 3x3 convolution, tanh,
scaled to grey levels, so one seed gives the same picture at every resolution and different seeds differ.
No torch and no training: tests/service needs neither. Deterministic: the same script writes the same bytes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contract import (  # noqa: E402
    SCHEMA_VERSION,
    FileEntry,
    InputSpec,
    LatentSpec,
    Manifest,
    OutputSpec,
    Provenance,
    WeightsEntry,
    total_bytes,
)

Z_DIM = 32
RESOLUTIONS = (4, 8, 16)
OPSET = 18
WEIGHTS = "weights.bin"
DEFAULT_OUT = REPO / "tests" / "service" / "fixtures" / "tiny"


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2026)
    return {
        "to_rgb4": (rng.standard_normal((Z_DIM, 3 * 4 * 4)) / np.sqrt(Z_DIM)).astype(np.float16),
        "conv_w": (rng.standard_normal((3, 3, 3, 3)) * 0.3).astype(np.float16),
        "conv_b": (rng.standard_normal(3) * 0.1).astype(np.float16),
    }


def external(name: str, array: np.ndarray, offset: int) -> TensorProto:
    """An initializer whose bytes live in WEIGHTS at `offset` (as the exporter's shared store does)."""
    t = TensorProto()
    t.name, t.data_type = name, TensorProto.FLOAT16
    t.dims.extend(array.shape)
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", WEIGHTS), ("offset", str(offset)), ("length", str(array.nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def graph(res: int, stored: dict[str, tuple[np.ndarray, int]]) -> onnx.ModelProto:
    const = numpy_helper.from_array
    nodes = [helper.make_node("Cast", [f"{k}__fp16"], [k], to=TensorProto.FLOAT) for k in stored]
    nodes += [
        helper.make_node("MatMul", ["z", "to_rgb4"], ["flat"]),  # [N, 48]
        helper.make_node("Reshape", ["flat", "shape4"], ["rgb4"]),  # [N, 3, 4, 4]
        helper.make_node("Resize", ["rgb4", "", "scales"], ["up"], mode="linear"),  # [N, 3, R, R]
        helper.make_node("Conv", ["up", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["conv"], ["t"]),
        helper.make_node("Mul", ["t", "half_range"], ["scaled"]),
        helper.make_node("Add", ["scaled", "half_range"], ["shifted"]),
        helper.make_node("Clip", ["shifted", "zero", "top"], ["clipped"]),
        helper.make_node("Round", ["clipped"], ["rounded"]),
        helper.make_node("Cast", ["rounded"], ["u8"], to=TensorProto.UINT8),
        helper.make_node("Transpose", ["u8"], ["image"], perm=[0, 2, 3, 1]),  # NHWC
    ]
    inits = [external(f"{k}__fp16", a, off) for k, (a, off) in stored.items()]
    inits += [
        const(np.array([-1, 3, 4, 4], np.int64), "shape4"),
        const(np.array([1, 1, res / 4, res / 4], np.float32), "scales"),
        const(np.array(127.5, np.float32), "half_range"),
        const(np.array(0.0, np.float32), "zero"),
        const(np.array(255.0, np.float32), "top"),
    ]
    g = helper.make_graph(
        nodes,
        f"tiny_{res}",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", Z_DIM])],
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", res, res, 3])],
        inits,
    )
    model = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="make_service_fixture"
    )
    model.ir_version = 10
    return model


def write(out: Path) -> Manifest:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    stored: dict[str, tuple[np.ndarray, int]] = {}
    with (out / WEIGHTS).open("wb") as f:
        for name, array in weights().items():
            stored[name] = (array, f.tell())
            f.write(array.tobytes())
    files: dict[int, FileEntry] = {}
    for res in RESOLUTIONS:
        path = out / f"G_{res}.onnx"
        onnx.save_model(graph(res, stored), path)
        onnx.checker.check_model(str(path), full_check=True)
        files[res] = FileEntry.of(path)
    weights_entry = WeightsEntry.of(out / WEIGHTS, dtype="float16")
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        name="tiny",
        z_dim=Z_DIM,
        latent=LatentSpec(normalized_in_graph=False),
        input=InputSpec(name="z", shape=("N", Z_DIM)),
        output=OutputSpec(name="image"),
        resolutions=files,
        weights=weights_entry,
        opset=OPSET,
        provenance=Provenance(
            architecture="synthetic",
            dataset="none: random weights (scripts/make_service_fixture.py)",
            license="MIT",
            kimg=0,
            preset="none",
            commit="none",
            date=dt.datetime(2026, 11, 26, tzinfo=dt.timezone.utc).isoformat(),
        ),
        total_bytes=total_bytes(files, weights_entry),
    )
    (out / "manifest.json").write_text(manifest.to_json())
    return manifest


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    m = write(p.parse_args().out)
    print(f"wrote {m.name}: {', '.join(map(str, m.resolutions))} px, {m.total_bytes} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
