"""Execution providers on a host without a usable GPU: CUDA dropped up front, one line saying why, no
onnxruntime error output. (On a GPU host these tests skip: there the sessions get CUDA.)"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.inference import providers
from service.inference.manifest import ModelLoadError
from service.inference.providers import CUDA, cuda_options, cuda_problem, execution_providers
from service.main import create_app

CUDA_FIRST = [CUDA, "CPUExecutionProvider"]
REASONS = ("no NVIDIA driver", "no CUDA device", "NVIDIA driver", "CUDA provider cannot load")

if CUDA not in ort.get_available_providers():
    pytest.skip("this onnxruntime build does not offer CUDA: nothing to drop", allow_module_level=True)


@pytest.fixture(scope="module")
def problem() -> str:
    """Why CUDA cannot work on this host."""
    reason = cuda_problem(cuda_options(Settings(providers=CUDA_FIRST)))
    if reason is None:
        pytest.skip("CUDA works on this host")
    return reason


def service_records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "service" and text in r.getMessage()]


def test_without_a_gpu_cuda_is_dropped_with_one_line(
    problem: str, models_root: Path, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service")
    assert any(reason in problem for reason in REASONS), problem
    assert execution_providers(make_settings(models_root, providers=CUDA_FIRST)) == ["CPUExecutionProvider"]
    (record,) = service_records(caplog, "CUDA cannot work")
    assert record.levelno == logging.INFO and problem in record.getMessage()
    # onnxruntime falls back to the CPU even when the list names only CUDA: so do we
    assert execution_providers(make_settings(models_root, providers=[CUDA])) == ["CPUExecutionProvider"]


def test_require_provider_fails_with_the_reason(
    problem: str, models_root: Path, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(models_root, providers=CUDA_FIRST, require_provider=True)
    with pytest.raises(ModelLoadError, match="FACES_REQUIRE_PROVIDER") as info:
        execution_providers(settings)
    assert problem in str(info.value)
    # CUDA not first: required is the CPU, which works
    cpu_first = make_settings(models_root, providers=["CPUExecutionProvider", CUDA], require_provider=True)
    assert execution_providers(cpu_first) == ["CPUExecutionProvider"]


def test_a_missing_cuda_library_is_named_without_onnxruntime_errors(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # as on a host with a driver and a device but no CUDA libraries: the probe session really tries CUDA
    monkeypatch.setattr(providers, "cuda_driver_problem", lambda: None)
    reason = cuda_problem(cuda_options(Settings(providers=CUDA_FIRST)))
    if reason is None:
        pytest.skip("onnxruntime's CUDA provider works on this host")
    assert reason.startswith("onnxruntime's CUDA provider cannot load: lib"), reason
    assert "cannot open shared object file" in reason
    assert "onnxruntime" not in capfd.readouterr().err  # the C++ logger wrote nothing


def test_start_up_without_a_gpu_prints_no_onnxruntime_errors(
    problem: str,
    models_root: Path,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO, logger="service")
    capfd.readouterr()
    with TestClient(create_app(make_settings(models_root, providers=CUDA_FIRST))) as c:
        assert c.get("/models").json()["models"][0]["provider"] == "CPUExecutionProvider"
    err = capfd.readouterr().err
    assert "[E:onnxruntime" not in err and "[W:onnxruntime" not in err, err
    assert len(service_records(caplog, "CUDA cannot work")) == 1
    sessions = service_records(caplog, "session on")
    # compared with the provider really asked for: no "asked for CUDAExecutionProvider" warnings
    assert len(sessions) == 3 and all(r.levelno == logging.INFO for r in sessions)
    assert all("asked for CPUExecutionProvider" in r.getMessage() for r in sessions)


def test_cuda_memory_settings_reach_the_provider_options() -> None:
    """onnxruntime's own defaults unless set; the memory-saving forms as onnxruntime spells them."""
    default = cuda_options(Settings())
    assert default["arena_extend_strategy"] == "kNextPowerOfTwo"
    assert default["cudnn_conv_use_max_workspace"] == "1"
    assert "gpu_mem_limit" not in default
    lean = cuda_options(
        Settings(cuda_arena_extend="same_as_requested", cudnn_max_workspace=False, cuda_mem_limit=2 << 30)
    )
    assert lean["arena_extend_strategy"] == "kSameAsRequested"
    assert lean["cudnn_conv_use_max_workspace"] == "0"
    assert lean["gpu_mem_limit"] == 2 << 30
    with pytest.raises(ValueError, match="cuda_arena_extend"):
        Settings(cuda_arena_extend="pow2")
