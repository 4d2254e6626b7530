"""Shared fixtures: real CelebA faces from ../shared/data (skipped when absent) and a tiny trained model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.serving import free_port  # noqa: F401  (the DDP tests' torchrun rendezvous port, too)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PROGAN_SHARED", REPO.parent / "shared"))
CELEBA = SHARED / "data" / "celeba" / "img_align_celeba"
BUNDLED_MODEL = REPO / "models" / "celeba"
NO_FACES = f"real CelebA faces not found at {CELEBA} (set PROGAN_SHARED to the shared folder)"


def _link_faces(dest: Path, n: int) -> Path:
    """A folder with the first `n` CelebA faces, symlinked (the aligned layout, so the face crop applies)."""
    if not CELEBA.is_dir():
        pytest.skip(NO_FACES)
    folder = dest / "img_align_celeba"
    folder.mkdir(parents=True)
    for f in sorted(CELEBA.iterdir())[:n]:
        (folder / f.name).symlink_to(f)
    return folder


@pytest.fixture(scope="session", autouse=True)
def progan_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The decoded-image and real-statistics caches of everything the tests run (subprocesses included)
    in the session's temporary folder, not the user's ~/.cache/progan: the tests' data are temporary
    folders, so their caches would be left behind there, never read again."""
    path = tmp_path_factory.mktemp("progan-cache")
    old = os.environ.get("PROGAN_CACHE")
    os.environ["PROGAN_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("PROGAN_CACHE", None)
    else:
        os.environ["PROGAN_CACHE"] = old


@pytest.fixture(scope="session")
def faces_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """512 real faces."""
    return _link_faces(tmp_path_factory.mktemp("faces"), 512)


@pytest.fixture(scope="session")
def faces_zip(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 512 faces as a prepare-data archive at 32x32 (CelebA's crop)."""
    from trainer.cli import main

    out = tmp_path_factory.mktemp("zip") / "faces-32.zip"
    rc = main(
        ["prepare-data", str(faces_dir), "--res", "32", "--out", str(out), "--crop", "celeba", "--quiet"]
    )
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_run(faces_dir: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `tiny` ProGAN run from 4x4 to 16x16 on real faces (z_dim 32); returns its run folder."""
    from trainer.cli import main

    out = tmp_path_factory.mktemp("runs")
    rc = main(
        [
            "train",
            "--data",
            str(faces_dir),
            "--preset",
            "tiny",
            "--max-res",
            "16",
            "--out",
            str(out),
            "--cache-dir",
            str(cache_dir),
            "--quiet",
        ]
    )
    assert rc == 0
    (run,) = out.iterdir()
    return run


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run exported to a model folder (manifest.json + G_4/G_8/G_16.onnx + weights.bin)."""
    from trainer.export import export_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    export_model(tiny_run, out)
    return out


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    if not (BUNDLED_MODEL / "manifest.json").exists():
        pytest.skip(f"no bundled model at {BUNDLED_MODEL}")
    return BUNDLED_MODEL
