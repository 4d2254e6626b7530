"""`train --cuda-graph` on the CPU: what a capture needs from the step (a fade's alpha as a device tensor, no
op that reads back to the host, under --compile nothing left to compile), the eager twin its first replay is
checked against (eager under --compile too), the check itself, the clear refusals, and a graphed run's
checkpoint resuming anywhere. The capture and replay themselves need a
CUDA GPU (scripts/gpu_bench.sh measures them when a session is lent one)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.eval_frame import OptimizedModule
from torch._dynamo.testing import CompileCounterWithBackend
from torch.utils._python_dispatch import TorchDispatchMode

from trainer.checkpoint import Checkpoint
from trainer.cli import main
from trainer.config import NetConfig, TrainConfig, preset
from trainer.graphstep import (
    GraphedStep,
    adopt,
    agreement,
    check_graph_run,
    flat_weights,
    networks,
    twin_step,
)
from trainer.loop import Dist, LoopStep, make_optimizer, networks_step_context
from trainer.networks import build_networks


def loop_step(
    faces_dir: Path, cache_dir: Path, seed: int = 0, ema_beta: float = 0.9, compile: bool = False
) -> LoopStep:
    """A tiny 8 px step on 512 real faces (fp32 on the CPU, where the same ops give the same bits); with
    `compile`, G and D compiled as `train --compile` compiles them."""
    from trainer.data import load_images

    net_kw, train_kw = preset("tiny")
    net = NetConfig(max_res=8, **net_kw)
    cfg = dataclasses.replace(TrainConfig(**train_kw), compile=compile)
    torch.manual_seed(seed)
    G, D = build_networks(net)
    G_ema = build_networks(net)[0].requires_grad_(False)
    G_ema.load_state_dict(G.state_dict())
    gen = torch.Generator().manual_seed(seed)
    c = networks_step_context(G, D, net, cfg, torch.device("cpu"), gen, Dist())
    images = torch.from_numpy(np.array(load_images(faces_dir, 8, cache_dir=cache_dir, progress=False)))
    opt_G, opt_D = (make_optimizer(m, 1e-3, cfg, "progan") for m in (G, D))
    return LoopStep(c, G, G_ema, images, 8, 8, opt_G, opt_D, ema_beta, True, False)


def state_of(step: LoopStep) -> list[torch.Tensor]:
    """Every number the step's state holds: weights, Adam's moments and counts, the generator."""
    out = [t.detach().clone() for m in networks(step) for t in m.state_dict().values()]
    for opt in (step.opt_G, step.opt_D):
        out += [v.clone() for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    return out + [step.c.gen.get_state()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_fade_with_a_tensor_alpha_is_the_same_step(faces_dir: Path, cache_dir: Path) -> None:
    """A graphed fade passes alpha as a 0-d device tensor (written before each replay): the reals' fade, G's
    and D's blends and the penalty take it as the same function as the float."""
    by_float, by_tensor = loop_step(faces_dir, cache_dir), loop_step(faces_dir, cache_dir)
    for alpha in (0.3, 0.75):
        got = by_tensor(torch.tensor(alpha))
        want = by_float(alpha)
        assert got.keys() == want.keys()
        for k in want:
            assert torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-6), k
    for a, b in zip(flat_weights(by_tensor), flat_weights(by_float), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    # and alpha matters: another value is another step
    other = loop_step(faces_dir, cache_dir)
    other(0.9)
    assert not torch.allclose(flat_weights(other)[1], flat_weights(by_float)[1])


def test_the_twin_takes_the_same_step_on_its_own_state(faces_dir: Path, cache_dir: Path) -> None:
    """The check's eager twin copies weights, Adam state and generator: stepping it leaves the step's own
    state bit for bit as it was (Adam's load_state_dict alone would share the moments), and the step then
    taken on the original agrees with it exactly on the CPU."""
    step = loop_step(faces_dir, cache_dir)
    for _ in range(2):  # Adam state to copy
        step(0.5)
    twin, before, kept = twin_step(step), flat_weights(step), state_of(step)
    want = twin(0.5)
    assert same(state_of(step), kept)
    got = step(0.5)
    assert agreement(step, got, twin, want, before) == []
    assert same(state_of(step), state_of(twin))


def test_the_check_finds_a_wrong_replay(faces_dir: Path, cache_dir: Path) -> None:
    """What a broken capture would do, each found: draws that do not advance (a generator not registered with
    the graph), a missing EMA update, another alpha baked in, an Adam count stepped twice; `adopt` then puts
    the twin's state back, so nothing of the wrong step is kept."""

    def case(run) -> list[str]:  # type: ignore[no-untyped-def]
        step = loop_step(faces_dir, cache_dir)
        step(0.5)
        twin, before = twin_step(step), flat_weights(step)
        want = twin(0.5)
        got = run(step)
        why = agreement(step, got, twin, want, before)
        adopt(step, twin)
        assert same(state_of(step), state_of(twin))
        return why

    def stale_draws(step: LoopStep) -> dict[str, torch.Tensor]:
        state = step.c.gen.get_state()
        out = step(0.5)
        step.c.gen.set_state(state)
        return out

    def no_ema(step: LoopStep) -> dict[str, torch.Tensor]:
        return dataclasses.replace(step, ema_beta=1.0)(0.5)

    def twice(step: LoopStep) -> dict[str, torch.Tensor]:
        step(0.5)
        return step(0.5)

    assert any("generator" in w for w in case(stale_draws))
    assert any(w.startswith("G_ema's update") for w in case(no_ema))
    assert any("loss_D" in w or "score" in w for w in case(lambda s: s(0.05)))
    assert any("Adam's step count" in w for w in case(twice))
    assert case(lambda s: s(0.5)) == []


def test_cuda_graph_refusals(faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--cuda-graph where it cannot capture: a clear message, a non-zero exit, no run folder."""
    out = tmp_path / "runs"
    rc = main(
        ["train", "--data", str(faces_dir), "--preset", "tiny", "--max-res", "8"]
        + ["--out", str(out), "--quiet", "--cuda-graph"]
    )
    assert rc != 0 and "--cuda-graph needs a CUDA GPU" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    cuda = torch.device("cuda")  # the checks read the device's type only
    check_graph_run(TrainConfig(cuda_graph=True), cuda, 1)
    check_graph_run(TrainConfig(cuda_graph=True, compile=True), cuda, 1)  # the graph replays compiled kernels
    for cfg, world, said in [
        (TrainConfig(cuda_graph=True, amp="fp16"), 1, "--amp fp16"),
        (TrainConfig(cuda_graph=True), 2, "one GPU"),
    ]:
        with pytest.raises(ValueError, match=said):
            check_graph_run(cfg, cuda, world)
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedStep(loop_step(faces_dir, tmp_path / "cache"), fade=True)


def test_the_warm_up_compiles_what_the_capture_replays(
    faces_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under --compile a capture must find every compiled form ready (dynamo compiling inside a capture reads
    the CUDA generator's seed, which the capture refuses): a phase's first eager step compiles G and D in
    every form the step calls, and the captured call (a fade's alpha the graph's device tensor, a
    stabilisation's the float) compiles nothing more. aot_eager stands in for inductor (the same dynamo
    capture and guards, no C++ compiler needed on the CPU)."""
    counter = CompileCounterWithBackend("aot_eager")
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counter))
    for warm, captured in ((0.5, torch.ones(()) / 2), (1.0, 1.0)):
        step = loop_step(faces_dir, cache_dir, compile=True)
        before = counter.frame_count
        step(warm)  # the warm-up (GraphedStep's run three)
        compiled = counter.frame_count
        assert compiled > before, "the networks did not run compiled"
        step(captured)  # what the capture calls
        assert counter.frame_count == compiled, f"the captured call compiled (alpha {captured})"


def test_a_compiled_step_is_held_to_the_eager_twin(
    faces_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --compile --cuda-graph the check's twin runs the eager networks (copies of the compiled ones'
    modules), the compiled step agrees with it, and `adopt` writes the twin's state into the very tensors
    the compiled networks train."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    step = loop_step(faces_dir, cache_dir, compile=True)
    assert isinstance(step.c.G, OptimizedModule) and isinstance(step.c.D, OptimizedModule)
    step(0.5)
    twin, before = twin_step(step), flat_weights(step)
    G, D, _ = networks(twin)
    assert twin.c.G is G and twin.c.D is D and not isinstance(D, OptimizedModule)
    want = twin(0.5)
    got = step(0.5)
    assert agreement(step, got, twin, want, before) == []
    step(0.5)  # one step more than the twin: adopt puts it back
    adopt(step, twin)
    assert same(state_of(step), state_of(twin))
    assert same(
        [t.detach() for t in step.c.D.parameters()], [t.detach() for t in networks(twin)[1].parameters()]
    )


class HostReads(TorchDispatchMode):
    """The ops a step dispatches that read a tensor back to the host: on CUDA each is a device sync, which a
    CUDA graph's capture refuses (an `.item()`, a `bool()` of a tensor, a shape that depends on values)."""

    READS = {"_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "equal", "unique"}

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops += 1
        if func.overloadpacket.__name__ in self.READS:
            self.found.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_the_captured_step_reads_nothing_back(faces_dir: Path, cache_dir: Path) -> None:
    """Everything a graph captures (drawing and fading the reals, both steps with the penalty's double
    backward, fused Adam as on CUDA, the EMA), in a fade with alpha as a tensor and in a stabilisation,
    dispatches no op that would wait for the device; `float()` of a tensor, as a mutant would add, does."""
    step = loop_step(faces_dir, cache_dir)
    for name in ("opt_G", "opt_D"):
        params = getattr(step, name).param_groups[0]["params"]
        setattr(step, name, torch.optim.Adam(params, lr=1e-3, betas=(0.0, 0.99), fused=True))
    step(0.5)  # Adam's state exists, as after the warm-up
    for alpha in (torch.tensor(0.5), 1.0):
        with HostReads() as reads:
            step(alpha)
        assert reads.ops > 500 and reads.found == [], (alpha, reads.found)
    with HostReads() as reads:
        float(step(1.0)["loss_D"])
    assert reads.found == ["_local_scalar_dense"]


def test_a_graphed_runs_checkpoint_resumes_anywhere(faces_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    """A --cuda-graph run saves `cuda_graph` in its config and Adam `capturable` (its step count on the GPU),
    neither of which a CPU can run: such a checkpoint resumes on the CPU all the same (the flag holds for the
    command that gives it), and exactly (capturable changes where Adam keeps its count, not the maths)."""
    common = ["train", "--data", str(faces_dir), "--preset", "tiny", "--max-res", "8", "--quiet"]
    common += ["--cache-dir", str(cache_dir)]
    assert main([*common, "--out", str(tmp_path / "a"), "--max-steps", "8"]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--max-steps", "6"]) == 0  # inside the 8 px fade
    (run_a,), (run_b,) = (tmp_path / "a").iterdir(), (tmp_path / "b").iterdir()
    ck = Checkpoint.load(run_b)
    ck.train_cfg["cuda_graph"] = True
    for opt in ck.opt.values():
        for group in opt["param_groups"]:
            group["capturable"] = True
    ck.save(run_b / "checkpoint.pt")
    assert main(["train", "--resume", str(run_b), "--max-steps", "8", "--quiet"]) == 0
    a, b = Checkpoint.load(run_a), Checkpoint.load(run_b)
    assert a.steps == b.steps == 8
    for key in ("G", "D", "G_ema"):
        for name, t in a.nets[key].items():
            assert torch.equal(t, b.nets[key][name]), f"{key}.{name}"
