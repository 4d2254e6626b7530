"""Execution providers: FACES_PROVIDERS less what this onnxruntime or this host cannot run, decided once."""

from __future__ import annotations

import ctypes
import logging
import sys
from pathlib import Path
from typing import Any

import onnxruntime as ort

from service.config import Settings
from service.inference.manifest import ModelLoadError

log = logging.getLogger("service")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# A one-node ONNX graph (Identity, float[1] -> float[1], opset 13, IR 8), serialised by onnx.helper: the
# service image has no `onnx` package to build it with
PROBE_MODEL = (
    b'\x08\x08:7\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x01gZ\x0f\n\x01x\x12\n\n\x08\x08\x01\x12\x04\n\x02'
    b"\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r"
)
CUDA_ERROR_NO_DEVICE = 100  # cuda.h


def execution_providers(settings: Settings) -> list[str | tuple[str, dict[str, Any]]]:
    """FACES_PROVIDERS filtered by what this onnxruntime build offers and this host can run, CUDA options
    attached. onnxruntime-gpu offers CUDA on any host; without a usable GPU every session would print
    onnxruntime's errors and fall back to the CPU, so CUDA is dropped up front with one line saying why."""
    available = ort.get_available_providers()
    chosen = [p for p in settings.providers if p in available]
    skipped = [p for p in settings.providers if p not in available]
    if settings.require_provider and settings.providers and settings.providers[0] not in available:
        raise ModelLoadError(
            f"FACES_REQUIRE_PROVIDER is on but this onnxruntime does not offer {settings.providers[0]} "
            f"(it offers {', '.join(available)})"
        )
    if skipped:
        log.warning("providers not offered by this onnxruntime build, skipped: %s", ", ".join(skipped))
    if not chosen:
        raise ModelLoadError(
            f"none of FACES_PROVIDERS ({', '.join(settings.providers)}) is available; "
            f"onnxruntime offers {', '.join(available)}"
        )
    options = cuda_options(settings)
    if CUDA in chosen:
        problem = cuda_problem(options)
        if problem:
            if settings.require_provider and settings.providers[0] == CUDA:
                raise ModelLoadError(f"FACES_REQUIRE_PROVIDER is on but {CUDA} cannot work here: {problem}")
            chosen.remove(CUDA)
            # onnxruntime falls back to the CPU provider even when the list does not name it
            chosen = chosen or [CPU]
            log.info("CUDA cannot work on this host, so sessions run on %s: %s", chosen[0], problem)
    return [(name, options) if name == CUDA else name for name in chosen]


def cuda_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "device_id": settings.cuda_device_id,
        "cudnn_conv_algo_search": settings.cudnn_conv_algo_search,
        "arena_extend_strategy": {
            "next_power_of_two": "kNextPowerOfTwo",
            "same_as_requested": "kSameAsRequested",
        }[settings.cuda_arena_extend],
        "cudnn_conv_use_max_workspace": "1" if settings.cudnn_max_workspace else "0",
    }
    if settings.cuda_mem_limit:
        options["gpu_mem_limit"] = settings.cuda_mem_limit
    return options


def cuda_problem(options: dict[str, Any]) -> str | None:
    """Why onnxruntime's CUDA provider cannot work here, or None when it can or the reason is unknown.

    Unknown (a probe session does not get CUDA, yet its library loads) keeps CUDA in the list: each
    session then shows onnxruntime's own errors and the per-session warning."""
    problem = cuda_driver_problem()
    if problem:
        return problem
    if probe_provider(options) == CUDA:
        return None
    return cuda_library_problem()


def cuda_driver_problem() -> str | None:
    """No driver, a driver that does not start, no device, or a driver too old for this onnxruntime."""
    if sys.platform != "linux":
        return None  # the driver library has another name there; the probe session decides
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1 not found)"
    rc = cuda.cuInit(0)
    if rc == CUDA_ERROR_NO_DEVICE:
        return "no CUDA device (cuInit: CUDA_ERROR_NO_DEVICE)"
    if rc:
        return f"the NVIDIA driver does not start (cuInit: {cuda_error_name(cuda, rc)})"
    count = ctypes.c_int(0)
    rc = cuda.cuDeviceGetCount(ctypes.byref(count))
    if rc or count.value == 0:
        return "no CUDA device" + (f" (cuDeviceGetCount: {cuda_error_name(cuda, rc)})" if rc else "")
    version = ctypes.c_int(0)
    rc = cuda.cuDriverGetVersion(ctypes.byref(version))  # 13020 for CUDA 13.2
    needed = str(getattr(ort, "cuda_version", "") or "").split(".")[0]  # "13.0" in onnxruntime-gpu
    # a CUDA build runs on any driver of its major version or later
    if not rc and needed.isdigit() and version.value // 1000 < int(needed):
        driver = f"{version.value // 1000}.{version.value % 1000 // 10}"
        return f"the NVIDIA driver supports CUDA {driver}, this onnxruntime needs CUDA {needed}"
    return None


def cuda_error_name(cuda: ctypes.CDLL, rc: int) -> str:
    name = ctypes.c_char_p()
    if cuda.cuGetErrorName(rc, ctypes.byref(name)) or not name.value:
        return f"error {rc}"
    return name.value.decode()


def probe_provider(options: dict[str, Any]) -> str:
    """The provider a one-node session gets with CUDA first, onnxruntime's log silenced."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    # a failing CUDA provider logs through the default logger, straight to stderr: fatal only meanwhile
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(PROBE_MODEL, sess_options=opts, providers=[(CUDA, options), CPU])
        return session.get_providers()[0]
    except Exception:  # an invalid option, say: the real sessions report it, naming the model
        return CPU
    finally:
        ort.set_default_logger_severity(2)  # onnxruntime's default (warning); it has no getter


def cuda_library_problem() -> str | None:
    """dlopen's message when onnxruntime's CUDA provider library cannot load (a missing CUDA or cuDNN
    library, say), or None."""
    if sys.platform != "linux":
        return None
    capi = Path(ort.__file__).parent / "capi"
    try:
        # onnxruntime loads the shared bridge globally first; the CUDA library needs its symbols
        ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi / "libonnxruntime_providers_cuda.so"))
    except OSError as exc:
        return f"onnxruntime's CUDA provider cannot load: {exc}"
    return None
