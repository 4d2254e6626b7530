"""Request and response schemas: every rule a request can break without knowing the loaded models or the
settings is here, in pydantic validators that the OpenAPI schema states too (oneOf / not / if-then).
What depends on the models and limits (resolution, z_dim, FACES_MAX_*) is checked in one place,
service/inference/pipeline.py, before anything runs."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from contract import MIN_TRUNCATION, SEED_MAX, LatentSpec, Provenance

LATENT_ABS_MAX = 1e4  # |z| of a normal sample is < 7; the bound keeps z**2 far from float32 overflow

Seed = Annotated[int, Field(ge=0, le=SEED_MAX, description=f"0 .. {SEED_MAX}")]
LatentValue = Annotated[float, Field(allow_inf_nan=False, ge=-LATENT_ABS_MAX, le=LATENT_ABS_MAX)]
Latent = Annotated[
    list[LatentValue], Field(min_length=1, description="z_dim finite floats (see GET /latents/{seed})")
]
Truncation = Annotated[
    float,
    Field(
        ge=MIN_TRUNCATION,
        allow_inf_nan=False,
        description="Draw z from a normal truncated to [-t, t] (entries beyond it drawn again). Seeds only. "
        "ProGAN normalises z first, so on its models this changes which faces a seed gives, not their quality "
        "or variety (measured: docs/evaluation.md).",
    ),
]
StillFormat = Literal["png", "jpeg", "webp"]
AnimationFormat = Literal["gif", "webp"]
Encoded = Annotated[  # bytes in Python, base64 in JSON
    bytes,
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),
]


def rule(message: str) -> PydanticCustomError:
    """A broken cross-field rule, reported as `message` (no "Value error, " prefix)."""
    return PydanticCustomError("request_rule", message)


# ---------------------------------------------------------------------------- /generate


class GenerateQuery(BaseModel):
    """/generate parameters that fit a query string."""

    model_config = ConfigDict(extra="forbid")

    res: int | None = Field(default=None, description="Resolution; default: the model's largest")
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
    """/generate JSON body: the query parameters, plus explicit latents as an alternative to seeds.
    With `latents`, leave out `seed` and `truncation`, and `n` unless it equals the number of latents."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            # seeds or latents: a body with latents has neither seed nor truncation
            "not": {"anyOf": [{"required": ["latents", "seed"]}, {"required": ["latents", "truncation"]}]},
        },
    )

    latents: list[Latent] | None = Field(
        default=None, min_length=1, description="Explicit z vectors, one per image, instead of seeds"
    )

    @model_validator(mode="after")
    def _seeds_or_latents(self) -> GenerateRequest:
        if self.latents is not None:
            if self.seed is not None:
                raise rule("give either 'seed' or 'latents', not both")
            if self.truncation is not None:
                raise rule("'truncation' applies to seeds; explicit latents are used as given")
            if "n" in self.model_fields_set and self.n != len(self.latents):
                raise rule(f"n={self.n} but {len(self.latents)} latents were given; leave n out")
        elif self.seed is not None and self.seed + self.n - 1 > SEED_MAX:
            raise rule(f"seeds run from seed to seed + n - 1, which must stay <= {SEED_MAX}")
        return self

    @property
    def count(self) -> int:
        """Images asked for."""
        return len(self.latents) if self.latents is not None else self.n

    @classmethod
    def merged(cls, query: GenerateQuery, body: GenerateRequest | None) -> GenerateRequest:
        """Query parameters and body fields as one request; a field given in both must agree."""
        given = query.model_dump(exclude_unset=True)
        if body is not None:
            for key, value in body.model_dump(exclude_unset=True).items():
                if key in given and given[key] != value:
                    raise RequestValidationError(
                        [
                            {
                                "loc": ("body", key),
                                "msg": f"{key!r} is given in both the query string and the body, "
                                "with different values",
                                "type": "request_rule",
                            }
                        ]
                    )
                given[key] = value
        try:
            return cls.model_validate(given)
        except ValidationError as exc:  # a rule broken only by query and body together
            raise RequestValidationError(
                [{**e, "loc": ("query+body", *e["loc"])} for e in exc.errors()]
            ) from None


class ImageOut(BaseModel):
    seed: int | None = Field(
        description="Seed of this image; null for an explicit latent or a grid of several images"
    )
    data: Encoded = Field(description="The encoded image, base64")


class GenerateResponse(BaseModel):
    model: str
    res: int
    format: StillFormat
    media_type: str
    truncation: float | None
    seeds: list[int | None] = Field(description="Seed of each image; null for explicit latents")
    images: list[ImageOut] = Field(description="One per image, or one grid with layout=grid")


# ---------------------------------------------------------------------------- /interpolate


class Waypoint(BaseModel):
    """A point of the path: a seed or an explicit latent."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [{"required": ["seed"]}, {"required": ["latent"]}]}
    )

    seed: Seed | None = None
    latent: Latent | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Waypoint:
        if (self.seed is None) == (self.latent is None):
            raise rule("a waypoint needs exactly one of 'seed' or 'latent'")
        return self


class InterpolateRequest(BaseModel):
    """Give exactly one of `seeds` or `waypoints` (two or more). An animation is a gif (default) or a
    webp; a strip or frames are png (default), jpeg or webp."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [{"required": ["seeds"]}, {"required": ["waypoints"]}],
            "allOf": [
                {  # output absent or "animation"
                    "if": {"properties": {"output": {"const": "animation"}}},
                    "then": {"properties": {"format": {"enum": ["gif", "webp", None]}}},
                },
                {
                    "if": {"required": ["output"], "properties": {"output": {"enum": ["strip", "frames"]}}},
                    "then": {"properties": {"format": {"enum": ["png", "jpeg", "webp", None]}}},
                },
            ],
        },
    )

    seeds: list[Seed] | None = Field(
        default=None, min_length=2, description="Waypoints given as seeds (shortcut for waypoints)"
    )
    waypoints: list[Waypoint] | None = Field(
        default=None, min_length=2, description="Waypoints: {'seed': s} or {'latent': [...]}"
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

    @model_validator(mode="before")
    @classmethod
    def _two_waypoints(cls, data: Any) -> Any:
        # before field validation, so that one seed reads as this rule and not as a list length
        if isinstance(data, dict):
            points = data.get("seeds") if data.get("seeds") is not None else data.get("waypoints")
            if isinstance(points, list) and len(points) < 2:
                raise rule("an interpolation needs at least two waypoints")
        return data

    @model_validator(mode="after")
    def _rules(self) -> InterpolateRequest:
        if (self.seeds is None) == (self.waypoints is None):
            raise rule("give exactly one of 'seeds' or 'waypoints'")
        fmt = self.file_format
        if self.output == "animation" and fmt not in ("gif", "webp"):
            raise rule(f"format {fmt!r} cannot hold an animation; choose gif or webp")
        if self.output != "animation" and fmt not in ("png", "jpeg", "webp"):
            raise rule(f"format {fmt!r} is for animations; output={self.output!r} takes png, jpeg or webp")
        return self

    @property
    def file_format(self) -> str:
        """`format`, or the output's default."""
        return self.format or ("gif" if self.output == "animation" else "png")

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
    n_frames: int = Field(description="Frames of the path")
    seeds: list[int | None] = Field(description="Seed of each waypoint; null for explicit latents")
    frames: list[Encoded] = Field(
        description="output=frames: each frame; otherwise one entry, the animation or the strip"
    )


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
    run_rows: dict[str, int] = Field(
        default={},
        description="Per resolution: the rows every onnxruntime run is padded to, so that a seed gives the "
        "same bytes however requests are batched (FACES_MIN_RUN_BATCH, or the start-up probe; on CUDA "
        "usually FACES_MAX_BATCH)",
    )
    latent: LatentSpec | None = None
    provenance: Provenance | None = None
    metrics: dict[str, dict[str, Any]] = {}


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelInfo]


class Status(BaseModel):
    status: str
    models: list[str] | None = None


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every error: a readable `detail`; a 422 also lists each problem in `errors`."""

    detail: str
    errors: list[ErrorItem] | None = None
