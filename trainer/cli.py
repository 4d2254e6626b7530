"""`python -m trainer {train,prepare-data,export,evaluate}`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.config import PRESETS, NetConfig, TrainConfig, is_pow2, preset

if TYPE_CHECKING:
    from trainer.checkpoint import Checkpoint

log = logging.getLogger("trainer")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        help="folder of images (recursive), CelebA's img_align_celeba, CIFAR-10 batches, or .npy/.npz",
    )
    p.add_argument(
        "--out",
        help="parent folder of the numbered run folders (default: runs; a resumed run continues in its own)",
    )
    p.add_argument(
        "--max-res",
        type=int,
        default=None,
        help="final resolution, a power of two (default: 256; tiny: 16; with --resume models/NAME, the "
        "model's own: give a larger one to grow it)",
    )
    p.add_argument(
        "--preset",
        help="paper | fast | gpu | cpu | tiny (default: fast; with --resume models/NAME, the model's own)",
    )
    p.add_argument(
        "--arch", choices=["progan", "dcgan"], default="progan", help="dcgan: the fixed-resolution baseline"
    )
    p.add_argument(
        "--loss", choices=["wgan-gp", "logistic"], help="default wgan-gp (the paper); logistic uses R1"
    )
    p.add_argument("--z-dim", type=int)
    p.add_argument("--fmap-base", type=int)
    p.add_argument("--fmap-max", type=int)
    p.add_argument("--start-res", type=int)
    p.add_argument("--fade-kimg", type=float, help="kimg per fade-in phase")
    p.add_argument("--stab-kimg", type=float, help="kimg per stabilisation phase")
    p.add_argument("--first-kimg", type=float, help="kimg at the start resolution (default: --stab-kimg)")
    p.add_argument("--total-kimg", type=float, help="DCGAN budget (default: the ProGAN schedule's total)")
    p.add_argument(
        "--batch",
        type=int,
        help="one minibatch size for every resolution (with --resume RUN: from where the run stopped on, "
        "as after running out of memory)",
    )
    p.add_argument("--lr", type=float, help="one learning rate for every resolution")
    p.add_argument("--gp-lambda", type=float)
    p.add_argument("--r1-gamma", type=float)
    p.add_argument("--label-smoothing", type=float, help="one-sided: real target 1 - s (logistic loss)")
    p.add_argument("--spectral-norm", action="store_true", help="spectral normalisation of D's layers")
    p.add_argument(
        "--fused-scale",
        action=argparse.BooleanOptionalAction,
        help="G's up-sample + conv as one 4x4 stride-2 transposed conv (the same function) and D's conv + "
        "down-sample as one strided conv (activation after it, as the official fused_scale): fewer FLOPs, "
        "the same parameters (default: the preset's, on for gpu; a resume keeps the checkpoint's unless given)",
    )
    p.add_argument("--ema-beta", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--amp", choices=["bf16", "fp16", "off"], help="CUDA mixed precision (default bf16)")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last memory format on CUDA (default on; --no-channels-last for NCHW)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile G and D")
    p.add_argument(
        "--compile-cache",
        metavar="FILE",
        help="with --compile: load torch.compile's caches from FILE first (if it exists) and write them back "
        "with every checkpoint, so that another machine with the same torch, Triton and GPU compiles from "
        "them (on CUDA the Triton kernels travel too; on a CPU the C++ is rebuilt, so little is saved there)",
    )
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="capture each phase's whole step once as a CUDA graph and replay it (one launch a step); the "
        "first replay is checked against the eager step, which trains on if they differ (CUDA, one GPU; "
        "with --compile it replays the compiled kernels)",
    )
    p.add_argument("--no-flips", action="store_true", help="turn off random horizontal flips")
    p.add_argument("--tick-kimg", type=float, help="stats, grid, plot and checkpoint interval")
    p.add_argument(
        "--max-steps",
        type=int,
        help="stop once the run has taken this many steps in all, a resumed run's earlier steps included (smoke runs)",
    )
    p.add_argument(
        "--minutes",
        type=float,
        help="wall-clock budget: a fresh run plans every phase's kimg to fit it (from a throughput probe); "
        "any run stops cleanly at the deadline with checkpoint, snapshot, grid and stats",
    )
    p.add_argument(
        "--grow-fraction",
        type=float,
        default=0.4,
        help="with --minutes: share of the time for the phases before the final stabilisation (default 0.4)",
    )
    p.add_argument("--checkpoint-minutes", type=float, help="wall-clock checkpoint interval (default 10)")
    p.add_argument("--cifar-class", help="CIFAR-10 data: keep one class (e.g. automobile or car)")
    p.add_argument(
        "--cache-dir", help="decoded-image cache (default: $PROGAN_CACHE/data or ~/.cache/progan/data)"
    )
    p.add_argument("--allow-upscale", action="store_true", help="train above the data's native resolution")
    p.add_argument("--resume", help="checkpoint.pt or run folder to continue exactly where it stopped")
    p.add_argument(
        "--extend-kimg", type=float, help="with --resume: train this many kimg more at the final resolution"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the resolved config and the schedule, then exit"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def resolve_configs(a: argparse.Namespace) -> tuple[NetConfig, TrainConfig]:
    net_kw, train_kw = preset(a.preset)
    net_kw["arch"] = a.arch
    net_kw["max_res"] = a.max_res or (16 if a.preset == "tiny" else 256)
    for arg, key, target in [
        ("z_dim", "z_dim", net_kw),
        ("fmap_base", "fmap_base", net_kw),
        ("fmap_max", "fmap_max", net_kw),
        ("loss", "loss", train_kw),
        ("start_res", "start_res", train_kw),
        ("fade_kimg", "fade_kimg", train_kw),
        ("stab_kimg", "stab_kimg", train_kw),
        ("first_kimg", "first_kimg", train_kw),
        ("total_kimg", "total_kimg", train_kw),
        ("gp_lambda", "gp_lambda", train_kw),
        ("r1_gamma", "r1_gamma", train_kw),
        ("label_smoothing", "label_smoothing", train_kw),
        ("ema_beta", "ema_beta", train_kw),
        ("seed", "seed", train_kw),
        ("amp", "amp", train_kw),
        ("tick_kimg", "tick_kimg", train_kw),
        ("max_steps", "max_steps", train_kw),
        ("checkpoint_minutes", "checkpoint_minutes", train_kw),
    ]:
        if getattr(a, arg) is not None:
            target[key] = getattr(a, arg)
    if a.spectral_norm:
        net_kw["spectral_norm"] = True
    if a.fused_scale is not None:
        net_kw["fused_scale"] = a.fused_scale
    if a.batch is not None:
        train_kw.update(batch_by_res={}, default_batch=a.batch)
    if a.lr is not None:
        train_kw.update(lr_by_res={}, default_lr=a.lr, dcgan_lr=a.lr)
    if a.channels_last is not None:
        train_kw["channels_last"] = a.channels_last
    if a.no_flips:
        train_kw["flips"] = False
    if a.compile:
        train_kw["compile"] = True
    if a.cuda_graph:
        train_kw["cuda_graph"] = True
    if not is_pow2(net_kw["max_res"]):
        raise ValueError(
            f"--max-res must be a power of two >= 4 (4, 8, 16, ... 1024), got {net_kw['max_res']}"
        )
    if a.arch == "dcgan" and net_kw["max_res"] < 8:
        raise ValueError("the DCGAN baseline needs --max-res 8 or more")
    if (
        train_kw.get("label_smoothing", 0)
        and train_kw.get("loss", "wgan-gp") == "wgan-gp"
        and a.arch == "progan"
    ):
        raise ValueError("--label-smoothing applies to the logistic loss; add --loss logistic")
    return NetConfig(**net_kw), TrainConfig(**train_kw)


def runtime_overrides(a: argparse.Namespace) -> dict[str, Any]:
    """Settings that change speed or bookkeeping but not the maths, and the minibatch (to fit the device's
    memory: a run that ran out of it goes on with a smaller one; the schedule, in images, stays): a resumed
    run takes them from the command line when given (everything else comes from the checkpoint)."""
    out: dict[str, Any] = {}
    for arg in ("amp", "tick_kimg", "checkpoint_minutes", "channels_last"):
        if getattr(a, arg) is not None:
            out[arg] = getattr(a, arg)
    if a.batch is not None:
        out.update(batch_by_res={}, default_batch=a.batch)
    if a.compile:
        out["compile"] = True
    if a.cuda_graph:
        out["cuda_graph"] = True
    return out


def check_network_flags(a: argparse.Namespace, ck: Checkpoint) -> None:
    """A resumed checkpoint brings its own network: network flags that disagree with it are an error, not
    silently ignored (nothing is trained or written)."""
    have = dataclasses.asdict(ck.net)  # older checkpoints: the defaults for what they did not record
    given = {"z_dim": a.z_dim, "fmap_base": a.fmap_base, "fmap_max": a.fmap_max}
    if a.arch != "progan":
        given["arch"] = a.arch
    if a.spectral_norm:
        given["spectral_norm"] = True
    wrong = [(k, v, have.get(k)) for k, v in given.items() if v is not None and v != have.get(k)]
    if wrong:
        said = ", ".join(f"--{k.replace('_', '-')} {v} (it has {h})" for k, v, h in wrong)
        raise ValueError(
            f"{a.resume} was trained with another network than the command line asks for: {said}. "
            "A resumed checkpoint keeps its network; drop these flags, or train a new model without --resume"
        )


# flags of the schedule and the losses, which a run's checkpoint keeps on resume (TrainConfig field names)
RUN_KEEPS = (
    "start_res", "fade_kimg", "stab_kimg", "first_kimg", "total_kimg", "loss", "gp_lambda", "r1_gamma",
    "label_smoothing", "ema_beta", "seed",
)  # fmt: skip


def check_run_flags(a: argparse.Namespace, ck: Checkpoint) -> None:
    """A run's checkpoint continues on its own schedule: flags that would change it (the preset, --max-res,
    the learning rate, kimg, loss settings) and disagree with it are an error rather than silently ignored;
    the same values are fine (scripts repeat them). Nothing is trained or written. --batch may change (a
    run that ran out of memory goes on with a smaller minibatch: `runtime_overrides`)."""
    train, net = ck.train, ck.net
    res = [r for r in net.resolutions if r >= train.start_res] if net.arch == "progan" else [net.max_res]
    wrong = []
    if a.preset is not None and a.preset != train.preset:
        wrong.append(f"--preset {a.preset} (it has {train.preset})")
    if a.max_res is not None and a.max_res != net.max_res:
        wrong.append(f"--max-res {a.max_res} (it has {net.max_res})")
    for key in RUN_KEEPS:
        value = getattr(a, key)
        if value is not None and value != getattr(train, key):
            wrong.append(f"--{key.replace('_', '-')} {value} (it has {getattr(train, key)})")
    run_lr = (lambda r: train.dcgan_lr) if net.arch == "dcgan" else train.lr
    had = sorted({run_lr(r) for r in res})
    if a.lr is not None and had != [a.lr]:
        wrong.append(f"--lr {a.lr} (it has {', '.join(f'{h:g}' for h in had)})")
    if a.no_flips and train.flips:
        wrong.append("--no-flips (it trains with flips)")
    run_dir = Path(ck.path).parent
    if a.out is not None and Path(a.out).resolve() != run_dir.parent.resolve():
        wrong.append(f"--out {a.out} (it continues in its own folder, {run_dir})")
    if wrong:
        raise ValueError(
            f"{a.resume} is a run, which continues on its own schedule, but the command line asks for "
            f"another: {', '.join(wrong)}. Drop these flags (--amp, --[no-]channels-last, --compile, "
            "--cuda-graph, --tick-kimg, --checkpoint-minutes, --minutes, --max-steps and --extend-kimg may "
            "change); to train it on other terms, export it (python -m trainer export RUN --out models/NAME) "
            "and --resume models/NAME"
        )


def switch_fused_scale(net: NetConfig, fused: bool | None) -> NetConfig:
    """A resumed checkpoint may change its layers' form (`--fused-scale` / `--no-fused-scale`): the
    parameters are the same either way, and so is G's function; D's pooled blocks apply their activation after
    the pooling rather than before, which D relearns (docs/training-log.md measures the jump)."""
    if fused is None or fused == net.fused_scale:
        return net
    flag, form = ("--fused-scale", "fused") if fused else ("--no-fused-scale", "unfused")
    where = "after the pooling" if fused else "before the pooling"
    if os.environ.get("RANK", "0") == "0":  # under torchrun once, not once a process (no process group yet)
        print(
            f"{flag}: the checkpoint's network trains {form} from here: the same parameters and the same G; "
            f"D's pooled blocks apply their activation {where}",
            file=sys.stderr,
        )
    return dataclasses.replace(net, fused_scale=fused)


def check_something_to_train(path: str, ck: Checkpoint, net: NetConfig, cfg: TrainConfig) -> None:
    """A run that already finished its schedule (or its --max-steps) has nothing left to train: an error
    before the data is decoded or anything of the run folder is rewritten, saying how to go on."""
    from trainer.config import phase_start_nimg, schedule

    phases = schedule(net, cfg)
    end = phase_start_nimg(phases, len(phases))
    shown = ck.cur_nimg or 0
    steps_done = cfg.max_steps is not None and ck.steps >= cfg.max_steps
    if shown < end and not steps_done:
        return
    why = (
        f"took its {cfg.max_steps} steps (--max-steps)"
        if steps_done and shown < end
        else f"finished its schedule at {shown / 1000:g} kimg"
    )
    raise ValueError(
        f"{path} {why}: nothing to train. --extend-kimg K trains its final resolution K kimg longer"
        + (", with a larger --max-steps" if steps_done else "")
        + "; to train it on other terms, export it and --resume the model folder"
    )


def resume_defaults(a: argparse.Namespace, ck: Checkpoint) -> None:
    """A model folder trains further with its own preset and at its own resolution unless the command line
    says otherwise (its train_cfg names the preset; one this trainer no longer has falls back to fast)."""
    if not ck.is_model:
        return
    if a.preset is None:
        had = ck.train_cfg.get("preset")
        a.preset = had if had in PRESETS else None
    if a.max_res is None:
        a.max_res = ck.res


def cmd_train(a: argparse.Namespace) -> int:
    from trainer.config import schedule  # noqa: F401  (validates start_res)
    from trainer.loop import describe_schedule, plan_run, train

    if a.minutes is not None and a.minutes <= 0:
        raise ValueError(f"--minutes must be positive, got {a.minutes}")
    if a.batch is not None and a.batch < 1:
        raise ValueError(f"--batch must be at least 1 image, got {a.batch}")
    if a.resume is None and not a.data:
        raise ValueError("--data is required (or --resume a checkpoint)")
    if a.compile_cache is not None and not a.compile:
        raise ValueError("--compile-cache holds what --compile makes: add --compile, or drop --compile-cache")
    if a.extend_kimg is not None and a.extend_kimg <= 0:
        raise ValueError(f"--extend-kimg must be positive, got {a.extend_kimg}")
    if a.extend_kimg is not None and a.minutes is not None and a.resume is None:
        raise ValueError(
            "--extend-kimg and --minutes both set how long a new run trains; --minutes plans every phase "
            "to fit the time: give one of them"
        )
    ck = None
    if a.resume is not None:  # loaded and resolved here, once: the loop trains with these configs
        from trainer.checkpoint import Checkpoint

        ck = Checkpoint.load(a.resume)
        check_network_flags(a, ck)
        if not ck.is_model:
            check_run_flags(a, ck)
        resume_defaults(a, ck)
    a.preset = a.preset or "fast"
    net, cfg = resolve_configs(a)
    overrides = runtime_overrides(a)
    if ck is not None:
        from trainer.loop import resolve_resume

        if ck.is_model and not a.data:
            raise ValueError(f"--data is required to train {a.resume} further (the faces to train on)")
        net, cfg = resolve_resume(ck, net, cfg, a.extend_kimg or 0.0, overrides)
        net = switch_fused_scale(net, a.fused_scale)
        a.data = a.data or ck.data
        if not ck.is_model and not a.dry_run:
            check_something_to_train(a.resume, ck, net, cfg)
    elif a.extend_kimg is not None:  # a new run: its final stabilisation gets that much longer
        cfg = dataclasses.replace(cfg, extra_kimg=a.extend_kimg)
    kw = dict(
        cache_dir=a.cache_dir,
        cifar_class=a.cifar_class,
        allow_upscale=a.allow_upscale,
        compile_cache=a.compile_cache,
    )
    if a.dry_run:
        if ck is None or ck.is_model:  # a run's own data may live on another machine
            from trainer.data import check_resolution, find_source

            check_resolution(find_source(a.data, a.cifar_class), net.max_res, a.allow_upscale)
        print(json.dumps({"net": dataclasses.asdict(net), "train": cfg.to_json(), "data": a.data}, indent=2))
        if a.minutes is None or (ck is not None and not ck.is_model):
            print(describe_schedule(net, cfg))
        else:  # the plan this machine would make: data decode and throughput probe, no training
            print(f"planning {a.minutes:g} minutes on this machine (decode, throughput probe) …", flush=True)
            print(
                plan_run(
                    net,
                    cfg,
                    a.data,
                    resume=ck,
                    progress=not a.quiet,
                    minutes=a.minutes,
                    grow_fraction=a.grow_fraction,
                    **kw,
                )
            )
        return 0
    result = train(
        net,
        cfg,
        a.data,
        a.out or "runs",
        resume=ck,
        progress=not a.quiet,
        minutes=a.minutes,
        grow_fraction=a.grow_fraction,
        **kw,
    )
    state_word = "finished" if result.done else "stopped"
    print(
        f"{state_word} at {result.cur_nimg / 1000:.2f} kimg, {result.res}x{result.res}; run folder: {result.run_dir}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Progressive GAN trainer")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_train_arguments(sub.add_parser("train", help="train a progressive GAN (or the DCGAN baseline)"))
    from trainer import export

    export.add_arguments(
        sub.add_parser("export", help="export per-resolution ONNX generators + manifest.json")
    )
    export.add_metrics_arguments(
        sub.add_parser("add-metrics", help="embed evaluate's metrics_RES.json into a model's manifest.json")
    )
    from trainer import compare, evaluate, prepare

    prepare.add_arguments(
        sub.add_parser("prepare-data", help="one zip of square WebP faces at one resolution, with an index")
    )
    evaluate.add_arguments(sub.add_parser("evaluate", help="FID, KID, MS-SSIM diversity and face rate"))
    compare.add_arguments(
        sub.add_parser(
            "compare-data", help="FID and KID of one image set against another (lossy vs lossless)"
        )
    )
    a = parser.parse_args(argv)
    handlers: dict[str, Any] = {
        "train": cmd_train,
        "export": export.run,
        "add-metrics": export.run_add_metrics,
        "evaluate": evaluate.run,
        "prepare-data": prepare.run,
        "compare-data": compare.run,
    }
    from trainer.checkpoint import CheckpointError
    from trainer.data import DataError
    from trainer.loop import TrainingError
    from trainer.metrics.face_rate import FaceDetectorError
    from trainer.metrics.inception import InceptionError

    user_errors = (ValueError, DataError, CheckpointError, TrainingError, InceptionError, FaceDetectorError)
    try:
        return int(handlers[a.cmd](a) or 0)
    except (*user_errors, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint in the run folder is intact", file=sys.stderr)
        return 130
    finally:
        # a torchrun rank that exits with its gloo/NCCL group still up can abort in the group's teardown
        # ("terminate called without an active exception"): close it while the interpreter is whole
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
