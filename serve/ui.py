"""Gradio demo at ``/ui``, on the same app and the same batcher as the API (UI load is batched too).

Seed + count -> gallery (and a zip of what is shown); a "random" button; interpolation between
two seeds as a strip and an animated GIF; the model card. Layout wraps to one column on a
phone-width screen. A class picker (conditional models) and a truncation slider (style models)
apply to both tabs; the page is built before the model is loaded, so they appear on page load.
"""

from __future__ import annotations

import hmac
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from projgan.serve import images as enc
from projgan.serve.batcher import BatcherClosed, QueueFull
from projgan.serve.schemas import MAX_SEED, TRUNCATION_RANGE

UI_MAX_IMAGES = 16
BY_SEED = "by seed (seed mod K)"  # the class picker's "no class named" choice, as the API's default
SCRATCH_MAX_AGE_S = 600  # our copies; Gradio keeps its own cached copies per delete_cache

CSS = """
.gradio-container { width: 100% !important; max-width: 980px !important; margin: 0 auto !important; }
#card-line { opacity: 0.8; }
#gallery .grid-wrap { min-height: 0 !important; height: auto !important; max-height: none !important; }
#strip .image-frame { overflow-x: auto; justify-content: flex-start; }
#strip .image-frame img { height: 112px !important; width: auto !important; max-width: none !important; }
#animation .image-frame img { width: 256px !important; max-width: 100% !important; height: auto !important; object-fit: contain !important; }
@media (max-width: 480px) {
  .gradio-container { padding: 6px !important; }
  #title h1 { font-size: 1.4rem; }
  #gallery .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
}
"""


class Scratch:
    """A private temp folder for the files the UI hands to Gradio; old files are swept on each use."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="projgan-ui-"))

    def folder(self) -> Path:
        now = time.time()
        for d in self.root.iterdir():
            if now - d.stat().st_mtime > SCRATCH_MAX_AGE_S:
                shutil.rmtree(d, ignore_errors=True)
        d = Path(tempfile.mkdtemp(dir=self.root))
        return d

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _card_table(card: dict) -> str:
    """The model card as a two-column Markdown table (reads well on a phone)."""
    parity = card.get("parity") or {}
    rows = [
        ("Resolution", f"{card['resolution']} px"),
        ("Latent size", card["z_dim"]),
        ("Training", f"{float(card['kimg']):g} kimg" if card.get("kimg") is not None else "—"),
        ("FID", f"{float(card['fid']):.2f}" if card.get("fid") is not None else "—"),
        ("Backend", f"{card['backend']} · {card['precision']} · {card['device']}"),
        ("Providers", ", ".join(card.get("providers") or []) or "—"),
        ("Parity", ("passed" if parity.get("passed") else "FAILED") if parity else "— (not from an export)"),
        ("Classes", ", ".join(card.get("class_names") or []) or "— (unconditional)"),
        ("Truncation", "ψ, interpolation in w" if card.get("supports_w") else "ψ" if card.get("truncation") else "—"),
        ("Batching", f"up to {card['max_batch']} images, {card['max_delay_ms']:g} ms wait"),
        ("Limits", f"{card['limits']['max_images']} images, {card['limits']['max_interpolation_steps']} frames"),
    ]
    return "| Model | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _card_line(card: dict) -> str:
    bits = [f"{card['resolution']} px", f"{card['backend']} {card['precision']} on {card['device']}"]
    if card.get("kimg") is not None:
        bits.append(f"{float(card['kimg']):g} kimg")
    if card.get("fid") is not None:
        bits.append(f"FID {float(card['fid']):.2f}")
    return " · ".join(bits)


def build(server):
    """The Blocks app; ``server`` is the ``projgan.serve.server.Server`` the API uses."""
    import gradio as gr

    cfg = server.cfg
    scratch = server.scratch = Scratch()
    max_count = min(cfg.max_images, UI_MAX_IMAGES)

    def _class(value) -> int | None:
        if value in (None, "", BY_SEED):
            return None
        try:
            return server.facts.class_index(value)
        except ValueError as e:
            raise gr.Error(str(e)) from None

    def _psi(value) -> float | None:
        if not server.facts.truncation or value is None:
            return None
        return min(max(float(value), TRUNCATION_RANGE[0]), TRUNCATION_RANGE[1])

    def _seed(value, name: str) -> int:
        if value is None:
            raise gr.Error(f"{name}: enter a number")
        s = int(value)
        if not 0 <= s <= MAX_SEED or s != value:
            raise gr.Error(f"{name} must be a whole number in 0 … {MAX_SEED}")
        return s

    async def run(coro):
        try:
            return await coro
        except QueueFull as e:
            raise gr.Error(f"The server is busy; try again in {e.retry_after} s.") from None
        except BatcherClosed:
            raise gr.Error("The server is shutting down.") from None

    async def generate(seed, count, klass=None, psi=None):
        first, count = _seed(seed, "Seed"), int(min(max(int(count or 1), 1), max_count))
        seeds = [s for s in range(first, first + count) if s <= MAX_SEED]
        cls = _class(klass)
        images = await run(server.generate(seeds, cls, _psi(psi)))
        pngs = await server.pngs(images)
        folder = scratch.folder()
        paths = []
        for s, p in zip(seeds, pngs, strict=True):
            path = folder / f"seed_{s}.png"
            path.write_bytes(p)
            paths.append(str(path))
        archive = folder / f"seeds_{seeds[0]}-{seeds[-1]}.zip"
        archive.write_bytes(
            await server.encode(enc.zip_of, [(Path(p).name, b) for p, b in zip(paths, pngs, strict=True)])
        )
        captions = [f"seed {s}" for s in seeds]
        classes = server.classes(seeds, cls)
        if classes is not None:
            captions = [f"{t} · {server.facts.class_names[c]}" for t, c in zip(captions, classes.tolist(), strict=True)]
        gallery = list(zip(paths, captions, strict=True))
        return gallery, gr.update(value=str(archive), visible=True)

    async def interpolate(a, b, steps, klass=None, psi=None):
        a, b = _seed(a, "From seed"), _seed(b, "To seed")
        steps = int(min(max(int(steps or 2), 2), cfg.max_interpolation_steps))
        frames = await run(server.interpolate(a, b, steps, _class(klass), _psi(psi)))
        strip = await server.encode(enc.strip, frames)
        folder = scratch.folder()
        path = folder / f"interpolation_{a}_{b}.gif"
        path.write_bytes(await server.encode(enc.gif, frames))
        return strip, str(path), gr.update(value=str(path), visible=True)

    def random_seed():
        return secrets.randbelow(MAX_SEED + 1)

    def card():
        c = server.card()
        c["limits"] = c["limits"].model_dump()
        facts = server.facts
        picker = gr.update(visible=facts.num_classes > 0, choices=[BY_SEED, *facts.class_names], value=BY_SEED)
        slider = gr.update(visible=facts.truncation)
        return f"**{_card_line(c)}**", _card_table(c), c, picker, slider

    with gr.Blocks(title="projgan", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown(
            "# projgan\nImages from a Projected GAN generator. A seed always gives the same image.", elem_id="title"
        )
        line = gr.Markdown("", elem_id="card-line")
        with gr.Row(equal_height=True):
            klass = gr.Dropdown(
                choices=[BY_SEED], value=BY_SEED, label="Class", visible=False, min_width=160, elem_id="class"
            )
            psi = gr.Slider(
                TRUNCATION_RANGE[0],
                TRUNCATION_RANGE[1],
                value=1.0,
                step=0.05,
                label="Truncation ψ (1 = none, 0 = the average image)",
                visible=False,
                min_width=160,
                elem_id="truncation",
            )
        with gr.Tab("Generate"):
            with gr.Row(equal_height=True):
                seed = gr.Number(
                    label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED, min_width=140, elem_id="seed"
                )
                count = gr.Slider(1, max_count, value=min(4, max_count), step=1, label="Images", min_width=160)
            with gr.Row():
                rand = gr.Button("Random", min_width=100, elem_id="random")
                go = gr.Button("Generate", variant="primary", min_width=100, elem_id="generate")
            gallery = gr.Gallery(
                label="Images",
                columns=4,
                format="png",
                object_fit="contain",
                height="auto",
                buttons=["download", "fullscreen"],
                elem_id="gallery",
            )
            download = gr.DownloadButton("Download zip", visible=False, elem_id="download")
        with gr.Tab("Interpolate"):
            with gr.Row(equal_height=True):
                a = gr.Number(label="From seed", value=1, precision=0, minimum=0, maximum=MAX_SEED, min_width=120)
                b = gr.Number(label="To seed", value=2, precision=0, minimum=0, maximum=MAX_SEED, min_width=120)
                steps = gr.Slider(2, cfg.max_interpolation_steps, value=8, step=1, label="Frames", min_width=160)
            walk = gr.Button("Interpolate", variant="primary", elem_id="interpolate")
            strip = gr.Image(
                label="Frames", format="png", interactive=False, buttons=["download", "fullscreen"], elem_id="strip"
            )
            animation = gr.Image(
                label="Animation", type="filepath", interactive=False, buttons=["download"], elem_id="animation"
            )
            gif_download = gr.DownloadButton("Download GIF", visible=False, elem_id="download-gif")
        with gr.Tab("Model"):
            card_table = gr.Markdown(elem_id="card")
            with gr.Accordion("Raw model card (GET /v1/model)", open=False):
                card_json = gr.JSON(label="Model card")

        inputs = [seed, count, klass, psi]
        go.click(generate, inputs, [gallery, download])
        seed.submit(generate, inputs, [gallery, download])
        rand.click(random_seed, None, seed).then(generate, inputs, [gallery, download])
        walk.click(interpolate, [a, b, steps, klass, psi], [strip, animation, gif_download])
        demo.load(card, None, [line, card_table, card_json, klass, psi])
    demo.queue(default_concurrency_limit=None, max_size=cfg.queue_size)
    return demo


def mount(app, server) -> None:
    """Mount the demo at /ui; with an API key, the UI asks for it (any user name, the key as password)."""
    import gradio as gr

    key = server.cfg.api_key
    auth = (lambda _user, password: hmac.compare_digest(password.encode(), key.encode())) if key else None
    gr.mount_gradio_app(
        app,
        build(server),
        path="/ui",
        footer_links=[],
        run_history=False,
        auth=auth,
        auth_message="Enter any user name and the server's API key as the password." if key else None,
        max_file_size="1mb",
        css=CSS,
    )
