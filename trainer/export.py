"""Export per-resolution generators to ONNX (uint8 NHWC out, fp16 weights stored once) plus manifest.json."""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from trainer.checkpoint import (
    MODEL_CHECKPOINT,
    CheckpointError,
    LoadedGenerator,
    load_generator,
    not_fp16_finite,
)
from trainer.networks import EqualizedConv2d, EqualizedLinear, GBlock, Generator, PixelNorm, res_key

if TYPE_CHECKING:
    from contract.manifest import Manifest

log = logging.getLogger(__name__)
ModuleT = TypeVar("ModuleT", bound=nn.Module)

OPSET = 18
INPUT, OUTPUT = "z", "image"
WEIGHTS_FILE = "weights.bin"
# images a torch pass of the export runs at once on the CPU: one. The largest activation of one 256 px image
# (8 MiB) stays under glibc's mmap threshold (32 MiB at most), so freed activations are reused from the
# heap; at 128 images each one was a fresh mmap whose pages the kernel faulted in and zeroed again, as much
# system time as compute (bench/export_passes.py, 256 px model, two cores: 28.3 s -> 15.2 s for 128 latents)
CPU_CHUNK = 1


# ---------------------------------------------------------------------------- graphs


def to_uint8_nhwc(img: Tensor) -> Tensor:
    """[N, 3, R, R] in about [-1, 1] -> uint8 [N, R, R, 3]: scale, round (half to even), clamp, transpose."""
    return torch.round((img + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


class ExportedGenerator(nn.Module):
    """The graph one resolution's ONNX file holds: z [N, z_dim] -> uint8 [N, res, res, 3]."""

    def __init__(
        self,
        G: nn.Module,
        res: int,
        alpha: float = 1.0,
        head: nn.Module | None = None,
        compute_dtype: torch.dtype = torch.float32,
        from_top: int | None = None,
    ) -> None:
        super().__init__()
        self.G, self.res, self.alpha, self.head = G, res, alpha, head
        self.compute_dtype = (
            compute_dtype  # float16: G (and head) must hold fp16 weights; z and image stay as they are
        )
        self.from_top = from_top  # run G at this resolution (with `alpha`) and box-downscale to `res`

    def forward(self, z: Tensor) -> Tensor:
        z = z.to(self.compute_dtype)
        if self.from_top is not None:
            # clamped to the displayable range first, as the top graph's uint8 image is, then averaged
            top = self.G(z, self.from_top, self.alpha).clamp(-1.0, 1.0)
            img = F.avg_pool2d(top, self.from_top // self.res)
        elif self.head is not None:
            assert isinstance(self.G, Generator)
            x, _ = self.G.features(z, self.res)
            img = self.head(x)
        else:
            img = self.G(z, self.res, self.alpha)
        return to_uint8_nhwc(img.float())


@contextmanager
def tapped(G: Generator, resolutions: Iterable[int]) -> Iterator[dict[int, Tensor]]:
    """The outputs of G's blocks at `resolutions`, caught by forward hooks whenever G runs inside the `with`
    block (the latest run's); the hooks are removed on leaving it."""
    taps: dict[int, Tensor] = {}

    def keep(r: int, _module: nn.Module, _inputs: Any, out: Tensor) -> None:
        taps[r] = out

    handles = [G.blocks[res_key(r)].register_forward_hook(partial(keep, r)) for r in resolutions]
    try:
        yield taps
    finally:
        for h in handles:
            h.remove()


class TopPass:
    """G at its top resolution on seeded latents, a chunk at a time, with the features of lower resolutions
    tapped on the way: one pass gives both the targets (the top image downscaled) and the inputs (the
    features) of every lower resolution's head. The top network is most of an export's time; cutting G at
    each lower resolution and running it again cost one and a half top passes more
    (docs/benchmarks.md, "After a round: the export")."""

    def __init__(self, G: Generator, top: int, alpha: float, chunk: int = CPU_CHUNK) -> None:
        self.G, self.top, self.alpha, self.chunk = G, top, alpha, chunk

    @torch.no_grad()
    def run(self, num: int, seed: int, taps: list[int]) -> Iterator[tuple[Tensor, dict[int, Tensor]]]:
        """Per chunk of the seeded z [num, z_dim]: (top images [n, 3, top, top], {r: features [n, C, r, r]})."""
        z = torch.randn(num, self.G.z_dim, generator=torch.Generator().manual_seed(seed))
        for zc in z.split(self.chunk):
            with tapped(self.G, taps) as feats:
                imgs = self.G(zc, self.top, self.alpha)
            yield imgs, feats


@torch.no_grad()
def fit_heads(tops: TopPass, resolutions: list[int], num: int = 1024, seed: int = 0) -> dict[int, nn.Module]:
    """Refit a 1x1 toRGB head per lower resolution by least squares, so that G cut at `r` reproduces the
    final `top` output box-downscaled to `r`: one z then gives the same face at every resolution."""
    G, top = tops.G, tops.top
    lower = [r for r in resolutions if r < top]
    if not lower:
        return {}
    # the normal equations summed chunk by chunk: every pixel of every image is one row (4.2 M rows at
    # 64 px under a 128 px model), which as one matrix took gigabytes; the sums take (C + 1)^2 numbers
    xtx = {r: torch.zeros(G.cfg.nf(r) + 1, G.cfg.nf(r) + 1, dtype=torch.float64) for r in lower}
    xty = {r: torch.zeros(G.cfg.nf(r) + 1, 3, dtype=torch.float64) for r in lower}
    rows = dict.fromkeys(lower, 0)
    for full, feats in tops.run(num, seed, lower):
        for r in lower:
            feat = feats[r]  # [n, C, r, r]
            target = F.avg_pool2d(full, top // r)  # [n, 3, r, r]
            X = feat.permute(0, 2, 3, 1).reshape(-1, feat.shape[1]).double()
            X1 = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)
            xtx[r] += X1.T @ X1
            xty[r] += X1.T @ target.permute(0, 2, 3, 1).reshape(-1, 3).double()
            rows[r] += len(X1)
    heads: dict[int, nn.Module] = {}
    for r in lower:
        ridge = 1e-4 * torch.eye(len(xtx[r]), dtype=torch.float64) * rows[r]
        W = torch.linalg.solve(xtx[r] + ridge, xty[r])  # [C + 1, 3]
        head = nn.Conv2d(G.cfg.nf(r), 3, 1)
        head.weight.copy_(W[:-1].T.reshape(3, -1, 1, 1).float())
        head.bias.copy_(W[-1].float())  # type: ignore[union-attr]
        heads[r] = head
    return heads


@torch.no_grad()
def consistency(
    tops: TopPass, heads: dict[str, dict[int, nn.Module]], num: int = 256, seed: int = 1
) -> dict[str, dict[str, float]]:
    """Per lower resolution `r` (the keys of each entry of `heads`): the mean absolute difference (grey
    levels) between the `r` image of z through each named set of heads and the `top` image of z downscaled
    to `r`, and "different_z", the same distance between the downscaled top images of two different z
    (what 'a different face' looks like)."""
    lower = sorted({r for named in heads.values() for r in named})
    if not lower:
        return {}
    sums = {r: dict.fromkeys(heads, 0.0) for r in lower}
    bigs: dict[int, list[Tensor]] = {r: [] for r in lower}
    for full, feats in tops.run(num, seed, lower):
        for r in lower:
            big = to_uint8_nhwc(F.avg_pool2d(full, tops.top // r)).float()
            bigs[r].append(big)
            for name, named in heads.items():
                small = to_uint8_nhwc(named[r](feats[r]).float()).float()
                sums[r][name] += float((small - big).abs().sum(dtype=torch.float64))
    report = {}
    for r in lower:
        big = torch.cat(bigs[r])
        a, b = big[: num // 2], big[num // 2 :]
        report[str(r)] = {
            **{name: total / big.numel() for name, total in sums[r].items()},
            "different_z": float((a - b).abs().mean()),
        }
    return report


class ChannelL2Norm(nn.Module):
    """PixelNorm as the ONNX graphs compute it: x / (||x||_2 over channels / sqrt(C) + eps).

    The same function up to where eps sits (1e-8 against per-pixel norms near 1), written so that the
    exporter emits one ReduceL2 instead of Pow, ReduceMean, Add, Sqrt and Reciprocal: five passes over the
    largest tensors become one, which makes the 256x256 `cpu`-preset graph ~6% faster on onnxruntime's CPU
    provider (bench/serve_load.py checks the images stay within one grey level of the torch module)."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float32:
            # fp16 graphs: the sum of squares over 256 channels can pass fp16's 65504, so the norm is taken
            # in fp32 and only its reciprocal comes back to fp16
            norm = torch.linalg.vector_norm(x.float(), 2, dim=1, keepdim=True)
            return x * (norm * x.shape[1] ** -0.5 + self.eps).reciprocal().to(x.dtype)
        norm = torch.linalg.vector_norm(x, 2, dim=1, keepdim=True)  # [N, 1, ...]
        return x / (norm * x.shape[1] ** -0.5 + self.eps)


def with_up(module: ModuleT, fused_up: bool) -> ModuleT:
    """A copy with G's up-sampling convs in their plain form (up-sample then conv), or with `fused_up` as one
    stride-2 transposed conv each (EqualizedConv2d.up2: the same function, 2.25x fewer FLOPs in those convs,
    no up-sampled copy); the module itself is untouched."""
    module = copy.deepcopy(module)
    for block in module.modules():
        if isinstance(block, GBlock):
            block.fused = fused_up
    return module


def onnx_friendly(module: nn.Module, fused_up: bool = False) -> nn.Module:
    """A copy with every PixelNorm replaced by its ChannelL2Norm form and G's up-sampling convs as
    `with_up` writes them (`fused_up` is what `export_model` writes by default); the module itself is
    untouched."""
    module = with_up(module, fused_up)
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, PixelNorm):
                setattr(parent, name, ChannelL2Norm(child.eps))
    return module


def export_onnx(module: nn.Module, z_dim: int, fused_up: bool = False) -> onnx.ModelProto:
    """torch -> ONNX with a dynamic batch axis and constant folding (the equalized-LR scales fold away)."""
    module = onnx_friendly(module, fused_up=fused_up)
    z = torch.randn(2, z_dim)
    for name in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module,
            (z,),
            None,
            input_names=[INPUT],
            output_names=[OUTPUT],
            opset_version=OPSET,
            dynamic_shapes={"z": {0: torch.export.Dim("N", min=1, max=4096)}},
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    assert prog is not None
    model = prog.model_proto
    for node in model.graph.node:  # the exporter's stack traces: large and of no use at run time
        del node.metadata_props[:]
        node.doc_string = ""
    del model.metadata_props[:]
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    return model


class WeightStore:
    """fp16 weights, each distinct tensor stored once in one file that every graph references."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh = open(path, "wb")  # noqa: SIM115  (closed by close(); spans many graphs)
        self.index: dict[str, tuple[int, int]] = {}

    def add(self, arr: np.ndarray) -> tuple[int, int]:
        data = arr.astype(np.float16).tobytes()
        key = hashlib.sha256(data + str(arr.shape).encode()).hexdigest()
        if key not in self.index:
            offset = self.fh.tell()
            pad = (-offset) % 64
            self.fh.write(b"\0" * pad)
            self.index[key] = (offset + pad, len(data))
            self.fh.write(data)
        return self.index[key]

    def close(self) -> None:
        self.fh.close()


def external_fp16(name: str, arr: np.ndarray, store: WeightStore) -> TensorProto:
    """An fp16 initializer `name` whose bytes live in the shared store."""
    offset, length = store.add(arr)
    t = TensorProto(name=name, data_type=TensorProto.FLOAT16, dims=list(arr.shape))
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", store.path.name), ("offset", str(offset)), ("length", str(length))):
        t.external_data.add(key=k, value=v)
    return t


def store_weights_fp16(model: onnx.ModelProto, store: WeightStore, min_elements: int = 64) -> onnx.ModelProto:
    """Move float32 initializers into the shared fp16 store; a Cast back to float32 (folded by onnxruntime
    at load) keeps the graph's arithmetic in float32. The float16 initializers of a graph that computes in
    fp16 move into the store as they are (the same bytes as the fp32 graphs' weights: stored once)."""
    graph = model.graph
    casts, keep = [], []
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.size < min_elements or init.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            keep.append(init)
        elif init.data_type == TensorProto.FLOAT16:
            keep.append(external_fp16(init.name, arr, store))
        else:
            t = external_fp16(init.name + "__fp16", arr, store)
            keep.append(t)
            casts.append(
                helper.make_node(
                    "Cast", [t.name], [init.name], to=TensorProto.FLOAT, name=f"cast_{init.name}"
                )
            )
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return model


@torch.no_grad()
def fold_equalized_scales(module: nn.Module) -> nn.Module:
    """A copy whose equalized-LR layers hold w * scale with scale 1: the graph then does no scaling at run
    time, and rounding these weights to fp16 rounds exactly what the ONNX files store."""
    module = copy.deepcopy(module)
    for m in module.modules():
        if isinstance(m, EqualizedConv2d | EqualizedLinear):
            m.weight.mul_(m.scale)
            m.scale = 1.0
    return module


@torch.no_grad()
def round_weights_fp16(module: nn.Module) -> None:
    """Make the torch reference hold exactly the weights the ONNX files store."""
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point():
            t.copy_(t.half().float())


@torch.no_grad()
def fp16_storage_error(
    G32: nn.Module, G16: nn.Module, res: int, z_dim: int, num: int = 64
) -> tuple[float, int]:
    """Largest grey-level change that storing the weights as fp16 causes at `res` (honest size trade-off)."""
    z = torch.randn(num, z_dim, generator=torch.Generator().manual_seed(2))
    a = torch.cat([to_uint8_nhwc(G32(zc, res)) for zc in z.split(CPU_CHUNK)]).int()
    b = torch.cat([to_uint8_nhwc(G16(zc, res)) for zc in z.split(CPU_CHUNK)]).int()
    return float((a - b).abs().float().mean()), int((a - b).abs().max())


# ---------------------------------------------------------------------------- model folder


def dataset_label(data: str | None, index: dict[str, Any] | None = None) -> str:
    """The data set's folder and its parent ("celeba/img_align_celeba"): the training machine's absolute
    path means nothing to the people who read a manifest. A prepare-data archive names its sources."""
    if index:
        srcs = " + ".join(str(s.get("path", "?")) for s in index.get("sources", []))
        return f"{srcs}, {index.get('crop', '?')} crop, {index.get('resolution', '?')}px {index.get('format', '')}".strip()
    if not data:
        return "unknown"
    parts = Path(str(data)).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else str(data)


def dataset_licence(data: str, index: dict[str, Any] | None = None) -> str:
    if index and index.get("licence"):
        return str(index["licence"])
    if "celeba" in data.lower():
        return "CelebA (Liu et al., ICCV 2015): non-commercial research purposes only"
    if "cifar" in data.lower():
        return "CIFAR-10 (Krizhevsky 2009): see the data set's terms"
    return "unknown: see the data set's own licence"


def trained_resolutions(lg: LoadedGenerator) -> list[int]:
    if lg.arch == "dcgan":
        return [lg.net_cfg.max_res]
    return [r for r in lg.net_cfg.resolutions if r <= lg.res]


@dataclass
class ExportResult:
    out: Path
    manifest: Manifest
    modules: dict[int, nn.Module]  # the torch reference of each exported graph (fp16-rounded weights)


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    *,
    resolutions: list[int] | None = None,
    name: str | None = None,
    force: bool = False,
    metrics: list[dict[str, Any]] | None = None,
    consistency_method: str = "refit",
    with_checkpoint: bool = True,
    up: str = "fused",
    downscale: list[int] | None = None,
) -> ExportResult:
    """ONNX graphs, shared fp16 weights and manifest.json; with `with_checkpoint` (and a full checkpoint as
    the source) also checkpoint.safetensors, so that the model can be trained further. `up`: "fused" writes
    each G block's up-sampling and first conv as one stride-2 ConvTranspose (the same function; ~1.2x faster
    for the `gpu` preset's network on onnxruntime's CPU and CUDA providers, docs/benchmarks.md), "plain" as
    Resize then Conv (for runtimes whose ConvTranspose is slow). `downscale`: lower resolutions whose graph
    runs the whole network and box-downscales its top output (the same face as the top graph at the top
    graph's cost, where a cut network's refit head gives worse faces)."""
    if up not in ("fused", "plain"):
        raise ValueError(f"up must be 'fused' or 'plain', got {up!r}")
    # the manifest's pydantic models load here, not at import: `train` (which imports this module for its
    # CLI) must run on GPU machines that carry only torch and friends
    from contract.manifest import (
        MANIFEST_FILE,
        SCHEMA_VERSION,
        Architecture,
        FileEntry,
        InputSpec,
        LatentSpec,
        Manifest,
        OutputSpec,
        Provenance,
        WeightsEntry,
        total_bytes,
    )

    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    lg = load_generator(checkpoint)
    bad = not_fp16_finite(dict(lg.G.state_dict()))
    if bad:
        raise CheckpointError(
            f"{checkpoint}: the generator has weights that are inf or nan in float16 ({', '.join(bad[:3])}): "
            "nothing was exported; export an earlier, finite checkpoint"
        )
    trained = trained_resolutions(lg)
    wanted = sorted(resolutions) if resolutions else trained
    never = [r for r in wanted if r not in trained]
    if never:
        raise ValueError(f"resolution(s) {never} were never trained in {checkpoint}; trained: {trained}")
    top, alpha = max(trained), lg.ckpt.top_alpha()  # a mid-fade checkpoint exports the blend it was
    downscale = sorted(set(downscale or []))
    if downscale and lg.arch != "progan":
        raise ValueError(f"--downscale needs a multi-resolution (progan) model; {checkpoint} is {lg.arch}")
    bad_down = [r for r in downscale if r not in wanted or r >= top]
    if bad_down:
        lower = [r for r in wanted if r < top]
        raise ValueError(
            f"--downscale {','.join(map(str, bad_down))}: only resolutions exported below the top one ({top}) "
            f"can be served as its output downscaled; these are {lower or 'none'}"
        )
    G32 = fold_equalized_scales(lg.G.float())
    G = copy.deepcopy(G32)
    round_weights_fp16(G)
    # the torch passes below run G's up-sampling as the graphs do (the same function either way; fused is
    # 1.3x faster on the CPU)
    G_up = with_up(G, up == "fused")

    heads: dict[int, nn.Module] = {}
    report: dict[str, Any] = {"method": "single resolution" if lg.arch == "dcgan" else consistency_method}
    if lg.arch == "progan" and len(trained) > 1:
        assert isinstance(G_up, Generator)
        tops = TopPass(G_up, top, alpha)
        heads = fit_heads(tops, wanted)
        for h in heads.values():
            round_weights_fp16(h)
        cut = {r: tops.G.to_rgb[res_key(r)] for r in heads}
        measured = consistency(tops, {"refit_torgb": heads, "cut_original_torgb": cut})
        per_res = {r: {k: round(v, 3) for k, v in dist.items()} for r, dist in measured.items()}
        report.update(
            top=top,
            mean_abs_diff_grey_levels=per_res,
            note="distance of each resolution's image of z to the top image of z box-downscaled; "
            "'downscale the top output' would give 0 at the full top-resolution cost",
        )
        if downscale:
            # these graphs serve the top output box-downscaled (distance 0)
            report["downscaled_top"] = downscale
        if consistency_method == "cut":
            heads = {}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    tmp.chmod(0o755)  # mkdtemp makes it 0700: a service running as another user could not read it
    try:
        store = WeightStore(tmp / WEIGHTS_FILE)
        files: dict[int, FileEntry] = {}
        modules: dict[int, nn.Module] = {}
        for r in wanted:
            head = heads.get(r)
            if isinstance(G, Generator) and head is None and r < top:
                head = G.to_rgb[res_key(r)]
            if r in downscale:
                module = ExportedGenerator(G, r, alpha, from_top=top).eval()
            else:
                module = ExportedGenerator(G, r, alpha if r == top else 1.0, head if r < top else None).eval()
            model = store_weights_fp16(export_onnx(module, lg.z_dim, fused_up=up == "fused"), store)
            fname = f"G_{r}.onnx"
            onnx.save_model(model, tmp / fname)
            modules[r] = module
        store.close()
        for r in wanted:
            fname = f"G_{r}.onnx"
            onnx.checker.check_model(str(tmp / fname), full_check=True)
            files[r] = FileEntry.of(tmp / fname)
        ck = lg.ckpt
        mean_err, max_err = fp16_storage_error(with_up(G32, up == "fused"), G_up, top, lg.z_dim)
        weights = WeightsEntry.of(
            tmp / WEIGHTS_FILE,
            dtype="float16",
            fp16_vs_fp32_grey_levels={"mean": round(mean_err, 4), "max": max_err, "res": top},
        )
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            name=name or out.name,
            z_dim=lg.z_dim,
            latent=LatentSpec(normalized_in_graph=lg.arch == "progan"),
            input=InputSpec(name=INPUT, shape=("N", lg.z_dim)),
            output=OutputSpec(name=OUTPUT),
            resolutions=files,
            weights=weights,
            opset=OPSET,
            consistency=report,
            provenance=Provenance(
                architecture=cast(Architecture, lg.arch),
                dataset=f"{dataset_label(ck.data, ck.data_index)} "
                f"({'?' if ck.num_images is None else ck.num_images} images)",
                license=dataset_licence(ck.data, ck.data_index),
                kimg=round(ck.kimg, 3),
                preset=ck.train_cfg.get("preset", "unknown"),
                commit=ck.commit,
                date=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
                checkpoint=str(Path(checkpoint).name),
                net_config=asdict(lg.net_cfg),
                trainer_config=ck.train_cfg,
            ),
            metrics={str(m["resolution"]): m for m in (metrics or [])},
            total_bytes=total_bytes(files, weights),
        )
        if ck.trainable and with_checkpoint:
            ck.save_model(tmp / MODEL_CHECKPOINT)  # for `train --resume models/NAME`
        (tmp / MANIFEST_FILE).write_text(manifest.to_json())
        if out.exists():  # --force: swap in, then drop the old one
            for f in out.iterdir():  # a model card, notes, evaluate's reports: not ours to lose
                keep = f.suffix != ".onnx" and f.name != MODEL_CHECKPOINT  # never a stale checkpoint
                if f.is_file() and keep and not (tmp / f.name).exists():
                    shutil.copy2(f, tmp / f.name)
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, manifest, modules)


# ---------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder, checkpoint.pt or a G_ema-RES.pt snapshot")
    p.add_argument("--out", required=True, help="model folder to write, e.g. models/celeba")
    p.add_argument("--resolutions", help="comma list, e.g. 64,128,256 (default: every trained resolution)")
    p.add_argument("--name", help="model name (default: the folder's name)")
    p.add_argument("--force", action="store_true", help="replace an existing model folder")
    p.add_argument(
        "--no-checkpoint",
        action="store_true",
        help=f"leave out {MODEL_CHECKPOINT} (G, D, G_ema in fp16: what `train --resume models/NAME` needs)",
    )
    p.add_argument("--metrics", nargs="*", default=[], help="metrics_RES.json files from `evaluate` to embed")
    p.add_argument(
        "--consistency",
        choices=["refit", "cut"],
        default="refit",
        help="lower resolutions: refit toRGB to the downscaled final output (default) or the trained heads",
    )
    p.add_argument(
        "--downscale",
        help="comma list of lower resolutions (e.g. 64,128) whose graph runs the whole network and "
        "box-downscales the top output: the top graph's faces at the top graph's cost, for when the refit "
        "lower heads lag behind (compare with `evaluate` first)",
    )
    p.add_argument(
        "--up",
        choices=["fused", "plain"],
        default="fused",
        help="G's up-sampling: one stride-2 ConvTranspose with the conv after it (default; ~1.2x faster on "
        "onnxruntime's CPU and CUDA providers for the gpu preset) or Resize then Conv",
    )


def read_metrics_files(files: list[str]) -> list[dict[str, Any]]:
    metrics = []
    for f in files:
        try:
            m = json.loads(Path(f).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read metrics file {f}: {e}") from e
        if not isinstance(m, dict) or "resolution" not in m:
            raise ValueError(f"{f} has no 'resolution'; is it a metrics_RES.json written by `evaluate`?")
        if m.get("truncation") is not None:
            raise ValueError(
                f"{f} measured z truncated to {m['truncation']:g}: a model's figures are of its plain samples "
                "(evaluate without --truncation)"
            )
        metrics.append(m)
    return metrics


def add_metrics(model_dir: str | Path, metrics: list[dict[str, Any]]) -> Manifest:
    """Embed `evaluate`'s figures into an exported model's manifest.json (replacing those of the same
    resolutions), without exporting again: evaluation takes an hour on a CPU, after the export."""
    from contract.manifest import MANIFEST_FILE, Manifest, read_manifest

    folder = Path(model_dir)
    manifest = read_manifest(folder)
    unknown = [m["resolution"] for m in metrics if int(m["resolution"]) not in manifest.resolutions]
    if unknown:
        raise ValueError(
            f"{folder} serves {sorted(manifest.resolutions)}, not {unknown}: these metrics are of another model"
        )
    merged = {**manifest.metrics, **{str(m["resolution"]): m for m in metrics}}
    updated = Manifest.model_validate(
        {**manifest.model_dump(), "metrics": dict(sorted(merged.items(), key=lambda kv: int(kv[0])))}
    )
    tmp = folder / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(updated.to_json())
    tmp.replace(folder / MANIFEST_FILE)
    return updated


def add_metrics_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="exported model folder (manifest.json)")
    p.add_argument("metrics", nargs="+", help="metrics_RES.json files from `evaluate`")


def run_add_metrics(a: argparse.Namespace) -> int:
    from contract.manifest import ManifestError

    try:
        m = add_metrics(a.model, read_metrics_files(a.metrics))
    except ManifestError as e:
        raise ValueError(str(e)) from e
    print(f"{a.model}: metrics at {', '.join(m.metrics)} in manifest.json")
    return 0


def comma_ints(text: str | None, flag: str) -> list[int] | None:
    """A CLI comma list of integers ("64,128"), None when not given."""
    try:
        return [int(x) for x in text.split(",")] if text else None
    except ValueError:
        raise ValueError(f"{flag} must be a comma list of integers, got {text!r}") from None


def run(a: argparse.Namespace) -> int:
    res = comma_ints(a.resolutions, "--resolutions")
    down = comma_ints(a.downscale, "--downscale")
    metrics = read_metrics_files(a.metrics)
    try:
        result = export_model(
            a.checkpoint,
            a.out,
            resolutions=res,
            name=a.name,
            force=a.force,
            metrics=metrics,
            consistency_method=a.consistency,
            with_checkpoint=not a.no_checkpoint,
            up=a.up,
            downscale=down,
        )
    except CheckpointError:
        raise
    m = result.manifest
    print(
        f"exported {m.name} to {result.out}: resolutions {', '.join(map(str, m.resolutions))}, "
        f"{m.total_bytes / 1e6:.2f} MB"
    )
    return 0
