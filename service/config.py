"""Service settings, read from the environment (prefix `FACES_`); docs/service.md lists every one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent

CommaList = Annotated[list[str], NoDecode]  # "a,b,c" in the environment, not JSON


class Settings(BaseSettings):
    """Every knob of the service. Environment variable = `FACES_` + upper-case field name."""

    model_config = SettingsConfigDict(env_prefix="FACES_", extra="ignore", frozen=True)

    # --- models
    model_dir: Path = REPO_ROOT / "models"  # one sub-folder per model, each with a manifest.json
    default_model: str = "celeba"  # used when a request names none; if absent, the first model found
    warmup_batch: int = Field(default=1, ge=1, le=256)  # rows of the warm-up run on every session

    # --- onnxruntime
    providers: CommaList = ["CUDAExecutionProvider", "CPUExecutionProvider"]  # in order of preference
    require_provider: bool = False  # fail start-up unless every session gets the first of `providers`
    cuda_device_id: int = Field(default=0, ge=0)
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "HEURISTIC"
    cuda_mem_limit: int = Field(default=0, ge=0)  # bytes for the CUDA arena; 0 = no limit
    # how the CUDA arena grows: next_power_of_two (onnxruntime's default) or same_as_requested (less memory)
    cuda_arena_extend: Literal["next_power_of_two", "same_as_requested"] = "next_power_of_two"
    cudnn_max_workspace: bool = True  # let cuDNN take its largest workspace (onnxruntime's default)
    intra_op_threads: int = Field(default=0, ge=0)  # threads per onnxruntime run; 0 = one per physical core
    intra_op_spinning: bool = False  # spin-wait between ops: lower latency, burns CPU when idle
    cpu_layout: Literal["nchwc", "nchw"] = "nchwc"  # CPU provider: blocked (NCHWc) or plain conv layout
    inference_threads: int = Field(default=1, ge=1, le=64)  # onnxruntime runs in flight at once (all models)
    encode_threads: int = Field(default=2, ge=1, le=64)  # threads that encode PNG / JPEG / WebP / GIF
    png_level: int = Field(
        default=1, ge=0, le=9
    )  # zlib level of PNGs: 1 is ~3x faster than 6, files ~10% larger

    # --- batching
    batching: bool = True  # on/off: merge concurrent requests for one model and resolution into one run
    max_batch: int = Field(default=16, ge=1, le=1024)  # rows per onnxruntime run
    max_wait_ms: float = Field(default=5.0, ge=0, le=10_000)  # how long a run waits for more rows
    min_run_batch: int = Field(
        default=0, ge=0, le=1024
    )  # runs are padded to at least this many rows; 0 = auto, probed per graph at start-up (see docs)

    # --- overload: past either bound a request gets 503 + Retry-After; a graph's empty queue admits any
    max_queue_rows: int = Field(default=512, ge=0)  # rows queued for one model and resolution; 0 = off
    max_queue_wait_ms: float = Field(
        default=2000.0, ge=0
    )  # expected wait of a new request (queued rows x measured time per row / threads); 0 = off

    # --- request limits
    max_n: int = Field(default=16, ge=1, le=4096)  # images per /generate request
    max_steps: int = Field(default=64, ge=1, le=4096)  # frames per /interpolate segment
    max_frames: int = Field(default=128, ge=2, le=16384)  # frames per /interpolate request
    max_waypoints: int = Field(default=16, ge=2, le=1024)  # waypoints per /interpolate request
    max_body_bytes: int = Field(default=1_048_576, ge=1024)  # larger request bodies get 413

    # --- access
    api_keys: CommaList = []  # accepted keys (X-API-Key or Authorization: Bearer); empty = auth off
    auth_probes: bool = False  # also require a key on /healthz, /readyz and /metrics
    cors_origins: CommaList = []  # allowed CORS origins; "*" for any; empty = no CORS headers
    playground: bool = True  # serve the playground page at / (its files under /static)

    # --- server (python -m service)
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)  # uvicorn worker processes; each loads every model
    graceful_timeout: int = Field(default=30, ge=0)  # seconds in-flight requests get after SIGTERM
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: Literal["all", "no-probes", "off"] = (
        "no-probes"  # uvicorn's access lines: all, all but /healthz /readyz /metrics, or none
    )

    @field_validator("providers", "api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value
