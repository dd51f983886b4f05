"""Dataset: every image mode converted, broken files skipped and counted, zip = folder, cache, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from projgan.errors import UserError
from projgan.evaluation.laws import LAWS, law_params, make_law_dataset, read_law
from projgan.train import dataset
from projgan.train.dataset import ImageDataset, check_resolution, load_images


def make_images(folder, n=8, size=40, seed=0):
    """n small PNGs of coloured shapes (the built-in procedural dataset), without its law.json."""
    folder = make_law_dataset(folder, "shapes", n=n, resolution=size, seed=seed)
    (folder / "law.json").unlink()
    return folder


def _messy_folder(root):
    """8 good PNGs (two in a subfolder) + 1 corrupt, 1 truncated, 2 non-image files, 1 hidden file."""
    make_images(root, n=6, size=40)
    make_images(root / "sub" / "deeper", n=2, size=40, seed=1)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    good = (root / "shapes_00000.png").read_bytes()
    Image.open(root / "shapes_00001.png").save(root / "photo.jpg", quality=90)
    (root / "truncated.jpg").write_bytes((root / "photo.jpg").read_bytes()[:300])
    (root / "photo.jpg").unlink()
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "labels.csv").write_text("a,b\n")
    (root / ".DS_Store").write_bytes(good[:10])
    return root


def test_broken_and_non_image_files_are_skipped_and_counted(tmp_path):
    arr, s = load_images(_messy_folder(tmp_path / "d"), 32)
    assert arr.shape == (8, 32, 32, 3) and arr.dtype == np.uint8
    assert (s.images, s.unreadable, s.non_image) == (8, 2, 2)
    line = s.line()
    assert "\n" not in line
    assert "8 images" in line and "2 unreadable or truncated" in line and "2 non-image files" in line


def test_modes_are_converted_to_rgb(tmp_path):
    d = tmp_path / "modes"
    d.mkdir()
    Image.new("L", (16, 16), 100).save(d / "gray.png")
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.save(d / "rgba.png")
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 200, 50] + [0] * 765)
    pal.save(d / "palette.png")
    Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)).save(d / "white16.png")
    Image.fromarray(np.full((16, 16), 32896, dtype=np.uint16)).save(d / "mid16.png")
    Image.new("CMYK", (16, 16), (0, 0, 0, 0)).save(d / "cmyk.jpg")
    Image.new("1", (16, 16), 1).save(d / "bilevel.png")
    Image.new("RGB", (16, 16), (10, 20, 30)).save(d / "rgb.png")
    arr, s = load_images(d, 32, min_images=1)
    assert s.images == 8 and s.unreadable == 0
    assert s.upscaled == 8 and s.median_size == 16
    names = sorted(p.name for p in d.iterdir())
    px = {n: tuple(int(c) for c in arr[i, 16, 16]) for i, n in enumerate(names)}
    assert px["gray.png"] == (100, 100, 100)
    assert px["rgba.png"] == (255, 255, 255)
    assert px["palette.png"] == (0, 200, 50)
    assert px["white16.png"] == (255, 255, 255)
    assert px["mid16.png"] == (128, 128, 128)
    assert min(px["cmyk.jpg"]) > 240
    assert px["bilevel.png"] == (255, 255, 255)
    assert px["rgb.png"] == (10, 20, 30)


def test_center_crop_keeps_the_middle(tmp_path):
    d = tmp_path / "wide"
    d.mkdir()
    a = np.zeros((20, 60, 3), dtype=np.uint8)
    a[:, :20] = (255, 0, 0)  # left third red, middle green, right third blue
    a[:, 20:40] = (0, 255, 0)
    a[:, 40:] = (0, 0, 255)
    Image.fromarray(a).save(d / "wide.png")
    arr, _ = load_images(d, 32, min_images=1)
    inner = arr[0][:, 2:-2]  # the resampling filter may bleed a pixel of the cropped-away thirds in
    assert inner[..., 1].min() > 245 and inner[..., [0, 2]].max() < 10


def test_zip_gives_the_same_images_as_the_folder(tmp_path):
    folder = make_images(tmp_path / "f", n=10, size=40)
    z = tmp_path / "data.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, f"images/{p.name}")
        zf.writestr("__MACOSX/._shapes_00000.png", b"junk")
        zf.writestr("images/readme.txt", "hi")
        zf.writestr("images/bad.png", b"nope")
    a, sa = load_images(folder, 32)
    b, sb = load_images(z, 32)
    np.testing.assert_array_equal(a, b)
    assert (sb.images, sb.unreadable, sb.non_image) == (10, 1, 1)


def test_cache_is_reused_and_invalidated_by_changes(tmp_path):
    folder = make_images(tmp_path / "f", n=9, size=40)
    cache = tmp_path / "run"
    a, _ = load_images(folder, 32, cache_dir=cache)
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")
    np.testing.assert_array_equal(np.load(cache / files[1], allow_pickle=False), a)
    # A cache hit does not decode: poison the cached pixels and see them come back.
    poisoned = a.copy()
    poisoned[0] = 7
    np.save(cache / files[1], poisoned)
    b, _ = load_images(folder, 32, cache_dir=cache)
    assert (b[0] == 7).all()
    make_images(tmp_path / "f2", n=1, size=40, seed=5)
    (tmp_path / "f2" / "shapes_00000.png").rename(folder / "new.png")
    c, s = load_images(folder, 32, cache_dir=cache)
    assert s.images == 10 and c.shape[0] == 10 and not (c[0] == 7).all()
    load_images(folder, 64, cache_dir=cache)  # another resolution: another cache file
    assert len(list(cache.glob("*.npy"))) == 3


def test_too_few_or_missing_data_are_user_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no readable images"):
        load_images(tmp_path / "empty", 32)
    make_images(tmp_path / "few", n=3, size=40)
    with pytest.raises(UserError, match="at least"):
        load_images(tmp_path / "few", 32)
    with pytest.raises(UserError, match="does not exist"):
        load_images(tmp_path / "nope", 32)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="not a zip"):
        load_images(tmp_path / "file.txt", 32)


def test_resolution_far_above_the_images_is_refused(tmp_path):
    _, s = load_images(make_images(tmp_path / "f", n=8, size=40), 256)
    with pytest.raises(UserError, match="median size"):
        check_resolution(s, 256)
    check_resolution(s, 64)


def test_image_dataset_samples_scaled_batches():
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    images[:, :, :4] = 255  # left half white
    ds = ImageDataset(images, "cpu", xflip=True)
    assert ds.images.shape == (4, 3, 8, 8) and ds.images.dtype == torch.uint8
    torch.manual_seed(0)
    x = ds.sample(64, "cpu")
    assert x.shape == (64, 3, 8, 8) and x.min() == -1 and x.max() == 1
    flipped = (x[:, 0, 0, 0] < 0).float().mean()
    assert 0.2 < float(flipped) < 0.8  # about half are mirrored
    np.testing.assert_array_equal(ds.numpy_nhwc(), images)


@pytest.mark.parametrize("law", sorted(LAWS))
def test_law_datasets_are_deterministic_and_named(tmp_path, law):
    folder = make_law_dataset(tmp_path / law, law, n=12, resolution=32, seed=3)
    assert len(list(folder.glob("*.png"))) == 12 and read_law(folder) == law
    again = LAWS[law].render(law_params(law, 12, 3)[5], 32)
    np.testing.assert_array_equal(np.asarray(Image.open(folder / f"{law}_00005.png")), again)
    other = LAWS[law].render(law_params(law, 12, 4)[5], 32)
    assert not np.array_equal(again, other)
    assert again.std() > 10  # not flat


def _pipeline(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "projgan", *args], capture_output=True, text=True, timeout=timeout)


def test_data_check_cli_prints_one_summary_line(tmp_path):
    r = _pipeline("data", "check", str(_messy_folder(tmp_path / "d")), "--resolution", "32")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and "8 images" in lines[0] and "2 unreadable" in lines[0], r.stdout
    assert not list((tmp_path / "d").glob("*.npy"))  # check writes nothing


def test_empty_folder_exits_2_with_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    for args in (
        ["data", "check", str(tmp_path / "empty")],
        [
            "train",
            "--data",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "run"),
            "--backbone-weights",
            "none",
            "--metrics",
            "none",
        ],
    ):
        r = _pipeline(*args)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "no readable images" in r.stderr and "1 non-image" in r.stderr
        assert "Traceback" not in r.stderr


def test_fingerprint_changes_with_content(tmp_path):
    folder = make_images(tmp_path / "f", n=2, size=40)
    a = dataset.fingerprint(folder)
    assert a == dataset.fingerprint(folder)
    os.utime(folder / "shapes_00000.png", ns=(1, 1))
    assert dataset.fingerprint(folder) != a


def test_training_and_fid_reference_read_the_same_pixels(tmp_path):
    """One reader for both (projgan.imagefiles): 16-bit, float and palette images included."""
    from projgan.evaluation.reference import load_reference_images

    folder = make_images(tmp_path / "d", n=6, size=40)
    g16 = (np.linspace(0, 65535, 40 * 40).reshape(40, 40)).astype(np.uint16)
    Image.fromarray(g16, "I;16").save(folder / "deep.png")
    Image.fromarray(np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40), "F").save(folder / "float.tif")
    Image.open(folder / "shapes_00000.png").convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "pal.gif")
    train, summary = load_images(folder, 32, min_images=1)
    ref, skipped = load_reference_images(folder, 32)
    assert summary.images == 9 and skipped == 0
    np.testing.assert_array_equal(train, ref)
