"""POST /generate."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from fastapi.responses import Response

from service.deps import PipelineDep
from service.errors import InvalidInput
from service.schemas import ErrorResponse, GenerateQuery, GenerateRequest, GenerateResponse, ImageOut

router = APIRouter(tags=["generate"])

IMAGE_CONTENT: dict[str, Any] = {
    t: {"schema": {"type": "string", "format": "binary"}} for t in ("image/png", "image/jpeg", "image/webp")
}


def merge(query: GenerateQuery, body: GenerateRequest | None) -> GenerateRequest:
    """Query parameters and body fields together; a field given in both must agree."""
    given = query.model_dump(exclude_unset=True)
    if body is not None:
        for key, value in body.model_dump(exclude_unset=True).items():
            if key in given and given[key] != value:
                raise InvalidInput(
                    f"{key!r} is given in both the query string and the body, with different values"
                )
            given[key] = value
    return GenerateRequest.model_validate(given)


@router.post(
    "/generate",
    summary="Generate faces",
    response_model=GenerateResponse,
    responses={
        200: {
            "description": "One image: its bytes, with X-Seed, X-Resolution and X-Model headers. "
            "Several: JSON with base64 images and their seeds, or one grid image with layout=grid.",
            "content": IMAGE_CONTENT,
        },
        401: {"model": ErrorResponse},
        413: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
async def generate(
    pipeline: PipelineDep,
    query: Annotated[GenerateQuery, Query()],
    body: Annotated[GenerateRequest | None, Body()] = None,
) -> Any:
    """Parameters go in the query string (`/generate?res=64&seed=1`), a JSON body, or both.

    Image *i* uses seed `seed + i`; the z a seed maps to is documented at `GET /latents/{seed}`.
    """
    out = await pipeline.generate(merge(query, body))
    if out.single:
        headers = {"X-Model": out.model, "X-Resolution": str(out.res)}
        if all(s is not None for s in out.seeds):
            headers["X-Seed" if len(out.seeds) == 1 else "X-Seeds"] = ",".join(map(str, out.seeds))
        if out.truncation is not None:
            headers["X-Truncation"] = str(out.truncation)
        return Response(out.images[0], media_type=out.media_type, headers=headers)
    images = [
        ImageOut(seed=s, data=base64.b64encode(b).decode())
        for s, b in zip(out.seeds, out.images, strict=True)
    ]
    return GenerateResponse(
        model=out.model,
        res=out.res,
        format=out.format,
        media_type=out.media_type,
        truncation=out.truncation,
        images=images,
    )
