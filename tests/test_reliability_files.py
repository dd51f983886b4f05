"""Bad files never crash or execute: every damaged input is one clear line and exit 2.

Each case is a real ``pipeline`` subprocess (cases run a few at a time, so the whole file stays
around half a minute on two cores). A planted malicious pickle must never run, and the dataset
reader takes random bytes and every odd PIL mode without raising.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_generator, make_images

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def pipeline(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "projgan", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV
    )


def assert_clear_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    out = res.stdout + res.stderr
    assert res.returncode == 2, f"rc={res.returncode}\n{out}"
    assert "Traceback" not in out, out
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n.lower() in lines[0].lower(), lines[0]


def run_all(cases: dict[str, tuple]) -> dict[str, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(3) as pool:
        futures = {name: pool.submit(pipeline, *args) for name, args in cases.items()}
        return {name: f.result() for name, f in futures.items()}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A real generator and a real export of it (ONNX fp32, no TensorRT), made once for the module."""
    from projgan.config import ExportConfig
    from projgan.export.pipeline import export

    root = tmp_path_factory.mktemp("good")
    gen = make_generator(root / "generator")
    exp = root / "export"
    assert export(ExportConfig(source=str(gen), out=str(exp), batch_sizes=(1, 2, 4), tensorrt=False, parity_seeds=4))
    data = make_images(root / "images", n=8, size=32)
    return {"gen": gen, "export": exp, "data": data, "root": root}


def _damaged_generators(root: Path, gen: Path) -> dict[str, Path]:
    """name -> a copy of the generator artifact with one thing wrong."""
    out = {}

    def variant(name, fn):
        d = root / name
        shutil.copytree(gen, d)
        fn(d)
        out[name] = d

    weights, config = "model.safetensors", "config.json"
    size = (gen / weights).stat().st_size
    variant("weights-truncated", lambda d: os.truncate(d / weights, size // 2))
    variant("weights-zero", lambda d: (d / weights).write_bytes(b""))
    variant("weights-random", lambda d: (d / weights).write_bytes(np.random.default_rng(1).bytes(4096)))
    variant("weights-pickle", lambda d: torch.save({"w": torch.zeros(3)}, d / weights))  # wrong format
    variant("weights-missing", lambda d: (d / weights).unlink())
    variant("config-zero", lambda d: (d / config).write_bytes(b""))
    variant("config-garbage", lambda d: (d / config).write_bytes(b"\x00\xff{not json"))
    variant("config-list", lambda d: (d / config).write_text("[1, 2]"))

    def wrong_shape(d):
        c = json.loads((d / config).read_text())
        c["generator"]["ngf"] = 32  # weights no longer fit the architecture
        (d / config).write_text(json.dumps(c))

    variant("config-wrong-shape", wrong_shape)
    return out


ONNX_CASES = (
    "truncated.onnx",
    "zero.onnx",
    "random.onnx",
    "text.onnx",
    "zero.plan",
    "random.plan",
    "onnx-as-engine.engine",
)


def _damaged_models(tmp_path: Path, export_dir: Path) -> dict[str, Path]:
    blob = (export_dir / "generator.onnx").read_bytes()
    rng = np.random.default_rng(2)
    data = {
        "truncated.onnx": blob[: len(blob) // 3],
        "zero.onnx": b"",
        "random.onnx": rng.bytes(2048),
        "text.onnx": b"this is not a model\n",
        "zero.plan": b"",
        "random.plan": rng.bytes(2048),
        "onnx-as-engine.engine": blob,
    }
    for name, b in data.items():
        (tmp_path / name).write_bytes(b)
    return {name: tmp_path / name for name in ONNX_CASES}


def test_every_damaged_file_is_a_user_error_in_process(good, tmp_path):
    """The whole matrix through the loaders the commands call (fast); the CLI tests below prove the exit path."""
    from projgan import artifacts
    from projgan.errors import UserError
    from projgan.serve.backends import load_backend

    for d in _damaged_generators(tmp_path / "g", good["gen"]).values():
        with pytest.raises(UserError):
            load_backend(str(d), "torch", "cpu", "auto", False)
        with pytest.raises(UserError):
            artifacts.load_generator(d)
    for f in _damaged_models(tmp_path, good["export"]).values():
        with pytest.raises(UserError):
            load_backend(str(f), "auto", "auto", "auto", False)


def test_damaged_files_through_the_cli_are_one_line_exit_2(good, tmp_path):
    """One real subprocess per command and kind of file: serve, export, evaluate."""
    gens = _damaged_generators(tmp_path / "g", good["gen"])
    models = _damaged_models(tmp_path, good["export"])
    cases = {
        "serve/weights-truncated": ("serve", gens["weights-truncated"], "--no-ui", "--port", "0"),
        "serve/random.plan": ("serve", models["random.plan"], "--no-ui", "--port", "0"),
        "export/config-garbage": ("export", gens["config-garbage"], "--out", tmp_path / "never", "--no-tensorrt"),
        "evaluate/truncated.onnx": ("evaluate", models["truncated.onnx"], "--data", good["data"], "--metrics", "fid"),
    }
    for res in run_all(cases).values():
        assert_clear_error(res)
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_full_damaged_file_matrix_through_the_cli(good, tmp_path):
    gens = _damaged_generators(tmp_path / "g", good["gen"])
    models = _damaged_models(tmp_path, good["export"])
    cases = {}
    for name, d in gens.items():
        cases[f"serve/{name}"] = ("serve", d, "--no-ui", "--backend", "torch", "--port", "0")
        cases[f"export/{name}"] = ("export", d, "--out", tmp_path / f"exp-{name}", "--no-tensorrt")
        cases[f"evaluate/{name}"] = ("evaluate", d, "--data", good["data"], "--metrics", "fid")
    for name, f in models.items():
        cases[f"serve/{name}"] = ("serve", f, "--no-ui", "--port", "0")
        cases[f"export/{name}"] = ("export", f, "--out", tmp_path / f"exp-{name}", "--no-tensorrt")
        cases[f"evaluate/{name}"] = ("evaluate", f, "--data", good["data"], "--metrics", "fid")
    for res in run_all(cases).values():
        assert_clear_error(res)
    assert not list(tmp_path.glob("exp-*"))
    print(f"{len(cases)} damaged-file CLI cases: all exit 2 with one error line")


def test_export_whose_files_do_not_match_export_json_is_refused(good, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(good["export"], tampered)
    onnx = tampered / "generator.onnx"
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0x01  # one bit: still the same size
    onnx.write_bytes(bytes(data))
    missing = tmp_path / "missing"
    shutil.copytree(good["export"], missing)
    (missing / "generator.onnx").unlink()
    manifest = tmp_path / "bad-manifest"
    shutil.copytree(good["export"], manifest)
    (manifest / "export.json").write_text('{"format": "projgan.export", "files": ')
    results = run_all(
        {
            "tampered": ("serve", tampered, "--no-ui", "--backend", "onnxruntime", "--port", "0"),
            "tampered-eval": (
                "evaluate",
                tampered,
                "--backend",
                "onnxruntime",
                "--data",
                good["data"],
                "--metrics",
                "fid",
            ),
        }
    )
    assert_clear_error(results["tampered"], "sha256")
    assert_clear_error(results["tampered-eval"], "sha256")
    from projgan.errors import UserError
    from projgan.serve.backends import load_backend

    for d, needle in ((missing, "missing"), (manifest, "export.json"), (tampered, "sha256")):
        for kind in ("auto", "onnxruntime"):
            with pytest.raises(UserError, match=needle):
                load_backend(str(d), kind, "cpu", "auto", False)


class _Evil:
    """Unpickling this creates a marker file: proof that a pickle ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
def test_malicious_training_state_is_never_unpickled(tmp_path, container):
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    run.mkdir()
    state = {"counters": {"cur_nimg": 0}, "payload": _Evil(marker)}
    if container == "torch-zip":
        torch.save(state, run / "training-state.pt")
    else:
        (run / "training-state.pt").write_bytes(pickle.dumps(state))
    data = make_images(tmp_path / "images", n=8, size=32)
    res = pipeline(
        "train",
        "--data",
        data,
        "--out",
        run,
        "--resolution",
        "32",
        "--ngf",
        "16",
        "--batch",
        "8",
        "--kimg",
        "0.016",
        "--backbone-weights",
        "none",
        "--metrics",
        "none",
        "--device",
        "cpu",
    )
    assert not marker.exists(), "the pickle's payload ran"
    assert_clear_error(res, "training-state.pt")
    # Loading it directly is refused the same way.
    from projgan import artifacts
    from projgan.errors import UserError

    with pytest.raises(UserError):
        artifacts.load_training_state(run / "training-state.pt")
    assert not marker.exists()


# ------------------------------------------------------------------ dataset reader

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK"]


def _image(mode: str, w: int, h: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (h, w), dtype=np.uint8) * 255).convert("1")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16), "I;16")
    if mode == "I":
        return Image.fromarray(rng.integers(-(2**20), 2**20, (h, w), dtype=np.int32), "I")
    if mode == "F":
        return Image.fromarray(rng.normal(0, 100, (h, w)).astype(np.float32), "F")
    if mode == "P":
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert("P")
    a = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if len(mode) == 1 else a, mode)


FORMATS = {
    "PNG": {"1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I"},
    "TIFF": set(MODES),
    "JPEG": {"L", "RGB", "CMYK"},
    "WEBP": {"RGB", "RGBA"},
    "GIF": {"L", "P"},
    "BMP": {"1", "L", "P", "RGB"},
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=4096),
    prefix=st.sampled_from(
        [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00", b"BM"]
    ),
)
def test_dataset_reader_survives_random_bytes(data, prefix):
    from projgan.imagefiles import decode as _decode

    out = _decode(prefix + data, 32)
    assert out is None or (out[0].shape == (32, 32, 3) and out[0].dtype == np.uint8)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(MODES),
    fmt=st.sampled_from(sorted(FORMATS)),
    w=st.integers(1, 80),
    h=st.integers(1, 80),
    seed=st.integers(0, 2**16),
    cut=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_dataset_reader_takes_odd_modes_sizes_and_truncation(mode, fmt, w, h, seed, cut):
    from projgan.imagefiles import decode as _decode

    buf = io.BytesIO()
    try:
        _image(mode, w, h, seed).save(buf, fmt)
    except (OSError, ValueError, KeyError):
        return  # PIL cannot write this mode in this format: nothing to read back
    data = buf.getvalue()
    if cut is not None:
        data = data[: int(len(data) * cut)]
    out = _decode(data, 32)
    if cut is None and mode in FORMATS[fmt]:
        assert out is not None, (mode, fmt, w, h)
    if out is not None:
        arr, side = out
        assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8 and side >= 1


def test_dataset_folder_and_zip_with_junk_load_only_the_images(tmp_path):
    from projgan.train.dataset import load_images

    folder = make_images(tmp_path / "mixed", n=6, size=32)
    rng = np.random.default_rng(0)
    (folder / "random.png").write_bytes(rng.bytes(500))
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("hello")
    (folder / "half.png").write_bytes((folder / "img_0000.png").read_bytes()[:60])
    for mode in MODES:
        im = _image(mode, 40, 24, 1)
        im.save(folder / f"mode_{mode.replace(';', '_')}.tiff")
    images, summary = load_images(folder, 32, min_images=1, progress=False)
    assert images.shape == (6 + len(MODES), 32, 32, 3) and images.dtype == np.uint8
    zpath = tmp_path / "mixed.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f.name)
        z.writestr("../escape.png", (folder / "img_0001.png").read_bytes())
    zimages, _ = load_images(zpath, 32, min_images=1, progress=False)
    assert len(zimages) >= len(images)
    assert not (tmp_path / "escape.png").exists()
