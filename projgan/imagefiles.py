"""Reading image files: one home for what counts as an image and how it becomes pixels.

Training data (``train/dataset.py``) and FID reference images (``evaluation/reference.py``) both read
folders or zips through these functions, so FID compares exactly the pixels training saw: same
extensions, same hidden-file rule, same mode conversion (16-bit, float, palette, alpha -> white),
same centre crop and Lanczos resize. PIL is imported inside the functions (the core imports light).
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".tga"}


def is_hidden(rel: str) -> bool:
    """Dot files and macOS resource forks, anywhere in the relative path."""
    return any(p.startswith(".") or p == "__MACOSX" for p in Path(rel).parts)


def list_files(source: Path) -> list[tuple[str, int, int]]:
    """(relative name, size, mtime-or-crc) of every file of a folder or zip, sorted: the data's identity."""
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            return sorted((i.filename, i.file_size, i.CRC) for i in zf.infolist() if not i.is_dir())
    out = []
    for root, dirs, files in os.walk(source, followlinks=True):
        dirs.sort()
        for name in files:
            p = Path(root) / name
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((p.relative_to(source).as_posix(), st.st_size, st.st_mtime_ns))
    return sorted(out)


def split_names(source: Path) -> tuple[list[str], int]:
    """(image names, count of other visible files) of a folder or zip, hidden files skipped."""
    names = [n for n, _, _ in list_files(source) if not is_hidden(n)]
    images = [n for n in names if Path(n).suffix.lower() in IMAGE_EXTS]
    return images, len(names) - len(images)


def to_rgb(im):
    """Any PIL mode (grayscale, RGBA, palette, 16-bit, CMYK, float) -> 8-bit RGB."""
    from PIL import Image

    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        if im.mode == "F" and a.max() <= 1.0:
            hi = 1.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent -> white, not random colours
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def decode(data: bytes, resolution: int) -> tuple[np.ndarray, int] | None:
    """Bytes -> (uint8 [res, res, 3] centre crop resized with Lanczos, shorter side), or None when the
    bytes are not a decodable image (corrupt, truncated, not an image)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (resolution, resolution))  # JPEG: decode at a reduced size when possible
            im = ImageOps.exif_transpose(im)
            im.load()  # raises on truncated data
            side = min(im.size)
            im = to_rgb(im)
            w, h = im.size
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            im = im.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box)
            return np.asarray(im, dtype=np.uint8).copy(), side
    except (OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError, ZeroDivisionError):
        return None
