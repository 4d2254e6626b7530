"""What must never happen to a run: ranks drawing the same images after a resume, one rank stopping while the
others wait, non-finite weights reaching a checkpoint, a model folder or an export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, free_port
from trainer.checkpoint import Checkpoint, CheckpointError
from trainer.cli import main


def _torchrun(script_or_module: list[str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        *script_or_module,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _ddp_train(faces_dir: Path, cache_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["--preset", "tiny", "--max-res", "8", "--cache-dir", str(cache_dir), "--quiet", "--seed", "3"]
    return _torchrun(["-m", "trainer", "train", "--data", str(faces_dir), "--out", str(out), *args, *extra])


def test_two_process_ddp_on_cpu(faces_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    r = _ddp_train(faces_dir, cache_dir, tmp_path, "--max-steps", "6")
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = tmp_path.iterdir()
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    ck = Checkpoint.load(run)
    assert ck.steps == 6 and ck.cur_nimg == 6 * 8  # global batch 8 = 2 ranks x 4


def test_ddp_resume_gives_every_rank_its_own_draws(faces_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    """Two ranks over gloo: the checkpoint holds one generator state per rank, the ranks' states differ,
    and 3 steps + resume + 3 steps end with exactly the weights of 6 uninterrupted steps."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    r = _ddp_train(faces_dir, cache_dir, whole, "--max-steps", "6")
    assert r.returncode == 0, r.stderr[-3000:]
    r = _ddp_train(faces_dir, cache_dir, split, "--max-steps", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = split.iterdir()
    states = Checkpoint.load(run).rng["gen_ranks"]
    assert len(states) == 2 and not torch.equal(states[0], states[1])
    r = _torchrun(["-m", "trainer", "train", "--quiet", "--resume", str(run), "--max-steps", "6"])
    assert r.returncode == 0, r.stderr[-3000:]
    (ref,) = whole.iterdir()
    a, b = Checkpoint.load(ref), Checkpoint.load(run)
    assert a.steps == b.steps == 6
    for net in ("G", "D", "G_ema"):
        for name, t in a.nets[net].items():
            assert torch.allclose(t, b.nets[net][name], rtol=0, atol=1e-6), (
                f"{net}.{name} differs after resume"
            )


NAN_ON_RANK_1 = """
import sys
import torch
import trainer.loop as loop
from trainer.cli import main

real_step, calls = loop.train_step, [0]

def step_that_diverges_on_rank_1(c, *a, **k):
    stats = real_step(c, *a, **k)
    calls[0] += 1
    if c.d.rank == 1 and calls[0] >= 2:
        stats["loss_D"] = torch.tensor(float("nan"))
    return stats

loop.train_step = step_that_diverges_on_rank_1
sys.exit(main(sys.argv[1:]))
"""


def test_ddp_nonfinite_on_one_rank_stops_every_rank(faces_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "diverge.py"
    script.write_text(NAN_ON_RANK_1)
    out = tmp_path / "runs"
    args = [
        "--preset",
        "tiny",
        "--max-res",
        "8",
        "--cache-dir",
        str(cache_dir),
        "--quiet",
        "--max-steps",
        "8",
    ]
    r = _torchrun([str(script), "train", "--data", str(faces_dir), "--out", str(out), *args], timeout=240)
    assert r.returncode != 0
    # both ranks stop with the message (none is left waiting in an all-reduce, which the timeout would show)
    assert r.stderr.count("error: non-finite") == 2, r.stderr[-3000:]
    assert "loss_D=nan" in r.stderr and "on another rank than 0" in r.stderr


def test_inf_weights_with_finite_losses_stop_before_any_save(
    faces_dir: Path, cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """Inf gradients with a finite loss leave the losses of their step finite but the weights not: the run
    stops at that tick, and no checkpoint, snapshot or grid of those weights is written."""
    import trainer.loop as loop

    real_ema, calls = loop.update_ema, [0]

    def ema_after_an_inf_step(G_ema, G, beta):  # what Adam does with an inf gradient
        calls[0] += 1
        if calls[0] == 2:
            with torch.no_grad():
                next(G.parameters()).fill_(float("inf"))
        real_ema(G_ema, G, beta)

    monkeypatch.setattr(loop, "update_ema", ema_after_an_inf_step)
    argv = ["train", "--preset", "tiny", "--quiet", "--data", str(faces_dir), "--max-res", "8"]
    assert main([*argv, "--out", str(tmp_path), "--cache-dir", str(cache_dir), "--max-steps", "2"]) != 0
    err = capsys.readouterr().err
    assert "non-finite weights" in err and "inf or nan gradients with finite losses" in err
    (run,) = tmp_path.iterdir()
    assert not (run / "checkpoint.pt").exists() and not list(run.glob("G_ema-*.pt"))


def test_weights_beyond_float16_never_reach_a_model_folder(
    tiny_run: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ck = Checkpoint.load(tiny_run)
    name = next(iter(ck.nets["G"]))
    ck.nets["G"][name] = ck.nets["G"][name].clone().fill_(1e6)  # finite in fp32, inf in fp16
    with pytest.raises(CheckpointError, match="inf or nan in float16"):
        ck.save_model(tmp_path / "checkpoint.safetensors")
    assert not (tmp_path / "checkpoint.safetensors").exists()

    run = tmp_path / "run"
    run.mkdir()
    ck.save(run / "checkpoint.pt")
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    before = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    assert main(["export", str(run), "--out", str(model), "--force"]) != 0
    assert "inf or nan in float16" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("loss", ["wgan-gp", "logistic"])
def test_compile_trains_through_a_fade_with_either_penalty(
    loss: str, faces_dir: Path, cache_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """--compile with the gradient penalty (WGAN-GP) and R1: both double-backward through D, which a
    compiled D cannot do, so the penalties use the eager D; and a fade's alpha reaches the compiled
    networks as a tensor, so the 12 steps of this fade do not compile 12 graphs. aot_eager stands in for
    inductor (same dynamo capture and aot_autograd, no C++ compiler needed on CPU)."""
    import functools
    import logging

    from torch._dynamo.utils import counters

    reasons: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            reasons.append(record.getMessage())

    torch._dynamo.reset()
    counters.clear()
    torch._logging.set_logs(recompiles=True)
    handler = Collect()
    logging.getLogger("torch._dynamo.guards.__recompiles").addHandler(handler)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    argv = ["train", "--preset", "tiny", "--quiet", "--data", str(faces_dir), "--max-res", "8", "--compile"]
    argv += ["--loss", loss, "--fade-kimg", "0.096", "--out", str(tmp_path), "--cache-dir", str(cache_dir)]
    try:
        assert main(argv) == 0
    finally:
        logging.getLogger("torch._dynamo.guards.__recompiles").removeHandler(handler)
        torch._logging.set_logs()
    (run,) = tmp_path.iterdir()
    ck = Checkpoint.load(run)
    assert ck.res == 8 and ck.steps == 4 + 12 + 4  # 32, 96 and 32 images at batch 8
    assert all(torch.isfinite(t).all() for t in ck.nets["G"].values())
    assert counters["stats"]["unique_graphs"] > 0  # the networks did run compiled
    assert not [r for r in reasons if "alpha ==" in r], "a fade recompiles for every alpha"
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch._dynamo.reset()


def test_the_d_step_draws_its_fakes_with_grad_off() -> None:
    """A compiled G must see the D step and the G step as two forms. Dynamo guards on grad mode, but torch
    2.11's does not guard on a parameter's requires_grad (pytorch#139476): with G's parameters only frozen, the
    D step compiled an inference form of G that the G step reused, and `--compile` stopped at the G step's
    backward ("element 0 of tensors does not require grad", the H200 bench of 2026-11-29; this CPU's torch
    guards both). So the D step calls G with grad off, and the G step with it on."""
    from trainer.config import NetConfig, TrainConfig
    from trainer.loop import Dist, make_optimizer, networks_step_context, train_step
    from trainer.networks import build_networks

    net = NetConfig(max_res=8, z_dim=16, fmap_base=64, fmap_max=16)
    G, D = build_networks(net)
    grad_on: list[bool] = []
    G.register_forward_pre_hook(lambda *_: grad_on.append(torch.is_grad_enabled()))
    cfg = TrainConfig()
    gen = torch.Generator().manual_seed(0)
    ctx = networks_step_context(G, D, net, cfg, torch.device("cpu"), gen, Dist())
    opt_G, opt_D = make_optimizer(G, 1e-3, cfg, "progan"), make_optimizer(D, 1e-3, cfg, "progan")
    stats = train_step(ctx, torch.rand(8, 3, 8, 8) * 2 - 1, 8, 1.0, opt_G, opt_D)
    assert grad_on == [False, True]  # the D step's fakes, then the G step's
    assert all(torch.isfinite(v) for v in stats.values())


def test_compile_keeps_compiling_as_a_run_grows(
    faces_dir: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--compile from 4 to 32 px: seven phases, each compiling G's and D's forward in new forms (another
    resolution, a fade or not, with and without grad), past dynamo's default limit of 8 forms, after which
    the rest of a run trained eagerly with a warning only. Every phase compiles its own: 4 forms each."""
    import functools

    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counter))
    argv = ["train", "--preset", "tiny", "--quiet", "--data", str(faces_dir), "--max-res", "32", "--compile"]
    argv += ["--fade-kimg", "0.032", "--stab-kimg", "0.032"]
    argv += ["--out", str(tmp_path), "--cache-dir", str(cache_dir)]
    # from the default, whatever ran before, and back after (monkeypatch's undo would delete the setting,
    # which a dynamo config then hides from every later test)
    with torch._dynamo.config.patch(recompile_limit=8):
        assert main(argv) == 0
    torch._dynamo.reset()
    (run,) = tmp_path.iterdir()
    assert Checkpoint.load(run).res == 32
    assert counter.frame_count == 4 * 7, counter.frame_count


# a process held to 1 GiB more address space than it has once torch is loaded: its allocations fail for real
LIMITED = """
import resource, sys
import torch
from trainer.cli import main
torch.zeros(1000).sum()
vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, vm + 2**30))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the address-space limit read from /proc")
def test_running_out_of_memory_says_so_and_a_smaller_minibatch_goes_on(
    faces_dir: Path, tmp_path: Path
) -> None:
    """A step that runs out of memory (for real: a minibatch of a million faces in a process held to 1 GiB
    more address space) ends with a message naming the resolution, the minibatch and what the allocator said;
    the checkpoint and config.json stay as they were (a continuation writes its config with its first
    checkpoint) and the command the message gives (`--resume RUN --batch N`: a run takes a new minibatch)
    goes on from it. The --minutes throughput probe says the same before anything is written."""
    cache, out = tmp_path / "cache", tmp_path / "runs"
    common = ["--cache-dir", str(cache), "--quiet"]
    first = ["train", "--data", str(faces_dir), "--preset", "tiny", "--max-res", "8", "--max-steps", "2"]
    assert main([*first, "--out", str(out), *common]) == 0
    (run,) = out.iterdir()
    before = {name: (run / name).read_bytes() for name in ("checkpoint.pt", "config.json")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def limited(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-c", LIMITED, *args, *common]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)

    r = limited("train", "--resume", str(run), "--batch", str(2**20), "--max-steps", "4")
    assert r.returncode == 2, r.stderr
    assert "error: out of memory at 4x4 with minibatch 1048576 on cpu (DefaultCPUAllocator: can't" in r.stderr
    assert f"The last checkpoint (kimg 0.02) is in {run}: continue it with a smaller minibatch" in r.stderr
    said = r.stderr.split("python -m trainer ")[1].split()
    assert said == ["train", "--resume", str(run), "--batch", "524288"]
    assert {name: (run / name).read_bytes() for name in before} == before  # config.json: as checkpoint.pt
    assert (
        main([*said[:-1], "8", "--max-steps", "4", *common]) == 0
    )  # the command, with a minibatch that fits
    ck = Checkpoint.load(run)
    assert ck.cur_nimg == 2 * 8 + 2 * 8 and ck.train.batch(4) == 8
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["default_batch"] == 8 and [r["from_kimg"] for r in config["resumes"]] == [0.016]

    fresh = tmp_path / "fresh"
    r = limited(*first[:-2], "--minutes", "5", "--batch", str(2**20), "--out", str(fresh))
    assert r.returncode == 2, r.stderr
    assert "the throughput probe ran out of memory at 4x4 with minibatch 1048576 on cpu" in r.stderr
    assert "nothing was trained or written. Start again with --batch 524288" in r.stderr
    assert not fresh.exists() or not any(fresh.iterdir())
