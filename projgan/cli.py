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

from projgan import cli_measure
from projgan import cli_parse as parse
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
    d_batchnorm: str = typer.Option(
        "joint", help="Projected D's BatchNorm: joint (reals and fakes in one batch; keeps colours varied) | "
        "separate (each kind alone, as the paper's code)."
    ),
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
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    seed: int = typer.Option(0, help="Random seed."),
    max_minutes: float = typer.Option(0.0, help="Stop with a snapshot after this many minutes (0: no limit)."),
):
    """Train a Projected FastGAN on a folder or zip of images."""
    from projgan.config import GeneratorConfig, TrainConfig

    b = parse.floats(betas, "--betas")
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
        d_batchnorm=d_batchnorm.strip().lower(),
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
        metrics=parse.metrics(metrics),
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

    sizes = parse.ints(batch_sizes, "--batch-sizes")
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
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N (one GPU of several)."),
    precision: str = typer.Option("auto", help="Torch backend precision: auto | fp32 | bf16 | fp16."),
    torch_mode: str = typer.Option(
        "auto", help="Torch backend: auto (CUDA graphs on a GPU) | eager | graphs | compile; each is self-checked."
    ),
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
        torch_mode=torch_mode.strip().lower(),
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


cli_measure.register(app)  # evaluate, bench


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
    discriminator: str = typer.Option(
        "projected", help="projected (the paper's, on pretrained features) | dcgan (pixels): the recipe to train."
    ),
):
    """Whole pipeline in minutes on built-in procedural data (or yours): train, export, evaluate, serve."""
    from projgan.quickstart import quickstart as run_quickstart

    run_quickstart(out=out, minutes=minutes, serve=serve_after, port=port, data=data or None,
                   discriminator=discriminator.strip().lower())


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
