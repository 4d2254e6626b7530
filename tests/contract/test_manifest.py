"""The contract: the manifest type, its generated JSON Schema (docs/manifest.schema.json) and the seed rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from contract import (
    RNG,
    Manifest,
    ManifestError,
    json_schema,
    read_manifest,
    verify_files,
    z_for_seed,
)
from contract.__main__ import main as write_schema

REPO = Path(__file__).resolve().parents[2]
FOLDERS = sorted(
    p.parent for p in [*REPO.glob("models/*/manifest.json"), *REPO.glob("tests/*/fixtures/*/manifest.json")]
)


def test_docs_schema_is_generated_from_the_type(tmp_path: Path) -> None:
    docs = REPO / "docs" / "manifest.schema.json"
    assert json.loads(docs.read_text()) == json_schema(), (
        "docs/manifest.schema.json is stale: python -m contract"
    )
    assert write_schema(["--check", str(docs)]) == 0
    stale = tmp_path / "old.json"
    stale.write_text("{}")
    assert write_schema(["--check", str(stale)]) == 1


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_shipped_manifest_reads_and_matches_its_files(folder: Path) -> None:
    m = read_manifest(folder)
    verify_files(folder, m)
    raw = json.loads((folder / "manifest.json").read_text())
    jsonschema.validate(raw, json_schema())  # the generated schema accepts what the type accepts
    assert json.loads(m.to_json()) == raw  # reading and writing loses nothing
    assert m.latent.rng == RNG


def _fixture(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    shutil.copytree(REPO / "tests" / "service" / "fixtures" / "tiny", folder)
    return folder


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda m: m.update(schema_version=2), ["schema_version 2", "expected 1"]),
        (lambda m: m["resolutions"].update({"5": m["resolutions"]["4"]}), ["5", "powers of two"]),
        (lambda m: m["input"].update(dtype="float16"), ["input.dtype"]),
        (lambda m: m["output"].update(layout="NCHW"), ["output.layout"]),
        (lambda m: m["input"].update(shape=["N", 7]), ["z_dim=32"]),
        (lambda m: m.update(total_bytes=1), ["total_bytes"]),
        (lambda m: m["weights"].update(file="../weights.bin"), ["weights.file"]),
        (lambda m: m["latent"].update(rng="random.random()"), ["latent.rng"]),
        (lambda m: m.pop("provenance"), ["provenance"]),
    ],
)
def test_a_broken_manifest_names_the_field(tmp_path: Path, change, words: list[str]) -> None:  # type: ignore[no-untyped-def]
    folder = _fixture(tmp_path)
    raw = json.loads((folder / "manifest.json").read_text())
    change(raw)
    (folder / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError) as err:
        read_manifest(folder)
    for word in words:
        assert word in str(err.value), err.value
    cross_field = "total_bytes" in words or "z_dim=32" in words  # rules JSON Schema cannot state
    if raw.get("schema_version") == 1 and not cross_field:  # the JSON Schema rejects it too
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(raw, json_schema())


def test_files_must_match_the_manifest(tmp_path: Path) -> None:
    folder = _fixture(tmp_path)
    m = read_manifest(folder)
    (folder / "G_8.onnx").write_bytes((folder / "G_8.onnx").read_bytes() + b"\0")
    with pytest.raises(ManifestError, match="G_8.onnx: 978 bytes"):
        verify_files(folder, m)
    (folder / "weights.bin").unlink()
    (folder / "G_8.onnx").unlink()
    with pytest.raises(ManifestError, match="G_8.onnx: missing"):
        verify_files(folder, m)


def test_the_seed_rule_is_numpys_default_rng() -> None:
    assert np.array_equal(
        z_for_seed(1234, 512), np.random.default_rng(1234).standard_normal(512, dtype=np.float32)
    )
    assert isinstance(Manifest.model_json_schema(), dict)
