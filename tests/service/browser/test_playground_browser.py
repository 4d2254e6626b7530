"""The playground (GET /) in a real headless Chromium: what a person trying the service sees and does."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.service.browser.conftest import Tab

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

PIXELS = """(selector) => {
  const img = document.querySelector(selector);
  const canvas = Object.assign(document.createElement('canvas'), {width: img.naturalWidth, height: img.naturalHeight});
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  return Array.from(ctx.getImageData(0, 0, canvas.width, canvas.height).data);
}"""


def pixels(page: Any, selector: str = "#gen-images img") -> list[int]:
    """The RGBA pixels of the image on show, as the browser decoded them."""
    return page.evaluate(PIXELS, selector)


def natural_widths(page: Any, selector: str) -> list[int]:
    return page.eval_on_selector_all(selector, "imgs => imgs.map(i => i.complete ? i.naturalWidth : -1)")


def downloaded(page: Any, tmp_path: Path) -> tuple[str, bytes]:
    """What the Download button gives: its file name and bytes."""
    with page.expect_download() as download:
        page.click("#gen-download")
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    return path.name, path.read_bytes()


def generate(page: Any, seed: str | None = None, res: str | None = None) -> None:
    """Fill the form and press Generate; returns once the result is on show."""
    if res is not None:
        page.select_option("#res", res)
    if seed is not None:
        page.fill("#seed", seed)
    with page.expect_response(lambda r: "/generate" in r.url):
        page.click("#generate")
    page.wait_for_function("() => !document.querySelector('#generate').disabled")
    page.wait_for_function("() => [...document.querySelectorAll('#gen-images img')].every(i => i.complete)")


def test_page_loads_with_a_face_no_errors_and_no_other_host(tab: Tab) -> None:
    response = tab.page.goto(tab.base + "/")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    tab.page.wait_for_selector("body[data-ready=true]")
    assert tab.console_errors == []
    assert tab.foreign_requests() == []
    assert any(u.endswith("/models") for u in tab.requests)
    # the first face is generated on load at the default model's largest resolution
    assert tab.page.input_value("#model") == "tiny"
    assert tab.page.input_value("#res") == "16"
    assert natural_widths(tab.page, "#gen-images img") == [16]
    assert "seed 7 · model tiny · 16 × 16 px" in tab.page.inner_text("#gen-caption")


def test_generate_shows_an_image_of_the_chosen_resolution(tab: Tab, tmp_path: Path) -> None:
    tab.open()
    generate(tab.page, seed="11", res="8")
    page = tab.page
    page.wait_for_function("() => document.querySelector('#gen-images img').naturalWidth === 8")
    caption = page.inner_text("#gen-caption")
    assert "seed 11" in caption and "model tiny" in caption and "8 × 8 px" in caption
    # scaled up for reading, nearest neighbour
    box = page.eval_on_selector("#gen-images img", "i => [i.clientWidth, getComputedStyle(i).imageRendering]")
    assert box[0] >= 256 and box[1] == "pixelated"
    name, body = downloaded(page, tmp_path)
    png = Image.open(io.BytesIO(body))
    assert name == "face-11.png" and png.format == "PNG" and png.size == (8, 8)


def test_a_new_seed_gives_a_new_image_and_the_same_seed_the_same(tab: Tab) -> None:
    tab.open()
    generate(tab.page, seed="1")
    first = pixels(tab.page)
    generate(tab.page, seed="2")
    second = pixels(tab.page)
    generate(tab.page, seed="1")
    assert len(first) == len(second) == 16 * 16 * 4
    assert first != second
    assert pixels(tab.page) == first
    # the dice picks a seed and generates with it
    tab.page.click("#dice")
    tab.page.wait_for_function("() => !document.querySelector('#generate').disabled")
    seed = tab.page.input_value("#seed")
    tab.page.wait_for_function(
        f"() => document.querySelector('#gen-caption').textContent.startsWith('seed {seed} ')"
    )


def test_grid_format_and_truncation_reach_the_request(tab: Tab, tmp_path: Path) -> None:
    tab.open()
    page = tab.page
    page.fill("#count", "4")
    page.select_option("#format", "jpeg")
    page.check("#truncate")
    page.fill("#truncation", "0.5")
    with page.expect_request(lambda r: "/generate" in r.url) as req:
        generate(page, seed="3", res="8")
    assert "n=4" in req.value.url and "layout=grid" in req.value.url and "truncation=0.5" in req.value.url
    name, body = downloaded(page, tmp_path)
    grid = Image.open(io.BytesIO(body))
    assert name == "faces-3.jpg" and grid.format == "JPEG" and grid.size == (16, 16)  # 2 x 2 faces of 8 px
    assert "seeds 3–6" in page.inner_text("#gen-caption")
    # separate images: one <img> per seed
    page.select_option("#layout", "json")
    generate(page)
    assert natural_widths(page, "#gen-images img") == [8, 8, 8, 8]


def test_copy_as_curl_reproduces_the_request_exactly(tab: Tab, tmp_path: Path) -> None:
    tab.open()
    page = tab.page
    page.check("#truncate")
    page.fill("#truncation", "0.7")
    generate(page, seed="42", res="16")
    _, shown = downloaded(page, tmp_path / "page")
    page.click("#copy-curl")
    command = page.inner_text("#curl")
    assert command.startswith("curl ") and "seed=42" in command
    (tmp_path / "curl").mkdir()
    subprocess.run(["bash", "-c", command], cwd=tmp_path / "curl", check=True, timeout=60)
    assert (tmp_path / "curl" / "face-42.png").read_bytes() == shown


def test_every_resolution_of_one_seed(tab: Tab) -> None:
    tab.open()
    generate(tab.page, seed="5")
    tab.page.click("#ladder-btn")
    tab.page.wait_for_function("() => document.querySelectorAll('#ladder img').length === 3")
    tab.page.wait_for_function(
        "() => [...document.querySelectorAll('#ladder img')].every(i => i.naturalWidth > 0)"
    )
    assert natural_widths(tab.page, "#ladder img") == [4, 8, 16]
    assert tab.page.inner_text("#ladder").split() == ["4", "px", "8", "px", "16", "px"]


def test_more_like_this_sends_nudged_latents(tab: Tab) -> None:
    tab.open()
    page = tab.page
    generate(page, seed="9", res="16")
    with page.expect_request(lambda r: r.url.endswith("/generate") and r.method == "POST") as req:
        page.click("#vary-btn")
    body = req.value.post_data_json
    assert len(body["latents"]) == 6 and all(len(z) == 32 for z in body["latents"])
    page.wait_for_function("() => document.querySelectorAll('#variations img').length === 6")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#variations img')].every(i => i.naturalWidth > 0)"
    )
    assert natural_widths(page, "#variations img") == [16] * 6
    z = page.evaluate("async () => (await (await fetch('latents/9?model=tiny')).json()).latent")
    nudges = [abs(a - b) for v in body["latents"] for a, b in zip(v, z, strict=True)]
    assert 0 < sum(nudges) / len(nudges) < 1  # near seed 9's z, not equal to it


def test_interpolation_frames_slider_play_and_gif(tab: Tab, tmp_path: Path) -> None:
    tab.open()
    page = tab.page
    page.fill("#walk-seeds", "1, 2")
    page.fill("#walk-steps", "5")
    page.click("#interpolate")
    page.wait_for_selector("#walk-result:not([hidden])")
    assert page.get_attribute("#walk-slider", "max") == "5"  # (2 - 1) * 5 + 1 frames
    assert page.inner_text("#walk-pos") == "1 / 6"
    first = page.get_attribute("#walk-frame", "src")
    page.focus("#walk-slider")
    page.keyboard.press("End")  # the slider, from the keyboard
    assert page.inner_text("#walk-pos") == "6 / 6"
    assert page.get_attribute("#walk-frame", "src") != first
    page.click("#walk-play")
    page.wait_for_function("() => document.querySelector('#walk-pos').textContent !== '6 / 6'")
    assert page.get_attribute("#walk-play", "aria-pressed") == "true"
    page.click("#walk-play")
    assert page.get_attribute("#walk-play", "aria-pressed") == "false"
    with page.expect_download() as download:
        page.click("#walk-gif")
    gif = tmp_path / "walk.gif"
    download.value.save_as(gif)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 6 and im.size == (16, 16)
    with page.expect_download() as download:
        page.click("#walk-strip")
    strip = tmp_path / download.value.suggested_filename
    download.value.save_as(strip)
    with Image.open(strip) as im:
        assert strip.name == "strip.png" and im.format == "PNG" and im.size == (6 * 16, 16)


def test_what_the_api_rejects_is_shown_as_its_message(tab: Tab) -> None:
    tab.open()
    page = tab.page
    generate(page, seed="99999999999")
    error = page.locator("#gen-error")
    assert error.is_visible()
    assert error.inner_text().startswith(
        "422: invalid request: query seed: Input should be less than or equal to"
    )
    page.fill("#count", "9")  # over FACES_MAX_N=8
    generate(page, seed="1")
    assert "422" in error.inner_text() and "8" in error.inner_text()
    page.fill("#walk-seeds", "1")
    page.click("#interpolate")
    page.wait_for_selector("#walk-error:not([hidden])")
    assert "an interpolation needs at least two waypoints" in page.inner_text("#walk-error")
    page.fill("#walk-seeds", "1, two")
    page.click("#interpolate")
    page.wait_for_function("() => document.querySelector('#walk-error').textContent.includes('seeds.1')")
    # a good request clears the message
    page.fill("#count", "1")
    generate(page, seed="1")
    assert not error.is_visible()


def test_api_keys_a_wrong_key_shows_401_and_the_right_one_is_kept(keyed_tab: Tab) -> None:
    keyed_tab.open()
    page = keyed_tab.page
    assert page.locator("#key-box").get_attribute("open") is not None
    assert "401: an API key is required" in page.inner_text("#models-error")
    page.fill("#api-key", "wrong-key")
    page.click("#key-form button[type=submit]")
    page.wait_for_function("() => document.querySelector('#models-error').textContent.includes('not valid')")
    assert page.inner_text("#models-error") == "401: the API key is not valid"
    page.fill("#api-key", "right-key")
    page.click("#key-form button[type=submit]")
    page.wait_for_function("() => document.querySelector('#gen-images img')?.naturalWidth === 16")
    assert page.evaluate("localStorage.getItem('faces.apiKey')") == "right-key"
    page.click("#copy-curl")
    command = page.inner_text("#curl")
    assert '"X-API-Key: $FACES_API_KEY"' in command and "right-key" not in command
    # a reload keeps the key (local storage) and generates straight away
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.input_value("#api-key") == "right-key"
    assert natural_widths(page, "#gen-images img") == [16]
    # the key goes to no other place: every request went to the service itself
    assert keyed_tab.foreign_requests() == []


def test_keyboard_labels_and_a_phone_width_screen(tab: Tab) -> None:
    tab.page.set_viewport_size({"width": 360, "height": 740})
    tab.open()
    page = tab.page
    assert page.evaluate("document.scrollingElement.scrollWidth <= innerWidth")
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, button, output')]
              .filter(e => !(e.labels?.length || e.getAttribute('aria-label') || e.textContent.trim()
                             || e.title || e.tagName === 'OUTPUT'))
              .map(e => e.id)"""
    )
    assert unlabelled == []
    # type a seed and press Enter
    page.focus("#seed")
    page.keyboard.press("Control+A")
    page.keyboard.type("123")
    with page.expect_response(lambda r: "seed=123" in r.url):
        page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('#gen-caption').textContent.startsWith('seed 123 ')")
    # shortcuts outside text fields: ] is the next seed
    page.focus("#copy-curl")
    with page.expect_response(lambda r: "seed=124" in r.url):
        page.keyboard.press("]")
    # Tab reaches the controls in order
    page.focus("#model")
    order = []
    for _ in range(4):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
    assert order == ["res", "seed", "dice", "truncate"]
