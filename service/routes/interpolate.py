"""POST /interpolate."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from service.deps import PipelineDep
from service.schemas import ErrorResponse, InterpolateRequest, InterpolateResponse

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
        401: {"model": ErrorResponse},
        413: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
async def interpolate(pipeline: PipelineDep, req: InterpolateRequest) -> Any:
    """Frames along slerp (default) or lerp paths through two or more waypoints.

    Each segment has `steps` frames; the last waypoint ends the path, or with `loop` the path
    returns to the first one: frames = (waypoints - 1) * steps + 1, or waypoints * steps.
    """
    out = await pipeline.interpolate(req)
    if req.output == "frames":
        return InterpolateResponse(
            model=out.model,
            res=out.res,
            format=out.format,
            media_type=out.media_type,
            method=req.method,
            loop=req.loop,
            steps=req.steps,
            seeds=out.seeds,
            frames=[base64.b64encode(f).decode() for f in out.frames],
        )
    headers = {"X-Model": out.model, "X-Resolution": str(out.res), "X-Frames": str(out.n_frames)}
    return Response(out.frames[0], media_type=out.media_type, headers=headers)
