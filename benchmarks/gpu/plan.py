"""What the GPU window measures, in priority order, each step with its own timeout (issue 21, item 4).

Every step is a subprocess (``python -m projgan ...`` or a script of this repository) whose output lands
in the run folder; ``run.py`` runs them under one wall-clock budget, skipping what no longer fits.
``Sizes.gpu()`` are the issue's sizes; ``Sizes.tiny()`` the same commands at sizes a CPU finishes in
minutes (the dry run). The generator names are in one list: today's ``fastgan`` is the lite network
(FastGAN-lite, ``--cfg fastgan_lite`` in the paper's code); after issue 19 it is called ``fastgan_lite``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Inference generators at 256 px, ngf 128. After issue 19: ("fastgan_lite", "stylegan2").
GENERATORS = ("fastgan", "stylegan2")
LITE = GENERATORS[0]  # the paper's --cfg fastgan_lite network, timed beside the paper's own code
PY = sys.executable


@dataclass(frozen=True)
class Sizes:
    device: str
    resolution: int  # inference and training
    ngf: int  # inference generators and the paper comparison
    train_ngfs: tuple[int, ...]
    batch_sizes: tuple[int, ...]  # inference
    precisions: tuple[str, ...]  # inference, torch
    modes: tuple[str, ...]  # torch modes timed in the main inference steps (compile has its own step)
    train_batch: int
    train_steps: int
    compare_kimg: float  # ours and the paper's code, each (the paper's --kimg is a whole number)
    compare_tick_kimg: float
    compare_images: int  # the procedural dataset both train on
    serve_seconds: float
    latency_calls: int
    serve_batch: int
    backbone_resolution: int = 0  # 0: the trainer's default (224 below 224 px, else the resolution)
    timeout_scale: float = 1.0  # a CPU's dry run is slower than the GPU the timeouts are sized for

    @classmethod
    def gpu(cls) -> Sizes:
        return cls(device="cuda", resolution=256, ngf=128, train_ngfs=(64, 128),
                   batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256), precisions=("fp16", "bf16"),
                   modes=("eager", "graphs"), train_batch=64, train_steps=10, compare_kimg=3, compare_tick_kimg=1,
                   compare_images=1024,
                   serve_seconds=3.0, latency_calls=100, serve_batch=32)

    @classmethod
    def tiny(cls) -> Sizes:
        """The dry run: the same commands on a CPU (fp32/bf16, eager; CUDA graphs need a GPU)."""
        return cls(device="cpu", resolution=32, ngf=16, train_ngfs=(16,), batch_sizes=(1, 2, 4),
                   precisions=("fp32", "bf16"), modes=("eager",), train_batch=4, train_steps=2, compare_kimg=0.016,
                   compare_tick_kimg=0.008, compare_images=64, serve_seconds=1.0, latency_calls=10, serve_batch=4,
                   backbone_resolution=32, timeout_scale=3.0)


@dataclass
class Step:
    """One measurement: ``argv`` (built when the step starts, so it sees what earlier steps made)."""

    name: str
    argv: Callable[[Context], list[str]]
    timeout_s: float
    min_s: float = 20.0  # skipped, not started, when less of the budget is left
    check: Callable[[Context], str] = lambda ctx: ""  # a reason to skip, known before it runs
    prepare: Callable[[Context], None] | None = None  # in-process work before the command (data, weights)
    env: Callable[[Context], dict[str, str]] = lambda ctx: {}
    finish: Callable[[Context], None] | None = None  # in-process work after it (parse its log into JSON)
    outputs: tuple[str, ...] = ()  # files under the run folder it should write


@dataclass
class Context:
    out: Path
    sizes: Sizes
    repo: Path
    paper_code: Path | None = None
    wheels: Path | None = None
    site: Path | None = None  # where wheels (and projgan, if it is not installed) were installed
    paper_site: Path | None = None
    facts: dict = field(default_factory=dict)  # what earlier steps found (importable modules, ...)

    def pipeline(self, *args: str) -> list[str]:
        return [PY, "-m", "projgan", *args]


def backbone(s: Sizes) -> list[str]:
    """``--backbone-resolution`` where the sizes set one (the dry run: a CPU cannot afford 224 px)."""
    return ["--backbone-resolution", str(s.backbone_resolution)] if s.backbone_resolution else []


def _csv(values) -> str:
    return ",".join(map(str, values))


def infer(arch: str, modes: tuple[str, ...], precisions=None, name: str = "") -> Step:
    name = name or f"infer_{arch}"

    def argv(ctx: Context) -> list[str]:
        s = ctx.sizes
        return ctx.pipeline("bench", "--generator", arch, "--resolution", str(s.resolution), "--ngf", str(s.ngf),
                            "--device", s.device, "--backends", "torch", "--precisions", _csv(precisions or s.precisions),
                            "--torch-modes", _csv(modes), "--batch-sizes", _csv(s.batch_sizes), "--warmup", "3",
                            "--repeats", "10", "--out", str(ctx.out / f"{name}.json"))

    compiled = "compile" in modes  # minutes of inductor work: not worth starting with little time left
    return Step(name, argv, timeout_s=150 if compiled else 100, min_s=100 if compiled else 20,
                outputs=(f"{name}.json", f"{name}.png"))


def train_bench(ngf: int | None, compile_: bool = False) -> Step:
    name = "train_compile" if compile_ else f"train_ngf{ngf}"

    def argv(ctx: Context) -> list[str]:
        s = ctx.sizes
        width = ngf if ngf is not None else s.train_ngfs[0]
        precisions = "bf16" if compile_ else "fp32,bf16"
        return ctx.pipeline("bench", "--train", "--device", s.device, "--resolution", str(s.resolution),
                            "--batch", str(s.train_batch), "--ngf", str(width), "--precisions", precisions,
                            "--channels-last", "on", "--compile", "on" if compile_ else "off",
                            "--steps", str(s.train_steps), "--warmup", "3", *backbone(s),
                            "--out", str(ctx.out / f"{name}.json"))

    return Step(name, argv, timeout_s=150 if compile_ else 80, min_s=100 if compile_ else 20, outputs=(f"{name}.json",))


def steps(ctx: Context) -> list[Step]:
    """Priority order: what the issue's targets need first, the rest as the budget allows."""
    from run_steps import cuda_tests, install_projgan, install_wheels, ours_train, paper_train, probe, serve_load

    s = ctx.sizes
    main = [install_wheels(), install_projgan(), probe(), cuda_tests(), infer(LITE, s.modes),
            train_bench(s.train_ngfs[0]), serve_load(), ours_train(), paper_train()]
    rest = [infer(arch, s.modes) for arch in GENERATORS[1:]]
    rest += [train_bench(n) for n in s.train_ngfs[1:]]
    rest += [infer(LITE, ("compile",), name="infer_compile"), train_bench(None, compile_=True)]
    return main + rest


def worst_case_s(plan: list[Step], sizes: Sizes) -> float:
    """The sum of the step timeouts: what the run would take if every step ran to its limit (the budget
    stops it sooner: later steps are skipped)."""
    return sum(st.timeout_s for st in plan) * sizes.timeout_scale
