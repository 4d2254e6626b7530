"""The playground's files as the service serves them (no browser: tests/service/browser drives the page itself)."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from service.main import create_app
from service.routes.playground import STATIC

PAGE_BUDGET = 100 * 1024  # bytes: the page, its script and its styles


def test_the_page_and_its_files_are_served_with_a_same_origin_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    assert client.head("/").status_code == 200
    for name, kind in (("playground.js", "javascript"), ("playground.css", "text/css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    assert client.get("/static/nothing.js").status_code == 404


def test_the_page_weighs_at_most_100_kb_and_names_no_other_host() -> None:
    files = sorted(STATIC.iterdir())
    assert {f.name for f in files} == {"index.html", "playground.css", "playground.js"}
    assert sum(f.stat().st_size for f in files) <= PAGE_BUDGET
    for f in files:
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", f.read_text()), f"{f.name} names a host"


def test_every_element_the_script_uses_is_on_the_page() -> None:
    html = (STATIC / "index.html").read_text()
    ids = set(re.findall(r'id="([^"]+)"', html))
    used = set(re.findall(r'\$\("([^"]+)"\)', (STATIC / "playground.js").read_text()))
    assert used and used <= ids, f"missing on the page: {sorted(used - ids)}"
    assert len(re.findall(r'id="', html)) == len(ids), "an id is used twice"


def test_the_page_needs_no_key_when_the_api_does(models_root: Path, make_settings) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(make_settings(models_root, api_keys=["k"]))) as c:
        assert c.get("/").status_code == 200
        assert c.get("/static/playground.js").status_code == 200
        assert c.get("/models").status_code == 401


def test_the_playground_can_be_turned_off(models_root: Path, make_settings) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(make_settings(models_root, playground=False))) as c:
        assert c.get("/").status_code == 404
        assert c.get("/static/playground.js").status_code == 404
        assert c.get("/models").status_code == 200


def test_the_page_is_not_part_of_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)
