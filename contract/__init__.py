"""The contract between trainer and service: the model manifest (schema version 1) and the seed -> z rule.

Imports neither torch nor onnxruntime; the trainer's exporter writes these types, the service reads them.
"""

from contract.latents import (
    MIN_TRUNCATION,
    RNG,
    RNG_DOC,
    SEED_MAX,
    TRUNCATION_DOC,
    truncate,
    z_for_seed,
    z_for_seeds,
)
from contract.manifest import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    FileEntry,
    InputSpec,
    LatentSpec,
    Manifest,
    ManifestError,
    OutputSpec,
    Provenance,
    WeightsEntry,
    json_schema,
    read_manifest,
    sha256_of,
    total_bytes,
    verify_files,
)

__all__ = [
    "MANIFEST_FILE",
    "MIN_TRUNCATION",
    "RNG",
    "RNG_DOC",
    "SCHEMA_VERSION",
    "SEED_MAX",
    "TRUNCATION_DOC",
    "FileEntry",
    "InputSpec",
    "LatentSpec",
    "Manifest",
    "ManifestError",
    "OutputSpec",
    "Provenance",
    "WeightsEntry",
    "json_schema",
    "read_manifest",
    "sha256_of",
    "total_bytes",
    "truncate",
    "verify_files",
    "z_for_seed",
    "z_for_seeds",
]
