"""`python -m contract [--check] [PATH]`: write the manifest's JSON Schema (default docs/manifest.schema.json)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from contract.manifest import json_schema

DEFAULT = Path(__file__).resolve().parent.parent / "docs" / "manifest.schema.json"


def render() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m contract", description=__doc__)
    p.add_argument("path", nargs="?", type=Path, default=DEFAULT, help="where the schema goes")
    p.add_argument("--check", action="store_true", help="exit 1 if the file differs, write nothing")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not args.path.is_file() or args.path.read_text() != text:
            print(f"{args.path} is out of date: run python -m contract", file=sys.stderr)
            return 1
        return 0
    args.path.write_text(text)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
