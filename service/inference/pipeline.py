"""Request -> latents -> batched onnxruntime run -> encoded bytes. Routes call these and nothing else."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import numpy as np

from contract import SEED_MAX, z_for_seed, z_for_seeds
from service.config import Settings
from service.errors import InvalidInput
from service.inference import encoding
from service.inference.latents import frame_count, interpolation_path
from service.inference.sessions import Model, ModelRepository
from service.schemas import (
    GenerateRequest,
    GenerateResponse,
    ImageOut,
    InterpolateRequest,
    InterpolateResponse,
)

T = TypeVar("T")


class Pipeline:
    """Holds the models, the limits and the encode thread pool."""

    def __init__(self, repo: ModelRepository, settings: Settings, encoder: Executor) -> None:
        self.repo = repo
        self.settings = settings
        self._encoder = encoder

    async def _encode(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._encoder, fn, *args)

    async def _encode_each(self, images: np.ndarray, fmt: str, quality: int) -> list[bytes]:
        """[N, H, W, 3] -> N encoded images, spread over the encode threads."""
        level = self.settings.png_level
        jobs = [self._encode(encoding.encode_still, image, fmt, quality, level) for image in images]
        return list(await asyncio.gather(*jobs))

    # ------------------------------------------------------------------------ /generate

    async def generate(self, req: GenerateRequest) -> GenerateResponse:
        """Check the request against the model and the limits, run it, encode the images."""
        model, res = self.repo.resolve(req.model, req.res)
        limit = self.settings.max_n
        if req.count > limit:
            given = f"n={req.n}" if req.latents is None else f"{req.count} latents"
            raise InvalidInput(f"{given} is over the limit of {limit} images per request (FACES_MAX_N)")
        grid = req.layout == "grid" and req.count > 1
        if grid:
            rows, cols = encoding.grid_shape(req.count)
            check_size(req.format, cols * res, rows * res)
        seeds: list[int | None]
        if req.latents is not None:
            z, seeds = latents_array(req.latents, model, "latents"), [None] * req.count
        else:
            first = req.seed if req.seed is not None else secrets.randbelow(SEED_MAX - req.n + 2)
            drawn = list(range(first, first + req.n))
            z, seeds = z_for_seeds(drawn, model.z_dim, req.truncation), list(drawn)
        images = await model.generate(res, z)  # [n, res, res, 3] uint8
        if grid:
            tiled = encoding.tile(images, rows, cols)
            level = self.settings.png_level
            out = [
                ImageOut(
                    seed=None,
                    data=await self._encode(encoding.encode_still, tiled, req.format, req.quality, level),
                )
            ]
        else:
            data = await self._encode_each(images, req.format, req.quality)
            out = [ImageOut(seed=s, data=d) for s, d in zip(seeds, data, strict=True)]
        return GenerateResponse(
            model=model.name,
            res=res,
            format=req.format,
            media_type=encoding.MEDIA_TYPES[req.format],
            truncation=req.truncation,
            seeds=seeds,
            images=out,
        )

    # ------------------------------------------------------------------------ /interpolate

    async def interpolate(self, req: InterpolateRequest) -> InterpolateResponse:
        """Check the request against the model and the limits, walk the path, encode the frames."""
        s = self.settings
        model, res = self.repo.resolve(req.model, req.res)
        points = req.points
        if len(points) > s.max_waypoints:
            raise InvalidInput(
                f"{len(points)} waypoints is over the limit of {s.max_waypoints} (FACES_MAX_WAYPOINTS)"
            )
        if req.steps > s.max_steps:
            raise InvalidInput(f"steps={req.steps} is over the limit of {s.max_steps} (FACES_MAX_STEPS)")
        n_frames = frame_count(len(points), req.steps, req.loop)
        if n_frames > s.max_frames:
            raise InvalidInput(
                f"{n_frames} frames is over the limit of {s.max_frames} per request (FACES_MAX_FRAMES)"
            )
        fmt = req.file_format
        if req.output == "strip":
            check_size(fmt, n_frames * res, res)
        rows = [
            z_for_seed(p.seed, model.z_dim, req.truncation)
            if p.seed is not None
            else latents_array([p.latent or []], model, f"waypoints.{i}.latent")[0]
            for i, p in enumerate(points)
        ]

        z = interpolation_path(np.stack(rows), req.steps, req.method, req.loop)  # [frames, z_dim]
        assert len(z) == n_frames
        images = await model.generate(res, z)
        if req.output == "animation":
            frames = [await self._encode(encoding.encode_animation, images, fmt, req.fps, req.quality)]
        elif req.output == "strip":
            strip = encoding.tile(images, 1, n_frames)
            frames = [await self._encode(encoding.encode_still, strip, fmt, req.quality, s.png_level)]
        else:
            frames = await self._encode_each(images, fmt, req.quality)
        return InterpolateResponse(
            model=model.name,
            res=res,
            format=fmt,
            media_type=encoding.MEDIA_TYPES[fmt],
            method=req.method,
            loop=req.loop,
            steps=req.steps,
            n_frames=n_frames,
            seeds=[p.seed for p in points],
            frames=frames,
        )


# ---------------------------------------------------------------------------- checks


def latents_array(latents: Sequence[Sequence[float]], model: Model, where: str) -> np.ndarray:
    """[N, z_dim] float32; 422 on a length other than the model's z_dim (the schema bounds the values)."""
    for i, latent in enumerate(latents):
        if len(latent) != model.z_dim:
            raise InvalidInput(
                f"{where}[{i}] has {len(latent)} values; model {model.name!r} has z_dim={model.z_dim}"
            )
    return np.asarray(latents, dtype=np.float32)


def check_size(fmt: str, width: int, height: int) -> None:
    side = encoding.MAX_SIDE[fmt]
    if width > side or height > side:
        raise InvalidInput(
            f"a {width}x{height} image is too large for {fmt} (at most {side} pixels a side); use fewer images or png"
        )
