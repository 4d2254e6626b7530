"""The OpenAPI schema as this server really behaves: its limits, its loaded models, examples it accepts.

FastAPI derives the schema from the routes and the pydantic models; what depends on the settings and on
the models loaded at start-up (FACES_MAX_*, resolutions, z_dim) is filled in here, once the models are
loaded (the schema is built on the first GET /openapi.json, which uvicorn serves only after start-up).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from contract import z_for_seed
from service.config import Settings
from service.inference.latents import frame_count
from service.inference.sessions import ModelRepository


def models_line(repo: ModelRepository) -> str:
    """`celeba` (default): 4, 8, 16, 32, 64 px, z_dim 256; ..."""
    parts = [
        f"`{name}`{' (default)' if name == repo.default else ''}: "
        f"{', '.join(map(str, m.resolutions))} px, z_dim {m.z_dim}"
        for name, m in sorted(repo.models.items())
    ]
    parts += [f"`{name}`: unavailable" for name in sorted(repo.broken)]
    return "; ".join(parts)


def example_sizes(repo: ModelRepository) -> tuple[int, int]:
    """The default model's largest resolution, and a small one (its third) for grids and strips."""
    offered = repo.models[repo.default].resolutions
    return offered[-1], offered[min(2, len(offered) - 1)]


def generate_examples(repo: ModelRepository, s: Settings) -> list[dict[str, Any]]:
    m = repo.models[repo.default]
    top, small = example_sizes(repo)
    latent = [round(float(v), 3) for v in z_for_seed(1, m.z_dim)]
    return [
        {"res": top, "seed": 42},
        {
            "res": small,
            "seed": 7,
            "n": min(4, s.max_n),
            "truncation": 0.7,
            "format": "jpeg",
            "layout": "grid",
        },
        {"res": top, "latents": [latent]},
    ]


def interpolate_examples(repo: ModelRepository, s: Settings) -> list[dict[str, Any]]:
    top, small = example_sizes(repo)
    points = min(3, s.max_waypoints)
    steps = max(1, min(12, s.max_steps, (s.max_frames - 1) // (points - 1)))
    loop_steps = max(1, min(16, s.max_steps, s.max_frames // 2))
    assert frame_count(points, steps, False) <= s.max_frames
    return [
        {"seeds": list(range(1, points + 1)), "steps": steps, "res": top},
        {"waypoints": [{"seed": 1}, {"seed": 9}], "steps": loop_steps, "loop": True, "format": "webp"},
        {
            "seeds": [4, 5],
            "steps": min(6, steps),
            "method": "lerp",
            "output": "strip",
            "format": "jpeg",
            "res": small,
        },
    ]


def _param(operation: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in operation.get("parameters", []) if p["name"] == name)


def build_openapi(app: FastAPI, description: str) -> dict[str, Any]:
    settings: Settings = app.state.settings
    spec = get_openapi(title=app.title, version=app.version, description=description, routes=app.routes)
    pipeline = getattr(app.state, "pipeline", None)
    schemas = spec["components"]["schemas"]
    gen, interp = schemas["GenerateRequest"], schemas["InterpolateRequest"]
    s = settings

    # limits of this server
    gen["properties"]["n"]["maximum"] = s.max_n
    gen["properties"]["latents"]["anyOf"][0]["maxItems"] = s.max_n
    interp["properties"]["steps"]["maximum"] = s.max_steps
    interp["properties"]["seeds"]["anyOf"][0]["maxItems"] = s.max_waypoints
    interp["properties"]["waypoints"]["anyOf"][0]["maxItems"] = s.max_waypoints
    interp["description"] += f" At most {s.max_frames} frames in all (FACES_MAX_FRAMES)."
    post = spec["paths"]["/generate"]["post"]
    _param(post, "n")["schema"]["maximum"] = s.max_n

    if pipeline is not None:  # the loaded models: in the descriptions, and examples that they accept
        repo: ModelRepository = pipeline.repo
        line = models_line(repo)
        spec["info"]["description"] += f"\nLoaded models: {line}.\n"
        for target in (_param(post, "res"), _param(post, "model")):
            target["description"] = f"{target.get('description', '')}. Loaded: {line}"
        for schema in (gen, interp):
            for key in ("res", "model"):
                prop = schema["properties"][key]
                prop["description"] = f"{prop.get('description', 'Model name')}. Loaded: {line}"
        gen["examples"] = generate_examples(repo, s)
        interp["examples"] = interpolate_examples(repo, s)
    return spec


def install_openapi(app: FastAPI, description: str) -> None:
    """Replace app.openapi: the schema is built once the models are loaded, then cached."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None or not getattr(app.state, "openapi_final", False):
            app.openapi_schema = build_openapi(app, description)
            app.state.openapi_final = getattr(app.state, "pipeline", None) is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
