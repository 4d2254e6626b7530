"""Integration fixtures: the service's test settings, over models the trainer made (trained, exported, bundled)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from service.config import Settings
from tests.service.conftest import _no_faces_env, settings_for

__all__ = ["_no_faces_env"]  # autouse: a developer's FACES_* environment changes nothing here either


@pytest.fixture(scope="session")
def make_settings() -> Callable[..., Settings]:
    return settings_for
