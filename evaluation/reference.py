"""Reference images for `pipeline evaluate`: a folder (recursive) or zip -> uint8 ``[N, res, res, 3]``.

Files are listed and decoded by ``projgan.imagefiles``, the reader training uses too, so FID
compares exactly the pixels training saw; this module adds only the reference loop (progress,
threads on folders, a lock on zips).
"""

from __future__ import annotations

import os
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from projgan import imagefiles
from projgan.errors import UserError
from projgan.imagefiles import IMAGE_EXTS, split_names


def list_images(source: str | Path) -> list[str]:
    """Sorted image names (relative paths in a folder, member names in a zip); hidden files skipped."""
    src = Path(source)
    if not src.exists():
        raise UserError(f"--data {src} does not exist", "pass a folder or a .zip of images")
    if src.is_file() and not zipfile.is_zipfile(src):
        raise UserError(f"--data {src} is neither a folder nor a zip file")
    return split_names(src)[0]


def decode(data: bytes, resolution: int) -> np.ndarray | None:
    """Bytes -> uint8 [res, res, 3] exactly as training decodes them, or None if not an image."""
    out = imagefiles.decode(data, resolution)
    return None if out is None else out[0]


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
