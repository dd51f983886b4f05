"""Dataclass configs, one per stage, plus the generator's architecture config.

Configs are plain data: the CLI fills them, stages read them, artifacts serialise them with
``asdict``. Validation that needs no heavy imports lives here, so a bad option fails before
anything is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from projgan.errors import UserError

RESOLUTIONS = (32, 64, 128, 256, 512, 1024)
PROJECTIONS = ("none", "ccm", "ccm+csm")
DISCRIMINATORS = ("projected", "fastgan", "dcgan")
D_BATCHNORM = ("joint", "separate")
# What a saved train_config.json without these fields was trained with (fields added later).
SAVED_BEFORE = {"d_batchnorm": "separate", "d_mbstd": 0}
OPTIMIZERS = ("adam", "rmsprop", "sgd", "nesterov")
LR_SCHEDULES = ("constant", "step", "exponential", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TORCH_MODES = ("auto", "eager", "graphs", "compile")  # the torch backend: eager, CUDA graphs per bucket, torch.compile
GENERATORS = ("fastgan", "stylegan2")
CLASS_SAMPLING = ("balanced", "natural")
EXTRACTORS = ("inception", "dinov2", "proxy")  # feature extractors of evaluation/features.py
METRICS = ("fid", "kid", "pr", "law")  # plus fd_<extractor> and kd_<extractor>, e.g. fd_dinov2
METRICS_HINT = ("use fid, kid, pr (precision/recall/density/coverage), fd_<extractor> or kd_<extractor> "
                f"(extractors: {', '.join(EXTRACTORS)}), law (procedural data), comma-separated")


DEVICE_HINT = "choose auto, cpu, cuda or cuda:N (N: the GPU's index)"


def parse_device(device: str, option: str = "--device") -> tuple[str, int | None]:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> (kind, index or None); anything else is a UserError.

    Pure string parsing (no CUDA query), so every config validates ``--device`` before torch loads;
    ``projgan.hardware.resolve_device`` then checks that the GPU exists.
    """
    text = str(device).strip().lower()
    if text in ("auto", "cpu", "cuda"):
        return text, None
    kind, sep, index = text.partition(":")
    if kind == "cuda" and sep and index.isdigit():
        return "cuda", int(index)
    raise UserError(f"unknown {option} {device!r}", DEVICE_HINT)


def parse_metric(metric: str) -> tuple[str, str] | None:
    """``fid`` -> (fd, ""), ``kid`` -> (kd, ""), ``pr`` -> (pr, ""), ``law`` -> (law, ""), ``fd_dinov2`` ->
    (fd, dinov2): the kind of number and its extractor ("" = the selected one); None if unknown."""
    fixed = {"fid": ("fd", ""), "kid": ("kd", ""), "pr": ("pr", ""), "law": ("law", "")}
    if metric in fixed:
        return fixed[metric]
    kind, _, ext = metric.partition("_")
    return (kind, ext) if kind in ("fd", "kd") and ext in EXTRACTORS else None


def check_metrics(metrics: tuple[str, ...]) -> None:
    bad = [m for m in metrics if parse_metric(m) is None]
    if bad:
        raise UserError(f"unknown metric {bad[0]!r}", METRICS_HINT)


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of the generator: all that is needed to rebuild it.

    ``arch``: ``fastgan`` (FastGAN-lite with skip-layer excitation) or ``stylegan2`` (mapping network,
    modulated convolutions, truncation). ``num_classes`` > 0 makes it class-conditional; ``class_names``
    (same length) are what users and the HTTP API call the classes. Artifacts written before these fields
    existed read as the unconditional FastGAN they are.
    """

    resolution: int = 256
    z_dim: int = 256
    ngf: int = 128  # 128 as in the Projected GAN code; 64 for small GPUs; 16-32 for CPU demos
    channels: int = 3
    arch: str = "fastgan"
    num_classes: int = 0  # 0: unconditional
    class_names: tuple[str, ...] = ()
    w_dim: int = 0  # stylegan2: width of w (0: z_dim)
    mapping_layers: int = 2  # stylegan2: fully connected layers z -> w (2, as the paper's code for small data)

    def __post_init__(self):
        if self.resolution not in RESOLUTIONS:
            raise UserError(
                f"unsupported resolution {self.resolution}",
                f"choose one of {', '.join(map(str, RESOLUTIONS))}",
            )
        if self.ngf < 8 or self.z_dim < 1:
            raise UserError(f"ngf must be >= 8 and z_dim >= 1 (got ngf={self.ngf}, z_dim={self.z_dim})")
        if self.arch not in GENERATORS:
            raise UserError(f"unknown --generator {self.arch!r}", f"choose one of {', '.join(GENERATORS)}")
        if self.num_classes < 0 or (self.class_names and len(self.class_names) != self.num_classes):
            raise UserError(f"{len(self.class_names)} class names for num_classes={self.num_classes}")
        if len(set(self.class_names)) != len(self.class_names):
            raise UserError(f"class names must be distinct (got {list(self.class_names)})")
        if self.w_dim < 0 or self.mapping_layers < 1:
            raise UserError(f"w_dim must be >= 0 and mapping_layers >= 1 (got {self.w_dim}, {self.mapping_layers})")

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def truncation(self) -> bool:
        """Whether the model takes a truncation psi (style models: w = w_avg + psi (w - w_avg))."""
        return self.arch == "stylegan2"

    def names(self) -> tuple[str, ...]:
        """Class names, ``class0``... where none were recorded."""
        return self.class_names or tuple(f"class{i}" for i in range(self.num_classes))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeneratorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "class_names" in d:
            d["class_names"] = tuple(d["class_names"])
        return cls(**d)


@dataclass
class TrainConfig:
    """Everything `pipeline train` needs. Saved as ``train_config.json`` in the run directory."""

    data: str = ""
    out: str = ""
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    batch: int = 64
    kimg: float = 2000.0  # total budget in thousands of real images shown to D
    backbone: str = "tf_efficientnet_lite0"
    backbone_weights: str = "pretrained"  # pretrained | none | PATH
    backbone_resolution: int = 0  # 0: 224 when the training resolution is below 224, else the resolution
    projection: str = "ccm+csm"
    num_discs: int = 4
    discriminator: str = "projected"  # projected | fastgan | dcgan (baselines that see pixels)
    d_width: int = 64  # ndf of the fastgan / dcgan discriminators
    # projected D's BatchNorm: reals and fakes in one batch (joint: colours stay varied, measured in
    # benchmarks/convergence/) or each kind alone (separate: the paper's code)
    d_batchnorm: str = "joint"
    d_mbstd: int = 4  # projected D: minibatch-std channel over groups of this many samples (0: off, the paper's)
    cond: bool = False  # class-conditional: classes are the first-level subfolders of --data
    class_sampling: str = "balanced"  # balanced (each class equally often) | natural (each image equally often)
    optimizer: str = "adam"  # adam | rmsprop | sgd | nesterov, for G and D
    lr: float = 2e-4
    g_lr: float = 0.0  # G's learning rate when it should differ from D's (two time-scale updates); 0: lr
    betas: tuple[float, float] = (0.0, 0.99)  # adam; rmsprop uses betas[1] as its smoothing
    momentum: float = 0.9  # sgd / nesterov
    eps: float = 1e-8
    lr_schedule: str = "constant"  # constant | step | exponential | cosine, a function of kimg
    lr_decay_kimg: float = 0.0  # step / exponential: lr *= lr_gamma every this many kimg (0: kimg / 4)
    lr_gamma: float = 0.5
    lr_min: float = 0.0  # cosine: final lr as a fraction of --lr
    augment: str = "color,translation,cutout"  # DiffAugment policy; "" disables
    xflip: bool = True
    ema_kimg: float = 0.0  # 0: batch * 10 / 32 as in the paper
    ema_rampup: float = 0.05
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    tick_kimg: float = 1.0  # one metrics row per tick
    snapshot_ticks: int = 10  # generator + training state every N ticks (and always at the end)
    metrics: tuple[str, ...] = ("fid",)
    fid_every: float = 50.0  # kimg between FID records
    fid_images: int = 5000
    extractor: str = "inception"  # behind fid, kid and pr: inception | dinov2 | proxy | auto
    inception_weights: str = ""
    dinov2_weights: str = ""  # fd_dinov2/kd_dinov2 records; default: the Hugging Face cache
    device: str = "auto"
    seed: int = 0
    sample_seeds: int = 32  # fixed seeds drawn into samples/*.png
    max_minutes: float = 0.0  # stop (with a snapshot) after this much wall time in this process; 0: no limit

    def __post_init__(self):
        if self.batch < 1:
            raise UserError(f"--batch must be >= 1 (got {self.batch})")
        if self.kimg <= 0:
            raise UserError(f"--kimg must be > 0 (got {self.kimg})")
        if self.projection not in PROJECTIONS:
            raise UserError(f"unknown --projection {self.projection!r}", f"choose one of {', '.join(PROJECTIONS)}")
        if not 1 <= self.num_discs <= 4:
            raise UserError(f"--num-discs must be 1..4 (got {self.num_discs})")
        if self.cond and self.discriminator == "fastgan":
            raise UserError("--cond works with --discriminator projected or dcgan, not fastgan",
                            "FastGAN's discriminator has no class projection here")
        for name, value, allowed in (("discriminator", self.discriminator, DISCRIMINATORS),
                                     ("d-batchnorm", self.d_batchnorm, D_BATCHNORM),
                                     ("class-sampling", self.class_sampling, CLASS_SAMPLING),
                                     ("optimizer", self.optimizer, OPTIMIZERS),
                                     ("lr-schedule", self.lr_schedule, LR_SCHEDULES)):
            if value not in allowed:
                raise UserError(f"unknown --{name} {value!r}", f"choose one of {', '.join(allowed)}")
        if self.lr <= 0 or self.g_lr < 0 or not 0 < self.lr_gamma <= 1 or not 0 <= self.lr_min <= 1 or self.lr_decay_kimg < 0:
            raise UserError("--lr must be > 0, --g-lr >= 0, --lr-gamma in (0, 1], --lr-min in [0, 1], --lr-decay-kimg >= 0")
        if self.d_mbstd < 0:
            raise UserError(f"--d-mbstd must be >= 0 (got {self.d_mbstd})")
        if self.d_width < 8 or not 0 <= self.momentum < 1:
            raise UserError(f"--d-width must be >= 8 and --momentum in [0, 1) (got {self.d_width}, {self.momentum})")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown --precision {self.precision!r}", f"choose one of {', '.join(PRECISIONS)}")
        check_metrics(self.metrics)
        parse_device(self.device)
        if self.extractor not in (*EXTRACTORS, "auto"):
            raise UserError(f"unknown --extractor {self.extractor!r}", f"choose one of {', '.join(EXTRACTORS)} or auto")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"--betas must be two numbers in [0, 1) (got {self.betas})")

    @property
    def ema_half_life_kimg(self) -> float:
        return self.ema_kimg if self.ema_kimg > 0 else self.batch * 10 / 32

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_classes(self, names: tuple[str, ...]) -> TrainConfig:
        """This config with a class-conditional generator over ``names``."""
        gen = dataclasses.replace(self.generator, num_classes=len(names), class_names=tuple(names))
        return dataclasses.replace(self, generator=gen)

    def with_saved(self, saved: dict[str, Any], keys: set[str]) -> TrainConfig:
        """This config with ``keys`` (``generator.x`` for generator fields) taken from a saved run's config."""
        d = self.to_dict()
        saved = {**SAVED_BEFORE, **saved}
        for key in keys:
            if key.startswith("generator."):
                sub = key.split(".", 1)[1]
                if sub in saved.get("generator", {}):
                    d["generator"][sub] = saved["generator"][sub]
            elif key in saved:
                d[key] = saved[key]
        return TrainConfig.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["generator"] = GeneratorConfig.from_dict(d.get("generator", {}))
        for key in ("betas", "metrics"):
            if key in d:
                d[key] = tuple(d[key])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ExportConfig:
    """`pipeline export`: ONNX fp32/fp16, TensorRT plan, parity certificate, Triton repository."""

    source: str = ""
    out: str = ""
    fp16: bool = False
    batch_sizes: tuple[int, int, int] = (1, 8, 64)  # min, opt, max of the dynamic batch profile
    opset: int = 18
    tensorrt: bool = True
    triton: bool = False
    force: bool = False
    parity_seeds: int = 64
    fp32_max_abs: float = 1e-4
    fp16_min_psnr: float = 40.0
    fp16_min_ssim: float = 0.99
    # Distribution drift of reduced precision (export/drift.py): FD(backend, fp32) on the same seeds over
    # FD(fp32, fp32 on disjoint seeds). Measured (32 px trained generators, proxy features): fp16 <= 4e-5,
    # CPU bf16 <= 4e-3 at 2048 images; one fp16 conv weight x1.1 gives 0.14-0.9 at 256 images, x1.5 1.6-18.
    drift_images: int = 0  # per backend; 0 = auto: 2048 where it runs on CUDA, 256 on a CPU
    drift_max_ratio: float = 0.1  # drift at most a tenth of what sampling noise moves an FD of that many images
    drift_extractor: str = "auto"  # auto (best on disk, else the random proxy) | inception | dinov2 | proxy
    workspace_gib: float = 4.0

    def __post_init__(self):
        lo, opt, hi = self.batch_sizes
        if not (1 <= lo <= opt <= hi):
            raise UserError(
                f"--batch-sizes must satisfy 1 <= min <= opt <= max (got {lo},{opt},{hi})",
                "for example --batch-sizes 1,8,64",
            )
        if not 18 <= self.opset <= 23:  # the dynamo ONNX exporter's range (it silently emits 18 below that)
            raise UserError(f"unsupported --opset {self.opset}", "use an opset between 18 and 23 (default 18)")
        if self.parity_seeds < 1:
            raise UserError("--parity-seeds must be >= 1")
        if self.drift_images < 0 or self.drift_images == 1:
            raise UserError(f"--drift-images must be 0 (auto) or >= 2 (got {self.drift_images})")
        if not self.drift_max_ratio > 0:
            raise UserError(f"--drift-max-ratio must be > 0 (got {self.drift_max_ratio})")
        if self.drift_extractor not in (*EXTRACTORS, "auto"):
            raise UserError(
                f"unknown --drift-extractor {self.drift_extractor!r}", f"choose auto or one of {', '.join(EXTRACTORS)}"
            )


@dataclass
class ServeConfig:
    """`pipeline serve`: one process, one model, an HTTP API and a Gradio UI on one port."""

    source: str = ""
    backend: str = "auto"  # auto | torch | onnxruntime | tensorrt
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # torch backend only: auto | fp32 | bf16 | fp16
    torch_mode: str = "auto"  # torch backend only: auto (graphs on a GPU) | eager | graphs | compile
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32
    max_delay_ms: float = 5.0
    queue_size: int = 256  # images waiting; a request that does not fit is rejected with 503
    max_images: int = 64  # per request
    max_interpolation_steps: int = 64
    max_body_bytes: int = 64 * 1024
    api_key: str = ""
    force: bool = False  # serve an export whose parity check failed
    ui: bool = True

    def __post_init__(self):
        if self.backend not in ("auto", "torch", "onnxruntime", "tensorrt"):
            raise UserError(f"unknown --backend {self.backend!r}", "choose auto, torch, onnxruntime or tensorrt")
        parse_device(self.device)
        if self.torch_mode not in TORCH_MODES:
            raise UserError(f"unknown --torch-mode {self.torch_mode!r}", f"choose one of {', '.join(TORCH_MODES)}")
        if self.max_batch < 1 or self.queue_size < 1 or self.max_images < 1:
            raise UserError("--max-batch, --queue-size and --max-images must be >= 1")
        if self.max_delay_ms < 0:
            raise UserError("--max-delay-ms must be >= 0")


@dataclass
class EvalConfig:
    """`pipeline evaluate`: FD/KD, precision/recall and law scores of any servable source against a dataset."""

    source: str = ""
    data: str = ""
    num_images: int = 10000
    metrics: tuple[str, ...] = ("fid", "kid")
    backend: str = "auto"
    device: str = "auto"
    batch: int = 32
    precision: str = "auto"  # torch backend only
    extractor: str = "inception"  # behind fid, kid, pr and --nearest: inception | dinov2 | proxy | auto
    inception_weights: str = ""
    dinov2_weights: str = ""
    nearest: int = 0  # memorisation check: K nearest training images per sample (0: off)
    class_name: str = ""  # conditional models: score one class (name or index) against its folder
    per_class: bool = False  # conditional models: one row per class, then the whole
    truncation: float | None = None  # style models: psi for every image (None: no truncation)
    out: str = ""  # JSONL file the rows are appended to; default: evaluation.jsonl beside the source

    def __post_init__(self):
        if not self.metrics and not self.nearest:
            raise UserError("no metric requested", METRICS_HINT)
        check_metrics(self.metrics)
        if self.extractor not in (*EXTRACTORS, "auto"):
            raise UserError(f"unknown --extractor {self.extractor!r}", f"choose one of {', '.join(EXTRACTORS)} or auto")
        if self.num_images < 2:
            raise UserError("--num-images must be >= 2")
        if self.nearest < 0:
            raise UserError(f"--nearest must be >= 0 (got {self.nearest})")
        parse_device(self.device)


@dataclass
class BenchConfig:
    """`pipeline bench`: inference throughput/latency per backend and batch size (the training
    step's seconds per kimg, `bench --train`, is timed on a TrainConfig)."""

    source: str = ""
    backends: tuple[str, ...] = ()  # empty: every backend available here
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    device: str = "auto"
    warmup: int = 3
    repeats: int = 20
    out: str = ""
    threads: int = 0  # torch CPU threads; 0: torch's default
    precisions: tuple[str, ...] = ()  # torch precisions to time; empty: fp32 and the device's native reduced one
    torch_modes: tuple[str, ...] = ("eager",)  # eager | graphs | compile: one row set per mode

    def __post_init__(self):
        parse_device(self.device)
        bad = [m for m in self.torch_modes if m not in TORCH_MODES[1:]]
        if bad or not self.torch_modes:
            raise UserError(f"unknown --torch-modes {','.join(bad) or '(none)'}", "choose from eager, graphs, compile")
