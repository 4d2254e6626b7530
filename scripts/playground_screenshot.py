"""docs/figures/playground.png: the playground (GET /) after a generate, in headless Chromium.

Starts `python -m service` on the bundled models, opens the page, generates a face, shows it at every
resolution and loads an interpolation, then saves a screenshot of the whole page. Needs Debian's chromium
(`make browser`) and Playwright for Python (the dev extra).

    python scripts/playground_screenshot.py [--models models] [--seed 3] [--out docs/figures/playground.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.serving import ServiceStartError, start_service, stop_service  # noqa: E402

# headless, and no connection of the browser's own (update checks, sync, field trials): only the page's
# requests leave it
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # root in a container has no user namespace for the sandbox
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
]


def find_chromium() -> str:
    """$CHROMIUM, else chromium or chromium-browser on PATH; LookupError says why there is none."""
    given = os.environ.get("CHROMIUM")
    path = shutil.which(given) if given else shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        where = f"CHROMIUM={given} is not an executable" if given else "no chromium on PATH"
        raise LookupError(f"{where}: `make browser` installs Debian's (or set CHROMIUM to a Chromium binary)")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=REPO / "models")
    ap.add_argument("--seed", default="3")
    ap.add_argument("--walk", default="3, 4, 2", help="seeds of the interpolation")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "figures" / "playground.png")
    args = ap.parse_args()
    try:
        chromium = find_chromium()
        proc, url = start_service({"FACES_MODEL_DIR": str(args.models)}, stdout=None, stderr=None)
    except (LookupError, ServiceStartError) as exc:
        sys.exit(str(exc))
    from playwright.sync_api import sync_playwright  # here: tests import this module for its flags

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
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
        stop_service(proc, timeout=60)


if __name__ == "__main__":
    main()
