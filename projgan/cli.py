"""The `pipeline` command: the composition root.

Each command resolves a config, lazily imports its stage, and calls one function. User mistakes
(``UserError``) become one red line plus a hint and exit code 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from projgan.errors import UserError

err = Console(stderr=True)

app = typer.Typer(
    name="pipeline",
    help=(
        "Projected GAN: train a FastGAN generator, export it to ONNX/TensorRT, serve it.\n\n"
        "Examples:\n\n"
        "  pipeline quickstart                          # whole pipeline on built-in data\n\n"
        "  pipeline train --data ./dogs --out runs/dogs\n\n"
        "  pipeline export runs/dogs --fp16\n\n"
        "  pipeline serve exports/dogs --port 8000"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(
    help="Inspect a dataset, or make a procedural one.\n\nExamples:\n\n  pipeline data check ./dogs\n\n"
    "  pipeline data make dots ./dots --images 1000 --resolution 32",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{name} must be comma-separated integers (got {text!r})") from None
    if not vals:
        raise UserError(f"{name} is empty")
    return vals


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{name} must be comma-separated numbers (got {text!r})") from None


def _metrics(text: str) -> tuple[str, ...]:
    text = text.strip().lower()
    return () if text in ("", "none") else tuple(m.strip() for m in text.split(",") if m.strip())


@app.command(
    epilog=(
        "Examples:\n\n"
        "  pipeline train --data ./dogs --out runs/dogs --resolution 256 --batch 64 --kimg 2000\n\n"
        "  pipeline train --data faces.zip --ngf 64 --backbone-weights ~/lite0.pth --fid-every 25\n\n"
        "  torchrun --nproc_per_node 4 -m projgan train --data ./dogs --out runs/dogs\n\n"
        "Re-running the same command resumes from runs/NAME/training-state.pt; --kimg is the total budget."
    )
)
def train(
    ctx: typer.Context,
    data: str = typer.Option(..., help="Folder (searched recursively) or .zip of images."),
    out: str = typer.Option("", help="Run directory \\[default: runs/<data name>]."),
    resolution: int = typer.Option(256, help="Image size: 32, 64, 128, 256, 512 or 1024."),
    batch: int = typer.Option(64, help="Total batch size (split across processes under torchrun)."),
    kimg: float = typer.Option(2000.0, help="Total training budget in thousands of real images."),
    ngf: int = typer.Option(128, help="Generator width (128 as in the paper, 64 for small GPUs)."),
    generator: str = typer.Option("fastgan", help="fastgan | stylegan2 (mapping network, truncation)."),
    cond: bool = typer.Option(False, "--cond", help="Class-conditional: classes are the first-level subfolders of --data."),
    class_sampling: str = typer.Option("balanced", help="--cond: balanced (each class equally often) | natural."),
    backbone: str = typer.Option("tf_efficientnet_lite0", help="Any timm CNN with features_only support."),
    backbone_weights: str = typer.Option("pretrained", help="pretrained | none | PATH to a local state dict."),
    backbone_resolution: int = typer.Option(0, help="Backbone input size \\[default: 224 below 224 px].", show_default=False),
    projection: str = typer.Option("ccm+csm", help="Random projections: none | ccm | ccm+csm."),
    num_discs: int = typer.Option(4, help="Discriminators, one per feature scale (1..4)."),
    discriminator: str = typer.Option(
        "projected", help="projected (the paper) | fastgan | dcgan (baselines that see pixels)."
    ),
    d_width: int = typer.Option(64, help="Base width (ndf) of the fastgan / dcgan discriminators."),
    optimizer: str = typer.Option("adam", help="adam | rmsprop | sgd | nesterov (G and D)."),
    lr: float = typer.Option(2e-4, help="Learning rate for D (and G, unless --g-lr)."),
    g_lr: float = typer.Option(0.0, help="G's learning rate when it should differ (two time-scale) \\[default: --lr].", show_default=False),
    betas: str = typer.Option("0,0.99", help="Adam betas (rmsprop smooths with the second)."),
    momentum: float = typer.Option(0.9, help="Momentum of sgd / nesterov."),
    lr_schedule: str = typer.Option("constant", help="constant | step | exponential | cosine (over kimg)."),
    lr_decay_kimg: float = typer.Option(0.0, help="step / exponential: multiply by --lr-gamma every N kimg \\[kimg/4].", show_default=False),
    lr_gamma: float = typer.Option(0.5, help="Decay factor of step / exponential schedules."),
    lr_min: float = typer.Option(0.0, help="cosine: final learning rate as a fraction of --lr."),
    augment: str = typer.Option("color,translation,cutout", help="DiffAugment policy ('' disables)."),
    xflip: bool = typer.Option(True, help="Random horizontal flips of real images."),
    ema_kimg: float = typer.Option(0.0, help="EMA half-life in kimg \\[default: batch*10/32].", show_default=False),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16 autocast."),
    channels_last: bool = typer.Option(True, help="Use channels_last memory format."),
    compile: bool = typer.Option(
        False, "--compile", help="torch.compile G and D (minutes of warm-up; see benchmarks/train_cpu.md for when it pays)."
    ),
    tick_kimg: float = typer.Option(1.0, help="kimg between metrics rows."),
    snapshot_ticks: int = typer.Option(10, help="Ticks between snapshots (always one at the end)."),
    metrics: str = typer.Option(
        "fid", help="Recorded every --fid-every kimg: fid, kid, pr (precision/recall/density/coverage), fd_dinov2, "
        "kd_dinov2 (DINOv2 weights: --dinov2-weights or the Hugging Face cache), law (procedural data) or none; "
        "comma-separated."
    ),
    fid_every: float = typer.Option(50.0, help="kimg between FID records."),
    fid_images: int = typer.Option(5000, help="Generated images per FID record."),
    extractor: str = typer.Option("inception", help="Features behind fid, kid, pr: inception | dinov2 | proxy | auto."),
    inception_weights: str = typer.Option("", help="Local clean-fid Inception weights file."),
    dinov2_weights: str = typer.Option("", help="Local DINOv2 ViT-B/14 weights for fd_dinov2/kd_dinov2."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    seed: int = typer.Option(0, help="Random seed."),
    max_minutes: float = typer.Option(0.0, help="Stop with a snapshot after this many minutes (0: no limit)."),
):
    """Train a Projected FastGAN on a folder or zip of images."""
    from projgan.config import GeneratorConfig, TrainConfig

    b = _floats(betas, "--betas")
    cfg = TrainConfig(
        data=data,
        out=out or str(Path("runs") / Path(data.rstrip("/")).stem),
        generator=GeneratorConfig(resolution=resolution, ngf=ngf, arch=generator.strip().lower()),
        cond=cond,
        class_sampling=class_sampling.strip().lower(),
        batch=batch,
        kimg=kimg,
        backbone=backbone,
        backbone_weights=backbone_weights,
        backbone_resolution=backbone_resolution,
        projection=projection,
        num_discs=num_discs,
        discriminator=discriminator,
        d_width=d_width,
        optimizer=optimizer,
        lr=lr,
        g_lr=g_lr,
        betas=b,
        momentum=momentum,
        lr_schedule=lr_schedule,
        lr_decay_kimg=lr_decay_kimg,
        lr_gamma=lr_gamma,
        lr_min=lr_min,
        augment=augment,
        xflip=xflip,
        ema_kimg=ema_kimg,
        precision=precision,
        channels_last=channels_last,
        compile=compile,
        tick_kimg=tick_kimg,
        snapshot_ticks=snapshot_ticks,
        metrics=_metrics(metrics),
        fid_every=fid_every,
        fid_images=fid_images,
        extractor=extractor.strip().lower(),
        inception_weights=inception_weights,
        dinov2_weights=dinov2_weights,
        device=device,
        seed=seed,
        max_minutes=max_minutes,
    )
    from projgan.evaluation.extractor_weights import preflight

    cfg = _resume_defaults(ctx, cfg)
    preflight(cfg.metrics, cfg.extractor, cfg.dinov2_weights)  # before torch loads: offline fails fast
    from projgan.train.loop import train as run_training

    run_training(cfg)


def _resume_defaults(ctx: typer.Context, cfg):
    """Resuming a run: options not given on the command line take the values the run was started
    with (train_config.json), so re-running a shorter command continues the same recipe."""
    import json

    from projgan import artifacts

    out = Path(cfg.out)
    if not (out / artifacts.TRAINING_STATE).exists():
        return cfg
    try:
        saved = json.loads((out / artifacts.TRAIN_CONFIG).read_text())
    except (OSError, ValueError):
        return cfg
    # by name: Typer may ship its own copy of click's ParameterSource enum
    unset = {n for n in ctx.params if getattr(ctx.get_parameter_source(n), "name", "") == "DEFAULT"}
    return cfg.with_saved(saved, {_CLI_TO_CONFIG.get(n, n) for n in unset - {"data", "out"}})


_CLI_TO_CONFIG = {"resolution": "generator.resolution", "ngf": "generator.ngf", "generator": "generator.arch"}  # options named otherwise


@data_app.command(
    "check",
    epilog="Examples:\n\n  pipeline data check ./dogs\n\n  pipeline data check faces.zip --resolution 128",
)
def data_check(
    data: str = typer.Argument(..., help="Folder or .zip of images."),
    resolution: int = typer.Option(256, help="Resolution the images would be trained at."),
):
    """Count readable, skipped and unreadable images without training."""
    from projgan.train.dataset import check

    check(data, resolution)


@data_app.command(
    "make",
    epilog=(
        "Examples:\n\n  pipeline data make shapes ./shapes\n\n  pipeline data make rings ./rings --images 500 --resolution 64\n\n"
        "Laws: shapes (one upright circle, square or triangle), disk (one white disk), discs (one coloured disc), "
        "dots (1-4 dots on a gradient), rings (one ring on a split background). The folder gets a law.json, so --metrics law can score samples."
    ),
)
def data_make(
    law: str = typer.Argument(..., help="shapes | disk | discs | dots | rings."),
    out: str = typer.Argument(..., help="Folder to write the PNGs and law.json into."),
    images: int = typer.Option(1000, help="Number of pictures."),
    resolution: int = typer.Option(32, help="Picture size in pixels."),
    seed: int = typer.Option(0, help="Seed: picture i is a pure function of (seed, i)."),
):
    """Write a procedural dataset whose generating law is known (for learning checks)."""
    from projgan.evaluation.laws import get_law, make_law_dataset

    get_law(law)
    if images < 1 or resolution < 8:
        raise UserError("--images must be >= 1 and --resolution >= 8")
    folder = make_law_dataset(out, law, n=images, resolution=resolution, seed=seed)
    err.print(f"{images} pictures of the '{law}' law at {resolution} px in {folder}")


@app.command(
    epilog=(
        "Examples:\n\n"
        "  pipeline export runs/dogs --fp16\n\n"
        "  pipeline export runs/dogs/generator-best --out exports/dogs-best --batch-sizes 1,16,64 --triton\n\n"
        "Writes generator.onnx (+ generator.fp16.onnx, generator.fp16.plan where TensorRT exists) and export.json "
        "with a parity certificate (every seed's image; for reduced precision also the FD drift of the "
        "distribution); exits 1 if a backend fails it."
    )
)
def export(
    source: str = typer.Argument(..., help="Run directory or generator/ artifact."),
    out: str = typer.Option("", help="Export directory \\[default: exports/<run name>]."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write an fp16 ONNX (and build the TensorRT engine from it)."),
    batch_sizes: str = typer.Option("1,8,64", help="MIN,OPT,MAX batch of the dynamic profile."),
    opset: int = typer.Option(18, help="ONNX opset."),
    tensorrt: bool = typer.Option(True, "--tensorrt/--no-tensorrt", help="Build a TensorRT engine where installed."),
    triton: bool = typer.Option(False, "--triton", help="Also write a Triton model repository."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing export directory."),
    parity_seeds: int = typer.Option(64, help="Seeds in the parity certificate."),
    drift_images: int = typer.Option(
        0, help="Images per reduced-precision backend in the drift check (0: 2048 on CUDA, 256 on a CPU)."
    ),
    drift_max_ratio: float = typer.Option(
        0.1, help="Fail when a backend's FD to torch fp32 exceeds this fraction of the sampling-noise FD."
    ),
    drift_extractor: str = typer.Option("auto", help="Drift features: auto | inception | dinov2 | proxy."),
):
    """Export a generator to ONNX (fp32/fp16) and TensorRT, and certify output parity."""
    from projgan.config import ExportConfig

    sizes = _ints(batch_sizes, "--batch-sizes")
    if len(sizes) != 3:
        raise UserError(f"--batch-sizes needs MIN,OPT,MAX (got {batch_sizes!r})", "for example --batch-sizes 1,8,64")
    src = Path(source)
    name = src.parent.name if src.name.startswith("generator") else src.name
    cfg = ExportConfig(
        source=source,
        out=out or str(Path("exports") / name),
        fp16=fp16,
        batch_sizes=sizes,
        opset=opset,
        tensorrt=tensorrt,
        triton=triton,
        force=force,
        parity_seeds=parity_seeds,
        drift_images=drift_images,
        drift_max_ratio=drift_max_ratio,
        drift_extractor=drift_extractor,
    )
    from projgan.export.pipeline import export as run_export

    ok = run_export(cfg)
    if not ok:
        raise typer.Exit(1)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  pipeline serve exports/dogs                       # fastest backend that passed parity\n\n"
        "  pipeline serve runs/dogs --backend torch --port 8080\n\n"
        "  curl -X POST localhost:8000/v1/generate -H 'content-type: application/json' "
        "-d '{\"seeds\": [1, 2, 3], \"format\": \"zip\"}' -o images.zip"
    )
)
def serve(
    source: str = typer.Argument(..., help="Export directory, run directory or generator/ artifact."),
    backend: str = typer.Option("auto", help="auto | torch | onnxruntime | tensorrt."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    precision: str = typer.Option("auto", help="Torch backend precision: auto | fp32 | bf16 | fp16."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 exposes the server)."),
    port: int = typer.Option(8000, help="Port for the API and the UI."),
    max_batch: int = typer.Option(32, help="Largest batch the dynamic batcher forms."),
    max_delay_ms: float = typer.Option(5.0, help="Longest wait for more requests before running a batch."),
    queue_size: int = typer.Option(256, help="Images that may wait; beyond that requests get 503."),
    max_images: int = typer.Option(64, help="Images per request."),
    api_key: str = typer.Option("", envvar="PROJGAN_API_KEY", help="Require this key (X-API-Key header)."),
    force: bool = typer.Option(False, "--force", help="Serve an export that failed its parity check."),
    ui: bool = typer.Option(True, "--ui/--no-ui", help="Mount the Gradio demo at /ui."),
):
    """Serve generation over HTTP (dynamically batched) with a Gradio demo."""
    from projgan.config import ServeConfig

    cfg = ServeConfig(
        source=source,
        backend=backend,
        device=device,
        precision=precision,
        host=host,
        port=port,
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        queue_size=queue_size,
        max_images=max_images,
        api_key=api_key,
        force=force,
        ui=ui,
    )
    from projgan.serve.app import run as run_server

    run_server(cfg)


@app.command(
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
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
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
        metrics=_metrics(metrics),
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


@app.command(
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
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    warmup: int = typer.Option(3, help="Warm-up iterations (training steps) per point."),
    repeats: int | None = typer.Option(
        None, "--repeats", "--steps", help="Timed iterations per point \\[default: 20; 10 training steps with --train]."
    ),
    threads: int = typer.Option(0, help="torch CPU threads \\[default: torch's choice].", show_default=False),
    out: str = typer.Option("", help="JSON output (inference: a PNG plot is written beside it)."),
    train_mode: bool = typer.Option(False, "--train", help="Measure training seconds per kimg instead."),
    precisions: str = typer.Option(
        "", help="Precisions to compare: fp32, bf16, fp16, auto \\[default: the run's].", rich_help_panel=_TRAIN_PANEL
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
    grid = {"precisions": precisions, "channels_last": channels_last, "compile": compile}
    if train_mode:
        from projgan.train.step_bench import bench as run_train_bench
        from projgan.train.step_bench import config_for

        cfg = config_for(source, device, **{k: v for k, v in overrides.items() if v is not None})
        run_train_bench(cfg, precisions=_choices(precisions, "--precisions", ("auto", "fp32", "bf16", "fp16")),
                        channels_last=_onoff(channels_last, "--channels-last"), compile=_onoff(compile, "--compile"),
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
        batch_sizes=_ints(batch_sizes, "--batch-sizes"),
        device=device,
        warmup=warmup,
        repeats=20 if repeats is None else repeats,
        out=out,
        threads=threads,
    )
    from projgan.evaluation.bench import bench as run_bench

    run_bench(cfg, generator=synthetic)


def _choices(text: str, name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    vals = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in vals if v not in allowed]
    if bad:
        raise UserError(f"{name}: unknown value {bad[0]!r}", f"choose from {', '.join(allowed)}")
    return vals


def _onoff(text: str, name: str) -> tuple[bool, ...]:
    return tuple(v == "on" for v in _choices(text, name, ("on", "off")))


@app.command(
    epilog=(
        "Examples:\n\n"
        "  pipeline quickstart                 # generate data, train, export, then serve on 127.0.0.1:8000\n\n"
        "  pipeline quickstart --no-serve      # stop after the export (CI, scripts)\n\n"
        "  pipeline quickstart --data ./pics   # the same recipe on your folder (32 px, a few minutes)"
    )
)
def quickstart(
    out: str = typer.Option("runs/quickstart", help="Run directory."),
    data: str = typer.Option("", help="Your folder or .zip of images \\[default: a built-in procedural dataset]."),
    minutes: float = typer.Option(4.25, help="Training time budget in minutes (the whole quickstart takes ~5)."),
    serve_after: bool = typer.Option(True, "--serve/--no-serve", help="Serve the result when done."),
    port: int = typer.Option(8000, help="Port for serving."),
):
    """Whole pipeline in minutes on built-in procedural data (or yours): train, export, evaluate, serve."""
    from projgan.quickstart import quickstart as run_quickstart

    run_quickstart(out=out, minutes=minutes, serve=serve_after, port=port, data=data or None)


HELP_WIDTH_PIPED = 160  # columns for help sent to a pipe or file: every default fits whole


def _wide_help_when_piped() -> None:
    """Rich falls back to 80 columns when stdout is not a terminal, which cuts defaults short
    (``tf_efficientnet_li…``) in `--help | less`, logs and docs. Widen it unless the user chose a width
    (COLUMNS, or Typer's TERMINAL_WIDTH)."""
    import os

    import typer.rich_utils

    if not sys.stdout.isatty() and not (os.environ.get("COLUMNS") or os.environ.get("TERMINAL_WIDTH")):
        typer.rich_utils.MAX_WIDTH = HELP_WIDTH_PIPED


def main() -> None:
    _wide_help_when_piped()
    try:
        app()
    except UserError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        if e.hint:
            err.print(f"[dim]hint:[/] {e.hint}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
