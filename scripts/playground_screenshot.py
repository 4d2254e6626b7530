"""docs/figures/playground.png: the playground (GET /) after a generate, in headless Chromium.

Starts `python -m service` on the bundled models, opens the page, generates a face, shows it at every
resolution and loads an interpolation, then saves a screenshot of the whole page. Needs Debian's chromium
(`make browser`) and Playwright for Python (the dev extra).

    python scripts/playground_screenshot.py [--models models] [--seed 7] [--out docs/figures/playground.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parent.parent
# headless, and no connection of the browser's own: the page's requests are the only ones
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def serve(models: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACES_")}
    env.update(FACES_MODEL_DIR=str(models), FACES_HOST="127.0.0.1", FACES_PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the service exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(1)
    proc.kill()
    sys.exit("the service was not ready after 300 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=REPO / "models")
    ap.add_argument("--seed", default="7")
    ap.add_argument("--walk", default="7, 21, 40", help="seeds of the interpolation")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "figures" / "playground.png")
    args = ap.parse_args()
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not chromium:
        sys.exit("no chromium on PATH: run `make browser` (or set CHROMIUM)")
    proc, url = serve(args.models)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready=true]")
            page.fill("#seed", args.seed)
            page.click("#generate")
            page.wait_for_function(
                f"() => document.querySelector('#gen-caption').textContent.startsWith('seed {args.seed} ')"
            )
            page.click("#ladder-btn")
            page.wait_for_function(
                "() => [...document.querySelectorAll('#ladder img')].every(i => i.complete && i.naturalWidth)"
            )
            page.fill("#walk-seeds", args.walk)
            page.click("#interpolate")
            page.wait_for_selector("#walk-result:not([hidden])")
            page.fill("#walk-slider", "4")  # a frame between the first two seeds
            page.click("#copy-curl")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
        print(f"{args.out} ({args.out.stat().st_size // 1024} KiB)")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
