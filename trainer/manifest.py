"""The manifest schema (version 1): the contract between trainer and service. docs/manifest.schema.json
is a copy that tests keep in step."""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1

_file: dict[str, Any] = {
    "type": "object",
    "required": ["file", "sha256", "bytes"],
    "properties": {
        "file": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+$"},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "bytes": {"type": "integer", "minimum": 1},
    },
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "ProGAN model manifest",
    "type": "object",
    "required": [
        "schema_version",
        "name",
        "z_dim",
        "latent",
        "input",
        "output",
        "resolutions",
        "weights",
        "provenance",
        "total_bytes",
    ],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "name": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+$"},
        "z_dim": {"type": "integer", "minimum": 1},
        "latent": {
            "type": "object",
            "required": ["distribution"],
            "properties": {"distribution": {"enum": ["normal"]}, "rng": {"type": "string"}},
        },
        "input": {
            "type": "object",
            "required": ["name", "dtype", "shape"],
            "properties": {
                "name": {"type": "string"},
                "dtype": {"const": "float32"},
                "shape": {"type": "array", "minItems": 2, "maxItems": 2},
            },
        },
        "output": {
            "type": "object",
            "required": ["name", "dtype", "shape", "layout"],
            "properties": {
                "name": {"type": "string"},
                "dtype": {"const": "uint8"},
                "shape": {"type": "array", "minItems": 4, "maxItems": 4},
                "layout": {"const": "NHWC"},
            },
        },
        "resolutions": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"enum": [str(2**k) for k in range(2, 13)]},
            "additionalProperties": _file,
        },
        "weights": {
            **_file,
            "properties": {**_file["properties"], "dtype": {"enum": ["float16", "float32"]}},
        },
        "opset": {"type": "integer", "minimum": 17},
        "consistency": {"type": "object"},
        "provenance": {
            "type": "object",
            "required": ["architecture", "dataset", "license", "kimg", "preset", "commit", "date"],
            "properties": {"architecture": {"enum": ["progan", "dcgan"]}, "kimg": {"type": "number"}},
        },
        "metrics": {
            "type": "object",
            "additionalProperties": {"type": "object", "properties": {"fid": {"type": ["number", "null"]}}},
        },
        "total_bytes": {"type": "integer", "minimum": 1},
    },
}


class ManifestError(ValueError):
    """A manifest that does not follow the schema."""


def validate_manifest(manifest: dict[str, Any]) -> None:
    import jsonschema  # here, not at import: training machines need only torch (`train` never validates)

    try:
        jsonschema.validate(manifest, SCHEMA)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        raise ManifestError(
            f"manifest does not follow schema v{SCHEMA_VERSION} at {where}: {e.message}"
        ) from e
