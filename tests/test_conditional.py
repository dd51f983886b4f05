"""Class-conditional training end to end, as a user runs it: a 3-class folder whose classes are trivially
separable (red, green and blue discs), `pipeline train --cond` for a few kimg on the CPU, `pipeline export
--fp16`, `pipeline serve`; asking for a class must give discs of its colour.

Three classes, not two: a generator whose discriminator ignored the class would still split its output by
the class input (the easiest switch between the data's modes), but in an arbitrary order; with two classes
that order is right half the time, with three one time in six.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from projgan import artifacts
from projgan.config import EvalConfig, ServeConfig, TrainConfig
from projgan.errors import UserError
from projgan.serve.app import create_app
from projgan.serve.threaded import background_server

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"blue": (40, 60, 230), "green": (40, 200, 40), "red": (230, 40, 40)}


def make_class_folder(root: Path, n: int = 100, size: int = 32) -> Path:
    """``root/<colour>/*.png`` per class: a disc of the class colour on grey, random place and size."""
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            im = Image.new("RGB", (size, size), (128, 128, 128))
            r = rng.uniform(0.15, 0.3) * size
            x, y = rng.uniform(r, size - r, size=2)
            ImageDraw.Draw(im).ellipse([x - r, y - r, x + r, y + r], fill=colour)
            im.save(root / name / f"{i:04d}.png")
    return root


def redness(images: np.ndarray) -> np.ndarray:
    """Per image: mean of R minus mean of B, in uint8 levels (red discs > 0, blue discs < 0)."""
    x = images.astype(np.float64)
    return x[..., 0].mean(axis=(1, 2)) - x[..., 2].mean(axis=(1, 2))


def coloured_pixels(images: np.ndarray) -> np.ndarray:
    """Per image and channel (R, G, B): how many pixels are clearly of that colour (that channel exceeds
    both others by 100 levels)."""
    x = images.astype(np.int64)
    out = []
    for k in range(3):
        others = np.delete(x, k, axis=-1).max(axis=-1)
        out.append((x[..., k] - others > 100).sum(axis=(1, 2)))
    return np.stack(out, axis=1)


def pipeline(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "projgan", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    data = make_class_folder(root / "data")
    run = root / "run"
    r = pipeline("train", "--data", str(data), "--out", str(run), "--cond", "--resolution", "32", "--ngf", "8",
                 "--batch", "32", "--kimg", "8", "--discriminator", "dcgan", "--d-width", "32", "--g-lr", "1e-3",
                 "--augment", "translation", "--backbone-weights", "none", "--metrics", "none", "--tick-kimg", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    return data, run, r.stdout


NAMES = sorted(COLOURS)  # the class folders, in the order training indexes them: blue, green, red
CHANNEL = {"red": 0, "green": 1, "blue": 2}


def test_train_records_the_classes_and_draws_one_row_per_class(trained):
    data, run, stdout = trained
    assert "3 classes (first-level folders): blue 100, green 100, red 100; balanced class sampling" in stdout
    saved = json.loads((run / artifacts.TRAIN_CONFIG).read_text())
    assert saved["cond"] is True and saved["generator"]["class_names"] == NAMES
    G, config = artifacts.load_generator(run)
    assert G.cfg.num_classes == 3 and config["generator"]["class_names"] == NAMES
    grid = np.asarray(Image.open(sorted((run / "samples").glob("kimg*.png"))[-1]))
    assert grid.shape[0] == 3 * 32  # one row per class
    for row, name in enumerate(NAMES):  # each row's clearly coloured pixels are mostly of its class's colour
        counts = coloured_pixels(grid[None, row * 32 : (row + 1) * 32])[0]
        assert counts.argmax() == CHANNEL[name], (name, counts)


def test_exported_and_served_classes_give_the_right_colour(trained, tmp_path):
    _, run, _ = trained
    out = tmp_path / "export"
    r = pipeline("export", str(run), "--out", str(out), "--fp16", "--no-tensorrt", "--parity-seeds", "8",
                 "--drift-images", "32")
    assert r.returncode == 0, r.stdout + r.stderr
    manifest = artifacts.read_manifest(out, verify=True)
    assert all(e["passed"] for e in manifest["parity"].values())
    cfg = ServeConfig(source=str(out), backend="onnxruntime", device="cpu", max_batch=16, ui=False)
    seeds = list(range(16))
    with background_server(create_app(cfg)) as url:
        card = httpx.get(f"{url}/v1/model", timeout=30).json()
        assert card["class_names"] == NAMES
        got = {}
        for name in (*NAMES, 0, 1, 2):
            resp = httpx.post(f"{url}/v1/generate", json={"seeds": seeds, "class": name, "format": "npy"}, timeout=60)
            assert resp.status_code == 200, resp.text
            got[name] = np.load(io.BytesIO(resp.content))
        bad = httpx.post(f"{url}/v1/generate", json={"seeds": [1], "class": "purple"}, timeout=30)
    print("R-B levels:", {n: np.round(redness(got[n]), 1).tolist() for n in NAMES})
    for name in NAMES:
        # Every image has at least as many pixels of its own class's colour as of either other (an early model
        # may still draw a faint disc for some seeds, never one of another colour), and most seeds draw one.
        counts = coloured_pixels(got[name])
        own = counts[:, CHANNEL[name]]
        print(f"clearly R/G/B pixels, class {name}: {counts.tolist()}")
        assert (own[:, None] >= counts).all(), (name, counts)
        assert (own > 0).mean() >= 0.5, (name, own)
    assert redness(got["red"]).mean() > 10 and redness(got["blue"]).mean() < -10
    assert all(np.array_equal(got[name], got[i]) for i, name in enumerate(NAMES))  # names and indices agree
    assert bad.status_code == 422 and all(n in bad.text for n in NAMES)


def test_evaluate_per_class_gives_a_row_per_class_and_the_whole(trained, tmp_path):
    from projgan.evaluation.evaluate import evaluate

    data, run, _ = trained
    cfg = EvalConfig(source=str(run), data=str(data), num_images=40, metrics=("fid",), extractor="proxy",
                     backend="torch", device="cpu", batch=20, per_class=True, out=str(tmp_path / "e.jsonl"))
    rows = evaluate(cfg, cache_dir=tmp_path, progress=False)
    assert [r.get("class") for r in rows] == [*NAMES, "all"]
    assert [r["num_reals"] for r in rows] == [100, 100, 100, 300]
    assert all(np.isfinite(r["fid"]) and r["fid"] >= 0 for r in rows)
    with pytest.raises(UserError, match="unknown class"):
        evaluate(EvalConfig(source=str(run), data=str(data), metrics=("fid",), class_name="purple"), progress=False)


def test_cond_refuses_data_without_class_folders(tmp_path, image_folder):
    cfg = TrainConfig(data=str(image_folder), out=str(tmp_path / "run"), cond=True)
    from projgan.train.dataset import scan_classes

    with pytest.raises(UserError, match="not in a class folder|at least 2 class folders"):
        scan_classes(cfg.data)
    with pytest.raises(UserError, match="fastgan"):
        TrainConfig(data="x", out="y", cond=True, discriminator="fastgan")


@pytest.mark.parametrize("discriminator", ["projected", "dcgan"])
def test_the_discriminator_judges_each_image_with_its_own_class(discriminator):
    """The projection term: the same image scored as another class gets another logit, a class-free
    model refuses to be called without one, and a sample's logits do not depend on its batch mates' classes."""
    import torch

    from projgan.config import GeneratorConfig
    from projgan.train import step

    cfg = TrainConfig(data="x", out="y", generator=GeneratorConfig(resolution=32, ngf=8, num_classes=3), batch=4,
                      discriminator=discriminator, d_width=16, backbone_weights="none", device="cpu", cond=True)
    torch.manual_seed(0)
    D = step.build_discriminator(cfg, None).eval()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a = torch.cat(D(x, torch.tensor([0, 1, 2, 0])), 1)
        b = torch.cat(D(x, torch.tensor([1, 1, 2, 2])), 1)
    assert not torch.allclose(a[0], b[0]) and not torch.allclose(a[3], b[3])  # class changed: logits change
    assert torch.allclose(a[1:3], b[1:3], atol=1e-5)  # same class, other batch mates' classes changed
    with pytest.raises(ValueError, match="class"):
        D(x, None)
