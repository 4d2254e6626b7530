"""POST /interpolate."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from service.deps import PipelineDep
from service.errors import error_responses
from service.schemas import InterpolateRequest, InterpolateResponse

router = APIRouter(tags=["generate"])


@router.post(
    "/interpolate",
    summary="Walk the latent space between waypoints",
    response_model=InterpolateResponse,
    responses={
        200: {
            "description": "output=animation: an animated GIF or WebP; output=strip: one horizontal image; "
            "output=frames: JSON with base64 frames.",
            "content": {
                t: {"schema": {"type": "string", "format": "binary"}}
                for t in ("image/gif", "image/webp", "image/png", "image/jpeg")
            },
        },
        **error_responses(400, 413, 415, 422, 503),
    },
)
async def interpolate(pipeline: PipelineDep, req: InterpolateRequest) -> Any:
    """Frames along slerp (default) or lerp paths through two or more waypoints.

    Each segment has `steps` frames; the last waypoint ends the path, or with `loop` the path
    returns to the first one: frames = (waypoints - 1) * steps + 1, or waypoints * steps.
    """
    out = await pipeline.interpolate(req)
    if req.output == "frames":
        return out
    headers = {"X-Model": out.model, "X-Resolution": str(out.res), "X-Frames": str(out.n_frames)}
    return Response(out.frames[0], media_type=out.media_type, headers=headers)
