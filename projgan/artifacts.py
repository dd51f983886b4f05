"""Every on-disk format, and the only module that knows file names.

- generator artifact: ``DIR/config.json`` + ``DIR/model.safetensors`` (EMA weights, spectral norm
  folded): what export, serve and evaluate load. No pickle anywhere.
- training state: ``training-state.pt``, resume only, loadable with ``torch.load(weights_only=True)``.
- metrics: append-only JSONL, one fsynced row per write; a torn last line is ignored on read.
- export manifest: ``export.json``.

All writes are atomic: temp file in the same folder, fsync, rename.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from projgan.config import GeneratorConfig
from projgan.errors import UserError

GENERATOR_FORMAT = "projgan.generator"
FORMAT_VERSION = 2  # 2: arch, classes and style fields in "generator" (version 1 reads as unconditional FastGAN)

# File and folder names, in one place.
CONFIG_JSON = "config.json"
WEIGHTS = "model.safetensors"
GENERATOR_DIR = "generator"
BEST_GENERATOR_DIR = "generator-best"
TRAINING_STATE = "training-state.pt"
TRAIN_CONFIG = "train_config.json"
METRICS = "metrics.jsonl"
FID_PLOT = "fid.png"
LAW_PLOT = "law.png"  # law score over training, for procedural data with a known law
SAMPLES_DIR = "samples"
MANIFEST = "export.json"
ONNX_FP32 = "generator.onnx"
ONNX_FP16 = "generator.fp16.onnx"
W_FILES = {"mapping": "generator.mapping.onnx", "synthesis": "generator.synthesis.onnx"}  # style exports: w space
TRT_PLAN = "generator.fp16.plan"


# ---------------------------------------------------------------- atomic writes

# mkstemp/mkdtemp create 0600/0700 entries; published files get the usual umask-based modes instead
# (a server or container running as another user must be able to read a run).
_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_replace_dir(build, dest: str | Path) -> Path:
    """Build a folder with ``build(tmp_dir)`` next to ``dest``, then swap it into place.

    A reader sees either the old complete folder or the new complete one (the only window is
    between two renames, where ``dest`` is briefly absent; ``load_generator`` then finds
    ``dest.old``).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        build(tmp)
        old = dest.with_name(dest.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- generator artifact


def save_generator(dest: str | Path, G: torch.nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` for generator ``G`` (spectral norm folded)."""
    from safetensors.torch import save_file

    from projgan.generator import plain_state_dict

    cfg: GeneratorConfig = G.cfg
    state = plain_state_dict(G)
    config = {
        "format": GENERATOR_FORMAT,
        "format_version": FORMAT_VERSION,
        "generator": dataclasses.asdict(cfg),
        "output": {"layout": "NCHW", "range": [-1.0, 1.0], "dtype": "float32"},
        "meta": {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(meta or {})},
    }

    def build(tmp: Path):
        save_file(state, str(tmp / WEIGHTS))
        with open(tmp / WEIGHTS, "rb+") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # safetensors creates it 0600
            os.fsync(f.fileno())
        atomic_write_json(tmp / CONFIG_JSON, config)

    return atomic_replace_dir(build, dest)


def resolve_generator_dir(source: str | Path) -> Path:
    """A run directory, a ``generator/`` artifact, or an export directory holding one -> artifact dir."""
    p = Path(source)
    if not p.exists():
        raise UserError(f"{p} does not exist", "pass a run directory (runs/NAME) or a generator/ folder")
    if p.is_file():
        if p.name in (CONFIG_JSON, WEIGHTS):
            return p.parent
        raise UserError(f"{p} is a file, not a generator artifact", "pass a run directory or a generator/ folder")
    if (p / CONFIG_JSON).exists() and (p / WEIGHTS).exists():
        return p
    for name in (GENERATOR_DIR, GENERATOR_DIR + ".old"):
        if (p / name / CONFIG_JSON).exists():
            return p / name
    raise UserError(
        f"{p} holds no generator artifact ({CONFIG_JSON} + {WEIGHTS})",
        "train first (pipeline train) or point at runs/NAME/generator",
    )


def read_generator_config(artifact_dir: str | Path) -> dict[str, Any]:
    path = Path(artifact_dir) / CONFIG_JSON
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}", "the artifact is damaged; re-export it from the run") from None
    if not isinstance(config, dict) or config.get("format") != GENERATOR_FORMAT:
        raise UserError(f"{path} is not a projgan generator config", "point at a folder written by pipeline train")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path} has format version {config['format_version']}", "upgrade projgan to read it")
    return config


def load_generator(source: str | Path, device: str | torch.device = "cpu"):
    """Load a generator artifact in eval mode. Returns ``(G, config_dict)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from projgan.generator import build_generator

    d = resolve_generator_dir(source)
    config = read_generator_config(d)
    cfg = GeneratorConfig.from_dict(config.get("generator", {}))
    G = build_generator(cfg)
    try:
        state = load_file(str(d / WEIGHTS))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot read {d / WEIGHTS}: {e}", "the weights file is damaged or not safetensors") from None
    try:
        G.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0:2]
        raise UserError(f"{d / WEIGHTS} does not match its config: {' '.join(first)}") from None
    return G.eval().requires_grad_(False).to(device), config


# ---------------------------------------------------------------- training state


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    """Tensors, plain containers and numbers only, so ``weights_only=True`` can load it back."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_training_state(path: str | Path, map_location="cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for damaged or hostile files
        raise UserError(
            f"cannot load {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            "the resume state is damaged or not a projgan training state; move it away to start over",
        ) from None


# ---------------------------------------------------------------- metrics rows


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row and fsync, so a crash leaves at most a torn last line (ignored on read)."""
    line = json.dumps(row, default=_json_default) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn line from a crash
        if isinstance(row, dict):
            rows.append(row)
    return rows


def rewrite_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))


# ---------------------------------------------------------------- export manifest


def write_manifest(export_dir: str | Path, manifest: dict[str, Any]) -> Path:
    path = Path(export_dir) / MANIFEST
    atomic_write_json(path, manifest)
    return path


def read_manifest(export_dir: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read ``export.json``; with ``verify``, refuse it if any listed file's sha256 differs."""
    d = Path(export_dir)
    path = d / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}", "re-run pipeline export") from None
    if not isinstance(manifest, dict) or "files" not in manifest:
        raise UserError(f"{path} is not a projgan export manifest", "re-run pipeline export")
    if verify:
        for name, info in manifest["files"].items():
            f = d / name
            if not f.exists():
                raise UserError(f"{f} is listed in {MANIFEST} but missing", "re-run pipeline export")
            if sha256_file(f) != info.get("sha256"):
                raise UserError(f"{f} does not match the sha256 in {MANIFEST}", "the file changed; re-run pipeline export")
    return manifest
