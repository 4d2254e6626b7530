"""docs/service.md's settings table says what service.config.Settings does: one row per setting, each
with the default the code has."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from service.config import REPO_ROOT, Settings

DOC = REPO_ROOT / "docs" / "service.md"
ROW = re.compile(r"^\| `FACES_([A-Z0-9_]+)` \| (.+?) \| .+ \|$")


def documented() -> dict[str, str]:
    rows = [ROW.match(line) for line in DOC.read_text().splitlines()]
    return {m.group(1).lower(): m.group(2).strip("`") for m in rows if m}


def same(doc: str, default: Any) -> bool:
    if isinstance(default, bool):
        return doc in (("true", "on") if default else ("false", "off"))
    if isinstance(default, int | float):
        return float(doc) == float(default)
    if isinstance(default, list):
        return doc == (",".join(default) if default else "(empty)")
    if isinstance(default, Path):
        return doc.replace("<repo>", str(REPO_ROOT)) == str(default)
    return doc == str(default)


def test_every_setting_is_documented_with_its_default() -> None:
    docs = documented()
    fields = Settings.model_fields
    assert sorted(docs) == sorted(fields), "docs/service.md's settings table and Settings differ"
    wrong = {name: (docs[name], f.default) for name, f in fields.items() if not same(docs[name], f.default)}
    assert not wrong, f"defaults in docs/service.md differ from the code: {wrong}"
