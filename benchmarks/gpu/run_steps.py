"""The GPU window's steps that are more than one ``pipeline bench`` command: installs, the probe, the CUDA
tests, the served benchmark, and our training beside the paper's code on the same data.

The paper's code (autonomousvision/projected-gan) is never part of this repository: ``--paper-code DIR`` points
at a checkout prepared by hand on the GPU machine (README.md beside this file); without it the step is
skipped and says so.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import zipfile
from pathlib import Path

from plan import PY, Context, Step, backbone

PAPER_WEIGHTS = "tf_efficientnet_lite0-0aa007d2.pth"  # the file name timm 0.4.12 caches its backbone under
SERVE_MODULES = ("fastapi", "uvicorn", "pydantic", "starlette")


def importable(ctx: Context, modules, env: dict | None = None) -> list[str]:
    """The modules of ``modules`` that a step's interpreter cannot import (checked in a subprocess)."""
    code = "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))"
    r = subprocess.run([PY, "-c", code, *modules], capture_output=True, text=True, env=env or ctx.facts["env"],
                       cwd=ctx.repo, timeout=60)
    return r.stdout.split()


# ---------------------------------------------------------------- setup


def install_wheels() -> Step:
    def check(ctx: Context) -> str:
        if ctx.wheels is None or not sorted(ctx.wheels.glob("*.whl")):
            return f"no wheels in {ctx.wheels}: the served benchmark needs {', '.join(SERVE_MODULES)} (README.md)"
        return ""

    def argv(ctx: Context) -> list[str]:
        return [PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
                "--upgrade", "--target", str(ctx.site), *map(str, sorted(ctx.wheels.glob("*.whl")))]

    return Step("wheels", argv, timeout_s=90, check=check)


def install_projgan() -> Step:
    """An editable install where ``projgan.train`` does not import yet (the package maps top-level folders)."""

    def check(ctx: Context) -> str:
        return "" if importable(ctx, ["projgan.train.step", "projgan.serve.backends"]) else "projgan is installed"

    def argv(ctx: Context) -> list[str]:
        return [PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation", "-e", str(ctx.repo)]

    return Step("install", argv, timeout_s=120, check=check)


def probe() -> Step:
    return Step("probe", lambda ctx: [PY, str(Path(__file__).with_name("probe.py")), str(ctx.out / "env.json")],
                timeout_s=60, outputs=("env.json",))


def cuda_tests() -> Step:
    """Every test marked ``gpu`` except the slow ones (torch.compile: the compile steps time it)."""

    def argv(ctx: Context) -> list[str]:
        files = sorted(str(p.relative_to(ctx.repo)) for p in (ctx.repo / "tests").glob("test_*.py")
                       if "mark.gpu" in p.read_text())
        return [PY, "-m", "pytest", "-m", "gpu and not slow", "-q", "-p", "no:cacheprovider", "-rs",
                "--continue-on-collection-errors", f"--junitxml={ctx.out / 'cuda_tests.xml'}", *files]

    def finish(ctx: Context) -> None:
        xml = ctx.out / "cuda_tests.xml"
        if xml.exists():
            _write(ctx.out / "cuda_tests.json", junit_summary(xml.read_text()))

    return Step("cuda_tests", argv, timeout_s=120, finish=finish, outputs=("cuda_tests.json",))


def junit_summary(text: str) -> dict:
    """Counts and the names of failed/errored/skipped tests of a pytest JUnit XML report."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(text)
    out = {"tests": 0, "failed": [], "errors": [], "skipped": [], "passed": []}
    for case in root.iter("testcase"):
        out["tests"] += 1
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = [c.tag for c in case]
        key = "failed" if "failure" in kinds else "errors" if "error" in kinds else "skipped" if "skipped" in kinds else "passed"
        out[key].append(name)
    return out


# ---------------------------------------------------------------- serving


def serve_load() -> Step:
    def check(ctx: Context) -> str:
        missing = importable(ctx, SERVE_MODULES)
        return f"cannot import {', '.join(missing)}: put their wheels in .whl (README.md)" if missing else ""

    def argv(ctx: Context) -> list[str]:
        s = ctx.sizes
        return [PY, str(ctx.repo / "benchmarks" / "serve_load.py"), "--device", s.device, "--backend", "torch",
                "--resolution", str(s.resolution), "--ngf", str(s.ngf), "--max-batch", str(s.serve_batch),
                "--seconds", str(s.serve_seconds), "--rounds", "3", "--latency-calls", str(s.latency_calls),
                "--out", str(ctx.out / "serve_load.json")]

    return Step("serve_load", argv, timeout_s=120, check=check, outputs=("serve_load.json",))


# ---------------------------------------------------------------- ours beside the paper's code


def dataset_zip(ctx: Context) -> Path:
    """A procedural dataset at the comparison's resolution, zipped once: both trainers read this file."""
    s = ctx.sizes
    zpath = ctx.out / "data" / f"shapes{s.resolution}.zip"
    if zpath.exists():
        return zpath
    folder = ctx.out / "data" / "shapes"
    subprocess.run([*ctx.pipeline("data", "make", "shapes", str(folder), "--images", str(s.compare_images),
                                  "--resolution", str(s.resolution))],
                   check=True, capture_output=True, env=ctx.facts["env"], cwd=ctx.repo, timeout=300)
    with zipfile.ZipFile(zpath.with_suffix(".tmp"), "w", zipfile.ZIP_STORED) as z:
        for png in sorted(folder.glob("*.png")):
            z.write(png, png.name)
    zpath.with_suffix(".tmp").rename(zpath)
    return zpath


def ours_train() -> Step:
    def argv(ctx: Context) -> list[str]:
        s = ctx.sizes
        return ctx.pipeline("train", "--data", str(dataset_zip(ctx)), "--out", str(ctx.out / "runs" / "ours"),
                            "--generator", "fastgan", "--resolution", str(s.resolution), "--ngf", str(s.ngf),
                            "--batch", str(s.train_batch), "--kimg", f"{s.compare_kimg:g}",
                            "--tick-kimg", f"{s.compare_tick_kimg:g}", "--snapshot-ticks", "1000", "--metrics", "none",
                            "--backbone-weights", "none", "--device", s.device, *backbone(s))

    def finish(ctx: Context) -> None:
        rows = ctx.out / "runs" / "ours" / "metrics.jsonl"
        if rows.exists():
            ticks = [json.loads(line) for line in rows.read_text().splitlines() if '"tick"' in line]
            ticks = [t["sec_per_kimg"] for t in ticks if t.get("kind") == "tick"]
            _write(ctx.out / "ours_train.json", tick_summary(ticks, "projgan pipeline train (metrics.jsonl ticks)", ctx))

    return Step("ours_train", argv, timeout_s=90, finish=finish, outputs=("ours_train.json",))


def tick_summary(sec_per_kimg: list[float], source: str, ctx: Context) -> dict:
    """Seconds per kimg of a run: the median of its ticks after the first (the first holds the warm-up)."""
    steady = sec_per_kimg[1:] or sec_per_kimg
    s = ctx.sizes
    return {"source": source, "sec_per_kimg_ticks": sec_per_kimg,
            "sec_per_kimg": round(statistics.median(steady), 3) if steady else None,
            "resolution": s.resolution, "batch": s.train_batch, "ngf": s.ngf, "kimg": s.compare_kimg,
            "data": str(Path("data") / f"shapes{s.resolution}.zip")}


PAPER_TICK = re.compile(r"^tick (\d+)\s.*?sec/kimg\s+([0-9.]+)", re.M)


def paper_ticks(log: str) -> list[float]:
    """``sec/kimg`` of every status line the paper's training loop prints (tick 0 included)."""
    return [float(v) for _, v in PAPER_TICK.findall(log)]


def paper_train() -> Step:
    def check(ctx: Context) -> str:
        if ctx.paper_code is None:
            return "no --paper-code DIR: the paper's code is a checkout prepared by hand on the GPU machine (README.md)"
        if not (ctx.paper_code / "train.py").is_file():
            return f"{ctx.paper_code} has no train.py: not a projected-gan checkout"
        return "" if ctx.sizes.device.startswith("cuda") else "the paper's code trains on CUDA only"

    def prepare(ctx: Context) -> None:
        """Its own wheels (the old pure-Python timm it imports, dill) into a folder only this step sees; and,
        offline, timm 0.4.12 loads the backbone from torch.hub's cache: a random state dict of the same keys
        (speed does not depend on the values) where it looks, unless one is there already."""
        wheels = sorted(ctx.wheels.glob("paper/*.whl")) if ctx.wheels else []
        if wheels:
            subprocess.run([PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
                            "--target", str(ctx.paper_site), *map(str, wheels)], check=True, timeout=120)
        hub = ctx.out / "torch_home" / "hub" / "checkpoints"
        if not (hub / PAPER_WEIGHTS).exists():
            hub.mkdir(parents=True, exist_ok=True)
            code = ("import sys, timm, torch; torch.save(timm.create_model('tf_efficientnet_lite0').state_dict(), "
                    "sys.argv[1])")
            subprocess.run([PY, "-c", code, str(hub / PAPER_WEIGHTS)], check=True, env=ctx.facts["env"], timeout=120)

    def env(ctx: Context) -> dict[str, str]:
        paths = [str(p) for p in (ctx.paper_site, ctx.paper_code) if p]
        return {"PYTHONPATH": ":".join(paths), "TORCH_HOME": str(ctx.out / "torch_home")}

    def argv(ctx: Context) -> list[str]:
        s = ctx.sizes
        return [PY, str(ctx.paper_code / "train.py"), "--outdir", str(ctx.out / "runs" / "paper"),
                "--cfg", "fastgan_lite", "--data", str(dataset_zip(ctx)), "--gpus", "1", "--batch", str(s.train_batch),
                "--mirror", "1", "--kimg", str(max(1, round(s.compare_kimg))), "--tick", "1", "--snap", "1000",
                "--metrics", "none", "--workers", "3"]

    def finish(ctx: Context) -> None:
        log = ctx.out / "logs" / "paper_train.log"
        ticks = paper_ticks(log.read_text(errors="replace")) if log.exists() else []
        if ticks:
            _write(ctx.out / "paper_train.json", tick_summary(ticks, "autonomousvision/projected-gan train.py log", ctx))

    return Step("paper_train", argv, timeout_s=150, check=check, prepare=prepare, env=env, finish=finish,
                outputs=("paper_train.json",))


def _write(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.rename(path)
