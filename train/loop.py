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
from projgan.generator import sample_latents, to_uint8
from projgan.train import dist, step
from projgan.train.dataset import ImageDataset, check_resolution, load_images
from projgan.train.features import resolve_backbone_weights

console = Console()
# Options that change the networks: a resumed run must keep them.
ARCH_KEYS = ("generator", "backbone", "projection", "num_discs")


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


def _grid(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> one near-square uint8 HWC grid."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = im
    return grid


def _write_png(path: Path, array: np.ndarray) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    artifacts.atomic_write_bytes(path, buf.getvalue())


def _rng_state(device: torch.device) -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).cpu()
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


class _Run:
    def __init__(self, cfg: TrainConfig, rt: dist.Runtime, feature_extractor):
        self.cfg, self.rt, self.extractor = cfg, rt, feature_extractor
        self.out = Path(cfg.out)
        self.stop_reason = ""
        self.cur_nimg, self.cur_tick, self.wall0, self.best_fid = 0, 0, 0.0, math.inf
        self.tracker = None

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
        cfg, rt = self.cfg, self.rt
        if rt.main:
            _ensure_writable(self.out)
        state = self._read_resume_state()
        weights = None
        if state is None and rt.main:
            weights = resolve_backbone_weights(cfg.backbone, cfg.backbone_weights)  # fails fast offline
        if cfg.metrics and self.extractor is None and rt.main:
            from projgan.evaluation.metrics import load_extractor

            self.extractor = load_extractor(cfg.inception_weights, device=str(rt.device))
        if rt.main:
            images, summary = load_images(cfg.data, cfg.generator.resolution, cache_dir=self.out)
            self.log(summary.line())
            check_resolution(summary, cfg.generator.resolution)
        dist.barrier(rt)
        if not rt.main:  # the cache rank 0 just wrote; weights rank 0 just fetched
            images, _ = load_images(cfg.data, cfg.generator.resolution, cache_dir=self.out, progress=False)
            if state is None:
                weights = resolve_backbone_weights(cfg.backbone, cfg.backbone_weights)
        self.data = ImageDataset(images, rt.device, xflip=cfg.xflip)
        self.t = step.build(cfg, rt, weights)
        if state is not None:
            step.load_state_dict(self.t, state)
            c = state["counters"]
            self.cur_nimg, self.cur_tick, self.wall0 = int(c["cur_nimg"]), int(c["cur_tick"]), float(c["wall"])
            self.best_fid = float(c["best_fid"]) if c["best_fid"] >= 0 else math.inf
            if rt.main:
                _set_rng_state(state["rng"], rt.device)
            else:
                torch.manual_seed(hash((cfg.seed, rt.rank, self.cur_nimg)) % 2**31)
        else:
            torch.manual_seed(cfg.seed * 7919 + rt.rank)
            np.random.seed((cfg.seed * 7919 + rt.rank) % 2**32)
        if rt.main:
            self._prepare_files(images, resumed=state is not None)
        total = int(round(cfg.kimg * 1000))
        if self.cur_nimg >= total:
            self.log(f"{self.out} is already trained to {self.cur_nimg / 1000:g} kimg (budget {cfg.kimg:g}): "
                     "nothing to do; raise --kimg to continue")
            return False
        g_params = sum(p.numel() for p in self.t.G.parameters())
        d_params = sum(p.numel() for p in self.t.D.parameters() if p.requires_grad)
        self.log(
            f"{'resuming at ' + format(self.cur_nimg / 1000, 'g') + ' kimg' if state else 'starting'}: "
            f"{rt.device} x{rt.world}, {self.t.precision}, G {g_params / 1e6:.2f} M, D {d_params / 1e6:.2f} M params, "
            f"backbone {cfg.backbone} at {step.backbone_resolution(cfg)} px, batch {cfg.batch}"
        )
        return True

    def _prepare_files(self, images: np.ndarray, resumed: bool) -> None:
        artifacts.atomic_write_json(self.out / artifacts.TRAIN_CONFIG, self.cfg.to_dict())
        metrics = self.out / artifacts.METRICS
        rows = artifacts.read_jsonl(metrics)
        keep = [r for r in rows if resumed and r.get("kimg", 0) * 1000 <= self.cur_nimg + 1e-6]
        if len(keep) != len(rows) or (rows and metrics.read_text().count("\n") != len(rows)):
            artifacts.rewrite_jsonl(metrics, keep)  # drop rows newer than the state (and torn lines)
        if self.cfg.metrics:
            self._plot_fid()
        reals = self.out / artifacts.SAMPLES_DIR / "reals.png"
        if not reals.exists():
            pick = np.random.default_rng(0).permutation(len(images))[: self.cfg.sample_seeds]
            _write_png(reals, _grid(images[np.sort(pick)]))

    # ------------------------------------------------------------ outputs

    @torch.no_grad()
    def generate(self, seeds) -> np.ndarray:
        """uint8 NHWC images of the EMA generator for the given seeds (what FID and samples see)."""
        G = self.t.G_ema
        out = []
        for chunk in np.array_split(np.asarray(seeds), max(1, math.ceil(len(seeds) / 64))):
            z = torch.from_numpy(sample_latents(chunk, G.cfg.z_dim)).to(self.rt.device)
            out.append(to_uint8(G(z)))
        return np.concatenate(out)

    def meta(self, fid: float | None = None) -> dict:
        return {"kimg": round(self.cur_nimg / 1000, 3), "fid": fid, "dataset": Path(self.cfg.data.rstrip("/")).name,
                "run": self.out.name}

    def snapshot(self) -> None:
        dist.assert_in_sync(self.t.G, self.rt, "G")
        dist.assert_in_sync(self.t.D, self.rt, "D")
        if not self.rt.main:
            return
        kimg = self.cur_nimg / 1000
        seeds = range(self.cfg.sample_seeds)
        _write_png(self.out / artifacts.SAMPLES_DIR / f"kimg{kimg:09.3f}.png", _grid(self.generate(seeds)))
        fid = None if math.isinf(self.best_fid) else self.last_fid
        artifacts.save_generator(self.out / artifacts.GENERATOR_DIR, self.t.G_ema, self.meta(fid))
        state = step.state_dict(self.t)
        state["rng"] = _rng_state(self.rt.device)
        state["counters"] = {
            "cur_nimg": self.cur_nimg, "cur_tick": self.cur_tick, "wall": self.wall(),
            "best_fid": -1.0 if math.isinf(self.best_fid) else self.best_fid,
        }
        artifacts.save_training_state(self.out / artifacts.TRAINING_STATE, state)

    def evaluate(self) -> None:
        """FID/KID of EMA samples vs the training images; keeps generator-best/ at the best FID."""
        if not self.rt.main:
            return
        if self.tracker is None:
            from projgan.evaluation.metrics import MetricTracker

            self.tracker = MetricTracker(
                self.cfg.metrics, self.data.numpy_nhwc(), cache_dir=self.out, num_images=self.cfg.fid_images,
                extractor=self.extractor, device=str(self.rt.device),
            )
        t0 = time.time()
        self.t.G_ema.eval()
        progress, done = self._fid_progress()
        try:
            values = self.tracker(self.generate, progress=progress)
        finally:
            done()
        row = {"kind": "metric", "kimg": round(self.cur_nimg / 1000, 3), "wall": round(self.wall(), 2),
               **{k: float(v) for k, v in values.items()}, "num_images": self.cfg.fid_images,
               "seconds": round(time.time() - t0, 2)}
        artifacts.append_jsonl(self.out / artifacts.METRICS, row)
        self._plot_fid()
        fid = values.get("fid")
        self.last_fid = fid
        if fid is not None and fid < self.best_fid:
            self.best_fid = fid
            artifacts.save_generator(self.out / artifacts.BEST_GENERATOR_DIR, self.t.G_ema, self.meta(fid))
        self.log(f"  kimg {row['kimg']:g}: " + ", ".join(f"{k} {float(v):.3f}" for k, v in values.items())
                 + f" (best FID {self.best_fid:.3f}, {row['seconds']:.0f} s)")

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
        rows = [r for r in artifacts.read_jsonl(self.out / artifacts.METRICS) if "fid" in r]
        if rows:
            from projgan.evaluation.plots import plot_fid

            plot_fid(rows, self.out / artifacts.FID_PLOT)

    def wall(self) -> float:
        return self.wall0 + time.time() - self.t_start

    # ------------------------------------------------------------ loop

    def _on_signal(self, signum, frame):
        if self.stop_reason:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        self.stop_reason = signal.Signals(signum).name
        if self.rt.main:
            console.print(f"[yellow]{self.stop_reason}: finishing this step and writing a snapshot...[/]")

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
        columns = [
            TextColumn("[bold]{task.description}[/]"), BarColumn(), TextColumn("{task.completed:.2f}/{task.total:g} kimg"),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        ]
        with Progress(*columns, console=console, disable=not self.rt.main) as bar:
            self.bar = bar
            task = bar.add_task("train", total=cfg.kimg, completed=self.cur_nimg / 1000, info="")
            while True:
                reals = self.data.sample(t.batch_per_rank, self.rt.device)
                self.cur_nimg = step.train_step(t, reals, self.cur_nimg)
                bar.update(task, completed=self.cur_nimg / 1000)
                done = self.cur_nimg >= total
                timeout = cfg.max_minutes > 0 and time.time() - self.t_start > cfg.max_minutes * 60
                if dist.any_rank(bool(self.stop_reason) or timeout, self.rt) and not self.stop_reason:
                    self.stop_reason = "time limit" if timeout else "stop on another rank"
                if not (done or self.stop_reason or self.cur_nimg >= tick_start_nimg + tick_nimg):
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
                    info = f"{row['sec_per_kimg']:.1f} s/kimg  D {row['loss_D']:.3f}  G {row['loss_G']:.3f}"
                    bar.update(task, info=info)
                    if not console.is_terminal:
                        console.print(f"tick {self.cur_tick}  kimg {row['kimg']:g}  {info}", highlight=False)
                interrupted = self.stop_reason and self.stop_reason != "time limit"
                crossed = self.cur_nimg // fid_nimg > tick_start_nimg // fid_nimg
                fid_due = bool(cfg.metrics) and not interrupted and (crossed or done or bool(self.stop_reason))
                if fid_due:
                    self.evaluate()
                if fid_due or done or self.stop_reason or self.cur_tick % max(1, cfg.snapshot_ticks) == 0:
                    self.snapshot()
                dist.barrier(self.rt)
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
