"""Read a model folder's manifest.json (docs/manifest.md) and verify the files it lists."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1


class ModelLoadError(Exception):
    """A model folder cannot be served; the message names the file at fault."""


class TensorSpec(BaseModel):
    name: str
    dtype: str
    shape: list[int | str]
    layout: str | None = None


class FileEntry(BaseModel):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Manifest(BaseModel):
    """The fields of manifest.json the service uses; the rest is kept and shown by /models."""

    model_config = ConfigDict(extra="allow")

    schema_version: int
    name: str
    z_dim: int = Field(ge=1)
    latent: dict[str, Any] = {}
    input: TensorSpec
    output: TensorSpec
    resolutions: dict[int, FileEntry] = Field(min_length=1)
    weights: FileEntry | None = None
    provenance: dict[str, Any] = {}
    metrics: dict[str, Any] = {}


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_manifest(folder: Path) -> Manifest:
    """Parse and check `folder/manifest.json`; raises ModelLoadError naming the file."""
    path = folder / "manifest.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: unreadable ({exc})") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise ModelLoadError(
            f"{path}: schema_version {raw.get('schema_version')!r} is not supported (expected {SCHEMA_VERSION})"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ModelLoadError(f"{path}: invalid manifest ({problems})") from None
    for res in manifest.resolutions:
        if res < 4 or res & (res - 1):
            raise ModelLoadError(f"{path}: resolution {res} is not a power of two >= 4")
    if manifest.input.dtype != "float32" or manifest.output.dtype != "uint8":
        raise ModelLoadError(f"{path}: the service needs float32 input and uint8 output")
    return manifest


def listed_files(manifest: Manifest) -> list[FileEntry]:
    entries = list(manifest.resolutions.values())
    return entries + ([manifest.weights] if manifest.weights else [])


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Check that every listed file exists inside `folder` with the listed size and sha256."""
    root = folder.resolve()
    for entry in listed_files(manifest):
        path = (folder / entry.file).resolve()
        if path.parent != root:
            raise ModelLoadError(
                f"{folder / 'manifest.json'}: file {entry.file!r} is not inside the model folder"
            )
        if not path.is_file():
            raise ModelLoadError(f"{path}: missing (listed in {folder / 'manifest.json'})")
        size = path.stat().st_size
        if size != entry.bytes:
            raise ModelLoadError(f"{path}: {size} bytes, the manifest says {entry.bytes}")
        digest = sha256_of(path)
        if digest != entry.sha256:
            raise ModelLoadError(f"{path}: sha256 {digest} does not match the manifest ({entry.sha256})")
