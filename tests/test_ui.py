"""The Gradio demo in a real headless Chromium (Playwright), on the same server as the API.

Checks that the page loads, that generating 4 images shows 4 images, that interpolation shows
its frames and animation, that the download buttons appear, and that UI work goes through the
shared batcher (the API's batch metric moves). Screenshots land in test-artifacts/.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from projgan.config import ServeConfig
from projgan.serve.app import create_app
from projgan.serve.threaded import background_server
from tests.conftest import make_generator

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
VIEWPORTS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}
LOADED_IMAGES = (
    "n => Array.from(document.querySelectorAll('{sel} img')).filter(i => i.complete && i.naturalWidth > 0).length >= n"
)


@pytest.fixture(scope="module")
def generator_64(tmp_path_factory):
    return make_generator(tmp_path_factory.mktemp("ui") / "generator", resolution=64, ngf=16)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def export_onnx(gen_dir, dest):
    """A dynamic-batch ONNX file of the generator, written by the real export code."""
    from projgan import artifacts
    from projgan.export.onnx import export_fp32

    G, _ = artifacts.load_generator(gen_dir)
    export_fp32(G, dest)
    return dest


def batch_count(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("projgan_batch_size_count "):
            return float(line.split()[1])
    return 0.0


@pytest.mark.browser
@pytest.mark.parametrize("kind", ["torch", pytest.param("onnxruntime", marks=pytest.mark.slow)])  # ORT: make test-slow
def test_ui_generates_interpolates_and_fits_a_phone(kind, generator_64, browser, tmp_path):
    source = generator_64
    if kind == "onnxruntime":
        source = export_onnx(generator_64, tmp_path / "generator.onnx")
    ARTIFACTS.mkdir(exist_ok=True)
    cfg = ServeConfig(source=str(source), backend=kind, device="cpu", max_batch=8)
    with background_server(create_app(cfg)) as url:
        before = batch_count(url)
        for name, viewport in VIEWPORTS.items():
            page = browser.new_page(viewport=viewport)
            page.goto(url + "/")  # redirects to /ui/
            assert page.url.rstrip("/").endswith("/ui")
            page.wait_for_selector("#generate", timeout=30_000)
            page.wait_for_selector("#card-line table, #card-line p", timeout=30_000)  # the page's load event ran
            assert page.locator("#class").count() == 0 or not page.locator("#class").is_visible()  # unconditional
            assert page.locator("#truncation").count() == 0 or not page.locator("#truncation").is_visible()
            page.fill("#seed input", "123")
            page.click("#generate")
            page.wait_for_function(LOADED_IMAGES.replace("{sel}", "#gallery"), arg=4, timeout=30_000)
            assert page.locator("#gallery img").count() == 4
            assert page.locator("#gallery").get_by_text("seed 126").count() == 1
            page.wait_for_selector("#download", state="visible")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= viewport["width"] + 1, f"{name}: page is {width} px wide"
            page.screenshot(path=str(ARTIFACTS / f"ui-{kind}-{name}.png"), full_page=True)
            if kind == "torch" and name == "desktop":
                page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)

            page.get_by_role("tab", name="Interpolate").click()
            page.click("#interpolate")
            page.wait_for_function(LOADED_IMAGES.replace("{sel}", "#strip"), arg=1, timeout=30_000)
            page.wait_for_function(LOADED_IMAGES.replace("{sel}", "#animation"), arg=1, timeout=30_000)
            strip_w = page.evaluate("document.querySelector('#strip img').naturalWidth")
            strip_h = page.evaluate("document.querySelector('#strip img').naturalHeight")
            assert strip_w == 8 * strip_h  # eight frames side by side
            assert page.locator("#animation img").get_attribute("src").endswith(".gif")
            page.wait_for_selector("#download-gif", state="visible")
            page.screenshot(path=str(ARTIFACTS / f"ui-{kind}-{name}-interpolate.png"), full_page=True)

            page.get_by_role("tab", name="Model").click()
            page.wait_for_selector("#card table", timeout=10_000)
            assert kind in page.inner_text("#card")
            page.close()
        assert batch_count(url) > before  # the UI's work went through the shared batcher


@pytest.mark.browser
def test_ui_class_picker_and_truncation_slider_for_a_conditional_style_model(browser, tmp_path):
    """The picker lists the model's classes and the chosen class reaches the model; psi 0 makes seeds alike."""
    from tests.test_serve_conditional import conditional_generator

    gen = conditional_generator(tmp_path / "generator", "stylegan2")
    cfg = ServeConfig(source=str(gen), backend="torch", device="cpu", precision="fp32", max_batch=8)
    with background_server(create_app(cfg)) as url:
        page = browser.new_page(viewport=VIEWPORTS["desktop"])
        page.goto(url + "/ui/")
        page.wait_for_selector("#class", state="visible", timeout=30_000)
        page.wait_for_selector("#truncation", state="visible", timeout=30_000)
        page.click("#class input")
        options = page.get_by_role("option")
        options.first.wait_for(timeout=10_000)
        assert [t.strip() for t in options.all_inner_texts()][1:] == ["red", "blue"]
        page.get_by_role("option", name="blue").click()
        page.fill("#seed input", "10")
        page.click("#generate")
        page.wait_for_function(LOADED_IMAGES.replace("{sel}", "#gallery"), arg=4, timeout=30_000)
        assert page.locator("#gallery").get_by_text("seed 10 · blue").count() == 1
        assert page.locator("#gallery").get_by_text("red").count() == 0
        page.screenshot(path=str(ARTIFACTS / "ui-conditional.png"), full_page=True)
        page.close()
