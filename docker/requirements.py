"""Print pyproject.toml's dependencies plus those of the given extras, one requirement a line.

The Dockerfiles install from this so an image gets exactly what pyproject.toml asks for, and nothing of
the other extras (the service image has no torch):

    python docker/requirements.py pyproject.toml --extra serve --without onnxruntime onnxruntime-gpu
"""

from __future__ import annotations

import argparse
import re

import tomllib


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of `-_.` as one `-`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"cannot read a package name in {requirement!r}")
    return canonical(match.group(1))


def requirements(pyproject: dict, extras: list[str], without: set[str]) -> list[str]:
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(
            f"error: no extra {', '.join(unknown)} in pyproject.toml (has {', '.join(optional)})"
        )
    lines = list(project.get("dependencies", []))
    for extra in extras:
        lines += optional[extra]
    return [r for r in dict.fromkeys(lines) if requirement_name(r) not in without]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject")
    parser.add_argument("--extra", action="append", default=[], help="an optional-dependencies group")
    parser.add_argument("--without", nargs="*", default=[], help="packages to leave out")
    args = parser.parse_args()
    with open(args.pyproject, "rb") as f:
        pyproject = tomllib.load(f)
    print("\n".join(requirements(pyproject, args.extra, {canonical(n) for n in args.without})))


if __name__ == "__main__":
    main()
