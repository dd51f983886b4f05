"""Where feature-extractor weights are found on this machine, checked without importing torch.

``pipeline evaluate --metrics fd_dinov2`` offline must fail in a fraction of a second, before torch,
timm or the generator are loaded: ``preflight`` looks for every file the requested metrics need and
raises the one-line ``UserError`` at once. Only the local Hugging Face cache is looked at: no request
leaves the machine. ``evaluation/features.py`` builds the extractors from what is found here.
"""

from __future__ import annotations

from pathlib import Path

from projgan.config import parse_metric
from projgan.errors import UserError

DINOV2_MODEL = "vit_base_patch14_dinov2.lvd142m"
DINOV2_REPO = f"timm/{DINOV2_MODEL}"
DINOV2_FILES = ("model.safetensors", "pytorch_model.bin")  # what the timm hub repository holds


def dinov2_hint() -> str:
    return (f"download it with `hf download {DINOV2_REPO} model.safetensors` (found in the Hugging Face cache "
            "from then on) or pass the file with --dinov2-weights PATH")


def find_dinov2_weights(weights: str = "") -> Path | None:
    """``weights`` if given (must exist), else timm's file in the Hugging Face cache, else None."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"--dinov2-weights {weights}: no such file", dinov2_hint())
        return path
    from huggingface_hub import try_to_load_from_cache

    for filename in DINOV2_FILES:
        found = try_to_load_from_cache(DINOV2_REPO, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def require_dinov2(weights: str = "") -> Path:
    """The DINOv2 weights file, or the ``UserError`` that says how to provide it."""
    path = find_dinov2_weights(weights)
    if path is None:
        raise UserError(f"DINOv2 ViT-B/14 weights ({DINOV2_REPO}) are not on this machine and are never "
                        "downloaded implicitly", dinov2_hint())
    return path


def preflight(metrics: tuple[str, ...], extractor: str = "inception", dinov2_weights: str = "",
              nearest: bool = False) -> None:
    """Fail now if a metric needs DINOv2 weights that are not here (``extractor``: the one behind fid, kid,
    pr and --nearest). Inception is left to its loader: clean-fid's cache may be filled by a download."""
    names = {parse_metric(m)[1] or extractor for m in metrics if parse_metric(m) not in (None, ("law", ""))}
    if nearest:
        names.add(extractor)
    if "dinov2" in names:
        require_dinov2(dinov2_weights)
