"""`pipeline evaluate` and `pipeline bench`: the commands that measure (quality, speed).

A composition root like ``projgan/cli.py`` (which registers these commands on its app with ``register``):
each command resolves a config, lazily imports its stage and calls one function.
"""

from __future__ import annotations

import typer

from projgan import cli_parse as parse
from projgan.errors import UserError

_COMMANDS: list[tuple[dict, object]] = []


def _command(**kw):
    """Record a command with its Typer options; ``register`` adds them to the app."""
    def add(fn):
        _COMMANDS.append((kw, fn))
        return fn
    return add


def register(app: typer.Typer) -> None:
    for kw, fn in _COMMANDS:
        app.command(**kw)(fn)


@_command(
    epilog=(
        "Examples:\n\n"
        "  pipeline evaluate runs/dogs --data ./dogs --num-images 10000\n\n"
        "  pipeline evaluate exports/dogs --backend onnxruntime --data ./dogs --metrics fid\n\n"
        "  pipeline evaluate runs/dogs --data ./dogs --metrics fid,kid,fd_dinov2,kd_dinov2,pr "
        "--dinov2-weights ~/dinov2/model.safetensors\n\n"
        "  pipeline evaluate runs/dogs --data ./dogs --extractor auto --metrics fid,kid,pr --nearest 3\n\n"
        "Metrics: fid, kid and pr (precision, recall, density, coverage) use --extractor; fd_<name> and kd_<name> "
        "use the named extractor (inception, dinov2, proxy). KD/KID is shown ± its standard error and is the one "
        "to compare below 10k images."
    )
)
def evaluate(
    source: str = typer.Argument(..., help="Anything serve can load."),
    data: str = typer.Option(..., help="Folder or .zip of reference images."),
    num_images: int = typer.Option(10000, help="Generated images."),
    metrics: str = typer.Option(
        "fid,kid", help="fid, kid, pr, fd_<extractor>, kd_<extractor> (e.g. fd_dinov2), law (procedural data with "
        "a law.json), comma-separated."
    ),
    extractor: str = typer.Option(
        "inception", help="Features behind fid, kid, pr and --nearest: inception | dinov2 | proxy (offline, random) "
        "| auto (the best found locally, else proxy)."
    ),
    backend: str = typer.Option("auto", help="auto | torch | onnxruntime | tensorrt."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    batch: int = typer.Option(32, help="Generation batch size."),
    precision: str = typer.Option("auto", help="Torch backend precision: auto | fp32 | bf16 | fp16."),
    inception_weights: str = typer.Option("", help="Local clean-fid Inception weights file."),
    dinov2_weights: str = typer.Option(
        "", help="Local DINOv2 ViT-B/14 weights (timm's model.safetensors) \\[default: the Hugging Face cache].",
        show_default=False,
    ),
    nearest: int = typer.Option(
        0, help="Memorisation check: the K nearest training images of each sample (PNGs beside the JSONL); 0: off."
    ),
    class_name: str = typer.Option("", "--class", help="Conditional models: one class (name or index) against its folder."),
    per_class: bool = typer.Option(False, "--per-class", help="Conditional models: a row per class, then the whole."),
    truncation: float = typer.Option(None, help="Style models: truncation psi for every image \\[default: none].",
                                     show_default=False),
    out: str = typer.Option("", help="JSONL file to append results to."),
):
    """FID/KID, FD/KD on DINOv2, precision/recall and memorisation of a generator, ONNX file or engine."""
    from projgan.config import EvalConfig

    cfg = EvalConfig(
        source=source,
        data=data,
        num_images=num_images,
        metrics=parse.metrics(metrics),
        backend=backend,
        device=device,
        batch=batch,
        precision=precision,
        extractor=extractor.strip().lower(),
        inception_weights=inception_weights,
        dinov2_weights=dinov2_weights,
        nearest=nearest,
        class_name=class_name.strip(),
        per_class=per_class,
        truncation=truncation,
        out=out,
    )
    from projgan.evaluation.extractor_weights import preflight

    preflight(cfg.metrics, cfg.extractor, cfg.dinov2_weights, cfg.nearest > 0)  # before torch loads: offline fails fast
    from projgan.evaluation.evaluate import evaluate as run_evaluate

    run_evaluate(cfg)


_TRAIN_PANEL = "Training step (--train)"


@_command(
    epilog=(
        "Examples:\n\n"
        "  pipeline bench exports/dogs --batch-sizes 1,8,32 --out benchmarks/dogs.json\n\n"
        "  pipeline bench runs/dogs --train --out benchmarks/train.json\n\n"
        "  pipeline bench --train --device cpu --resolution 64 --ngf 64 --batch 16 --precisions bf16,fp32 "
        "--channels-last on,off --compile off,on --steps 6 --warmup 2 --threads 2 --out benchmarks/train_cpu.json\n\n"
        "Only precisions this machine runs natively are timed (bf16 needs AVX512-BF16 or AMX on a CPU); "
        "the JSON records the skipped ones and why."
    )
)
def bench(
    source: str = typer.Argument(
        "", help="Anything serve can load. With --train: a run directory or its train_config.json "
        "\\[default: a 64 px, ngf 64, batch 16 config]."
    ),
    backends: str = typer.Option("", help="Comma-separated backends \\[default: all available]."),
    batch_sizes: str = typer.Option("1,8,32", help="Batch sizes to measure."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    warmup: int = typer.Option(3, help="Warm-up iterations (training steps) per point."),
    repeats: int | None = typer.Option(
        None, "--repeats", "--steps", help="Timed iterations per point \\[default: 20; 10 training steps with --train]."
    ),
    threads: int = typer.Option(0, help="torch CPU threads \\[default: torch's choice].", show_default=False),
    out: str = typer.Option("", help="JSON output (inference: a PNG plot is written beside it)."),
    train_mode: bool = typer.Option(False, "--train", help="Measure training seconds per kimg instead."),
    precisions: str = typer.Option(
        "", help="Precisions to compare: fp32, bf16, fp16, auto \\[default: the run's; inference: fp32 and the "
        "device's native reduced ones]."
    ),
    torch_modes: str = typer.Option(
        "eager", help="Inference, torch backend: eager, graphs (CUDA graphs per batch bucket), compile; comma-separated."
    ),
    channels_last: str = typer.Option("", help="on | off | on,off \\[default: the run's].", rich_help_panel=_TRAIN_PANEL),
    compile: str = typer.Option("", help="off | on | off,on \\[default: the run's].", rich_help_panel=_TRAIN_PANEL),
    resolution: int | None = typer.Option(None, help="Image size \\[default: the run's, else 64].", rich_help_panel=_TRAIN_PANEL),
    ngf: int | None = typer.Option(None, help="Generator width \\[default: the run's, else 64].", rich_help_panel=_TRAIN_PANEL),
    batch: int | None = typer.Option(None, help="Batch size \\[default: the run's, else 16].", rich_help_panel=_TRAIN_PANEL),
    backbone_resolution: int | None = typer.Option(
        None, help="Backbone input size \\[default: the run's, else 224 below 224 px].", rich_help_panel=_TRAIN_PANEL
    ),
    generator: str = typer.Option(
        "", help="No SOURCE: time a randomly initialised fastgan | stylegan2 generator (with --resolution, --ngf)."
    ),
    num_classes: int = typer.Option(0, help="With --generator: a conditional generator of this many classes."),
):
    """Throughput, latency percentiles and FLOPs per backend and batch size, or training seconds per kimg."""
    from projgan.config import BenchConfig

    overrides = {"resolution": resolution, "ngf": ngf, "batch": batch, "backbone_resolution": backbone_resolution}
    grid = {"channels_last": channels_last, "compile": compile}
    if train_mode:
        from projgan.train.step_bench import bench as run_train_bench
        from projgan.train.step_bench import config_for

        cfg = config_for(source, device, **{k: v for k, v in overrides.items() if v is not None})
        run_train_bench(cfg, precisions=parse.choices(precisions, "--precisions", ("auto", "fp32", "bf16", "fp16")),
                        channels_last=parse.onoff(channels_last, "--channels-last"), compile=parse.onoff(compile, "--compile"),
                        steps=10 if repeats is None else repeats, warmup=warmup, threads=threads, out=out)
        return
    synthetic = None
    if generator and not source:  # a random-init generator of that architecture: FLOPs and speed per arch
        from projgan.config import GeneratorConfig

        synthetic = GeneratorConfig(resolution=resolution or 256, ngf=ngf or 128, arch=generator.strip().lower(),
                                    num_classes=num_classes)
        overrides.update(resolution=None, ngf=None)
    elif generator or num_classes:
        raise UserError("--generator/--num-classes describe a synthetic generator", "drop SOURCE to use them")
    train_only = [f"--{k.replace('_', '-')}" for k, v in {**overrides, **grid}.items() if v not in (None, "")]
    if train_only:
        raise UserError(f"{', '.join(train_only)} apply to --train only", "add --train, or drop them")
    if not source and synthetic is None:
        raise UserError("nothing to benchmark", "pass an export, run or generator directory (or --train, or --generator)")
    cfg = BenchConfig(
        source=source,
        backends=tuple(b for b in backends.split(",") if b),
        batch_sizes=parse.ints(batch_sizes, "--batch-sizes"),
        device=device,
        warmup=warmup,
        repeats=20 if repeats is None else repeats,
        out=out,
        threads=threads,
        precisions=parse.choices(precisions, "--precisions", ("fp32", "bf16", "fp16")),
        torch_modes=parse.choices(torch_modes, "--torch-modes", ("eager", "graphs", "compile")),
    )
    from projgan.evaluation.bench import bench as run_bench

    run_bench(cfg, generator=synthetic)
