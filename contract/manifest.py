"""manifest.json, schema version 1: what a model folder holds and how its graphs are called (docs/manifest.md).

The exporter builds a `Manifest` and writes `to_json()`; the service, the evaluator and the benchmarks read
one with `read_manifest`. docs/manifest.schema.json is generated from these types (`python -m contract`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.latents import RNG

SCHEMA_VERSION: Literal[1] = 1
MANIFEST_FILE = "manifest.json"
RESOLUTIONS = [2**k for k in range(2, 13)]  # 4 .. 4096

SafeName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]  # a file or model name: no folders


class ManifestError(ValueError):
    """A manifest that does not follow the schema, or a model folder that does not match its manifest."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Open(BaseModel):
    """Fields this version names are typed; others (from a newer exporter) are kept and shown."""

    model_config = ConfigDict(extra="allow", frozen=True)


_Entry = TypeVar("_Entry", bound="FileEntry")


class FileEntry(_Strict):
    file: SafeName = Field(description="File name inside the model folder")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=1)

    @classmethod
    def of(cls: type[_Entry], path: Path, **fields: Any) -> _Entry:
        """The entry of the file at `path` as it is now (name, sha256, size), plus `fields`."""
        return cls(file=path.name, sha256=sha256_of(path), bytes=path.stat().st_size, **fields)


class WeightsEntry(FileEntry):
    dtype: Literal["float16", "float32"] = Field(description="How the shared weights are stored")
    fp16_vs_fp32_grey_levels: dict[str, float] | None = Field(
        default=None, description="What float16 storage costs at the top resolution: mean, max, res"
    )


class LatentSpec(_Open):
    distribution: Literal["normal"] = "normal"
    mean: float = 0.0
    std: float = 1.0
    rng: Literal[RNG] = Field(default=RNG, description="How z is drawn from a seed")  # type: ignore[valid-type]
    normalized_in_graph: bool = Field(default=True, description="The graph pixel-normalises z itself")


class InputSpec(_Strict):
    name: str
    dtype: Literal["float32"] = "float32"
    shape: tuple[Literal["N"], int] = Field(description='["N", z_dim]: any batch size')


class OutputSpec(_Strict):
    name: str
    dtype: Literal["uint8"] = "uint8"
    shape: tuple[Literal["N"], Literal["R"], Literal["R"], Literal[3]] = ("N", "R", "R", 3)
    layout: Literal["NHWC"] = "NHWC"


Architecture = Literal["progan", "dcgan", "synthetic"]


class Provenance(_Open):
    architecture: Architecture = Field(
        description="synthetic: a hand-built test graph (scripts/make_service_fixture.py)"
    )
    dataset: str
    license: str
    kimg: float = Field(ge=0)
    preset: str
    commit: str
    date: str = Field(description="UTC, ISO 8601")
    checkpoint: str | None = None
    net_config: dict[str, Any] | None = None
    trainer_config: dict[str, Any] = {}


class Manifest(_Open):
    """One model folder: its graphs per resolution, the shared weights, provenance and metrics."""

    model_config = ConfigDict(
        extra="allow", frozen=True, title="ProGAN model manifest", json_schema_extra={"$id": MANIFEST_FILE}
    )

    schema_version: Literal[1]
    name: SafeName
    z_dim: int = Field(ge=1)
    latent: LatentSpec
    input: InputSpec
    output: OutputSpec
    resolutions: dict[int, FileEntry] = Field(
        min_length=1,
        description="One graph per resolution; keys are powers of two from 4 to 4096",
        json_schema_extra={"propertyNames": {"enum": [str(r) for r in RESOLUTIONS]}},
    )
    weights: WeightsEntry
    opset: int | None = Field(default=None, ge=17)
    consistency: dict[str, Any] = Field(
        default={}, description="How well one z gives the same face at every resolution"
    )
    provenance: Provenance
    metrics: dict[str, dict[str, Any]] = Field(
        default={}, description="Evaluation per resolution (trainer evaluate), keyed by resolution"
    )
    total_bytes: int = Field(ge=1, description="Sum of the bytes of every listed file")

    @field_validator("resolutions")
    @classmethod
    def _powers_of_two(cls, value: dict[int, FileEntry]) -> dict[int, FileEntry]:
        bad = [r for r in value if r not in RESOLUTIONS]
        if bad:
            raise ValueError(f"resolution(s) {bad} are not powers of two from 4 to 4096")
        return dict(sorted(value.items()))

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.input.shape[1] != self.z_dim:
            raise ValueError(f"input.shape {list(self.input.shape)} does not match z_dim={self.z_dim}")
        listed = total_bytes(self.resolutions, self.weights)
        if self.total_bytes != listed:
            raise ValueError(f"total_bytes is {self.total_bytes}, the listed files hold {listed}")
        return self

    def files(self) -> list[FileEntry]:
        """Every file the folder must hold: the graphs, then the shared weights."""
        return [*self.resolutions.values(), self.weights]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True) + "\n"


def total_bytes(resolutions: dict[int, FileEntry], weights: WeightsEntry) -> int:
    """What `Manifest.total_bytes` must be: the bytes of the graphs and the shared weights."""
    return weights.bytes + sum(e.bytes for e in resolutions.values())


def json_schema() -> dict[str, Any]:
    """The JSON Schema of manifest.json (docs/manifest.schema.json)."""
    schema = Manifest.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


# ---------------------------------------------------------------------------- reading a model folder


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_manifest(folder: Path) -> Manifest:
    """Parse and check `folder/manifest.json`; ManifestError names the file and the field at fault."""
    path = folder / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable ({exc})") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: schema_version {raw.get('schema_version')!r} is not supported (expected {SCHEMA_VERSION})"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(f"{path}: invalid manifest ({problems(exc)})") from None


def problems(exc: ValidationError) -> str:
    """A pydantic error as one line: `where: what; ...`."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Check that every listed file exists inside `folder` with the listed size and sha256."""
    root = folder.resolve()
    for entry in manifest.files():
        path = (folder / entry.file).resolve()
        if path.parent != root:
            raise ManifestError(
                f"{folder / MANIFEST_FILE}: file {entry.file!r} is not inside the model folder"
            )
        if not path.is_file():
            raise ManifestError(f"{path}: missing (listed in {folder / MANIFEST_FILE})")
        size = path.stat().st_size
        if size != entry.bytes:
            raise ManifestError(f"{path}: {size} bytes, the manifest says {entry.bytes}")
        digest = sha256_of(path)
        if digest != entry.sha256:
            raise ManifestError(f"{path}: sha256 {digest} does not match the manifest ({entry.sha256})")
