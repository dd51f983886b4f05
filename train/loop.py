"""`pipeline train`: one readable loop from a folder of images to a run directory.

Rerunning the same command resumes from ``training-state.pt`` (``--kimg`` is the total budget).
A tick (``tick_kimg``) appends one metrics row; a snapshot (every ``snapshot_ticks`` ticks, with
every FID record, at the end and on SIGINT/SIGTERM) writes the EMA generator, a sample grid and
the resume state. Only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from projgan import artifacts
from projgan.config import TrainConfig
from projgan.errors import UserError
from projgan.train import dist, samples, step
from projgan.train.backbone_weights import describe_weights, resolve_backbone_weights
from projgan.train.dataset import ImageDataset, check_resolution, conditional_classes, load_images, scan_classes
from projgan.train.features import check_backbone_weights

console = Console()
# Options that change the networks or the optimiser state: a resumed run must keep them.
ARCH_KEYS = ("generator", "discriminator", "d_width", "backbone", "projection", "num_discs", "optimizer")
LAW_IMAGES = 256  # samples per law-score record (fixed seeds 0..255)


def train(cfg: TrainConfig, feature_extractor=None) -> Path:
    """Train (or resume) into ``cfg.out``; returns the run directory."""
    rt = dist.init(cfg.device)
    try:
        return _Run(cfg, rt, feature_extractor).run()
    finally:
        dist.shutdown(rt)


def _ensure_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{time.time_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to run directory {out}: {e.strerror or e}", "choose another --out") from None


class _Run:
    def __init__(self, cfg: TrainConfig, rt: dist.Runtime, feature_extractor):
        self.cfg, self.rt, self.extractor = cfg, rt, feature_extractor
        self.out = Path(cfg.out)
        self.stop_reason = ""  # agreed by every rank
        self.signal_name = ""  # SIGINT/SIGTERM received by this process
        # best_score: FID when it is measured, else 1 - law valid fraction (lower is better either way)
        self.cur_nimg, self.cur_tick, self.wall0, self.best_score = 0, 0, 0.0, math.inf
        self.tracker = None
        self.law = None  # the procedural law of the data, when it has one (law.json)
        self.backbone_info: dict | None = None

    def log(self, msg: str) -> None:
        if self.rt.main:
            console.print(msg, highlight=False, soft_wrap=True)

    # ------------------------------------------------------------ setup

    def _read_resume_state(self) -> dict | None:
        path = self.out / artifacts.TRAINING_STATE
        if not path.exists():
            return None
        try:
            prev = json.loads((self.out / artifacts.TRAIN_CONFIG).read_text())
        except (OSError, json.JSONDecodeError):
            prev = None  # no (readable) config: the state's own shapes are checked when it loads
        if isinstance(prev, dict):
            new = json.loads(json.dumps(self.cfg.to_dict(), default=list))
            prev = json.loads(json.dumps(TrainConfig.from_dict(prev).to_dict(), default=list))  # defaults filled in
            changed = [k for k in ARCH_KEYS if prev.get(k) != new.get(k)]
            if step.backbone_resolution(TrainConfig.from_dict(prev)) != step.backbone_resolution(self.cfg):
                changed.append("backbone_resolution")
            if changed:
                raise UserError(
                    f"{self.out} holds a run with different {', '.join(changed)}",
                    "use the same options to resume, or a new --out to start another run",
                )
        # On the CPU: RNG states must stay CPU tensors; load_state_dict copies weights to the device.
        return artifacts.load_training_state(path, map_location="cpu")

    def setup(self) -> bool:
        if self.cfg.cond:  # from the file names alone, before the resume check compares generator configs
            self.cfg = self.cfg.with_classes(scan_classes(self.cfg.data))
        cfg, rt = self.cfg, self.rt
        if rt.main:
            _ensure_writable(self.out)
        state = self._read_resume_state()
        weights = None
        projected = cfg.discriminator == "projected"
        if state is None and rt.main and projected:
            weights = resolve_backbone_weights(cfg.backbone, cfg.backbone_weights)  # fails fast offline
            if weights is not None:
                check_backbone_weights(cfg.backbone, weights)  # wrong keys: refused before the data is read
        if "law" in cfg.metrics:
            from projgan.evaluation.laws import LAW_FILE, read_law

            self.law = read_law(cfg.data)
            if self.law is None:
                raise UserError(f"--metrics law: {cfg.data} has no {LAW_FILE} naming a known law",
                                "use it with a procedural dataset (pipeline quickstart makes one), or drop 'law'")
        if any(m != "law" for m in cfg.metrics) and rt.main:  # every extractor's weights, before the data is read
            from projgan.evaluation.fid import load_metric_extractors

            files = {"inception": cfg.inception_weights, "dinov2": cfg.dinov2_weights,
                     "auto": cfg.dinov2_weights or cfg.inception_weights}
            self.extractor, self.extractors = load_metric_extractors(cfg.metrics, self.extractor, files,
                                                                     cfg.extractor, device=str(rt.device))
        if rt.main:
            images, summary = load_images(cfg.data, cfg.generator.resolution, cache_dir=self.out)
            self.log(summary.line())
            check_resolution(summary, cfg.generator.resolution)
        else:  # every rank reads the data itself (the cache rank 0 may be writing is not waited for)
            images, summary = load_images(cfg.data, cfg.generator.resolution, progress=False)
            if state is None and projected:
                weights = resolve_backbone_weights(cfg.backbone, cfg.backbone_weights)
        labels = None
        if cfg.cond:
            if conditional_classes(summary) != cfg.generator.class_names:  # a class folder held no readable image
                raise UserError(f"--cond: readable images were found for {summary.classes} only, but the folders "
                                f"are {list(cfg.generator.class_names)}", "remove empty or unreadable class folders")
            labels = np.asarray(summary.labels, dtype=np.int64)
            self.log(summary.classes_line() + f"; {cfg.class_sampling} class sampling")
        dist.wait_for_main(rt)  # before the first collective (the weights broadcast in step.build)
        self.data = ImageDataset(images, rt.device, xflip=cfg.xflip, labels=labels,
                                 balanced=cfg.class_sampling == "balanced")
        self.t = step.build(cfg, rt, weights)
        if projected:  # where the backbone's weights came from: recorded with the run, said at start
            self.backbone_info = (state or {}).get("backbone") or describe_weights(cfg.backbone_weights, weights)
            self.backbone_info = {"name": cfg.backbone, **self.backbone_info}
        if state is not None:
            step.load_state_dict(self.t, state)
            c = state["counters"]
            self.cur_nimg, self.cur_tick, self.wall0 = int(c["cur_nimg"]), int(c["cur_tick"]), float(c["wall"])
            best = float(c.get("best_score", c.get("best_fid", -1.0)))
            self.best_score = best if best >= 0 else math.inf
            if rt.main:
                step.set_rng_state(state["rng"], rt.device)
            else:
                torch.manual_seed(hash((cfg.seed, rt.rank, self.cur_nimg)) % 2**31)
        else:
            torch.manual_seed(cfg.seed * 7919 + rt.rank)
            np.random.seed((cfg.seed * 7919 + rt.rank) % 2**32)
        total = int(round(cfg.kimg * 1000))
        if self.cur_nimg >= total:  # before any file is touched
            self.log(f"{self.out} is already trained to {self.cur_nimg / 1000:g} kimg (budget {cfg.kimg:g}): "
                     "nothing to do; raise --kimg to continue")
            return False
        if rt.main:
            self._prepare_files(images, resumed=state is not None)
        dist.wait_for_main(rt)
        g_params = sum(p.numel() for p in self.t.G.parameters())
        d_params = sum(p.numel() for p in self.t.D.parameters() if p.requires_grad)
        what = (f"projected D ({cfg.projection}, {cfg.num_discs} scales) on {cfg.backbone} at "
                f"{step.backbone_resolution(cfg)} px" if projected else f"{cfg.discriminator} D (width {cfg.d_width})")
        self.log(
            f"{'resuming at ' + format(self.cur_nimg / 1000, 'g') + ' kimg' if state else 'starting'}: "
            f"{rt.device} x{rt.world}, {self.t.precision}, G {g_params / 1e6:.2f} M, D {d_params / 1e6:.2f} M params, "
            f"{what}, {cfg.optimizer} lr {cfg.lr:g}{f' (G {cfg.g_lr:g})' if cfg.g_lr else ''} {cfg.lr_schedule}, "
            f"batch {cfg.batch}"
        )
        if self.backbone_info and self.backbone_info["weights"] == "random":
            self.log(f"[bold yellow]WARNING: the discriminator's backbone {cfg.backbone} has RANDOM weights "
                     "(--backbone-weights none).[/] Projected GAN's speed and quality come from pretrained "
                     "features: expect slower convergence and worse FID. Pass --backbone-weights pretrained|PATH "
                     "for real training.")
        return True

    def _prepare_files(self, images: np.ndarray, resumed: bool) -> None:
        artifacts.atomic_write_json(self.out / artifacts.TRAIN_CONFIG,
                                    {**self.cfg.to_dict(), "backbone_info": self.backbone_info, "law": self.law})
        metrics = self.out / artifacts.METRICS
        rows = artifacts.read_jsonl(metrics)
        keep = [r for r in rows if resumed and r.get("kimg", 0) * 1000 <= self.cur_nimg + 1e-6]
        if len(keep) != len(rows) or (rows and metrics.read_text().count("\n") != len(rows)):
            artifacts.rewrite_jsonl(metrics, keep)  # drop rows newer than the state (and torn lines)
        # A header row at every start: what this stretch of rows was trained with.
        artifacts.append_jsonl(metrics, {
            "kind": "header", "kimg": round(self.cur_nimg / 1000, 3), "resumed": resumed,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "discriminator": self.cfg.discriminator,
            "backbone": self.backbone_info, "optimizer": self.cfg.optimizer, "lr_schedule": self.cfg.lr_schedule,
            "law": self.law, "world": self.rt.world, "device": str(self.rt.device), "cuda": self.rt.cuda_settings,
        })
        if self.cfg.metrics:
            self._plot_fid()
        reals = self.out / artifacts.SAMPLES_DIR / "reals.png"
        if not reals.exists():
            pick = np.random.default_rng(0).permutation(len(images))[: self.cfg.sample_seeds]
            samples.write_png(reals, samples.image_grid(images[np.sort(pick)]))

    # ------------------------------------------------------------ outputs

    def generate(self, seeds) -> np.ndarray:
        """uint8 NHWC images of the EMA generator for the given seeds (what FID and the law score see)."""
        return samples.generate(self.t.G_ema, seeds, self.rt.device)

    def meta(self, fid: float | None = None) -> dict:
        return {"kimg": round(self.cur_nimg / 1000, 3), "fid": fid, "dataset": Path(self.cfg.data.rstrip("/")).name,
                "run": self.out.name, "discriminator": self.cfg.discriminator, "backbone": self.backbone_info,
                "law": self.law, "law_valid": getattr(self, "last_law_valid", None)}

    def snapshot(self) -> None:
        dist.assert_in_sync(self.t.G, self.rt, "G")
        dist.assert_in_sync(self.t.D, self.rt, "D")
        if not self.rt.main:
            return
        kimg = self.cur_nimg / 1000
        grid = samples.sample_grid(self.t.G_ema, self.cfg.sample_seeds, self.rt.device)
        samples.write_png(self.out / artifacts.SAMPLES_DIR / f"kimg{kimg:09.3f}.png", grid)
        fid = self.last_fid
        artifacts.save_generator(self.out / artifacts.GENERATOR_DIR, self.t.G_ema, self.meta(fid))
        state = step.state_dict(self.t)
        state["rng"] = step.rng_state(self.rt.device)
        if self.backbone_info:
            state["backbone"] = {k: v for k, v in self.backbone_info.items() if k != "name"}
        state["counters"] = {
            "cur_nimg": self.cur_nimg, "cur_tick": self.cur_tick, "wall": self.wall(),
            "best_score": -1.0 if math.isinf(self.best_score) else self.best_score,
        }
        artifacts.save_training_state(self.out / artifacts.TRAINING_STATE, state)

    def evaluate(self) -> None:
        """FID/KID, FD/KD on other extractors, precision/recall (and the law score on procedural data) of EMA
        samples; keeps generator-best/ at the best FID (else the first FD, else the highest valid fraction)."""
        if not self.rt.main:
            return
        t0 = time.time()
        self.t.G_ema.eval()
        values: dict[str, float] = {}
        fid_metrics = tuple(m for m in self.cfg.metrics if m != "law")
        if fid_metrics:
            if self.tracker is None:
                from projgan.evaluation.fid import MetricTracker

                self.tracker = MetricTracker(
                    fid_metrics, self.data.numpy_nhwc(), cache_dir=self.out, num_images=self.cfg.fid_images,
                    extractor=self.extractor, device=str(self.rt.device), extractors=getattr(self, "extractors", None),
                )
            progress, done = self._fid_progress()
            try:
                values.update(self.tracker(self.generate, progress=progress))
            finally:
                done()
        if self.law:
            from projgan.evaluation.law_score import law_score

            s = law_score(self.generate(range(LAW_IMAGES)), self.law)
            values.update(law_valid=s["valid"], law_distance=s["param_distance"], law_spread=s["spread"])
            self.last_law_valid = s["valid"]
        row = {"kind": "metric", "kimg": round(self.cur_nimg / 1000, 3), "wall": round(self.wall(), 2),
               **{k: (None if v is None else float(v)) for k, v in values.items()},
               "num_images": self.cfg.fid_images if fid_metrics else LAW_IMAGES, "seconds": round(time.time() - t0, 2),
               **({"extractor": self.tracker.identity} if fid_metrics else {})}
        artifacts.append_jsonl(self.out / artifacts.METRICS, row)
        self._plot_fid()
        fid = values.get("fid")
        self.last_fid = fid
        fd_key = "fid" if fid is not None else next((m for m in fid_metrics if m.startswith("fd_")), None)
        score = values[fd_key] if fd_key else 1.0 - values.get("law_valid", 0.0)
        if score < self.best_score:
            self.best_score = score
            artifacts.save_generator(self.out / artifacts.BEST_GENERATOR_DIR, self.t.G_ema, self.meta(fid))
        shown = ", ".join(f"{k} {float(v):.4g}" for k, v in values.items() if v is not None)
        best = (f"best {'FID' if fd_key == 'fid' else fd_key} {self.best_score:.3f}" if fd_key
                else f"best valid {1 - self.best_score:.3f}")
        self.log(f"  kimg {row['kimg']:g}: {shown} ({best}, {row['seconds']:.0f} s)")

    def _fid_progress(self):
        """A second bar under the training bar while FID features are computed; (callback, cleanup)."""
        bar = getattr(self, "bar", None)
        state = {"stage": None, "task": None}

        def progress(stage: str, n: int, total: int) -> None:
            if stage != state["stage"]:
                done()
                state["stage"], state["task"] = stage, bar.add_task(stage, total=total / 1000, info="")
            bar.advance(state["task"], n / 1000)

        def done() -> None:
            if state["task"] is not None:
                bar.remove_task(state["task"])
                state["task"] = None

        return (progress if bar is not None else None), done

    def _plot_fid(self) -> None:
        rows = artifacts.read_jsonl(self.out / artifacts.METRICS)
        extra = any(k.startswith(("fd_", "kd_", "pr_")) for r in rows for k in r)
        if extra:  # FD/KD on other extractors or precision/recall: one panel per family in fid.png
            from projgan.evaluation.plots import plot_metrics

            plot_metrics([r for r in rows if r.get("kind") == "metric"], self.out / artifacts.FID_PLOT)
        elif any("fid" in r for r in rows):
            from projgan.evaluation.plots import plot_fid

            plot_fid([r for r in rows if "fid" in r], self.out / artifacts.FID_PLOT)
        if any("law_valid" in r for r in rows):
            from projgan.evaluation.plots import plot_law

            plot_law([r for r in rows if "law_valid" in r], self.out / artifacts.LAW_PLOT, title=f"law: {self.law}")

    def wall(self) -> float:
        return self.wall0 + time.time() - self.t_start

    # ------------------------------------------------------------ loop

    def _on_signal(self, signum, frame):
        if self.signal_name:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        self.signal_name = signal.Signals(signum).name  # this process's; the ranks agree on stopping at a tick
        if self.rt.main:
            console.print(f"[yellow]{self.signal_name}: finishing this tick and writing a snapshot...[/]")

    def run(self) -> Path:
        if not self.setup():
            return self.out
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                handlers[s] = signal.signal(s, self._on_signal)
        try:
            self._loop()
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
        return self.out

    def _loop(self) -> None:
        cfg, t = self.cfg, self.t
        total = int(round(cfg.kimg * 1000))
        tick_nimg = max(1, int(round(cfg.tick_kimg * 1000)))
        fid_nimg = max(1, int(round(cfg.fid_every * 1000)))
        self.last_fid = None
        self.t_start = time.time()
        tick_start_nimg, tick_start_time = self.cur_nimg, self.t_start
        # With a wall-clock budget (--max-minutes) the bar counts minutes (kimg go to the info column).
        timed = cfg.max_minutes > 0
        unit = "min" if timed else "kimg"
        columns = [
            TextColumn("[bold]{task.description}[/]"), BarColumn(), TextColumn("{task.completed:.2f}/{task.total:g} " + unit),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        ]
        with Progress(*columns, console=console, disable=not self.rt.main) as bar:
            self.bar = bar
            task = bar.add_task("train", total=cfg.max_minutes if timed else cfg.kimg,
                                completed=0 if timed else self.cur_nimg / 1000, info="")
            while True:
                reals, c = self.data.sample_labeled(t.batch_per_rank, self.rt.device)
                self.cur_nimg = step.train_step(t, reals, self.cur_nimg, c if cfg.cond else None)
                bar.update(task, completed=(time.time() - self.t_start) / 60 if timed else self.cur_nimg / 1000)
                done = self.cur_nimg >= total
                timeout = cfg.max_minutes > 0 and time.time() - self.t_start > cfg.max_minutes * 60
                tick_due = done or self.cur_nimg >= tick_start_nimg + tick_nimg
                if self.rt.world == 1 or tick_due:  # a collective syncs the host: several ranks agree at ticks
                    local = self.signal_name or ("time limit" if timeout else "")
                    if dist.any_rank(bool(local), self.rt) and not self.stop_reason:
                        self.stop_reason = local or "stop on another rank"
                if not (tick_due or self.stop_reason):
                    continue
                # ---- tick: one metrics row
                self.cur_tick += 1
                now = time.time()
                kimg_done = (self.cur_nimg - tick_start_nimg) / 1000
                row = {"kind": "tick", "tick": self.cur_tick, "kimg": round(self.cur_nimg / 1000, 3),
                       "wall": round(self.wall(), 2), "sec_per_kimg": round((now - tick_start_time) / kimg_done, 3),
                       **step.pop_stats(t)}
                if self.rt.device.type == "cuda":
                    row["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(self.rt.device) / 2**30, 2)
                if self.rt.main:
                    artifacts.append_jsonl(self.out / artifacts.METRICS, row)
                    info = (f"{row['kimg']:g} kimg  " if timed else "") + f"{row['sec_per_kimg']:.1f} s/kimg  D {row.get('loss_D', math.nan):.3f}  G {row.get('loss_G', math.nan):.3f}"
                    bar.update(task, info=info)
                    if not console.is_terminal:
                        console.print(f"tick {self.cur_tick}  kimg {row['kimg']:g}  {info}", highlight=False)
                interrupted = self.stop_reason and self.stop_reason != "time limit"
                crossed = self.cur_nimg // fid_nimg > tick_start_nimg // fid_nimg
                fid_due = bool(cfg.metrics) and not interrupted and (crossed or done or bool(self.stop_reason))
                if fid_due:
                    self.evaluate()  # rank 0 only: the others wait on the long-timeout group
                    dist.wait_for_main(self.rt)
                if fid_due or done or self.stop_reason or self.cur_tick % max(1, cfg.snapshot_ticks) == 0:
                    self.snapshot()
                dist.wait_for_main(self.rt)
                # FID and snapshots do not count towards the next tick's sec/kimg.
                tick_start_nimg, tick_start_time = self.cur_nimg, time.time()
                if done or self.stop_reason:
                    break
        where = self.out / artifacts.GENERATOR_DIR
        if self.stop_reason and self.cur_nimg < total:
            self.log(f"[yellow]stopped at {self.cur_nimg / 1000:g} kimg ({self.stop_reason})[/]; EMA generator in "
                     f"{where}; rerun the same command to continue")
        else:
            self.log(f"[green]done: {self.cur_nimg / 1000:g} kimg[/]; EMA generator in {where}")
