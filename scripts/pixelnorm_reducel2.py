"""Rewrite the PixelNorm of already exported graphs into the form `trainer.export` now emits (one ReduceL2).

    python scripts/pixelnorm_reducel2.py models/NAME [models/OTHER ...]

Graphs exported before that change compute PixelNorm as Pow -> ReduceMean -> Sqrt -> Reciprocal -> Mul. This
rewrites each such chain into ReduceL2 -> Mul(C^-1/2) -> Add(eps) -> Div, the graph ChannelL2Norm exports,
leaving the weights (weights.bin) untouched, checks that every resolution's images stay within one grey
level of the old graph's (512 seeded latents), and updates the manifest's sizes and checksums. Why: the
new form is a few percent faster on onnxruntime's CPU provider and, there, computes a one-row run exactly
as a batched one, so the service need not pad single requests to two rows (docs/service.md, Determinism).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract import (  # noqa: E402
    MANIFEST_FILE,
    FileEntry,
    Manifest,
    ManifestError,
    read_manifest,
    total_bytes,
)

EPS = 1e-8


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if not i.external_data}
    for node in model.graph.node:
        if node.op_type == "Constant":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def rewrite(model: onnx.ModelProto) -> int:
    """Rewrite every PixelNorm chain in place; the number rewritten."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*inferred.graph.value_info, *inferred.graph.input]
    }
    consts = constants(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    nodes = list(model.graph.node)
    dead: set[int] = set()
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    count = 0
    for idx, mul in enumerate(nodes):
        if mul.op_type != "Mul":
            continue
        for x, r in (mul.input, reversed(mul.input)):
            chain = []
            node = producer.get(r)
            for op in ("Reciprocal", "Sqrt"):
                if node is None or node.op_type != op:
                    break
                chain.append(node)
                node = producer.get(node.input[0])
            else:
                if node is not None and node.op_type == "Add":  # an eps, where the exporter kept one
                    chain.append(node)
                    node = producer.get(node.input[0])
                if node is None or node.op_type != "ReduceMean":
                    continue
                mean = node
                power = producer.get(mean.input[0])
                if (
                    power is None
                    or power.op_type != "Pow"
                    or power.input[0] != x
                    or float(consts.get(power.input[1], np.nan)) != 2.0
                    or list(consts.get(mean.input[1], [])) != [1]
                ):
                    continue
                channels = shapes[x][1]
                tag = f"pixelnorm_l2_{count}"
                scale = numpy_helper.from_array(np.array(channels**-0.5, np.float32), f"{tag}_scale")
                eps = numpy_helper.from_array(np.array(EPS, np.float32), f"{tag}_eps")
                model.graph.initializer.extend([scale, eps])
                new_nodes[idx] = [
                    helper.make_node("ReduceL2", [x, mean.input[1]], [f"{tag}_norm"], keepdims=1),
                    helper.make_node("Mul", [f"{tag}_norm", scale.name], [f"{tag}_rms"]),
                    helper.make_node("Add", [f"{tag}_rms", eps.name], [f"{tag}_den"]),
                    helper.make_node("Div", [x, f"{tag}_den"], [mul.output[0]]),
                ]
                dead.update(nodes.index(n) for n in [*chain, mean, power])
                dead.add(idx)
                count += 1
                break
    rebuilt: list[onnx.NodeProto] = []
    for idx, node in enumerate(nodes):
        if idx in new_nodes:
            rebuilt.extend(new_nodes[idx])
        elif idx not in dead:
            rebuilt.append(node)
    del model.graph.node[:]
    model.graph.node.extend(rebuilt)
    used = {name for node in rebuilt for name in node.input}
    unused = [i for i in model.graph.initializer if i.name not in used and not i.external_data]
    for init in unused:  # the Pow exponent, now read by nobody
        model.graph.initializer.remove(init)
    return count


def images(path: Path, z: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"z": z[i : i + 64]})[0] for i in range(0, len(z), 64)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", type=Path, nargs="+", help="model folders (each with manifest.json)")
    args = p.parse_args(argv)
    for folder in args.folders:
        try:
            manifest = read_manifest(folder)
        except ManifestError as exc:
            sys.exit(f"error: {exc}")
        z = np.random.default_rng(0).standard_normal((512, manifest.z_dim), dtype=np.float32)
        files = dict(manifest.resolutions)
        for res, entry in files.items():
            path = folder / entry.file
            model = onnx.load(str(path), load_external_data=False)
            n = rewrite(model)
            if n == 0:
                print(f"{path}: no PixelNorm chain to rewrite (already ReduceL2?)")
                continue
            tmp = path.with_suffix(".new.onnx")
            onnx.save_model(model, tmp)
            onnx.checker.check_model(str(tmp))
            before, after = images(path, z), images(tmp, z)
            diff = np.abs(before.astype(int) - after.astype(int))
            if diff.max() > 1:
                tmp.unlink()
                sys.exit(f"error: {path}: the rewrite changed pixels by {diff.max()} grey levels")
            tmp.replace(path)
            files[res] = FileEntry.of(path)
            print(
                f"{path}: {n} PixelNorm chains rewritten; {int((diff > 0).sum())} of {diff.size} values moved "
                f"by one grey level over 512 latents"
            )
        total = total_bytes(files, manifest.weights)
        updated = Manifest.model_validate({**dict(manifest), "resolutions": files, "total_bytes": total})
        (folder / MANIFEST_FILE).write_text(updated.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
