"""Request -> latents -> batched onnxruntime run -> encoded bytes. Routes call these and nothing else."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from service.config import Settings
from service.errors import InvalidInput
from service.inference import encoding
from service.inference.latents import SEED_MAX, frame_count, interpolation_path, z_for_seed, z_for_seeds
from service.inference.sessions import Model, ModelRepository
from service.schemas import GenerateRequest, InterpolateRequest

T = TypeVar("T")


@dataclass
class Generated:
    model: str
    res: int
    format: str
    media_type: str
    truncation: float | None
    seeds: list[int | None]
    images: list[bytes]  # one entry when `single` (an image or a grid), else one per seed
    single: bool


@dataclass
class Interpolated:
    model: str
    res: int
    format: str
    media_type: str
    seeds: list[int | None]  # per waypoint
    frames: list[bytes]  # one entry (animation or strip) unless the output is "frames"
    n_frames: int


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

    async def generate(self, req: GenerateRequest) -> Generated:
        model = self.repo.get(req.model)
        res = model.check_res(req.res)
        seeds: list[int | None]
        if req.latents is not None:
            z, seeds = self._explicit_latents(req, model)
        else:
            drawn = self._seeds(req)
            z, seeds = z_for_seeds(drawn, model.z_dim, req.truncation), list(drawn)  # z [n, z_dim]
        media_type = encoding.MEDIA_TYPES[req.format]
        images = await model.generate(res, z)  # [n, res, res, 3] uint8
        n = len(images)
        if req.layout == "grid" and n > 1:
            rows, cols = encoding.grid_shape(n)
            check_size(req.format, cols * res, rows * res)
            grid = encoding.tile(images, rows, cols)
            data = [
                await self._encode(
                    encoding.encode_still, grid, req.format, req.quality, self.settings.png_level
                )
            ]
        else:
            data = await self._encode_each(images, req.format, req.quality)
        single = len(data) == 1 and req.layout != "json"
        return Generated(model.name, res, req.format, media_type, req.truncation, seeds, data, single)

    def _seeds(self, req: GenerateRequest) -> list[int]:
        limit = self.settings.max_n
        if req.n > limit:
            raise InvalidInput(f"n={req.n} is over the limit of {limit} images per request (FACES_MAX_N)")
        first = req.seed if req.seed is not None else secrets.randbelow(SEED_MAX - req.n + 2)
        if first + req.n - 1 > SEED_MAX:
            raise InvalidInput(f"seeds run from seed to seed + n - 1, which must stay <= {SEED_MAX}")
        return list(range(first, first + req.n))

    def _explicit_latents(self, req: GenerateRequest, model: Model) -> tuple[np.ndarray, list[int | None]]:
        assert req.latents is not None
        if req.seed is not None:
            raise InvalidInput("give either 'seed' or 'latents', not both")
        if req.truncation is not None:
            raise InvalidInput("'truncation' applies to seeds; explicit latents are used as given")
        count = len(req.latents)
        if count == 0:
            raise InvalidInput("'latents' is empty")
        if "n" in req.model_fields_set and req.n != count:
            raise InvalidInput(f"n={req.n} but {count} latents were given; leave n out")
        if count > self.settings.max_n:
            raise InvalidInput(
                f"{count} latents is over the limit of {self.settings.max_n} images per request (FACES_MAX_N)"
            )
        z = latents_array(req.latents, model, "latents")
        return z, [None] * count

    # ------------------------------------------------------------------------ /interpolate

    async def interpolate(self, req: InterpolateRequest) -> Interpolated:
        s = self.settings
        model = self.repo.get(req.model)
        res = model.check_res(req.res)
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
        fmt = output_format(req)
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
            data = [await self._encode(encoding.encode_animation, images, fmt, req.fps, req.quality)]
        elif req.output == "strip":
            data = [
                await self._encode(
                    encoding.encode_still, encoding.tile(images, 1, n_frames), fmt, req.quality
                )
            ]
        else:
            data = await self._encode_each(images, fmt, req.quality)
        seeds = [p.seed for p in points]
        return Interpolated(model.name, res, fmt, encoding.MEDIA_TYPES[fmt], seeds, data, n_frames)


# ---------------------------------------------------------------------------- checks


def latents_array(latents: Sequence[Sequence[float]], model: Model, where: str) -> np.ndarray:
    """Validated [N, z_dim] float32; 422 on a wrong length or a value float32 cannot hold."""
    for i, latent in enumerate(latents):
        if len(latent) != model.z_dim:
            raise InvalidInput(
                f"{where}[{i}] has {len(latent)} values; model {model.name!r} has z_dim={model.z_dim}"
            )
    z = np.asarray(latents, dtype=np.float32)
    if not np.isfinite(z).all():
        raise InvalidInput(f"{where}: every value must be a finite float32")
    return z


def output_format(req: InterpolateRequest) -> str:
    if req.output == "animation":
        fmt = req.format or "gif"
        if fmt not in ("gif", "webp"):
            raise InvalidInput(f"format {fmt!r} cannot hold an animation; choose gif or webp")
    else:
        fmt = req.format or "png"
        if fmt not in ("png", "jpeg", "webp"):
            raise InvalidInput(
                f"format {fmt!r} is for animations; output={req.output!r} takes png, jpeg or webp"
            )
    return fmt


def check_size(fmt: str, width: int, height: int) -> None:
    side = encoding.MAX_SIDE[fmt]
    if width > side or height > side:
        raise InvalidInput(
            f"a {width}x{height} image is too large for {fmt} (at most {side} pixels a side); use fewer images or png"
        )
