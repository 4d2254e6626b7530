"""ONNX export: parity with torch, the manifest schema, same-seed consistency, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from bench.train_throughput import first_pixel_norm
from contract import Manifest, read_manifest
from trainer.checkpoint import load_generator
from trainer.cli import main
from trainer.export import ChannelL2Norm, TopPass, export_model, with_up
from trainer.networks import GBlock, PixelNorm


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    return export_model(tiny_run, tmp_path_factory.mktemp("export") / "tiny")


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_onnxruntime_matches_torch_within_one_grey_level(exported, batch: int) -> None:
    m = exported.manifest
    for res, entry in m.resolutions.items():
        sess = ort.InferenceSession(str(exported.out / entry.file), providers=["CPUExecutionProvider"])
        z = np.random.default_rng(res + batch).standard_normal((batch, m.z_dim), dtype=np.float32)
        (got,) = sess.run(None, {m.input.name: z})
        with torch.no_grad():
            want = exported.modules[res](torch.from_numpy(z)).numpy()
        assert got.dtype == np.uint8 and got.shape == (batch, res, res, 3)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_graphs_are_valid_and_fold_the_weight_scaling(exported) -> None:
    for entry in exported.manifest.resolutions.values():
        path = exported.out / entry.file
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
        assert model.opset_import[0].version >= 17
        out = model.graph.output[0].type.tensor_type
        assert out.elem_type == onnx.TensorProto.UINT8 and out.shape.dim[0].dim_param == "N"
        # weights stay fp16 in the shared file; the only float32 weight tensors are Casts of them
        fp16 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
        assert fp16 and all(i.data_location == onnx.TensorProto.EXTERNAL for i in fp16)
        mul_inputs = {x for n in model.graph.node if n.op_type == "Mul" for x in n.input}
        assert not any(i.name.removesuffix("__fp16") in mul_inputs for i in fp16), "unfolded weight scaling"


def test_weights_are_stored_once(exported) -> None:
    m = exported.manifest
    n_params = sum(p.numel() for p in exported.modules[16].G.parameters())
    assert m.weights.bytes < 2 * n_params * 1.3  # fp16, each tensor once (+ the small refitted heads)
    assert m.total_bytes == m.weights.bytes + sum(e.bytes for e in m.resolutions.values())


def test_manifest_is_the_contract_type(exported) -> None:
    m = read_manifest(exported.out)  # what the service reads
    assert isinstance(m, Manifest) and json.loads(m.to_json()) == json.loads(exported.manifest.to_json())
    assert m.provenance.architecture == "progan" and "non-commercial" in m.provenance.license
    assert not m.provenance.dataset.startswith("/")  # no path of the training machine
    assert sorted(m.resolutions) == [4, 8, 16] and m.input.shape == ("N", m.z_dim)


def test_same_seed_same_face_across_resolutions(exported) -> None:
    rep = exported.manifest.consistency
    assert rep["method"] == "refit" and rep["top"] == 16
    for res, d in rep["mean_abs_diff_grey_levels"].items():
        assert d["refit_torgb"] < d["cut_original_torgb"], res
        assert d["refit_torgb"] < d["different_z"], res


@pytest.mark.parametrize("chunk", [1, 3])
def test_top_pass_taps_what_the_cut_generator_computes(tiny_run: Path, chunk: int) -> None:
    """The features caught on the top pass are G cut at each lower resolution and run again (what the
    export's heads are fitted to); the top images are G's; the pass leaves no hook behind, and the fused
    up-sampling gives the same images."""
    G = load_generator(tiny_run).G
    z = torch.randn(5, G.z_dim, generator=torch.Generator().manual_seed(3))
    got = list(TopPass(G, 16, 0.5, chunk=chunk).run(5, 3, [4, 8]))
    imgs = torch.cat([img for img, _ in got])
    assert torch.allclose(imgs, G(z, 16, 0.5), atol=1e-5)
    for r in (4, 8):
        assert torch.allclose(torch.cat([f[r] for _, f in got]), G.features(z, r)[0], atol=1e-5)
    assert all(sorted(f) == [4, 8] for _, f in got)  # only what was asked for
    assert all(not b._forward_hooks for b in G.modules() if isinstance(b, GBlock))
    fused = with_up(G, True)
    assert all(b.fused for b in fused.modules() if isinstance(b, GBlock) and b.res > 4)
    assert not any(b.fused for b in G.modules() if isinstance(b, GBlock))  # a copy: G untouched
    fused_imgs = torch.cat([img for img, _ in TopPass(fused, 16, 0.5, chunk=chunk).run(5, 3, [])])
    assert torch.allclose(fused_imgs, imgs, atol=1e-4)


def test_export_cli_and_bad_input(tiny_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m"
    assert main(["export", str(tiny_run), "--out", str(out), "--resolutions", "8,16"]) == 0
    assert sorted(json.loads((out / "manifest.json").read_text())["resolutions"]) == ["16", "8"]
    assert main(["export", str(tiny_run), "--out", str(out)]) != 0
    assert "already exists" in capsys.readouterr().err
    before = (out / "manifest.json").read_text()
    assert main(["export", str(tiny_run), "--out", str(out), "--resolutions", "32", "--force"]) != 0
    assert "never trained" in capsys.readouterr().err
    assert (out / "manifest.json").read_text() == before  # the failed export left the old model alone
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04broken")
    assert main(["export", str(bad), "--out", str(tmp_path / "x")]) != 0
    assert "corrupt" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.tmp-*"))
    metrics = tmp_path / "metrics_16.json"
    metrics.write_text(json.dumps({"resolution": 16, "fid": 123.4, "num": 100}))
    (out / "MODEL_CARD.md").write_text("# my card\n")
    assert main(["export", str(tiny_run), "--out", str(out), "--force", "--metrics", str(metrics)]) == 0
    assert json.loads((out / "manifest.json").read_text())["metrics"]["16"]["fid"] == 123.4
    assert (out / "MODEL_CARD.md").read_text() == "# my card\n"  # --force keeps what export does not write


def test_pixel_norm_exports_as_one_channel_l2_reduction(exported) -> None:
    x = torch.randn(4, 16, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    assert torch.allclose(ChannelL2Norm(1e-8)(x), PixelNorm()(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(ChannelL2Norm(1e-8)(torch.zeros(1, 4, 2, 2)), torch.zeros(1, 4, 2, 2))
    path = exported.out / exported.manifest.resolutions[16].file
    ops = [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
    assert "ReduceL2" in ops and "ReduceMean" not in ops and "Pow" not in ops
    assert isinstance(exported.modules[16].G.norm, PixelNorm)  # the torch reference is left as it was


def test_up_sampling_is_one_transposed_conv_unless_plain(exported, tiny_run: Path, tmp_path: Path) -> None:
    """The default export writes each block's up-sampling and first conv as one stride-2 ConvTranspose;
    `up="plain"` as Resize then Conv; the two graphs make the same images (within one grey level)."""

    def ops(folder: Path) -> list[str]:
        return [n.op_type for n in onnx.load(str(folder / "G_16.onnx"), load_external_data=False).graph.node]

    fused = ops(exported.out)
    plain_dir = tmp_path / "plain"
    assert (
        main(["export", str(tiny_run), "--out", str(plain_dir), "--resolutions", "16", "--up", "plain"]) == 0
    )
    plain = ops(plain_dir)
    assert fused.count("ConvTranspose") == 2 and "ConvTranspose" not in plain  # the blocks at 8 and 16
    assert plain.count("Resize") == fused.count("Resize") + 2
    z = np.random.default_rng(3).standard_normal((32, exported.manifest.z_dim), dtype=np.float32)
    a, b = (
        ort.InferenceSession(str(d / "G_16.onnx"), providers=["CPUExecutionProvider"]).run(None, {"z": z})[0]
        for d in (exported.out, plain_dir)
    )
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="up must be"):
        export_model(tiny_run, tmp_path / "x", up="bilinear")
    assert not (tmp_path / "x").exists()


def test_downscale_serves_the_top_output_box_downscaled(
    exported, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--downscale 8`: the 8 px graph runs the whole network and box-downscales the 16 px output, so one z
    gives the top graph's face 2x2-averaged; the other resolutions keep their refit heads; bad lists fail
    before anything is written."""
    out = tmp_path / "down"
    assert main(["export", str(tiny_run), "--out", str(out), "--downscale", "8"]) == 0
    m = read_manifest(out)
    assert m.consistency["downscaled_top"] == [8] and sorted(m.resolutions) == [4, 8, 16]
    z = np.random.default_rng(7).standard_normal((16, m.z_dim), dtype=np.float32)

    def run(folder: Path, res: int) -> np.ndarray:
        sess = ort.InferenceSession(str(folder / f"G_{res}.onnx"), providers=["CPUExecutionProvider"])
        return sess.run(None, {"z": z})[0].astype(float)

    top = run(out, 16)
    box = top.reshape(16, 8, 2, 8, 2, 3).mean(axis=(2, 4))  # the uint8 top image, 2x2-averaged
    assert np.abs(run(out, 8) - box).max() <= 1.0  # the graph averages before rounding: within one level
    assert np.abs(run(exported.out, 8) - box).mean() > np.abs(run(out, 8) - box).mean()  # the refit head's
    assert np.array_equal(run(out, 4), run(exported.out, 4))  # untouched: the refit head as before
    ops = [n.op_type for n in onnx.load(str(out / "G_8.onnx"), load_external_data=False).graph.node]
    assert "AveragePool" in ops
    assert (out / "weights.bin").read_bytes() == (exported.out / "weights.bin").read_bytes()  # nothing new
    for bad, msg in (("16", "below the top one"), ("2", "below the top one"), ("8,x", "comma list")):
        capsys.readouterr()
        assert main(["export", str(tiny_run), "--out", str(tmp_path / "bad"), "--downscale", bad]) != 0
        assert msg in capsys.readouterr().err and not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="only resolutions exported below"):
        export_model(tiny_run, tmp_path / "bad", resolutions=[4, 16], downscale=[8])


def test_old_pixel_norm_graphs_are_rewritten_within_one_grey_level(
    exported, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import trainer.export as export
    from scripts import pixelnorm_reducel2 as migrate

    monkeypatch.setattr(export, "onnx_friendly", lambda module, **_: module)  # export as before the change,
    monkeypatch.setattr(PixelNorm, "forward", lambda self, x: first_pixel_norm(x, self.eps))  # of that time
    old = export.export_onnx(exported.modules[16], exported.manifest.z_dim)
    assert "ReduceMean" in [n.op_type for n in old.graph.node]
    new = onnx.ModelProto.FromString(old.SerializeToString())
    assert migrate.rewrite(new) == 7  # the latent's norm and two per block at 4, 8 and 16
    ops = [n.op_type for n in new.graph.node]
    assert "ReduceMean" not in ops and "Pow" not in ops and ops.count("ReduceL2") == 7
    onnx.checker.check_model(new)
    z = np.random.default_rng(5).standard_normal((64, exported.manifest.z_dim), dtype=np.float32)
    a, b = (
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"z": z})[0]
        for m in (old, new)
    )
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_fp16_compute_graph_matches_fp32_and_shares_the_weights(exported, tmp_path: Path) -> None:
    """The fp16-compute form bench/serve_gpu.py measures on CUDA: fp16 weights used as they are (no Casts of
    weights), z in and uint8 out as in the shipped graphs, the same fp16 bytes as the fp32 graph's weights."""
    import copy

    from trainer.export import WEIGHTS_FILE, ExportedGenerator, WeightStore, export_onnx, store_weights_fp16

    m = exported.manifest
    ref = exported.modules[16]  # the top graph's torch module (fp16-rounded weights)
    half = ExportedGenerator(copy.deepcopy(ref.G).half(), 16, ref.alpha, ref.head, torch.float16).eval()
    store = WeightStore(tmp_path / WEIGHTS_FILE)
    graphs = {
        "fp32": store_weights_fp16(export_onnx(ref, m.z_dim), store),
        "fp16": store_weights_fp16(export_onnx(half, m.z_dim), store),
    }
    store.close()
    # each distinct weight tensor once, although two graphs reference it
    assert (tmp_path / WEIGHTS_FILE).stat().st_size <= exported.manifest.weights.bytes
    casts_of_weights = [
        n for n in graphs["fp16"].graph.node if n.op_type == "Cast" and n.input[0].endswith("__fp16")
    ]
    assert not casts_of_weights
    io = graphs["fp16"].graph
    assert io.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert io.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    outs = {}
    for name, g in graphs.items():
        onnx.save_model(g, tmp_path / f"G_{name}.onnx")
        sess = ort.InferenceSession(str(tmp_path / f"G_{name}.onnx"), providers=["CPUExecutionProvider"])
        z = np.random.default_rng(3).standard_normal((32, m.z_dim), dtype=np.float32)
        outs[name] = sess.run(None, {"z": z})[0].astype(int)
    assert np.abs(outs["fp16"] - outs["fp32"]).max() <= 2


def test_channel_l2_norm_in_fp16_does_not_overflow() -> None:
    """Sum of squares over 256 channels of activations near 100 is ~2.6e6, past fp16's 65504: the fp16
    path takes the norm in fp32 and matches the fp32 result."""
    x = torch.randn(2, 256, 4, 4, generator=torch.Generator().manual_seed(1)) * 100
    want = ChannelL2Norm(1e-8)(x)
    got = ChannelL2Norm(1e-8)(x.half())
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    assert torch.allclose(got.float(), want, rtol=2e-3, atol=2e-3)


def test_add_metrics_embeds_evaluation_without_exporting_again(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from contract.manifest import read_manifest, verify_files
    from trainer.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    graphs = {p.name: p.read_bytes() for p in model.glob("*.onnx")}
    good = tmp_path / "metrics_16.json"
    good.write_text(json.dumps({"resolution": 16, "num": 10000, "fid": 99.5, "face_rate": 0.5}))
    assert main(["add-metrics", str(model), str(good)]) == 0
    manifest = read_manifest(model)
    assert manifest.metrics["16"]["fid"] == 99.5
    verify_files(model, manifest)  # the graphs and weights untouched
    assert {p.name: p.read_bytes() for p in model.glob("*.onnx")} == graphs

    before = (model / "manifest.json").read_text()
    other = tmp_path / "metrics_256.json"
    other.write_text(json.dumps({"resolution": 256, "fid": 1.0}))
    assert main(["add-metrics", str(model), str(other)]) == 2
    assert "not [256]" in capsys.readouterr().err
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2]")
    assert main(["add-metrics", str(model), str(junk)]) == 2
    assert "no 'resolution'" in capsys.readouterr().err
    assert main(["add-metrics", str(tmp_path), str(good)]) == 2
    assert "manifest.json" in capsys.readouterr().err
    assert (model / "manifest.json").read_text() == before
