"""Every route and every client error, through TestClient, on the tiny exported model (4, 8, 16; z_dim 32)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from contract import z_for_seed


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def png(client: TestClient, seed: int, res: int = 16) -> bytes:
    r = client.post(f"/generate?res={res}&seed={seed}")
    assert r.status_code == 200, r.text
    return r.content


def assert_error(r, status: int, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail
    for word in words:
        assert word in detail, detail


# ---------------------------------------------------------------------------- health, models, latents


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready", "models": ["tiny"]}


def test_models(client: TestClient) -> None:
    body = client.get("/models").json()
    assert body["default"] == "tiny"
    (m,) = body["models"]
    assert m["name"] == "tiny" and m["status"] == "ready" and m["default"] is True
    assert m["resolutions"] == [4, 8, 16] and m["z_dim"] == 32
    assert m["provider"] == "CPUExecutionProvider"
    assert m["providers"] == {
        "4": "CPUExecutionProvider",
        "8": "CPUExecutionProvider",
        "16": "CPUExecutionProvider",
    }
    assert isinstance(m["provenance"], dict) and isinstance(m["metrics"], dict)


def test_latents_are_the_documented_draw(client: TestClient) -> None:
    body = client.get("/latents/123").json()
    assert body["z_dim"] == 32 and body["seed"] == 123 and body["model"] == "tiny"
    assert "default_rng(seed).standard_normal(z_dim, dtype=numpy.float32)" in body["rng"]
    assert np.array_equal(np.asarray(body["latent"], np.float32), z_for_seed(123, 32))
    truncated = client.get("/latents/123?truncation=0.5").json()
    assert np.array_equal(np.asarray(truncated["latent"], np.float32), z_for_seed(123, 32, 0.5))


@pytest.mark.parametrize(
    "path", ["/latents/4294967296", "/latents/-1", "/latents/abc", "/latents/1?truncation=0"]
)
def test_latents_bad_input(client: TestClient, path: str) -> None:
    assert_error(client.get(path), 422)


def test_latents_unknown_model(client: TestClient) -> None:
    assert_error(client.get("/latents/1?model=nope"), 422, "nope", "tiny")


# ---------------------------------------------------------------------------- /generate


def test_generate_one_image(client: TestClient) -> None:
    r = client.post("/generate?res=16&seed=42")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert (
        r.headers["x-seed"] == "42" and r.headers["x-resolution"] == "16" and r.headers["x-model"] == "tiny"
    )
    img = decode(r.content)
    assert img.shape == (16, 16, 3) and img.std() > 0
    assert png(client, 42) == r.content  # deterministic
    assert png(client, 43) != r.content


def test_generate_random_seed_is_returned(client: TestClient) -> None:
    r = client.post("/generate?res=8")
    seed = int(r.headers["x-seed"])
    assert 0 <= seed < 2**32
    assert png(client, seed, res=8) == r.content


def test_generate_default_res_is_the_largest(client: TestClient) -> None:
    r = client.post("/generate?seed=1")
    assert r.headers["x-resolution"] == "16" and decode(r.content).shape == (16, 16, 3)


def test_generate_body_equals_query(client: TestClient) -> None:
    by_body = client.post("/generate", json={"res": 8, "seed": 5, "format": "webp", "quality": 80})
    by_query = client.post("/generate?res=8&seed=5&format=webp&quality=80")
    mixed = client.post("/generate?res=8", json={"seed": 5, "format": "webp", "quality": 80})
    assert by_body.status_code == 200 and by_body.headers["content-type"] == "image/webp"
    assert by_body.content == by_query.content == mixed.content


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_generate_formats(client: TestClient, fmt: str) -> None:
    r = client.post(f"/generate?res=16&seed=3&format={fmt}&quality=70")
    assert r.headers["content-type"] == f"image/{fmt}"
    assert Image.open(io.BytesIO(r.content)).format == fmt.upper()
    assert decode(r.content).shape == (16, 16, 3)


def test_generate_several_as_json_match_single_requests(client: TestClient) -> None:
    r = client.post("/generate", json={"res": 16, "seed": 10, "n": 3})
    body = r.json()
    assert r.status_code == 200 and body["model"] == "tiny" and body["res"] == 16
    assert [im["seed"] for im in body["images"]] == [10, 11, 12]
    for im in body["images"]:  # batched in one run, byte-identical to running alone
        assert base64.b64decode(im["data"]) == png(client, im["seed"])


def test_generate_layout_json_for_one(client: TestClient) -> None:
    body = client.post("/generate?res=8&seed=2&layout=json").json()
    assert [im["seed"] for im in body["images"]] == [2]


def test_generate_grid(client: TestClient) -> None:
    r = client.post("/generate?res=16&seed=20&n=3&layout=grid")
    assert r.headers["content-type"] == "image/png" and r.headers["x-seeds"] == "20,21,22"
    grid = decode(r.content)
    assert grid.shape == (32, 32, 3)  # 2 x 2 cells, the last one empty
    assert np.array_equal(grid[:16, 16:], decode(png(client, 21)))
    assert np.array_equal(grid[16:, :16], decode(png(client, 22)))
    assert grid[16:, 16:].max() == 0


def test_truncation_changes_the_face_and_matches_truncated_latents(client: TestClient) -> None:
    truncated = client.post("/generate?res=16&seed=9&truncation=0.5")
    assert truncated.headers["x-truncation"] == "0.5"
    assert truncated.content != png(client, 9)
    z = client.get("/latents/9?truncation=0.5").json()["latent"]
    assert client.post("/generate", json={"res": 16, "latents": [z]}).content == truncated.content


def test_latents_round_trip(client: TestClient) -> None:
    z1 = client.get("/latents/5").json()["latent"]
    z2 = client.get("/latents/6").json()["latent"]
    r = client.post("/generate", json={"res": 16, "latents": [z1]})
    assert r.status_code == 200 and "x-seed" not in r.headers
    assert r.content == png(client, 5)
    mean = ((np.asarray(z1) + np.asarray(z2)) / 2).tolist()  # client-side latent arithmetic
    body = client.post("/generate", json={"res": 16, "latents": [z1, mean]}).json()
    assert [im["seed"] for im in body["images"]] == [None, None]
    assert base64.b64decode(body["images"][0]["data"]) == png(client, 5)


@pytest.mark.parametrize(
    ("url", "body", "words"),
    [
        ("/generate?res=5", None, ["5", "4, 8, 16"]),
        ("/generate?res=32", None, ["4, 8, 16"]),
        ("/generate?n=9", None, ["n=9", "8", "FACES_MAX_N"]),
        ("/generate?n=0", None, ["n"]),
        ("/generate?seed=4294967296", None, ["seed"]),
        ("/generate?seed=-1", None, ["seed"]),
        ("/generate?seed=4294967295&n=2", None, ["4294967295"]),
        ("/generate?format=bmp", None, ["format"]),
        ("/generate?quality=0", None, ["quality"]),
        ("/generate?truncation=0", None, ["truncation"]),
        ("/generate?layout=mosaic", None, ["layout"]),
        ("/generate?model=nope", None, ["nope", "tiny"]),
        ("/generate?resolution=16", None, ["resolution"]),
        ("/generate?res=8", {"res": 16}, ["res", "both"]),
        ("/generate", {"latents": [[0.5] * 31]}, ["31", "z_dim=32"]),
        ("/generate", {"latents": [[0.5] * 33]}, ["33"]),
        ("/generate", {"latents": [[1e39] * 32]}, ["latents"]),
        ("/generate", {"latents": [[0.5] * 32] * 9}, ["9 latents", "FACES_MAX_N"]),
        ("/generate", {"latents": []}, ["latents", "at least 1"]),
        ("/generate", {"latents": [[0.5] * 32], "seed": 1}, ["seed", "latents"]),
        ("/generate", {"latents": [[0.5] * 32], "truncation": 0.7}, ["truncation"]),
        ("/generate", {"latents": [[0.5] * 32], "n": 2}, ["n=2"]),
        ("/generate", {"latents": "abc"}, ["latents"]),
        ("/generate", {"n": "many"}, ["n"]),
    ],
)
def test_generate_bad_input(client: TestClient, url: str, body: object, words: list[str]) -> None:
    assert_error(client.post(url, json=body), 422, *words)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_generate_latents_not_finite(client: TestClient, token: str) -> None:
    raw = '{"latents": [[' + ", ".join([token] + ["0.1"] * 31) + "]]}"
    assert_error(
        client.post("/generate", content=raw, headers={"content-type": "application/json"}), 422, "finite"
    )


@pytest.mark.parametrize("path", ["/generate", "/interpolate"])
def test_malformed_json_is_400_and_a_form_body_is_415(client: TestClient, path: str) -> None:
    json_header = {"content-type": "application/json"}
    assert_error(
        client.post(path, content=b"{not json", headers=json_header), 400, "not valid JSON", "character 1"
    )
    form = {"content-type": "application/x-www-form-urlencoded"}  # curl -d without -H
    assert_error(client.post(path, content=b'{"seeds": [1, 2]}', headers=form), 415, "application/json")


def test_body_too_large(client: TestClient) -> None:
    big = json.dumps({"latents": [[0.123456789] * 32] * 400}).encode()  # ~200 KB > 64 KiB
    assert_error(
        client.post("/generate", content=big, headers={"content-type": "application/json"}),
        413,
        "FACES_MAX_BODY_BYTES",
    )
    chunked = client.post(
        "/generate", content=iter([big[:40000], big[40000:]]), headers={"content-type": "application/json"}
    )
    assert_error(chunked, 413, "FACES_MAX_BODY_BYTES")


def test_chunked_body_under_the_limit_is_served(client: TestClient) -> None:
    raw = json.dumps({"res": 8, "seed": 4}).encode()
    r = client.post(
        "/generate", content=iter([raw[:5], raw[5:]]), headers={"content-type": "application/json"}
    )
    assert r.status_code == 200 and r.content == png(client, 4, res=8)


def test_unknown_route_is_json(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404)
    assert_error(client.get("/generate"), 405)


# ---------------------------------------------------------------------------- /interpolate


def test_interpolate_gif(client: TestClient) -> None:
    r = client.post("/interpolate", json={"seeds": [1, 2, 3], "steps": 4, "res": 16})
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    assert r.headers["x-frames"] == "9"
    gif = Image.open(io.BytesIO(r.content))
    assert gif.n_frames == 9 and gif.size == (16, 16) and gif.info["loop"] == 0


def test_interpolate_webp_loop(client: TestClient) -> None:
    r = client.post(
        "/interpolate",
        json={"waypoints": [{"seed": 1}, {"seed": 2}], "steps": 3, "loop": True, "format": "webp", "res": 8},
    )
    assert r.headers["content-type"] == "image/webp" and r.headers["x-frames"] == "6"
    assert Image.open(io.BytesIO(r.content)).n_frames == 6


def test_interpolate_strip_and_frames(client: TestClient) -> None:
    strip = client.post("/interpolate", json={"seeds": [1, 2], "steps": 4, "output": "strip", "res": 16})
    assert strip.headers["content-type"] == "image/png"
    image = decode(strip.content)
    assert image.shape == (16, 16 * 5, 3)
    body = client.post(
        "/interpolate", json={"seeds": [1, 2], "steps": 4, "output": "frames", "res": 16}
    ).json()
    assert body["seeds"] == [1, 2] and body["method"] == "slerp" and len(body["frames"]) == 5
    frames = [base64.b64decode(f) for f in body["frames"]]
    assert frames[0] == png(client, 1) and frames[-1] == png(
        client, 2
    )  # the path starts and ends on the seeds
    assert np.array_equal(image[:, 32:48], decode(frames[2]))
    lerp = client.post(
        "/interpolate", json={"seeds": [1, 2], "steps": 4, "output": "frames", "method": "lerp", "res": 16}
    )
    assert lerp.json()["frames"][0] == body["frames"][0] and lerp.json()["frames"][2] != body["frames"][2]


def test_interpolate_latent_waypoint(client: TestClient) -> None:
    z = client.get("/latents/2").json()["latent"]
    by_latent = client.post(
        "/interpolate",
        json={"waypoints": [{"seed": 1}, {"latent": z}], "steps": 2, "output": "frames", "res": 8},
    )
    by_seed = client.post("/interpolate", json={"seeds": [1, 2], "steps": 2, "output": "frames", "res": 8})
    assert by_latent.json()["seeds"] == [1, None]
    assert by_latent.json()["frames"] == by_seed.json()["frames"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"seeds": [1]}, ["two waypoints"]),
        ({"seeds": []}, ["two waypoints"]),
        ({"seeds": [1, 2, 3, 4, 5]}, ["5 waypoints", "4", "FACES_MAX_WAYPOINTS"]),
        ({"seeds": [1, 2], "steps": 9}, ["steps=9", "8", "FACES_MAX_STEPS"]),
        ({"seeds": [1, 2, 3, 4], "steps": 8}, ["25 frames", "20", "FACES_MAX_FRAMES"]),
        ({"seeds": [1, 2], "steps": 0}, ["steps"]),
        ({"seeds": [1, 2], "method": "cubic"}, ["method"]),
        ({"seeds": [1, 2], "format": "bmp"}, ["format"]),
        ({"seeds": [1, 2], "format": "jpeg"}, ["jpeg", "gif or webp"]),
        ({"seeds": [1, 2], "output": "strip", "format": "gif"}, ["gif"]),
        ({"seeds": [1, 2], "output": "movie"}, ["output"]),
        ({"seeds": [1, 2], "res": 5}, ["4, 8, 16"]),
        ({"seeds": [1, 2], "model": "nope"}, ["nope"]),
        ({"seeds": [1, 2], "waypoints": [{"seed": 1}, {"seed": 2}]}, ["exactly one"]),
        ({"waypoints": [{"seed": 1, "latent": [0.1] * 32}, {"seed": 2}]}, ["exactly one"]),
        ({"waypoints": [{"seed": 1}, {}]}, ["exactly one"]),
        ({"waypoints": [{"seed": 1}, {"latent": [0.1] * 30}]}, ["30", "z_dim=32"]),
        ({"seeds": [1, 2**32]}, ["seeds"]),
        ({"seeds": [1, 2], "fps": 0}, ["fps"]),
        ({"seeds": [1, 2], "loop": "sometimes"}, ["loop"]),
        ({}, ["seeds"]),
    ],
)
def test_interpolate_bad_input(client: TestClient, body: dict[str, object], words: list[str]) -> None:
    assert_error(client.post("/interpolate", json=body), 422, *words)


# ---------------------------------------------------------------------------- schema


def test_openapi_documents_routes_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in (
        "/generate",
        "/interpolate",
        "/latents/{seed}",
        "/models",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in spec["paths"], path
    generate = spec["paths"]["/generate"]["post"]
    assert {p["name"] for p in generate["parameters"]} >= {
        "res",
        "seed",
        "n",
        "truncation",
        "format",
        "quality",
        "model",
        "layout",
    }
    assert "image/png" in generate["responses"]["200"]["content"]
    assert spec["components"]["schemas"]["GenerateRequest"]["examples"]
    assert spec["components"]["schemas"]["InterpolateRequest"]["examples"]
