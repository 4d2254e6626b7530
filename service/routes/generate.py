"""POST /generate."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from fastapi.responses import Response

from service.deps import PipelineDep
from service.errors import error_responses
from service.schemas import GenerateQuery, GenerateRequest, GenerateResponse

router = APIRouter(tags=["generate"])

IMAGE_CONTENT: dict[str, Any] = {
    t: {"schema": {"type": "string", "format": "binary"}} for t in ("image/png", "image/jpeg", "image/webp")
}


def image_response(out: GenerateResponse) -> Response:
    """One image (or grid) as its bytes, what made it in headers."""
    headers = {"X-Model": out.model, "X-Resolution": str(out.res)}
    if all(s is not None for s in out.seeds):
        headers["X-Seed" if len(out.seeds) == 1 else "X-Seeds"] = ",".join(map(str, out.seeds))
    if out.truncation is not None:
        headers["X-Truncation"] = str(out.truncation)
    return Response(out.images[0].data, media_type=out.media_type, headers=headers)


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
        **error_responses(400, 413, 415, 422, 503),
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
    req = GenerateRequest.merged(query, body)
    out = await pipeline.generate(req)
    return image_response(out) if len(out.images) == 1 and req.layout != "json" else out
