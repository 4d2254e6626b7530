"""Split what a GPU lease needs into device calls that each fit the 64 MiB a call carries.

Every call sends the checkout (tracked files and untracked ones git does not ignore) plus the paths named
in `carry`. A training round needs the data archive (69 MiB for the 256 px faces) and the model's
checkpoint and weights (44 MiB): more than one call holds. `plan` measures the checkout, splits the
archive into one part per call, so that the calls before the last travel without the model's large files
(moved aside by `aside`) and the last one with them (`back`), and prints each call's carry and command.
The parts land in /tmp/data on the machine, which stays warm between calls (30 s); the last call joins
them, checks the sha256 and runs the round.

    python scripts/gpu_carry.py plan .gpu/faces-178.zip --hold models/celeba/checkpoint.safetensors \\
        models/celeba/weights.bin
    python scripts/gpu_carry.py aside      # before the first call
    python scripts/gpu_carry.py back       # before the last call (and after the lease, whatever happened)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

MIB = 2**20
LIMIT = 64 * MIB  # what one device call carries: the working tree and the carried paths together
MARGIN = 2 * MIB  # for files that change between planning and the call (docs, a log)
PLAN = Path(".gpu/lease/plan.json")


class CarryError(Exception):
    """What a user got wrong: the message is printed and the script exits 2."""


def plan_parts(archive: int, tree: int, held: int, limit: int = LIMIT, margin: int = MARGIN) -> list[int]:
    """Sizes of the archive's parts, one per call: the calls before the last carry the tree without the
    `held` bytes, the last one carries the whole tree. As few calls as fit; the early calls are filled
    first, so that the last one, which carries the most, keeps what room is left (its part may be empty)."""
    room_early = limit - margin - (tree - held)
    room_last = limit - margin - tree
    if room_last < 0:
        raise CarryError(
            f"the checkout alone is {tree / MIB:.1f} MiB, over the {limit / MIB:.0f} MiB a call carries"
            " (less the margin): ignore or move files out of it"
        )
    if archive <= room_last:
        return [archive]
    if room_early <= 0:
        raise CarryError(
            f"the checkout without the held files is {(tree - held) / MIB:.1f} MiB: no room for the archive"
        )
    n_early = -(-(archive - room_last) // room_early)
    early = [min(room_early, archive - i * room_early) for i in range(n_early)]
    return [*early, archive - sum(early)]


def tree_bytes(repo: Path) -> int:
    """Bytes of the checkout that travels with every call: tracked and untracked files git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout
    paths = {p for p in out.decode().split("\0") if p}
    return sum((repo / p).stat().st_size for p in paths if (repo / p).is_file())


def write_plan(repo: Path, archive: Path, hold: list[str], limit: int, margin: int) -> dict[str, Any]:
    if not archive.is_file():
        raise CarryError(f"no archive at {archive}: build it with `python -m trainer prepare-data`")
    inside = archive.resolve().is_relative_to(repo)  # check-ignore fails on a path outside the checkout
    if inside and subprocess.run(["git", "check-ignore", "-q", str(archive.resolve())], cwd=repo).returncode:
        raise CarryError(
            f"{archive} is in the checkout and not ignored, so it would travel in every call: move it to .gpu/"
        )
    missing = [h for h in hold if not (repo / h).is_file()]
    if missing:
        raise CarryError(f"not in the checkout: {', '.join(missing)} (already set aside? run `back` first)")
    tree = tree_bytes(repo)
    held = sum((repo / h).stat().st_size for h in hold)
    sizes = plan_parts(archive.stat().st_size, tree, held, limit, margin)
    lease = repo / PLAN.parent
    shutil.rmtree(lease, ignore_errors=True)
    digest = hashlib.sha256()
    calls: list[dict[str, Any]] = []
    with archive.open("rb") as src:
        for i, size in enumerate(sizes):
            folder = lease / f"c{i + 1}"
            folder.mkdir(parents=True)
            blob = src.read(size)
            digest.update(blob)
            (folder / f"data.part{i:02d}").write_bytes(blob)
            calls.append({"carry": [str(folder.relative_to(repo))], "bytes": size})
    joined = f"/tmp/{archive.name}"
    (lease / f"c{len(sizes)}" / "data.sha256").write_text(f"{digest.hexdigest()}  {joined}\n")
    for i, call in enumerate(calls):
        here = call["carry"][0]
        if i < len(calls) - 1:
            call["command"] = f"mkdir -p /tmp/data && cp {here}/data.part* /tmp/data/"
            call["travels"] = tree - held + call["bytes"]
        else:
            call["command"] = (
                f"mkdir -p /tmp/data && cp {here}/data.part* /tmp/data/ && cat /tmp/data/data.part* > {joined}"
                f" && sha256sum -c {here}/data.sha256 && DATA={joined} <the round's command>"
            )
            call["travels"] = tree + call["bytes"]
    plan = {
        "archive": str(archive),
        "joined": joined,
        "hold": hold,
        "tree": tree,
        "held": held,
        "calls": calls,
    }
    (repo / PLAN).write_text(json.dumps(plan, indent=1))
    return plan


def move(repo: Path, back: bool) -> list[str]:
    """Move the plan's held files out of the checkout (into .gpu/hold) or back into it."""
    plan_file = repo / PLAN
    if not plan_file.is_file():
        raise CarryError(f"no plan at {PLAN}: run `plan` first")
    moved = []
    for h in json.loads(plan_file.read_text())["hold"]:
        inside, aside = repo / h, repo / ".gpu/hold" / h
        src, dst = (aside, inside) if back else (inside, aside)
        if dst.is_file() and not src.exists():
            continue  # already where it should be
        if not src.is_file():
            raise CarryError(f"neither in the checkout nor set aside: {h}")
        if dst.exists():
            raise CarryError(f"both {src} and {dst} exist: keep the right one by hand")
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)
        moved.append(h)
    return moved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=Path("."), help="the checkout's root (default: here)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="split the archive into one part per call and print the calls")
    p.add_argument("archive", type=Path)
    p.add_argument("--hold", nargs="*", default=[], help="large files that travel only in the last call")
    p.add_argument("--limit-mib", type=float, default=LIMIT / MIB)
    p.add_argument("--margin-mib", type=float, default=MARGIN / MIB)
    sub.add_parser("aside", help="move the held files to .gpu/hold (before the first call)")
    sub.add_parser("back", help="move them back into the checkout (before the last call)")
    args = ap.parse_args(argv)
    repo = args.repo.resolve()
    try:
        if args.cmd == "plan":
            plan = write_plan(
                repo, args.archive, args.hold, int(args.limit_mib * MIB), int(args.margin_mib * MIB)
            )
            print(f"checkout {plan['tree'] / MIB:.1f} MiB, of which held {plan['held'] / MIB:.1f} MiB")
            n = len(plan["calls"])
            for i, call in enumerate(plan["calls"]):
                before = "aside" if i == 0 else ("back" if i == n - 1 else None)
                step = (
                    f"  (first: python scripts/gpu_carry.py {before})"
                    if before and n > 1 and plan["hold"]
                    else ""
                )
                print(f"call {i + 1}: {call['travels'] / MIB:.1f} MiB travels{step}")
                print(f"  carry {json.dumps(call['carry'])}")
                print(f"  {call['command']}")
        else:
            moved = move(repo, back=args.cmd == "back")
            print(f"{'back' if args.cmd == 'back' else 'aside'}: {', '.join(moved) or 'nothing to move'}")
    except CarryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
