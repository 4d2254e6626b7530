"""Split what a GPU lease needs into device calls that each fit the 64 MiB a call carries.

Every call sends the checkout (tracked files and untracked ones git does not ignore) plus the paths named
in `carry`. A training round needs the data archive (69 MiB for the 256 px faces) and the model's
checkpoint and weights (44 MiB): more than one call holds. `plan` measures the checkout, splits the
archive into one part per call, so that the calls before the last travel without the model's large files
(moved aside by `aside`) and the last one with them (`back`), and prints each call's carry and command.
The parts land in /tmp/data on the machine, which stays warm between calls (30 s); the last call joins
them, checks the sha256 and runs the round. Files named with `--also` (a compile cache from the last
lease) travel whole, each in a call with room for it or in one more call before the last, and land in
/tmp/carry.

    python scripts/gpu_carry.py plan .gpu/faces-178.zip --hold models/celeba/checkpoint.safetensors \\
        models/celeba/weights.bin --also .gpu/compile-cache.bin
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
CARRIED = "/tmp/carry"  # where the --also files land on the machine


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


def place_whole(rooms: list[int], sizes: list[int], room_extra: int) -> tuple[list[list[int]], int]:
    """Which call carries each whole file (indices into `sizes`), given each planned call's room left: the
    first call with room, else calls added before the last one, `room_extra` each. Returns the files of
    each planned call, then of each added call (after the planned ones in the list), and how many were
    added."""
    rooms = list(rooms)
    placed: list[list[int]] = [[] for _ in rooms]
    added: list[list[int]] = []
    added_room: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):  # the largest first
        size = sizes[i]
        if size > room_extra and size > max(rooms, default=0):
            raise CarryError(
                f"a carried file of {size / MIB:.1f} MiB fits no call ({room_extra / MIB:.1f} MiB of room "
                "beside the checkout): make it smaller"
            )
        spot = next((c for c, r in enumerate(rooms) if r >= size), None)
        if spot is not None:
            placed[spot].append(i)
            rooms[spot] -= size
            continue
        spot = next((c for c, r in enumerate(added_room) if r >= size), None)
        if spot is None:
            added.append([])
            added_room.append(room_extra)
            spot = len(added) - 1
        added[spot].append(i)
        added_room[spot] -= size
    return placed + added, len(added)


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


def check_not_in_tree(repo: Path, path: Path) -> None:
    """A file that travels in a chosen call must not be part of the checkout, which travels in every one."""
    inside = path.resolve().is_relative_to(repo)  # check-ignore fails on a path outside the checkout
    if inside and subprocess.run(["git", "check-ignore", "-q", str(path.resolve())], cwd=repo).returncode:
        raise CarryError(
            f"{path} is in the checkout and not ignored, so it would travel in every call: move it to .gpu/"
        )


def write_plan(
    repo: Path, archive: Path, hold: list[str], limit: int, margin: int, also: list[Path] | None = None
) -> dict[str, Any]:
    also = also or []
    if not archive.is_file():
        raise CarryError(f"no archive at {archive}: build it with `python -m trainer prepare-data`")
    missing_also = [str(a) for a in also if not a.is_file()]
    if missing_also:
        raise CarryError(f"no file to carry at {', '.join(missing_also)}")
    if len({a.name for a in also}) != len(also):
        raise CarryError("the files to carry must have different names: they land in one folder")
    for path in (archive, *also):
        check_not_in_tree(repo, path)
    missing = [h for h in hold if not (repo / h).is_file()]
    if missing:
        raise CarryError(f"not in the checkout: {', '.join(missing)} (already set aside? run `back` first)")
    tree = tree_bytes(repo)
    held = sum((repo / h).stat().st_size for h in hold)
    sizes = plan_parts(archive.stat().st_size, tree, held, limit, margin)
    early, last = limit - margin - (tree - held), limit - margin - tree
    rooms = [early - s for s in sizes[:-1]] + [last - sizes[-1]]
    whole, n_added = place_whole(rooms, [a.stat().st_size for a in also], early)
    # the calls in the order they run: the archive's early parts, the added calls, the last one
    order = [*range(len(sizes) - 1), *range(len(sizes), len(sizes) + n_added), len(sizes) - 1]
    lease = repo / PLAN.parent
    shutil.rmtree(lease, ignore_errors=True)
    digest = hashlib.sha256()
    calls: list[dict[str, Any]] = []
    with archive.open("rb") as src:
        for i, size in enumerate(sizes):
            blob = src.read(size)
            digest.update(blob)
            folder = lease / f"c{order.index(i) + 1}"
            folder.mkdir(parents=True)
            (folder / f"data.part{i:02d}").write_bytes(blob)
    for n, planned in enumerate(order):
        folder = lease / f"c{n + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        carried = [also[i] for i in whole[planned]]
        for a in carried:
            shutil.copyfile(a, folder / a.name)
        here = str(folder.relative_to(repo))
        steps = ["mkdir -p /tmp/data" + (f" {CARRIED}" if carried else "")]
        part = sizes[planned] if planned < len(sizes) else 0  # the added calls carry no part
        if planned < len(sizes):
            steps.append(f"cp {here}/data.part* /tmp/data/")
        steps += [f"cp {here}/{a.name} {CARRIED}/" for a in carried]
        size = part + sum(a.stat().st_size for a in carried)
        calls.append(
            {
                "carry": [here],
                "bytes": size,
                "also": [a.name for a in carried],
                "travels": (tree if n == len(order) - 1 else tree - held) + size,
                "command": " && ".join(steps),
            }
        )
    joined = f"/tmp/{archive.name}"
    here = calls[-1]["carry"][0]
    (repo / here / "data.sha256").write_text(f"{digest.hexdigest()}  {joined}\n")
    calls[-1]["command"] += (
        f" && cat /tmp/data/data.part* > {joined} && sha256sum -c {here}/data.sha256"
        f" && DATA={joined} <the round's command>"
    )
    plan = {
        "archive": str(archive),
        "joined": joined,
        "hold": hold,
        "tree": tree,
        "held": held,
        "also": [str(a) for a in also],
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
    p.add_argument(
        "--also",
        nargs="*",
        type=Path,
        default=[],
        help=f"files that travel whole, outside the checkout or ignored by git, landing in {CARRIED}",
    )
    p.add_argument("--limit-mib", type=float, default=LIMIT / MIB)
    p.add_argument("--margin-mib", type=float, default=MARGIN / MIB)
    sub.add_parser("aside", help="move the held files to .gpu/hold (before the first call)")
    sub.add_parser("back", help="move them back into the checkout (before the last call)")
    args = ap.parse_args(argv)
    repo = args.repo.resolve()
    try:
        if args.cmd == "plan":
            plan = write_plan(
                repo,
                args.archive,
                args.hold,
                int(args.limit_mib * MIB),
                int(args.margin_mib * MIB),
                args.also,
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
                also = f", with {', '.join(call['also'])}" if call["also"] else ""
                print(f"call {i + 1}: {call['travels'] / MIB:.1f} MiB travels{also}{step}")
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
