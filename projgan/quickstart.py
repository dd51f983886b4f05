"""`pipeline quickstart`: the whole pipeline in a few minutes, on data the project makes itself or yours.

A composition root like ``cli``: it imports the stages lazily and calls each one's single entry
point, so what it shows is exactly what the separate commands do.

The recipes (``RECIPES``, one per discriminator) are chosen by measurement for 2 CPU cores and five minutes: see
``benchmarks/convergence/`` for the comparison of discriminators it was picked from.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from projgan.errors import UserError

console = Console()

BUILTIN_LAW = "discs"
BUILTIN_IMAGES = 1000
# What the quickstart trains, by discriminator, and why in one line (printed at the start). Both were chosen
# by measurement for 2 CPU cores and five minutes (benchmarks/convergence/).
RECIPES = {
    "projected": dict(resolution=32, ngf=8, batch=32, discriminator="projected", backbone_weights="pretrained",
                      backbone_resolution=64, augment="translation", g_lr=1e-3),
    "dcgan": dict(resolution=32, ngf=8, batch=32, discriminator="dcgan", d_width=32, augment="translation", g_lr=1e-3,
                  backbone_weights="none"),
}
RECIPE_WHY = {
    "projected": "32 px, ngf 8, batch 32, the paper's projected D on ImageNet-pretrained EfficientNet-Lite0 features "
                 "(backbone input 64 px), DiffAugment translation, G lr 1e-3 / D lr 2e-4",
    "dcgan": "32 px, ngf 8, batch 32, a DCGAN discriminator (width 32) on pixels, DiffAugment translation, "
             "G lr 1e-3 / D lr 2e-4",
}
DEFAULT_DISCRIMINATOR = "projected"


def _fid_extractor():
    """clean-fid's Inception where it is available, else the offline random-feature proxy (said)."""
    from projgan.evaluation.features import load_extractor, proxy_extractor

    try:
        return load_extractor("inception"), "FID"
    except UserError:
        console.print("[yellow]note:[/] clean-fid's Inception weights are not available offline; FID uses a fixed "
                      "random-feature proxy (not comparable with published FIDs; see --inception-weights).")
        return proxy_extractor(), "FID (random-feature proxy)"


def quickstart(out: str = "runs/quickstart", minutes: float = 4.25, serve: bool = True, port: int = 8000,
               data: str | None = None, discriminator: str = DEFAULT_DISCRIMINATOR) -> Path:
    from projgan.config import EvalConfig, ExportConfig, GeneratorConfig, ServeConfig, TrainConfig
    from projgan.evaluation.laws import make_law_dataset, read_law

    if discriminator not in RECIPES:
        raise UserError(f"unknown --discriminator {discriminator!r}", f"choose one of {', '.join(RECIPES)}")
    recipe = dict(RECIPES[discriminator])
    t0 = time.time()
    run = Path(out)
    export_dir = Path("exports") / run.name

    console.print(Rule("1/5  dataset"))
    if data is None:
        folder = run.parent / f"{run.name}-data"
        if read_law(folder) != BUILTIN_LAW:
            make_law_dataset(folder, BUILTIN_LAW, n=BUILTIN_IMAGES, resolution=recipe["resolution"], seed=0)
        data = str(folder)
        console.print(f"[green]✓[/] {BUILTIN_IMAGES} procedural {recipe['resolution']} px images of the "
                      f"'{BUILTIN_LAW}' law (one coloured disc on a plain dark background) in {data}")
    elif not Path(data).exists():
        raise UserError(f"--data {data} does not exist", "pass a folder or .zip of images")
    law = read_law(data)
    console.print(f"recipe: {RECIPE_WHY[discriminator]} (pipeline quickstart --discriminator "
                  f"{' | '.join(RECIPES)}; measured in benchmarks/convergence/)")

    console.print(Rule("2/5  train"))
    extractor, fid_name = (None, "") if law else _fid_extractor()
    cfg = TrainConfig(
        data=str(data), out=str(run),
        generator=GeneratorConfig(resolution=recipe.pop("resolution"), ngf=recipe.pop("ngf")), **recipe,
        kimg=1000, max_minutes=minutes,
        tick_kimg=2, snapshot_ticks=5, metrics=("law",) if law else ("fid",), fid_every=4,
        fid_images=512, sample_seeds=64,
    )
    from projgan.train.loop import train

    train(cfg, feature_extractor=extractor)

    console.print(Rule("3/5  export"))
    from projgan.export.pipeline import export

    ok = export(ExportConfig(source=str(run), out=str(export_dir), fp16=True, force=True, batch_sizes=(1, 8, 32)))
    if not ok:
        raise UserError("the export failed its parity check", f"see the table above and {export_dir}/export.json")

    console.print(Rule("4/5  evaluate the exported model"))
    from projgan.evaluation.evaluate import evaluate

    metrics = ("law",) if law else ("fid",)
    row = evaluate(EvalConfig(source=str(export_dir), data=str(data), num_images=512, metrics=metrics,
                              out=str(run / "evaluation.jsonl")), extractor=extractor, progress=False)[0]
    if law:
        verdict = "[green]recognisable[/]" if row["law_valid"] >= 0.5 else "[yellow]not yet recognisable[/]"
        console.print(f"law '{law}': {row['law_valid']:.0%} of 512 samples are valid objects of the law ({verdict}); "
                      + (f"parameter distance {row['law_distance']:.3f}, spread {row['law_spread']:.2f}"
                         if row.get("law_distance") is not None else "too few valid samples to compare parameters"))
    else:
        console.print(f"{fid_name}: {row['fid']:.2f} on 512 samples (no known law for {data}: no law score)")
    from projgan.evaluation.plots import plot_run

    summary = plot_run(run, run / "summary.png")
    console.print(f"[green]✓[/] whole pipeline in {time.time() - t0:.0f} s: run {run} (samples and curve in "
                  f"{summary}), export {export_dir}")

    if serve:
        console.print(Rule("5/5  serve"))
        console.print(f"open http://127.0.0.1:{port}/ui  (API: http://127.0.0.1:{port}/docs; Ctrl-C stops)")
        from projgan.serve.app import run as run_server

        run_server(ServeConfig(source=str(export_dir), port=port, max_batch=32))
    return run
