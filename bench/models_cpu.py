"""Milliseconds per image of the bundled models' graphs on onnxruntime's CPU provider, per resolution and
batch, all in one process, with each model's cost as a ratio to the first one's. Tells operators of CPU
hosts what a model costs before they serve it.

    python bench/models_cpu.py [--models models/celeba,models/other] [--res 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contract import read_manifest


def ms_per_image(path: Path, z_dim: int, batch: int, threads: int, repeats: int) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    z = np.random.default_rng(0).standard_normal((batch, z_dim), dtype=np.float32)
    sess.run(None, {name: z})  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {name: z})
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000 / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models/celeba")
    ap.add_argument("--res", default="64", help="comma list of resolutions every model has")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    models = [Path(m) for m in a.models.split(",")]
    print(f"onnxruntime {ort.__version__}, CPU provider, {a.threads} intra-op threads; median of {a.repeats}")
    print("| model | G params (fp16 weights) | res | batch | ms / image | x first model |")
    print("| --- | --- | --- | --- | --- | --- |")
    manifests = {m: read_manifest(m) for m in models}
    for res in (int(r) for r in a.res.split(",")):
        for batch in (int(b) for b in a.batches.split(",")):
            first = None
            for m, man in manifests.items():
                params = man.weights.bytes / 2 / 1e6
                ms = ms_per_image(m / man.resolutions[res].file, man.z_dim, batch, a.threads, a.repeats)
                first = first or ms
                print(
                    f"| {m.name} | {params:.2f} M | {res} | {batch} | {ms:.2f} | {ms / first:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
