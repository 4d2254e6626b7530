"""The training-speed benchmark and the one-call GPU script that runs it beside the GAN zoo (issue 11's
figures): they run on a CPU, so a GPU lease is never spent finding that they break."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import step_floor, train_throughput
from tests.conftest import REPO, SHARED
from trainer.config import NetConfig, preset
from trainer.networks import build_networks


def table_rows(text: str, preset_name: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith(f"| {preset_name} |")
    ]


def test_flops_counted_on_the_meta_device_are_those_of_the_real_forwards() -> None:
    """step_gflop counts shapes on the meta device (a 256 px `paper` network took seconds of CPU per row
    the real way); the count must be what real tensors give."""
    net_kw, _ = preset("tiny")
    net = NetConfig(max_res=16, fused_scale=True, **net_kw)
    torch.manual_seed(0)
    G, D = build_networks(net)
    with torch.no_grad(), FlopCounterMode(display=False) as fc_g:
        img = G(torch.randn(2, net.z_dim), 16, 0.5)
    with torch.no_grad(), FlopCounterMode(display=False) as fc_d:
        D(img, 16, 0.5)
    real = (4 * fc_g.get_total_flops() + 13 * fc_d.get_total_flops()) / 2 / 1e9
    assert real > 0
    assert train_throughput.step_gflop(net, 16, 0.5) == pytest.approx(real, rel=1e-12)


def test_bench_times_each_minibatch_and_the_compiled_step(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--batch 4,8 gives a row each; --compile times the step with G and D compiled (the penalty through
    the eager D) mid-fade. aot_eager stands in for inductor: the same capture, no C++ compiler needed."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    argv = ["train_throughput", "--presets", "tiny", "--res", "8", "--steps", "1", "--batch", "4,8"]
    monkeypatch.setattr(sys, "argv", [*argv, "--compile", "--alpha", "0.5", "--cpu"])
    train_throughput.main()
    out = capsys.readouterr().out
    assert "img/s (the same, compiled)" in out and "compile s" in out
    rows = table_rows(out, "tiny")
    assert [r[2] for r in rows] == ["4", "8"]
    for r in rows:  # fast, compiled, ratio, compile s, baseline, speed-up, GFLOP, TFLOP/s
        assert float(r[3]) > 0 and float(r[4]) > 0 and float(r[7]) > 0
        assert r[5].endswith("x") and r[8].endswith("x")


def test_step_floor_counts_a_convolution_as_by_hand() -> None:
    """One 3x3 conv: 2 * N * Cout * Cin * 9 * H * W FLOPs; the input, weight and bias read once and the
    output written once; a view moves nothing."""
    x, w, b = torch.randn(2, 8, 16, 16), torch.randn(4, 8, 3, 3), torch.randn(4)
    with step_floor.StepCounter() as c:
        y = torch.nn.functional.conv2d(x, w, b, padding=1)
        y.view(-1)
    assert sum(f for f, _ in c.per_op) == 2 * 2 * 4 * 8 * 9 * 16 * 16
    assert sum(m for _, m in c.per_op) == 4 * (x.numel() + w.numel() + b.numel() + y.numel())
    with step_floor.StepCounter() as c:
        y + b.view(1, 4, 1, 1).expand_as(y)  # stride 0: b's 4 distinct values are read, not 2 * 4 * 16 * 16
    assert sum(m for _, m in c.per_op) == 4 * (y.numel() + 4 + y.numel())


def test_step_floor_counts_on_fake_tensors_what_the_real_step_does() -> None:
    """count_step runs train_step on fake tensors (shapes only); the same step on real tensors, counted the
    same way, gives the same FLOPs, bytes and ops (fp32: the CPU's bf16 autocast would differ from
    CUDA's only in ops without FLOPs). The double backward is in the count: more FLOPs than 4 G and 12 D
    forwards, the estimate's weights minus the penalty's second-order pass."""
    import dataclasses

    from trainer.config import TrainConfig
    from trainer.loop import train_step

    net_kw, train_kw = preset("tiny")
    net = NetConfig(max_res=16, fused_scale=True, **net_kw)
    cfg = dataclasses.replace(TrainConfig(**train_kw), amp="off")
    fake = step_floor.count_step(net, cfg, 16, 8, 0.5)
    torch.manual_seed(0)
    spec = train_throughput.StepSpec(net, cfg, 16, 8, torch.device("cpu"), "off", False, 0.5)
    ctx, reals, opt_G, opt_D = step_floor.step_as_on_cuda(spec)
    train_step(ctx, reals, 16, 0.5, opt_G, opt_D)
    with step_floor.StepCounter() as real:
        train_step(ctx, reals, 16, 0.5, opt_G, opt_D)
    assert fake.per_op == real.per_op and fake.flops > 0
    assert "aten._fused_adam_" in fake.ops and fake.ops["aten._fused_adam_"].calls == 2
    with torch.no_grad(), FlopCounterMode(display=False) as fc_g:
        img = ctx.G(torch.randn(8, net.z_dim), 16, 0.5)
    with torch.no_grad(), FlopCounterMode(display=False) as fc_d:
        ctx.D(img, 16, 0.5)
    assert fake.flops > 4 * fc_g.get_total_flops() + 12 * fc_d.get_total_flops()


def test_step_floor_table_and_ceilings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["step_floor", "--presets", "tiny", "--res", "8,16", "--batch", "8"])
    step_floor.main()
    rows = table_rows(capsys.readouterr().out, "tiny")
    assert [r[1] for r in rows] == ["8", "16"]
    for r in rows:
        counted, estimate, all_gb, conv_gb = (float(x) for x in r[3:7])
        assert counted == pytest.approx(estimate, rel=0.15) and all_gb > conv_gb > 0
        eager, fused = (float(x.rstrip("%")) for x in r[9:11])
        assert 0 <= eager <= fused <= 100 and fused > 0  # the tiny step is launch-bound: eager ~0 %


def test_the_benches_take_the_fused_gpu_preset_against_an_unfused_baseline(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `gpu` preset is fused: step_floor counts it so, and train_throughput's baseline stays the unfused
    fp32 step whatever the preset says (its fast step is fused with or without the preset)."""
    monkeypatch.setattr(sys, "argv", ["step_floor", "--presets", "gpu", "--res", "8", "--batch", "4"])
    step_floor.main()
    assert [r[1] for r in table_rows(capsys.readouterr().out, "gpu")] == ["8"]
    fused: list[tuple[str, bool]] = []  # (amp, fused_scale) of each timed step: fast, then the fp32 baseline
    rate = train_throughput.step_rate

    def step_rate(spec: train_throughput.StepSpec, steps: int, compile: bool = False) -> tuple[float, float]:
        fused.append((spec.amp, spec.net.fused_scale))
        return rate(spec, steps, compile)

    monkeypatch.setattr(train_throughput, "step_rate", step_rate)
    argv = ["train_throughput", "--presets", "gpu", "--res", "8", "--steps", "1", "--batch", "4", "--cpu"]
    monkeypatch.setattr(sys, "argv", argv)
    train_throughput.main()
    assert fused == [("bf16", True), ("off", False)]


def test_step_floor_ceiling_arithmetic() -> None:
    """A conv at the peak for 1 ms and an elementwise op at the bandwidth for 2 ms: eager 1/3 of the peak,
    fused (the elementwise op folded away) all of it; 1,000 ops at 5 us each cap eager at 1/5."""
    card = step_floor.Card("test", 100.0, 2.0)
    conv, elementwise = (int(100e12 * 1e-3), 0), (0, int(2e12 * 2e-3))
    c = step_floor.StepCount(batch=1, ops={}, per_op=[conv, elementwise])
    assert c.ceiling(card) == pytest.approx(1 / 3) and c.ceiling(card, fused=True) == pytest.approx(1.0)
    c = step_floor.StepCount(batch=1, ops={}, per_op=[conv, elementwise] + [(0, 0)] * 998)
    assert c.ceiling(card) == pytest.approx(1 / 5)


def test_profile_prints_the_costliest_ops_and_how_busy_the_step_is(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train_throughput", "--presets", "tiny", "--res", "8", "--steps", "1", "--no-baseline"]
    monkeypatch.setattr(sys, "argv", [*argv, "--profile", "5", "--cpu"])
    train_throughput.main()
    out = capsys.readouterr().out
    assert "aten::" in out and "Self CPU" in out
    busy = [line for line in out.splitlines() if line.startswith("per step: wall")]
    assert len(busy) == 1 and "ops" in busy[0]


@pytest.mark.skipif(not (SHARED / "anchors" / "anchor_pgan_bench.py").exists(), reason="no ../shared/anchors")
def test_gpu_bench_script_runs_ours_beside_the_zoo(tmp_path: Path) -> None:
    """scripts/gpu_bench.sh on a CPU at 4 px: the zoo's row, ours at its size and batch, the minibatch
    sweep, and summary.md with ours / zoo."""
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "RES": "4",
        "STEPS": "1",
        "END_S": "300",
        "ANCHORS": str(SHARED / "anchors"),
        "PY": sys.executable,
    }
    done = subprocess.run(
        ["bash", "scripts/gpu_bench.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr
    assert '"res": 4' in (tmp_path / "zoo.jsonl").read_text()
    log = (tmp_path / "bench.log").read_text()
    assert [r[2] for r in table_rows(log, "gpu")] == ["16", "32", "64"]
    (row,) = table_rows((tmp_path / "summary.md").read_text(), "4")
    assert row[1] == "128" and row[4].endswith("x") and float(row[4][:-1]) > 0


def test_serve_gpu_bench_builds_its_three_graph_forms_and_measures_them_on_a_cpu(tmp_path: Path) -> None:
    """bench/serve_gpu.py (issue 13's GPU serving figures) end to end on the CPU provider, at 8 px from the
    shipped model's checkpoint: the three graph forms, the generator part with parity against `bench`
    (fused within 1 grey level on the CPU's plain fp32), and the memory part's child processes."""
    if not (REPO / "models" / "celeba" / "checkpoint.safetensors").exists():
        pytest.skip("the shipped model's checkpoint is not in this checkout")
    script = [sys.executable, str(REPO / "bench" / "serve_gpu.py")]
    build = subprocess.run(
        [*script, "build", "--out", str(tmp_path), "--res", "4", "8", "--checkpoint",
         str(REPO / "models" / "celeba" / "checkpoint.safetensors")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == ["bench", "bench16", "benchT"]
    report = tmp_path / "report.json"
    run = subprocess.run(
        [*script, "run", "--models", str(models), "--provider", "CPUExecutionProvider", "--res", "8",
         "--batches", "1", "2", "--gen-seconds", "0.05", "--skip", "algos", "variance", "cuda-graph", "encode",
         "service", "--json", str(report)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    got = json.loads(report.read_text())
    assert {(r["graph"], r["batch"]) for r in got["generator"]} == {
        (g, b) for g in ("bench", "bench16", "benchT") for b in (1, 2)
    }
    parity = {r["graph"]: r["max_grey"] for r in got["parity"]}
    assert parity["benchT"] <= 1 and set(parity) == {"bench16", "benchT"}
    assert {(r["graph"], r["options"]) for r in got["memory"]} == {
        (g, o) for g in ("bench", "benchT") for o in ("defaults", "cudnn workspace capped",
                                                       "arena same-as-requested", "both")
    }  # fmt: skip


def test_rewrites_move_fewer_bytes_in_fewer_ops_than_the_first_forms(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The counted step against the same step as first written (PixelNorm, the fused layers' kernels, D's
    two passes): the same FLOPs (up to the kernels' matmul) in fewer bytes and ops; the trainer's forms
    are put back afterwards. train_throughput times the two side by side with --first-forms."""
    from trainer.config import TrainConfig

    net_kw, train_kw = preset("tiny")
    net = NetConfig(max_res=16, fused_scale=True, **net_kw)
    cfg = TrainConfig(**train_kw)
    mine = step_floor.count_step(net, cfg, 16, 8, 1.0)
    with train_throughput.first_forms():
        first = step_floor.count_step(net, cfg, 16, 8, 1.0)
    assert mine.flops == pytest.approx(first.flops, rel=0.01)
    # (the tiny network's activations are small beside its weights: the gpu preset saves 17-23 %)
    assert mine.bytes < 0.95 * first.bytes and mine.n_ops < 0.9 * first.n_ops
    assert step_floor.count_step(net, cfg, 16, 8, 1.0).bytes == mine.bytes  # restored
    argv = ["train_throughput", "--presets", "tiny", "--res", "8", "--steps", "1", "--no-baseline"]
    monkeypatch.setattr(sys, "argv", [*argv, "--first-forms", "--cpu"])
    train_throughput.main()
    out = capsys.readouterr().out
    assert "rewrites' speed-up" in out
    (row,) = table_rows(out, "tiny")
    assert float(row[4]) > 0 and row[5].endswith("x")


def test_first_forms_are_the_same_functions() -> None:
    """The baseline computes what the trainer's forms do: the same G and D outputs and gradients."""
    net_kw, _ = preset("tiny")
    torch.manual_seed(0)
    G, D = build_networks(NetConfig(max_res=16, fused_scale=True, **net_kw))
    z = torch.randn(4, G.z_dim)

    def outputs() -> list[torch.Tensor]:
        G.zero_grad()
        D.zero_grad()
        D(G(z, 16, 0.5), 16, 0.5).sum().backward()
        params = (*G.parameters(), *D.parameters())
        return [D(G(z, 16), 16).detach()] + [p.grad.clone() for p in params if p.grad is not None]

    mine = outputs()
    with train_throughput.first_forms():
        first = outputs()
    for a, b in zip(mine, first, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_cuda_graph_row_needs_cuda(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--cuda-graph replays the step from one capture, which only CUDA can do: on a CPU a clear usage error
    (exit 2) before anything is timed, and the capture helper refuses a CPU step."""
    argv = ["train_throughput", "--presets", "tiny", "--res", "8", "--steps", "1", "--cuda-graph"]
    monkeypatch.setattr(sys, "argv", [*argv, "--cpu"])
    with pytest.raises(SystemExit) as e:
        train_throughput.main()
    assert e.value.code == 2 and "--cuda-graph needs a CUDA device" in capsys.readouterr().err
    net_kw, train_kw = preset("tiny")
    from trainer.config import TrainConfig

    spec = train_throughput.StepSpec(
        NetConfig(max_res=8, **net_kw), TrainConfig(**train_kw), 8, 4, torch.device("cpu"), "off", False
    )
    with pytest.raises(ValueError, match="needs a CUDA device"):
        train_throughput.graph_step_setup(spec)


def test_pyramid_bench_prints_both_forms_and_their_bytes_agree(faces_dir: Path, tmp_path: Path) -> None:
    """bench/pyramid.py on 64 real faces at 32 px: a row per level, the two forms' bytes the same."""
    cmd = [sys.executable, "bench/pyramid.py", "--data", str(faces_dir), "--count", "64", "--res", "32"]
    cmd += ["--cache-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "->" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["32 -> 16", "16 -> 8", "8 -> 4"]
    assert all(r.split("|")[5].strip() == "True" for r in rows)


def test_decode_cache_bench_prints_both_forms_with_the_same_pixels(faces_zip: Path) -> None:
    """bench/decode_cache.py on 64 real faces of an archive at 32 px: a row per form, the same pixels."""
    cmd = [sys.executable, "bench/decode_cache.py", str(faces_zip), "--count", "64", "--res", "32"]
    proc = subprocess.run(cmd + ["--reps", "1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert rows[2:] == ["decode, then np.save", "into the cache file"]
    assert "64 faces of faces-32.zip at 32x32" in proc.stdout and "the same pixels: True" in proc.stdout
    bad = subprocess.run(cmd[:2] + ["nowhere.zip"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no archive at nowhere.zip" in bad.stderr


def test_gpu_round_script_packs_at_most_eight_files(faces_zip: Path, tmp_path: Path) -> None:
    """scripts/gpu_round.sh on a CPU, a 4 px `tiny` round of 40 s: the checkpoint in parts, ckpt.json,
    stats.jsonl, round.json and the grid come back (the loss plot does not: unpack draws it), at most 8
    files, and the parts unpack into a run with its losses.png."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "RUNS": str(runs), "DATA": str(faces_zip), "PRESET": "tiny"}
    env.update(MAX_RES="4", END_S="40", PY=sys.executable, PROGAN_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(
        ["bash", "scripts/gpu_round.sh", "--start-res", "4"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ckpt.json", "ckpt.part0", "grid.png", "round.json", "stats.jsonl"]
    got = json.loads((out / "round.json").read_text())
    assert got["rc"] == 0 and got["setup_s"]["probe_parts"] and got["compile_cache_bytes"] is None
    assert got["d_level"] is None  # off unless D_LEVEL_STEPS asks
    back = tmp_path / "back"
    unpack = [
        sys.executable,
        "scripts/gpu_checkpoint.py",
        "unpack",
        str(out / "ckpt.part0"),
        "--out",
        str(back),
    ]
    subprocess.run(unpack, cwd=REPO, check=True, capture_output=True)
    assert (back / "checkpoint.pt").is_file() and (back / "losses.png").is_file()
