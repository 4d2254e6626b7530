"""GET /latents/{seed}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from contract import RNG_DOC, SEED_MAX, TRUNCATION_DOC, z_for_seed
from service.deps import RepoDep
from service.errors import error_responses
from service.schemas import LatentResponse, Truncation

router = APIRouter(tags=["latents"])


@router.get(
    "/latents/{seed}",
    summary="The latent z a seed maps to",
    description=f"z for `seed`, reproducible without the service: `{RNG_DOC}`; {TRUNCATION_DOC}. "
    "Edit it (add, average, scale) and send it back as `latents` to /generate or as a waypoint to /interpolate.",
    response_model=LatentResponse,
    responses=error_responses(422, 503),
)
async def latent(
    repo: RepoDep,
    seed: Annotated[int, Path(ge=0, le=SEED_MAX, description=f"0 .. {SEED_MAX}")],
    truncation: Annotated[Truncation | None, Query()] = None,
    model: Annotated[
        str | None, Query(description="Model whose z_dim to use; default: the default model")
    ] = None,
) -> LatentResponse:
    m = repo.get(model)
    z = z_for_seed(seed, m.z_dim, truncation)
    return LatentResponse(
        seed=seed,
        model=m.name,
        z_dim=m.z_dim,
        truncation=truncation,
        rng=RNG_DOC,
        truncation_rule=TRUNCATION_DOC,
        latent=z.tolist(),
    )
