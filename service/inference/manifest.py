"""A model folder's manifest, read and verified through the contract (contract/manifest.py)."""

from __future__ import annotations

from pathlib import Path

from contract import Manifest, ManifestError, read_manifest, verify_files


class ModelLoadError(Exception):
    """A model folder cannot be served; the message names the file at fault."""


def load_manifest(folder: Path) -> Manifest:
    """The manifest of `folder`, with every listed file checked (size and sha256)."""
    try:
        manifest = read_manifest(folder)
        verify_files(folder, manifest)
    except ManifestError as exc:
        raise ModelLoadError(str(exc)) from None
    return manifest
