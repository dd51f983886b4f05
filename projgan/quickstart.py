"""`pipeline quickstart`: the whole pipeline in a few minutes on data the project makes itself.

A composition root like ``cli``: it imports the stages lazily and calls each one's single entry
point, so what it shows is exactly what the separate commands do.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from projgan.errors import UserError

console = Console()


def proxy_extractor():
    """A fixed, seeded random conv net used for FID when clean-fid's Inception weights are absent.

    Random features still separate distributions (the FID curve falls as samples improve), but the
    numbers are not comparable with published FIDs; the quickstart says so when it uses them.
    """
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(1234)
    net = nn.Sequential(
        nn.Conv2d(3, 32, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(32, 64, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (2.0 / max(p[0].numel(), 1)) ** 0.5)
    net.eval().requires_grad_(False)

    def extract(x):  # float 0..255 [B,3,H,W] -> [B,512]
        with torch.no_grad():
            x = torch.nn.functional.interpolate(x.float() / 127.5 - 1, size=(64, 64), mode="bilinear", antialias=True)
            return net(x)

    extract.identity = "quickstart-random-proxy-v1"  # stable key for the reference-statistics cache
    return extract


def quickstart(out: str = "runs/quickstart", minutes: float = 2.5, serve: bool = True, port: int = 8000) -> Path:
    from projgan.config import ExportConfig, GeneratorConfig, ServeConfig, TrainConfig

    t0 = time.time()
    run = Path(out)
    data = run.parent / f"{run.name}-data"
    export_dir = Path("exports") / run.name

    console.print(Rule("1/4  dataset"))
    from projgan.train.shapes import make_shapes_dataset

    if not data.exists() or not any(data.iterdir()):
        make_shapes_dataset(data, n=400, resolution=64, seed=0)
    console.print(f"[green]✓[/] {sum(1 for _ in data.glob('*.png'))} procedural 64 px images in {data}")

    console.print(Rule("2/4  train"))
    extractor = None
    try:
        from projgan.evaluation.metrics import load_extractor

        load_extractor("")
    except UserError:
        extractor = proxy_extractor()
        console.print(
            "[yellow]note:[/] clean-fid's Inception weights are not available offline; the FID curve uses a fixed "
            "random-feature proxy (not comparable with published FIDs; see --inception-weights)."
        )
    weights = "pretrained"
    from projgan.train import features

    try:
        features.resolve_backbone_weights("tf_efficientnet_lite0", "pretrained")
    except UserError:
        weights = "none"
        console.print(
            "[yellow]note:[/] pretrained tf_efficientnet_lite0 weights are not available offline: the discriminator "
            "uses a random-init backbone (much slower convergence). Pass --backbone-weights PATH to pipeline train."
        )
    cfg = TrainConfig(
        data=str(data),
        out=str(run),
        generator=GeneratorConfig(resolution=64, ngf=32),
        batch=16,
        kimg=3,
        max_minutes=minutes,
        backbone_weights=weights,
        backbone_resolution=128,
        tick_kimg=0.1,
        snapshot_ticks=3,
        fid_every=0.1,
        fid_images=256,
        sample_seeds=36,
    )
    from projgan.train.loop import train

    train(cfg, feature_extractor=extractor)

    console.print(Rule("3/4  export"))
    from projgan.export.pipeline import export

    ok = export(ExportConfig(source=str(run), out=str(export_dir), fp16=True, force=True, batch_sizes=(1, 8, 32)))
    if not ok:
        raise UserError("the export failed its parity check", f"see the table above and {export_dir}/export.json")
    console.print(f"[green]✓[/] whole pipeline in {time.time() - t0:.0f} s: run {run}, export {export_dir}")

    if serve:
        console.print(Rule("4/4  serve"))
        console.print(f"open http://127.0.0.1:{port}/ui  (API: http://127.0.0.1:{port}/docs; Ctrl-C stops)")
        from projgan.serve.app import run as run_server

        run_server(ServeConfig(source=str(export_dir), port=port, max_batch=32))
    return run
