"""Training images: a folder (searched recursively) or a zip, decoded once into a cached uint8 array.

Every image is center-cropped to a square and resized to the training resolution once; the result is
cached as ``.npy`` (no pickle) keyed by a fingerprint of the file list and the resolution, so a
resumed or repeated run starts at once. Classes are the first-level subfolders (the ImageFolder
convention; in a zip the first path component): the summary records each image's class index,
which ``--cond`` trains on and ``pipeline data check`` prints. The training loop holds the images as one uint8 tensor
``[N, 3, H, W]`` (on the GPU when it fits) and samples batches by random index: no data loader.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from projgan.errors import UserError
from projgan.imagefiles import decode, list_files, split_names

MIN_IMAGES = 8  # fewer than this cannot train a GAN meaningfully (and is almost always a wrong path)
CACHE_NAME = "dataset-{resolution}px-{key}.npy"  # in the run directory; a .json summary sits beside it


@dataclass
class Summary:
    """What a scan found; printed as one line."""

    source: str
    resolution: int
    images: int = 0
    unreadable: int = 0  # image extension but cannot be decoded (corrupt or truncated)
    non_image: int = 0  # files without an image extension
    upscaled: int = 0  # shorter side below the resolution
    median_size: int = 0  # median shorter side of the source images
    classes: list[str] = field(default_factory=list)  # first-level folders, sorted ("" = files at the top)
    labels: list[int] = field(default_factory=list)  # class index of each decoded image, in array order

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(self.classes))
        return {name or "(top level)": int(n) for name, n in zip(self.classes, counts, strict=True)}

    def classes_line(self) -> str:
        """Class names and counts when the data has class folders ('' when it has none)."""
        if not self.classes or "" in self.classes:  # files at the top: not a class-folder layout
            return ""
        return f"{len(self.classes)} classes (first-level folders): " + ", ".join(
            f"{k} {v}" for k, v in self.class_counts().items())

    def skipped(self) -> str:
        parts = []
        if self.unreadable:
            parts.append(f"{self.unreadable} unreadable or truncated")
        if self.non_image:
            parts.append(f"{self.non_image} non-image files")
        return "skipped " + ", ".join(parts) if parts else "nothing skipped"

    def line(self) -> str:
        parts = [f"{self.images} images at {self.resolution} px from {self.source}", self.skipped()]
        if self.upscaled:
            parts.append(f"{self.upscaled} upscaled from smaller originals (median side {self.median_size} px)")
        return "; ".join(parts)


# ---------------------------------------------------------------- decoding (projgan.imagefiles reads)


def _scan(source: Path, resolution: int, progress: bool = True) -> tuple[np.ndarray, Summary]:
    """Decode every image of a folder or zip: (uint8 [N, res, res, 3], summary)."""
    summary = Summary(source=str(source), resolution=resolution)
    is_zip = zipfile.is_zipfile(source)
    images, summary.non_image = split_names(source)

    zf = zipfile.ZipFile(source) if is_zip else None

    def read(name: str) -> bytes | None:
        try:
            return zf.read(name) if zf is not None else (source / name).read_bytes()
        except (OSError, zipfile.BadZipFile, KeyError, RuntimeError):
            return None

    def load(name: str):
        data = read(name)
        return None if data is None else decode(data, resolution)

    out = np.empty((len(images), resolution, resolution, 3), dtype=np.uint8)
    sides: list[int] = []
    folders = [class_of(name) for name in images]
    labels: list[str] = []
    n = 0
    workers = 1 if is_zip else min(8, os.cpu_count() or 1)  # ZipFile is not thread-safe for reads
    from rich.console import Console
    from rich.progress import Progress

    err = Console(stderr=True)
    show = progress and err.is_terminal  # logs (CI, nohup) get the summary line only
    with ThreadPoolExecutor(workers) as pool, Progress(console=err, transient=True, disable=not show) as bar:
        task = bar.add_task(f"decoding {len(images)} images", total=len(images))
        for folder, res in zip(folders, pool.map(load, images), strict=True):
            bar.advance(task)
            if res is None:
                summary.unreadable += 1
                continue
            out[n], side = res
            sides.append(side)
            labels.append(folder)
            n += 1
    if zf is not None:
        zf.close()
    summary.images = n
    summary.upscaled = sum(s < resolution for s in sides)
    summary.median_size = int(np.median(sides)) if sides else 0
    summary.classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(summary.classes)}
    summary.labels = [index[c] for c in labels]
    return out[:n], summary


def class_of(name: str) -> str:
    """The class of a relative image name: its first-level folder ("" for a file at the top)."""
    parts = name.split("/")
    return parts[0] if len(parts) > 1 else ""


def _validate(summary: Summary, min_images: int) -> None:
    if summary.images == 0:
        raise UserError(
            f"no readable images in {summary.source} ({summary.skipped()})",
            "point --data at a folder (searched recursively) or .zip of PNG/JPEG/WebP images",
        )
    if summary.images < min_images:
        raise UserError(
            f"only {summary.images} readable images in {summary.source}; training needs at least {min_images}",
            "add images (a few hundred or more works best) or check --data",
        )


def _resolve_source(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"dataset {p} does not exist", "pass --data a folder or .zip of images")
    if p.is_file() and not zipfile.is_zipfile(p):
        raise UserError(f"{p} is a file but not a zip archive", "pass a folder of images or a .zip of them")
    return p


def fingerprint(path: str | Path) -> str:
    """Identity of a dataset: names, sizes and mtimes (folders) or CRCs (zips) of its files."""
    p = _resolve_source(path)
    h = hashlib.sha256(str(p.resolve()).encode())
    for name, size, stamp in list_files(p):
        h.update(f"{name}\0{size}\0{stamp}\n".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- public API


def load_images(
    path: str | Path, resolution: int, cache_dir: str | Path | None = None, min_images: int = MIN_IMAGES,
    progress: bool = True,
) -> tuple[np.ndarray, Summary]:
    """uint8 ``[N, res, res, 3]`` and the scan summary, from the cache in ``cache_dir`` when present."""
    source = _resolve_source(path)
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / CACHE_NAME.format(resolution=resolution, key=fingerprint(source))
        meta = cache.with_suffix(".json")
        if cache.exists() and meta.exists():
            try:
                arr = np.load(cache, allow_pickle=False)
                summary = Summary(**json.loads(meta.read_text()))
                ok_labels = len(summary.labels) == summary.images  # caches older than class labels are rebuilt
                if arr.shape[1:] == (resolution, resolution, 3) and arr.shape[0] == summary.images and ok_labels:
                    _validate(summary, min_images)
                    return arr, summary
            except (OSError, ValueError, TypeError, json.JSONDecodeError):
                pass  # a damaged cache is rebuilt
    arr, summary = _scan(source, resolution, progress=progress)
    _validate(summary, min_images)
    if cache is not None:
        _save_npy(cache, arr)
        from projgan.artifacts import atomic_write_json

        atomic_write_json(cache.with_suffix(".json"), asdict(summary))
    return arr, summary


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """Atomic .npy write streamed to a temp file (the array may be gigabytes: no second copy in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.time_ns()}.tmp")
    try:
        with open(tmp, "xb") as f:  # plain open: umask-based permissions, unlike mkstemp's 0600
            np.save(f, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check(path: str | Path, resolution: int = 256) -> Summary:
    """`pipeline data check`: decode everything, print the one-line summary, write nothing."""
    from rich.console import Console

    _, summary = _scan(_resolve_source(path), resolution)
    Console().print(summary.line(), highlight=False, soft_wrap=True)
    if summary.classes_line():
        Console().print(summary.classes_line() + " (used by pipeline train --cond)", highlight=False, soft_wrap=True)
    _validate(summary, MIN_IMAGES)
    return summary


def check_resolution(summary: Summary, resolution: int) -> None:
    """Refuse a resolution far above what the images hold (training would learn upscaling blur)."""
    if summary.median_size and summary.median_size * 2 < resolution:
        raise UserError(
            f"--resolution {resolution} is more than twice the images' median size ({summary.median_size} px)",
            f"train at --resolution {max(32, 1 << (summary.median_size.bit_length() - 1))} or use larger images",
        )


def scan_classes(path: str | Path) -> tuple[str, ...]:
    """``--cond``'s class names from the file names alone (no decoding): the sorted first-level folders."""
    source = _resolve_source(path)
    names = split_names(source)[0]
    summary = Summary(source=str(source), resolution=0, images=len(names))
    summary.classes = sorted({class_of(n) for n in names})
    index = {c: i for i, c in enumerate(summary.classes)}
    summary.labels = [index[class_of(n)] for n in names]
    return conditional_classes(summary)


def conditional_classes(summary: Summary) -> tuple[str, ...]:
    """The class names ``--cond`` trains on, or a UserError saying why this data has none."""
    if "" in summary.classes:
        n = summary.class_counts()["(top level)"]
        raise UserError(f"--cond: {n} images of {summary.source} are not in a class folder",
                        "put every image in a first-level subfolder named for its class (data/cats/..., data/dogs/...)")
    if len(summary.classes) < 2:
        raise UserError(f"--cond needs at least 2 class folders in {summary.source} (found {summary.classes})",
                        "classes are the first-level subfolders of --data")
    return tuple(summary.classes)


class ImageDataset:
    """All training images as one uint8 tensor ``[N, 3, H, W]``; batches by random index.

    With ``labels`` (class index per image) ``sample_labeled`` returns the classes too; ``balanced``
    draws a class uniformly and then an image of it, instead of every image equally often.
    """

    def __init__(self, images: np.ndarray, device: torch.device | str = "cpu", xflip: bool = False,
                 labels: np.ndarray | None = None, balanced: bool = False):
        t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        device = torch.device(device)
        if device.type == "cuda" and not _fits_on_gpu(t.numel(), device):
            device = torch.device("cpu")
            t = t.pin_memory()
        self.images = t.to(device)
        self.xflip = xflip
        self.target = device
        # Labels and class weights live beside the images: a batch's indices are drawn where the images are,
        # so a GPU step neither copies indices up nor waits for the host.
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(device)
        self.weights = None
        if self.labels is not None and balanced:
            counts = torch.bincount(self.labels).double()
            self.weights = (1.0 / counts)[self.labels]

    def __len__(self) -> int:
        return self.images.shape[0]

    def _draw_device(self, generator: torch.Generator | None) -> torch.device:
        """Random numbers come from where the images are (or from the caller's generator's device)."""
        return self.images.device if generator is None else generator.device

    def _indices(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        dev = self._draw_device(generator)
        if self.weights is not None:
            return torch.multinomial(self.weights.to(dev), n, replacement=True, generator=generator)
        return torch.randint(len(self), (n,), device=dev, generator=generator)

    def sample_labeled(self, n: int, device: torch.device | str, generator: torch.Generator | None = None):
        """``n`` random images as float ``[n, 3, H, W]`` in [-1, 1] on ``device`` (x-flipped at random), and
        their class indices ``[n]`` (None for unlabeled data)."""
        idx = self._indices(n, generator).to(self.images.device)
        x = self.images[idx].to(device, non_blocking=True)
        x = x.float().div_(127.5).sub_(1.0)
        if self.xflip:
            flip = torch.rand(n, device=self._draw_device(generator), generator=generator).to(device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x, (None if self.labels is None else self.labels[idx].to(device, non_blocking=True))

    def sample(self, n: int, device: torch.device | str, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample_labeled(n, device, generator)[0]

    def numpy_nhwc(self) -> np.ndarray:
        return self.images.permute(0, 2, 3, 1).cpu().numpy()


def _fits_on_gpu(numel: int, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return numel < free * 0.25
