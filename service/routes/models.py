"""GET /models."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import RepoDep
from service.errors import error_responses
from service.schemas import ModelInfo, ModelsResponse

router = APIRouter(tags=["models"])


@router.get(
    "/models",
    summary="Models, resolutions and where they run",
    response_model=ModelsResponse,
    responses=error_responses(503),
)
async def list_models(repo: RepoDep) -> ModelsResponse:
    """Every model found at start-up, with its manifest's provenance and metrics; broken ones as unavailable."""
    infos = []
    for name, m in sorted(repo.models.items()):
        providers = {str(res): g.provider for res, g in sorted(m.graphs.items())}
        infos.append(
            ModelInfo(
                name=name,
                status="ready",
                default=name == repo.default,
                z_dim=m.z_dim,
                resolutions=m.resolutions,
                provider=next(iter(providers.values())),
                providers=providers,
                cpu_layouts={
                    str(r): g.cpu_layout for r, g in sorted(m.graphs.items()) if g.cpu_layout != "-"
                },
                run_rows={str(r): g.min_rows for r, g in sorted(m.graphs.items())},
                latent=m.manifest.latent,
                provenance=m.manifest.provenance,
                metrics=m.manifest.metrics,
            )
        )
    for name, b in sorted(repo.broken.items()):
        infos.append(ModelInfo(name=name, status="unavailable", default=False, error=b.error))
    return ModelsResponse(default=repo.default, models=infos)
