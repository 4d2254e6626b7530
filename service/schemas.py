"""Request and response schemas. Limits that depend on settings (n, steps, ...) are checked in inference."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.inference.latents import SEED_MAX

LATENT_ABS_MAX = 1e4  # |z| of a normal sample is < 7; the bound keeps z**2 far from float32 overflow

Seed = Annotated[int, Field(ge=0, le=SEED_MAX, description=f"0 .. {SEED_MAX}")]
LatentValue = Annotated[float, Field(allow_inf_nan=False, ge=-LATENT_ABS_MAX, le=LATENT_ABS_MAX)]
Latent = Annotated[
    list[LatentValue], Field(min_length=1, description="z_dim finite floats (see GET /latents/{seed})")
]
Truncation = Annotated[
    float,
    Field(
        ge=0.1,
        allow_inf_nan=False,
        description="Draw z from a normal truncated to [-t, t]: less variety, more fidelity. Seeds only.",
    ),
]
StillFormat = Literal["png", "jpeg", "webp"]


# ---------------------------------------------------------------------------- /generate


class GenerateQuery(BaseModel):
    """/generate parameters that fit a query string."""

    model_config = ConfigDict(extra="forbid")

    res: int | None = Field(
        default=None, description="Resolution; default: the model's largest", examples=[64]
    )
    seed: Seed | None = Field(
        default=None, description="Seed of the first image (image i uses seed + i); random when absent"
    )
    n: int = Field(default=1, ge=1, description="Number of images (at most FACES_MAX_N)")
    truncation: Truncation | None = None
    format: StillFormat = Field(default="png", description="Image format")
    quality: int = Field(
        default=90, ge=1, le=100, description="JPEG / WebP quality; PNG is lossless and ignores it"
    )
    model: str | None = Field(
        default=None, description="Model name (GET /models); default: FACES_DEFAULT_MODEL"
    )
    layout: Literal["auto", "json", "grid"] = Field(
        default="auto",
        description="auto: one image as bytes, several as JSON; json: always JSON; grid: one grid image",
    )


class GenerateRequest(GenerateQuery):
    """/generate JSON body: the query parameters, plus explicit latents as an alternative to seeds."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"res": 64, "seed": 42},
                {"res": 64, "seed": 7, "n": 4, "truncation": 0.7, "format": "jpeg", "layout": "grid"},
                {"res": 64, "latents": [[0.1, -1.2, 0.3, 0.8]]},  # z_dim values per latent
            ]
        },
    )

    latents: list[Latent] | None = Field(
        default=None, description="Explicit z vectors, one per image, instead of seeds"
    )


class ImageOut(BaseModel):
    seed: int | None = Field(description="Seed of this image; null when it came from an explicit latent")
    data: str = Field(description="The encoded image, base64")


class GenerateResponse(BaseModel):
    model: str
    res: int
    format: str
    media_type: str
    truncation: float | None
    images: list[ImageOut]


# ---------------------------------------------------------------------------- /interpolate


class Waypoint(BaseModel):
    """A point of the path: a seed or an explicit latent."""

    model_config = ConfigDict(extra="forbid")

    seed: Seed | None = None
    latent: Latent | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Waypoint:
        if (self.seed is None) == (self.latent is None):
            raise ValueError("a waypoint needs exactly one of 'seed' or 'latent'")
        return self


class InterpolateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"seeds": [1, 2, 3], "steps": 12, "res": 64},
                {"waypoints": [{"seed": 1}, {"seed": 9}], "steps": 16, "loop": True, "format": "webp"},
                {"seeds": [4, 5], "steps": 6, "method": "lerp", "output": "strip", "format": "jpeg"},
            ]
        },
    )

    seeds: list[Seed] | None = Field(
        default=None, description="Waypoints given as seeds (shortcut for waypoints)"
    )
    waypoints: list[Waypoint] | None = Field(
        default=None, description="Waypoints: {'seed': s} or {'latent': [...]}"
    )
    steps: int = Field(default=8, ge=1, description="Frames per segment (at most FACES_MAX_STEPS)")
    method: Literal["slerp", "lerp"] = Field(
        default="slerp", description="slerp: spherical (suits ProGAN's normalised z)"
    )
    loop: bool = Field(
        default=False, description="Return to the first waypoint, so an animation loops seamlessly"
    )
    res: int | None = Field(default=None, description="Resolution; default: the model's largest")
    model: str | None = None
    truncation: Truncation | None = None
    output: Literal["animation", "strip", "frames"] = Field(
        default="animation",
        description="animation: animated GIF / WebP; strip: one horizontal image; frames: JSON",
    )
    format: Literal["gif", "webp", "png", "jpeg"] | None = Field(
        default=None,
        description="animation: gif (default) or webp; strip and frames: png (default), jpeg or webp",
    )
    fps: int = Field(default=12, ge=1, le=50, description="Frames per second of an animation")
    quality: int = Field(default=90, ge=1, le=100, description="JPEG / WebP quality")

    @model_validator(mode="after")
    def _waypoints(self) -> InterpolateRequest:
        if (self.seeds is None) == (self.waypoints is None):
            raise ValueError("give exactly one of 'seeds' or 'waypoints'")
        if len(self.points) < 2:
            raise ValueError("an interpolation needs at least two waypoints")
        return self

    @property
    def points(self) -> list[Waypoint]:
        if self.seeds is not None:
            return [Waypoint(seed=s) for s in self.seeds]
        return list(self.waypoints or [])


class InterpolateResponse(BaseModel):
    model: str
    res: int
    format: str
    media_type: str
    method: str
    loop: bool
    steps: int
    seeds: list[int | None] = Field(description="Seed of each waypoint; null for explicit latents")
    frames: list[str] = Field(description="Encoded frames, base64")


# ---------------------------------------------------------------------------- /latents, /models, health


class LatentResponse(BaseModel):
    seed: int
    model: str
    z_dim: int
    truncation: float | None
    rng: str = Field(description="How z is drawn from the seed")
    truncation_rule: str
    latent: list[float]


class ModelInfo(BaseModel):
    name: str
    status: Literal["ready", "unavailable"]
    default: bool
    error: str | None = None
    z_dim: int | None = None
    resolutions: list[int] = []
    provider: str | None = Field(default=None, description="Execution provider the sessions got")
    providers: dict[str, str] = Field(default={}, description="Execution provider per resolution")
    cpu_layouts: dict[str, str] = Field(
        default={},
        description="Per resolution on the CPU provider: the convolution layout chosen at start-up "
        "(nchwc or nchw, see FACES_CPU_LAYOUT)",
    )
    latent: dict[str, Any] = {}
    provenance: dict[str, Any] = {}
    metrics: dict[str, Any] = {}


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelInfo]


class Status(BaseModel):
    status: str
    models: list[str] | None = None


class ErrorResponse(BaseModel):
    detail: str
