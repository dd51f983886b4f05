"""Reference images for `pipeline evaluate`: a folder (recursive) or zip -> uint8 ``[N, res, res, 3]``.

Each image is center-cropped to a square and resized to the generator's resolution (Lanczos),
the way the training stage prepares its data, so FID compares like with like. Evaluation must not
import the training package (dependency direction core <- evaluation <- train), hence this small
reader of its own.
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from projgan.errors import UserError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".tga"}


def list_images(source: str | Path) -> list[str]:
    """Sorted image names (relative paths in a folder, member names in a zip); hidden files skipped."""
    src = Path(source)
    if not src.exists():
        raise UserError(f"--data {src} does not exist", "pass a folder or a .zip of images")
    if src.is_file():
        if not zipfile.is_zipfile(src):
            raise UserError(f"--data {src} is neither a folder nor a zip file")
        with zipfile.ZipFile(src) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
    else:
        names = [
            (Path(root) / f).relative_to(src).as_posix()
            for root, _, files in os.walk(src, followlinks=True)
            for f in files
        ]
    names = [n for n in names if not any(p.startswith(".") or p == "__MACOSX" for p in Path(n).parts)]
    return sorted(n for n in names if Path(n).suffix.lower() in IMAGE_EXTS)


def decode(data: bytes, resolution: int) -> np.ndarray | None:
    """Bytes -> uint8 [res, res, 3] (center crop, Lanczos), or None if not a decodable image."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (resolution, resolution))
            im = ImageOps.exif_transpose(im)
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            if im.mode.startswith("I;16"):
                im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257.0 + 0.5).astype(np.uint8), "L")
            im = im.convert("RGB")
            w, h = im.size
            side = min(w, h)
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            im = im.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box)
            return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError, ZeroDivisionError):
        return None


def load_reference_images(source: str | Path, resolution: int, max_images: int = 0,
                          progress=None) -> tuple[np.ndarray, int]:
    """Decode up to ``max_images`` (0: all) images; returns ``(uint8 [N, res, res, 3], skipped)``.

    ``progress(n_done, total)`` is called as images are decoded (a Rich progress bar in the CLI).
    """
    src = Path(source)
    names = list_images(src)
    if max_images:
        names = names[:max_images]
    if not names:
        raise UserError(f"--data {src} holds no images", f"supported: {', '.join(sorted(IMAGE_EXTS))}")
    zf = zipfile.ZipFile(src) if src.is_file() else None
    lock = threading.Lock()

    def read(name: str) -> bytes:
        if zf is not None:
            with lock:  # one reader at a time on the shared zip handle; decoding runs in parallel
                return zf.read(name)
        return (src / name).read_bytes()

    def load(name: str):
        try:
            data = read(name)
        except (OSError, KeyError, zipfile.BadZipFile):
            return None
        return decode(data, resolution)

    out = []
    pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))  # Pillow releases the GIL
    try:
        for im in pool.map(load, names):
            if im is not None:
                out.append(im)
            if progress:
                progress(1, len(names))
    finally:
        pool.shutdown()
        if zf is not None:
            zf.close()
    skipped = len(names) - len(out)
    if len(out) < 2:
        raise UserError(f"--data {src}: only {len(out)} readable images ({skipped} unreadable)",
                        "FID needs a folder or zip with at least a few hundred images to mean much")
    return np.stack(out), skipped
