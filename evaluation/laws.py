"""Procedural image laws: datasets whose generating law is known, so samples can be checked against it.

FID needs Inception weights and thousands of images; neither exists offline, and neither says *what*
is wrong. A law knows how its pictures are made, so it can also read a picture back: ``parse``
segments an image into background and objects, fits the law's ideal objects to what it found, and
says whether the picture is a valid object of the law and with which parameters. ``law_score``
turns that into a quality number (valid fraction, distance of the parameter distribution to the
law's, spread for collapse).

Each law is a pure function of ``(seed, index)``; parameters are resolution-free (coordinates and
sizes are fractions of the image side), so one law renders and parses at 32 px or 256 px alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LAW_FILE = "law.json"
# An object is the law's when its mask overlaps the fitted ideal object at least this well (per law:
# the law's own pictures score >= 0.95 for filled objects and >= 0.84 for thin rings at 32 px).
IOU_MIN = 0.85
COLOR_TOL = 0.25  # RGB distance (0..1 per channel) within which a colour counts as a palette colour
MASK_THRESHOLD = 0.3  # RGB distance from the background above which a pixel belongs to an object
STRAY_MAX = 0.01  # fraction of the image that may be object-coloured outside the objects

BRIGHT = {"yellow": (0.98, 0.85, 0.1), "cyan": (0.1, 0.85, 0.95), "white": (0.96, 0.96, 0.96),
          "orange": (1.0, 0.45, 0.1)}
DARK = {"navy": (0.08, 0.1, 0.3), "forest": (0.05, 0.25, 0.12), "charcoal": (0.16, 0.16, 0.16),
        "maroon": (0.32, 0.05, 0.1)}


# ---------------------------------------------------------------- geometry


def _grid(res: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as fractions of the side: (yy, xx), each [res, res]."""
    c = (np.arange(res, dtype=np.float32) + 0.5) / res
    return c[:, None].repeat(res, 1), c[None, :].repeat(res, 0)


def _sdf(kind: str, cx: float, cy: float, size: float, angle: float, res: int) -> np.ndarray:
    """Signed distance (in pixels, negative inside) to a shape of area ``size**2`` (fractions of the side)."""
    yy, xx = _grid(res)
    dx, dy = xx - cx, yy - cy
    if kind == "circle":
        return (np.hypot(dx, dy) - size / np.sqrt(np.pi)) * res
    if kind == "ring":  # annulus with inner radius 0.55 of the outer one, area size**2
        outer = size / np.sqrt(np.pi * (1 - 0.55**2))
        r = np.hypot(dx, dy)
        return np.maximum(r - outer, 0.55 * outer - r) * res
    if kind == "square":
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        return (np.maximum(np.abs(u), np.abs(v)) - size / 2) * res
    if kind == "triangle":  # equilateral, centred on its centroid
        inradius = size * np.sqrt(4 / np.sqrt(3)) / (2 * np.sqrt(3))
        d = np.full_like(xx, -np.inf)
        for k in range(3):
            a = angle + 2 * np.pi * k / 3
            d = np.maximum(d, dx * np.cos(a) + dy * np.sin(a) - inradius)
        return d * res
    raise ValueError(kind)


def _soft(sdf: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance in pixels."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _paint(img: np.ndarray, coverage: np.ndarray, color) -> np.ndarray:
    c = coverage[..., None]
    return img * (1 - c) + np.asarray(color, np.float32)[None, None] * c


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _nearest(color: np.ndarray, palette: dict[str, tuple]) -> str | None:
    names = list(palette)
    d = np.linalg.norm(np.asarray([palette[n] for n in names]) - color[None], axis=1)
    return names[int(d.argmin())] if d.min() <= COLOR_TOL else None


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """Connected components (8-neighbourhood) of a boolean mask, largest first."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    comps = [labels == i for i in range(1, n + 1)]
    return sorted(comps, key=lambda m: -int(m.sum()))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _one_object(mask: np.ndarray, size_range: tuple[float, float], what: str) -> tuple[np.ndarray | None, str]:
    """The single object a one-object law allows: the largest component, nothing else beside it, of a
    size within the law's range (with 30 % slack); (None, why not) otherwise."""
    comps = _components(mask)
    if not comps:
        return None, f"no {what}"
    obj = comps[0]
    if mask.sum() - obj.sum() > STRAY_MAX * mask.size:
        return None, "more than one object"
    if not size_range[0] * 0.7 <= np.sqrt(obj.sum()) / mask.shape[0] <= size_range[1] * 1.3:
        return None, f"{what} size outside the law"
    return obj, ""


def _fit(comp: np.ndarray, kinds: tuple[str, ...], scales=(1.0,), angles: dict | None = None,
         ) -> tuple[str, float, float, float, float, float]:
    """Best ideal object for a component: (kind, cx, cy, size, angle, IoU). Centre from the centroid,
    size from the area (both exact for the law's objects, up to pixels: ``scales`` searches around the
    area's size for thin objects), kind and angle by the best overlap (``angles``: the one angle
    each kind may have; otherwise every angle is tried)."""
    res = comp.shape[0]
    ys, xs = np.nonzero(comp)
    cy, cx = (ys.mean() + 0.5) / res, (xs.mean() + 0.5) / res
    area_size = np.sqrt(comp.sum()) / res
    best = ("", cx, cy, area_size, 0.0, -1.0)
    for kind in kinds:
        period = {"square": np.pi / 2, "triangle": 2 * np.pi / 3}.get(kind, 0.0)
        if angles is not None:
            candidates = (angles[kind],)
        else:
            candidates = np.arange(0, period, np.pi / 60) if period else (0.0,)
        for angle in candidates:
            for size in area_size * np.asarray(scales):
                iou = _iou(_sdf(kind, cx, cy, size, angle, res) < 0, comp)
                if iou > best[-1]:
                    best = (kind, cx, cy, float(size), float(angle), iou)
    return best


# ---------------------------------------------------------------- laws


@dataclass(frozen=True)
class Parse:
    """What ``parse`` read from one picture: valid or not (and why), and the law's parameters."""

    valid: bool
    reason: str = ""
    params: dict | None = None


class Shapes:
    """One upright object (circle, square, or triangle with a flat base) of a bright palette colour on a
    plain dark background.

    Parameters: kind, fg, bg (categorical); cx, cy, size (area = size**2 of the picture).
    """

    continuous = ("cx", "cy", "size")
    categorical = {"kind": ("circle", "square", "triangle"), "fg": tuple(BRIGHT), "bg": tuple(DARK)}
    size_range = (0.3, 0.5)
    upright = {"circle": 0.0, "square": 0.0, "triangle": np.pi / 2}  # the law's only orientations
    # Half width, reach above and below the centre, in units of size (area = size**2).
    extent = {"circle": (0.5642, 0.5642, 0.5642), "square": (0.5, 0.5, 0.5), "triangle": (0.7598, 0.8774, 0.4387)}

    def __init__(self, name: str = "shapes", kinds=("circle", "square", "triangle"), fg=tuple(BRIGHT), bg=tuple(DARK)):
        self.name = name
        self.categorical = {"kind": tuple(kinds), "fg": tuple(fg), "bg": tuple(bg)}

    def sample(self, rng: np.random.Generator) -> dict:
        cat = {k: v[int(rng.integers(len(v)))] for k, v in self.categorical.items()}
        size = float(rng.uniform(*self.size_range))
        half_w, up, down = (e * size for e in self.extent[cat["kind"]])
        m = 0.04  # the whole object, and a margin, inside the frame
        cx = float(rng.uniform(half_w + m, 1 - half_w - m))
        cy = float(rng.uniform(up + m, 1 - down - m))
        return {**cat, "cx": cx, "cy": cy, "size": size}

    def render(self, p: dict, res: int) -> np.ndarray:
        img = np.broadcast_to(np.asarray(DARK[p["bg"]], np.float32), (res, res, 3)).copy()
        sdf = _sdf(p["kind"], p["cx"], p["cy"], p["size"], self.upright[p["kind"]], res)
        img = _paint(img, _soft(sdf), BRIGHT[p["fg"]])
        return _to_uint8(img)

    def parse(self, image: np.ndarray) -> Parse:
        img = image.astype(np.float32) / 255
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        bg_color = np.median(border, axis=0)
        bg = _nearest(bg_color, {k: DARK[k] for k in self.categorical["bg"]})
        if bg is None:
            return Parse(False, "background not a law colour")
        obj, why = _one_object(np.linalg.norm(img - bg_color, axis=-1) > MASK_THRESHOLD, self.size_range, "object")
        if obj is None:
            return Parse(False, why)
        fg = _nearest(np.median(img[obj], axis=0), {k: BRIGHT[k] for k in self.categorical["fg"]})
        if fg is None:
            return Parse(False, "object colour not a law colour")
        kind, cx, cy, size, _, iou = _fit(obj, self.categorical["kind"], angles=self.upright)
        if iou < IOU_MIN:
            return Parse(False, "object shape unlike any law shape")
        return Parse(True, params={"kind": kind, "fg": fg, "bg": bg, "cx": cx, "cy": cy, "size": size})


class Dots:
    """One to four white dots of one size on a vertical two-colour gradient (a counting law).

    Parameters: count, top (categorical); x, y of every dot (continuous, pooled).
    """

    continuous = ("x", "y")
    categorical = {"count": (1, 2, 3, 4), "top": tuple(DARK)}
    radius = 0.09
    bottom = (0.55, 0.55, 0.6)
    name = "dots"

    def sample(self, rng: np.random.Generator) -> dict:
        n = int(rng.integers(1, 5))
        top = tuple(DARK)[int(rng.integers(len(DARK)))]
        pts: list[tuple[float, float]] = []
        while len(pts) < n:  # rejection sampling: dots never touch each other or the frame
            x, y = (float(v) for v in rng.uniform(self.radius + 0.05, 1 - self.radius - 0.05, 2))
            if all(np.hypot(x - a, y - b) > 2.6 * self.radius for a, b in pts):
                pts.append((x, y))
        return {"count": n, "top": top, "x": [p[0] for p in pts], "y": [p[1] for p in pts]}

    def _background(self, top: str, res: int) -> np.ndarray:
        yy, _ = _grid(res)
        a, b = np.asarray(DARK[top], np.float32), np.asarray(self.bottom, np.float32)
        return a[None, None] * (1 - yy[..., None]) + b[None, None] * yy[..., None]

    def render(self, p: dict, res: int) -> np.ndarray:
        img = self._background(p["top"], res)
        size = self.radius * np.sqrt(np.pi)
        for x, y in zip(p["x"], p["y"], strict=True):
            img = _paint(img, _soft(_sdf("circle", x, y, size, 0.0, res)), BRIGHT["white"])
        return _to_uint8(img)

    def parse(self, image: np.ndarray) -> Parse:
        img = image.astype(np.float32) / 255
        rows = (img[:, 0] + img[:, -1]) / 2  # the side columns hold the gradient, row by row
        top = _nearest(rows[:2].mean(0), DARK)
        if top is None or np.linalg.norm(rows[-2:].mean(0) - self.bottom) > COLOR_TOL:
            return Parse(False, "background not a law gradient")
        mask = np.linalg.norm(img - rows[:, None], axis=-1) > MASK_THRESHOLD
        comps = [c for c in _components(mask) if c.sum() > 0.2 * np.pi * (self.radius * mask.shape[0]) ** 2]
        stray = mask.sum() - sum(int(c.sum()) for c in comps)
        if not comps or len(comps) > 4 or stray > STRAY_MAX * mask.size:
            return Parse(False, f"{len(comps)} dots" if comps else "no dots")
        xs, ys = [], []
        for c in comps:
            kind, cx, cy, size, _, iou = _fit(c, ("circle",))
            r = size / np.sqrt(np.pi)
            if iou < IOU_MIN or not 0.7 * self.radius <= r <= 1.3 * self.radius:
                return Parse(False, "a dot of the wrong shape or size")
            if _nearest(np.median(img[c], axis=0), {"white": BRIGHT["white"]}) is None:
                return Parse(False, "a dot of the wrong colour")
            xs.append(cx)
            ys.append(cy)
        return Parse(True, params={"count": len(comps), "top": top, "x": xs, "y": ys})


class Rings:
    """One ring (annulus) of a bright colour on a background split into two dark halves (left, right).

    Parameters: fg, left (categorical); cx, cy, size (continuous).
    """

    continuous = ("cx", "cy", "size")
    categorical = {"fg": tuple(BRIGHT), "left": tuple(DARK)}
    size_range = (0.3, 0.45)
    name = "rings"
    iou_min = 0.75

    def sample(self, rng: np.random.Generator) -> dict:
        fg = tuple(BRIGHT)[int(rng.integers(len(BRIGHT)))]
        left = tuple(DARK)[int(rng.integers(len(DARK)))]
        size = float(rng.uniform(*self.size_range))
        outer = size / np.sqrt(np.pi * (1 - 0.55**2))
        cx, cy = (float(v) for v in rng.uniform(outer + 0.04, 1 - outer - 0.04, 2))
        return {"fg": fg, "left": left, "cx": cx, "cy": cy, "size": size}

    @staticmethod
    def _right(left: str) -> str:
        names = tuple(DARK)
        return names[(names.index(left) + 1) % len(names)]

    def _background(self, left: str, res: int) -> np.ndarray:
        _, xx = _grid(res)
        side = (xx < 0.5)[..., None]
        return np.where(side, np.asarray(DARK[left], np.float32), np.asarray(DARK[self._right(left)], np.float32))

    def render(self, p: dict, res: int) -> np.ndarray:
        img = self._background(p["left"], res)
        img = _paint(img, _soft(_sdf("ring", p["cx"], p["cy"], p["size"], 0.0, res)), BRIGHT[p["fg"]])
        return _to_uint8(img)

    def parse(self, image: np.ndarray) -> Parse:
        img = image.astype(np.float32) / 255
        res = img.shape[0]
        left = _nearest(np.median(img[:, 0], axis=0), DARK)
        if left is None or np.linalg.norm(np.median(img[:, -1], axis=0) - DARK[self._right(left)]) > COLOR_TOL:
            return Parse(False, "background not a law split")
        mask = np.linalg.norm(img - self._background(left, res), axis=-1) > MASK_THRESHOLD
        obj, why = _one_object(mask, self.size_range, "ring")
        if obj is None:
            return Parse(False, why)
        fg = _nearest(np.median(img[obj], axis=0), BRIGHT)
        if fg is None:
            return Parse(False, "ring colour not a law colour")
        _, cx, cy, size, _, iou = _fit(obj, ("ring",), scales=(0.9, 0.95, 1.0, 1.05, 1.1))
        if iou < self.iou_min:
            return Parse(False, "not a ring")
        return Parse(True, params={"fg": fg, "left": left, "cx": cx, "cy": cy, "size": size})


class FreeColourDiscs:
    """One disc of any colour on a plain ground of any colour: both drawn uniformly from the RGB cube
    (rejected until they differ by at least ``min_contrast``), so no palette helps a generator that
    drops colours. Parameters: cx, cy, size and the six colour channels (all continuous).
    """

    continuous = ("cx", "cy", "size", "fg_r", "fg_g", "fg_b", "bg_r", "bg_g", "bg_b")
    categorical: dict = {}
    size_range = (0.3, 0.5)
    min_contrast = 0.6  # RGB distance between disc and ground
    flat = 0.08  # median distance of ground pixels to the ground colour (and disc pixels to the disc's)
    name = "colourdiscs"

    def sample(self, rng: np.random.Generator) -> dict:
        while True:
            fg, bg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
            if np.linalg.norm(fg - bg) >= self.min_contrast:
                break
        size = float(rng.uniform(*self.size_range))
        r = size / np.sqrt(np.pi) + 0.04
        cx, cy = (float(v) for v in rng.uniform(r, 1 - r, 2))
        return {"cx": cx, "cy": cy, "size": size, **{f"fg_{c}": float(v) for c, v in zip("rgb", fg, strict=True)},
                **{f"bg_{c}": float(v) for c, v in zip("rgb", bg, strict=True)}}

    def render(self, p: dict, res: int) -> np.ndarray:
        fg = tuple(p[f"fg_{c}"] for c in "rgb")
        img = np.broadcast_to(np.asarray([p[f"bg_{c}"] for c in "rgb"], np.float32), (res, res, 3)).copy()
        img = _paint(img, _soft(_sdf("circle", p["cx"], p["cy"], p["size"], 0.0, res)), fg)
        return _to_uint8(img)

    def parse(self, image: np.ndarray) -> Parse:
        img = image.astype(np.float32) / 255
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        bg = np.median(border, axis=0)
        obj, why = _one_object(np.linalg.norm(img - bg, axis=-1) > MASK_THRESHOLD, self.size_range, "disc")
        if obj is None:
            return Parse(False, why)
        fg = np.median(img[obj], axis=0)
        if np.linalg.norm(fg - bg) < self.min_contrast - COLOR_TOL:
            return Parse(False, "disc and ground too alike")
        if (np.median(np.linalg.norm(img[~obj] - bg, axis=-1)) > self.flat
                or np.median(np.linalg.norm(img[obj] - fg, axis=-1)) > self.flat):
            return Parse(False, "ground or disc not of one colour")
        _, cx, cy, size, _, iou = _fit(obj, ("circle",))
        if iou < IOU_MIN:
            return Parse(False, "object shape not a disc")
        return Parse(True, params={"cx": cx, "cy": cy, "size": size,
                                   **{f"fg_{c}": float(v) for c, v in zip("rgb", fg, strict=True)},
                                   **{f"bg_{c}": float(v) for c, v in zip("rgb", bg, strict=True)}})


LAWS = {
    "shapes": Shapes(),
    "disk": Shapes("disk", kinds=("circle",), fg=("white",), bg=("charcoal",)),
    "discs": Shapes("discs", kinds=("circle",)),
    "dots": Dots(),
    "rings": Rings(),
    "colourdiscs": FreeColourDiscs(),
}


def get_law(name: str):
    if name not in LAWS:
        from projgan.errors import UserError

        raise UserError(f"unknown law {name!r}", f"choose one of {', '.join(LAWS)}")
    return LAWS[name]


def law_params(name: str, n: int, seed: int) -> list[dict]:
    """The parameters of pictures ``0..n-1`` of a law: each a pure function of ``(seed, index)``."""
    law = get_law(name)
    return [law.sample(np.random.default_rng([seed, i])) for i in range(n)]


def make_law_dataset(folder: str | Path, law: str = "shapes", n: int = 400, resolution: int = 32,
                     seed: int = 0) -> Path:
    """Write ``n`` PNGs and a ``law.json`` naming the law into ``folder`` (created); returns it."""
    from PIL import Image

    from projgan import artifacts

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = get_law(law)
    for i, p in enumerate(law_params(law, n, seed)):
        Image.fromarray(spec.render(p, resolution)).save(folder / f"{law}_{i:05d}.png", compress_level=1)
    artifacts.atomic_write_json(folder / LAW_FILE, {"law": law, "n": n, "resolution": resolution, "seed": seed})
    return folder


def read_law(data: str | Path) -> str | None:
    """The law a dataset folder was drawn from (its ``law.json``), or None for ordinary data."""
    path = Path(data) / LAW_FILE
    if not path.is_file():
        return None
    try:
        name = json.loads(path.read_text()).get("law")
    except (OSError, ValueError, AttributeError):
        return None
    return name if name in LAWS else None
