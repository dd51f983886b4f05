"""Class-conditional training end to end, as a user runs it: a 2-class folder whose classes are trivially
separable (red discs, blue discs), `pipeline train --cond` for a few kimg on the CPU, `pipeline export
--fp16`, `pipeline serve`; asking for "red" must give red images and "blue" blue ones (mean R - B).
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
COLOURS = {"blue": (40, 60, 230), "red": (230, 40, 40)}


def make_class_folder(root: Path, n: int = 150, size: int = 32) -> Path:
    """``root/red/*.png`` and ``root/blue/*.png``: a disc of the class colour on grey, random place and size."""
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


def coloured_pixels(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: how many pixels are clearly red (R - B > 100) and clearly blue (B - R > 100)."""
    x = images.astype(np.int64)
    d = x[..., 0] - x[..., 2]
    return (d > 100).sum(axis=(1, 2)), (d < -100).sum(axis=(1, 2))


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


def test_train_records_the_classes_and_draws_one_row_per_class(trained):
    data, run, stdout = trained
    assert "2 classes (first-level folders): blue 150, red 150; balanced class sampling" in stdout
    saved = json.loads((run / artifacts.TRAIN_CONFIG).read_text())
    assert saved["cond"] is True and saved["generator"]["class_names"] == ["blue", "red"]
    G, config = artifacts.load_generator(run)
    assert G.cfg.num_classes == 2 and config["generator"]["class_names"] == ["blue", "red"]
    grid = np.asarray(Image.open(sorted((run / "samples").glob("kimg*.png"))[-1]))
    assert grid.shape[0] == 2 * 32  # one row per class
    top, bottom = redness(grid[None, :32]), redness(grid[None, 32:])
    assert top[0] < 0 < bottom[0], (top, bottom)  # row 0 is "blue", row 1 "red"


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
        assert card["class_names"] == ["blue", "red"]
        got = {}
        for name in ("red", "blue", 1, 0):
            resp = httpx.post(f"{url}/v1/generate", json={"seeds": seeds, "class": name, "format": "npy"}, timeout=60)
            assert resp.status_code == 200, resp.text
            got[name] = np.load(io.BytesIO(resp.content))
        bad = httpx.post(f"{url}/v1/generate", json={"seeds": [1], "class": "green"}, timeout=30)
    red, blue = redness(got["red"]), redness(got["blue"])
    print(f"R-B levels: red {np.round(red, 1)}, blue {np.round(blue, 1)}")
    # Every image has more pixels of its own class's colour than of the other's (an early model may still
    # draw a faint disc for some seeds, never one of the wrong colour), and the colour means are far apart.
    (r_of_red, b_of_red), (r_of_blue, b_of_blue) = coloured_pixels(got["red"]), coloured_pixels(got["blue"])
    print(f"clearly red/blue pixels: red class {r_of_red}/{b_of_red}, blue class {r_of_blue}/{b_of_blue}")
    assert (r_of_red >= b_of_red).all() and (b_of_blue >= r_of_blue).all()
    assert (r_of_red > 0).mean() >= 0.5 and (b_of_blue > 0).mean() >= 0.5  # most seeds draw their disc (11 and 14 of 16)
    assert red.mean() > 10 and blue.mean() < -10 and (red > blue).all(), (red, blue)
    assert np.array_equal(got["red"], got[1]) and np.array_equal(got["blue"], got[0])  # names and indices agree
    assert bad.status_code == 422 and "blue" in bad.text and "red" in bad.text


def test_evaluate_per_class_gives_a_row_per_class_and_the_whole(trained, tmp_path):
    from projgan.evaluation.evaluate import evaluate

    data, run, _ = trained
    cfg = EvalConfig(source=str(run), data=str(data), num_images=40, metrics=("fid",), extractor="proxy",
                     backend="torch", device="cpu", batch=20, per_class=True, out=str(tmp_path / "e.jsonl"))
    rows = evaluate(cfg, cache_dir=tmp_path, progress=False)
    assert [r.get("class") for r in rows] == ["blue", "red", "all"]
    assert [r["num_reals"] for r in rows] == [150, 150, 300]
    assert all(np.isfinite(r["fid"]) and r["fid"] >= 0 for r in rows)
    with pytest.raises(UserError, match="unknown class"):
        evaluate(EvalConfig(source=str(run), data=str(data), metrics=("fid",), class_name="green"), progress=False)


def test_cond_refuses_data_without_class_folders(tmp_path, image_folder):
    cfg = TrainConfig(data=str(image_folder), out=str(tmp_path / "run"), cond=True)
    from projgan.train.dataset import scan_classes

    with pytest.raises(UserError, match="not in a class folder|at least 2 class folders"):
        scan_classes(cfg.data)
    with pytest.raises(UserError, match="fastgan"):
        TrainConfig(data="x", out="y", cond=True, discriminator="fastgan")
