"""onnxruntime sessions: one per model and resolution, loaded from the model folder at start-up."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from contract import Manifest
from service.config import Settings
from service.errors import InvalidInput, Unavailable
from service.inference.batching import BatcherStopped, InferenceScheduler, MicroBatcher
from service.inference.manifest import ModelLoadError, load_manifest
from service.inference.providers import execution_providers
from service.metrics import Metrics

log = logging.getLogger("service")


# ---------------------------------------------------------------------------- onnxruntime set-up


def session_options(settings: Settings) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # a generator is a chain: no inter-op parallelism
    opts.intra_op_num_threads = settings.intra_op_threads
    opts.inter_op_num_threads = 1
    # spinning keeps idle pool threads busy-waiting; off by default, as the encode threads and the
    # event loop share the same cores
    opts.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if settings.intra_op_spinning else "0"
    )
    opts.log_severity_level = 3  # errors only: the provider each session got is logged below
    return opts


def disabled_optimizers(settings: Settings) -> list[str]:
    """onnxruntime graph optimizers to leave out: NchwcTransformer with FACES_CPU_LAYOUT=nchw.

    onnxruntime's CPU provider rewrites convolutions to a blocked NCHWc layout (8 or 16 channels a block),
    10-40% faster for layers of 16 channels or more. For the 4-8 channel top layers of a small network,
    plain NCHW runs one image ~10% faster, but takes another kernel path for single rows, so those runs
    get padded to two (see probe_min_rows) and the gain turns into a loss at batch 1: hence not the
    default (bench/serve_load.py times both). The transformer touches only CPU-provider nodes."""
    return ["NchwcTransformer"] if settings.cpu_layout == "nchw" else []


PROBE_VALUES = 1_000_000  # output values a probe compares (one grey level flips in ~2e-5 of them)
PROBE_MAX_ROWS = 512


def probe_min_rows(run: Callable[[np.ndarray], np.ndarray], z_dim: int, res: int, max_batch: int) -> int:
    """The fewest rows a run must have for every run size to give the same bytes (FACES_MIN_RUN_BATCH=0).

    A provider may take another kernel path for a batch of one row (onnxruntime's plain-NCHW CPU
    convolutions do; so do its NCHWc ones on graphs exported before PixelNorm became one ReduceL2), or
    choose other algorithms for other batch sizes (cuDNN may). The difference shows as single pixels one
    grey level off, ~2 in 100,000 output values, so the probe needs about a million of them: seeded rows
    run max_batch at a time, then 1, 2 and 3 at a time. Returns 1 when all agree, 2 when only single rows
    differ, else max_batch (every run then has the same shape). Graphs too small to reach a million values
    in PROBE_MAX_ROWS rows (16x16 and below) are not probed: 2, as padding them costs next to nothing."""
    if max_batch < 2:
        return 1  # every run is one row already
    rows = max(8, math.ceil(PROBE_VALUES / (3 * res * res)))
    if rows > PROBE_MAX_ROWS:
        return 2
    z = np.random.default_rng(0).standard_normal((rows, z_dim), dtype=np.float32)

    def in_runs_of(k: int) -> np.ndarray:
        outs = []
        for i in range(0, rows, k):
            part = z[i : i + k]
            padded = np.concatenate([part, np.zeros((k - len(part), z_dim), np.float32)])
            outs.append(run(padded)[: len(part)])
        return np.concatenate(outs)

    reference = in_runs_of(max_batch)
    if not all(np.array_equal(in_runs_of(k), reference) for k in (2, 3) if k < max_batch):
        return max_batch
    return 1 if np.array_equal(in_runs_of(1), reference) else 2


# ---------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Graph:
    """One resolution's session."""

    res: int
    path: Path
    session: ort.InferenceSession
    input_name: str
    output_name: str
    z_dim: int
    min_rows: int  # runs are padded to this many rows: see Settings.min_run_batch
    cpu_layout: str  # "nchwc" or "nchw" on the CPU provider (see disabled_optimizers), else "-"

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def run(self, z: np.ndarray) -> np.ndarray:
        """[N, z_dim] float32 -> [N, res, res, 3] uint8. Blocking; called from the inference thread."""
        rows = len(z)
        assert z.ndim == 2 and z.shape[1] == self.z_dim and z.dtype == np.float32, (z.shape, z.dtype)
        if rows < self.min_rows:
            z = np.concatenate([z, np.zeros((self.min_rows - rows, self.z_dim), np.float32)])
        out = self.session.run([self.output_name], {self.input_name: z})[0]
        assert out.shape == (len(z), self.res, self.res, 3) and out.dtype == np.uint8, (out.shape, out.dtype)
        return out[:rows]


@dataclass(frozen=True)
class Model:
    name: str
    folder: Path
    manifest: Manifest
    graphs: dict[int, Graph]
    batchers: dict[int, MicroBatcher]  # each graph's queue on the inference threads

    @property
    def resolutions(self) -> list[int]:
        return sorted(self.graphs)

    @property
    def z_dim(self) -> int:
        return self.manifest.z_dim

    def check_res(self, res: int | None) -> int:
        """The requested resolution, or the largest one; 422 listing the offered ones."""
        if res is None:
            return self.resolutions[-1]
        if res not in self.graphs:
            offered = ", ".join(map(str, self.resolutions))
            raise InvalidInput(
                f"resolution {res} is not offered by model {self.name!r}; choose one of {offered}"
            )
        return res

    async def generate(self, res: int, z: np.ndarray) -> np.ndarray:
        """[N, z_dim] -> [N, res, res, 3] uint8, through the micro-batcher."""
        try:
            return await self.batchers[res].infer(z)
        except BatcherStopped as exc:  # caught by a shutdown: the client may retry on another replica
            raise Unavailable(str(exc)) from None


@dataclass
class BrokenModel:
    name: str
    folder: Path
    error: str


BatcherFactory = Callable[[str, Graph], MicroBatcher]  # (model name, graph) -> its queue


def load_model(folder: Path, settings: Settings, providers: list[Any], batcher: BatcherFactory) -> Model:
    """Read and verify one model folder, create and warm up its sessions and give each its queue;
    ModelLoadError names the file."""
    manifest = load_manifest(folder)
    opts = session_options(settings)
    graphs: dict[int, Graph] = {}
    for res, entry in sorted(manifest.resolutions.items()):
        path = folder / entry.file
        try:
            session = ort.InferenceSession(
                str(path),
                sess_options=opts,
                providers=providers,
                disabled_optimizers=disabled_optimizers(settings),
            )
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            raise ModelLoadError(
                f"{path}: onnxruntime cannot load it ({type(exc).__name__}: {exc})"
            ) from None
        inputs = {i.name: i.type for i in session.get_inputs()}
        outputs = {o.name: o.type for o in session.get_outputs()}
        if (
            inputs.get(manifest.input.name) != "tensor(float)"
            or outputs.get(manifest.output.name) != "tensor(uint8)"
        ):
            raise ModelLoadError(
                f"{path}: expected input {manifest.input.name!r} float32 and output {manifest.output.name!r} uint8, "
                f"the graph has inputs {inputs} and outputs {outputs}"
            )
        on_cpu = session.get_providers()[0] == "CPUExecutionProvider"
        layout = settings.cpu_layout if on_cpu else "-"
        try:
            graph = Graph(
                res,
                path,
                session,
                manifest.input.name,
                manifest.output.name,
                manifest.z_dim,
                settings.min_run_batch or 1,
                layout,
            )
            graph.run(np.zeros((settings.warmup_batch, manifest.z_dim), np.float32))  # warm-up
            if not settings.min_run_batch:
                rows = probe_min_rows(graph.run, manifest.z_dim, res, settings.max_batch)
                graph = dataclasses.replace(graph, min_rows=rows)
        except Exception as exc:
            raise ModelLoadError(f"{path}: warm-up run failed ({type(exc).__name__}: {exc})") from None
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if settings.require_provider and graph.provider != wanted:
            raise ModelLoadError(
                f"{path}: the session got {graph.provider}, not {wanted}, and FACES_REQUIRE_PROVIDER is on "
                "(for CUDA: is the driver visible in this container, and does it support CUDA 13?)"
            )
        level = logging.INFO if graph.provider == wanted else logging.WARNING
        log.log(
            level,
            "model %s res %d: session on %s (asked for %s)%s, runs padded to %d row(s)",
            folder.name,
            res,
            graph.provider,
            wanted,
            f", {layout} layout" if layout != "-" else "",
            graph.min_rows,
        )
        graphs[res] = graph
    batchers = {res: batcher(folder.name, g) for res, g in graphs.items()}
    return Model(folder.name, folder, manifest, graphs, batchers)


def model_folders(model_dir: Path) -> list[Path]:
    """Model folders under model_dir (or model_dir itself when it holds a manifest.json)."""
    try:
        if not model_dir.is_dir():
            raise ModelLoadError(f"{model_dir}: the model folder does not exist (FACES_MODEL_DIR)")
        if (model_dir / "manifest.json").is_file():
            return [model_dir]
        folders = sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    except PermissionError as exc:
        raise ModelLoadError(
            f"{model_dir}: cannot read the model folder ({exc}); the service runs as uid {os.getuid()}"
        ) from None
    if not folders:
        raise ModelLoadError(
            f"{model_dir}: no model folders (each needs a manifest.json; see docs/manifest.md)"
        )
    return folders


class ModelRepository:
    """Every model found at start-up: those that serve and those reported unavailable."""

    def __init__(self, models: dict[str, Model], broken: dict[str, BrokenModel], default: str) -> None:
        self.models = models
        self.broken = broken
        self.default = default

    @classmethod
    def load(cls, settings: Settings, scheduler: InferenceScheduler, metrics: Metrics) -> ModelRepository:
        """Load every model folder, each graph with its queue on `scheduler`'s inference threads;
        raises ModelLoadError when none can serve."""
        providers = execution_providers(settings)

        def batcher(name: str, graph: Graph) -> MicroBatcher:
            labels = (name, str(graph.res))
            metrics.provider.labels(*labels, graph.provider).set(1)
            return scheduler.batcher(
                graph.run,
                max_batch=settings.max_batch,
                max_wait_s=settings.max_wait_ms / 1000,
                batching=settings.batching,
                observe=_observer(metrics, labels),
                queue_depth=metrics.queue_depth.labels(*labels).inc,
                rejected=metrics.rejections(*labels),
                max_queue_rows=settings.max_queue_rows,
                max_queue_wait_s=settings.max_queue_wait_ms / 1000,
                name=f"model {name!r} at {graph.res}x{graph.res}",
            )

        models: dict[str, Model] = {}
        broken: dict[str, BrokenModel] = {}
        for folder in model_folders(settings.model_dir):
            try:
                models[folder.name] = load_model(folder, settings, providers, batcher)
                metrics.model_up.labels(folder.name).set(1)
            except ModelLoadError as exc:
                log.error("model %s is unavailable: %s", folder.name, exc)
                broken[folder.name] = BrokenModel(folder.name, folder, str(exc))
                metrics.model_up.labels(folder.name).set(0)
        if not models:
            raise ModelLoadError("no model can be served: " + "; ".join(b.error for b in broken.values()))
        default = settings.default_model
        if default not in models:
            first = next(iter(models))
            log.warning("default model %r is not available; using %r", default, first)
            default = first
        return cls(models, broken, default)

    def get(self, name: str | None) -> Model:
        """The named model (default when None); 422 if unknown, 503 if it failed to load."""
        name = name or self.default
        if name in self.models:
            return self.models[name]
        if name in self.broken:
            raise Unavailable(f"model {name!r} is unavailable: {self.broken[name].error}")
        raise InvalidInput(f"unknown model {name!r}; available: {', '.join(sorted(self.models))}")

    def resolve(self, name: str | None, res: int | None) -> tuple[Model, int]:
        """The model and resolution a request asks for, defaults filled in; 422 / 503 as `get`."""
        model = self.get(name)
        return model, model.check_res(res)


def _observer(metrics: Metrics, labels: tuple[str, str]) -> Any:
    batch_size = metrics.batch_size.labels(*labels)
    images = metrics.images.labels(*labels)
    seconds = metrics.generation_seconds.labels(*labels)

    def observe(rows: int, elapsed: float) -> None:
        batch_size.observe(rows)
        images.inc(rows)
        seconds.observe(elapsed)

    return observe
