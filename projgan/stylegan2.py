"""The StyleGAN2 generator (Karras et al. 2020) as Projected GAN's "Projected StyleGAN2-ADA" uses it, in plain PyTorch.

What is StyleGAN2 here: a mapping network (z normalised, class embedding joined, ``mapping_layers`` fully
connected layers with equalized learning rate and lr multiplier 0.01) to ``w``; a per-class running average
``w_avg`` for truncation; a synthesis network from a learned 4x4 constant with two modulated/demodulated 3x3
convolutions per resolution, noise, bias, leaky ReLU and a "skip" output (a modulated 1x1 ToRGB per
resolution, summed over bilinearly upsampled RGB images).

What is FastGAN-like: the channel widths (``projgan.generator.channels``, so ``ngf`` means the same for both
generators) and the latent normalisation.

What differs from the reference code, and why (all for export: ONNX Runtime, fp16, TensorRT):

- Modulation scales the activations around one shared convolution (``x * s -> conv -> * d``) instead of a
  grouped convolution over the batch, so the batch axis stays dynamic and every runtime runs a plain Conv.
- Upsampling is a bilinear x2 resize then a 3x3 conv, not a transposed conv with an FIR filter (upfirdn2d,
  custom CUDA ops): bilinear x2 is the same [1, 3, 3, 1] filter in the interior, and Resize + Conv are
  kernels every runtime has (the fp16 converter keeps Resize in fp32).
- Noise is a deterministic function of ``w`` (fixed random projections of w onto fixed random basis maps,
  rebuilt from a fixed seed and not saved), never random in the graph: a seed's image does not depend on
  its batch or on the backend, and psi = 0 gives one image per class.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from projgan.config import GeneratorConfig
from projgan.generator import channels, normalize_2nd_moment

MAPPING_LR_MUL = 0.01  # StyleGAN2's mapping network learning-rate multiplier
W_AVG_BETA = 0.995  # StyleGAN2's w_avg tracking
NOISE_RANK = 8  # basis maps per resolution the per-seed noise is mixed from
NOISE_SEED = 20200101  # the fixed seed of the noise buffers: same buffers in every construction
SQRT2 = math.sqrt(2.0)


def _fixed_randn(seed: int, *shape: int) -> torch.Tensor:
    """N(0, 1) from a fixed seed, identical in every construction (CPU generator); on the meta device for
    FLOP counting."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    dev = torch.get_default_device()
    if dev.type == "meta":
        return torch.empty(*shape, device="meta")
    return torch.randn(*shape, generator=g, device="cpu").to(dev)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU 0.2 with StyleGAN2's sqrt(2) gain (keeps the activations' second moment)."""
    return F.leaky_relu(x, 0.2) * SQRT2


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate: weights stored N(0, 1) / lr_mul, scaled at run time,
    so Adam's per-parameter steps are the same size for every layer (and lr_mul smaller for the mapping)."""

    def __init__(self, cin: int, cout: int, bias_init: float = 0.0, lr_mul: float = 1.0, act: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full((cout,), float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(cin)
        self.bias_gain = lr_mul
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return lrelu(x) if self.act else x


class MappingNetwork(nn.Module):
    """z (and class) -> w. The class embedding is normalised like z and joined to it, as StyleGAN2-ADA does."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.w_dim = cfg.w_dim or cfg.z_dim
        cin = cfg.z_dim
        if cfg.num_classes:
            self.embed = nn.Embedding(cfg.num_classes, cfg.z_dim)
            cin += cfg.z_dim
        widths = [cin] + [self.w_dim] * cfg.mapping_layers
        self.layers = nn.Sequential(*[EqualLinear(a, b, lr_mul=MAPPING_LR_MUL, act=True)
                                      for a, b in zip(widths[:-1], widths[1:], strict=True)])

    def forward(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        x = normalize_2nd_moment(z)
        if c is not None:
            x = torch.cat([x, normalize_2nd_moment(self.embed(c))], dim=1)
        return self.layers(x)


class ModulatedConv(nn.Module):
    """Style-modulated convolution as activation scaling around one ordinary convolution.

    ``conv(x * s, w) * d`` equals convolving with the per-sample weight ``w * s`` demodulated by
    ``d[b, o] = rsqrt(sum_{i,k} (w[o, i, k] s[b, i])^2 + 1e-8)``; unlike StyleGAN2's grouped convolution over
    the batch, it keeps the batch axis a plain dynamic axis of an ordinary Conv node.
    """

    def __init__(self, w_dim: int, cin: int, cout: int, kernel: int, demodulate: bool = True, up: bool = False):
        super().__init__()
        self.affine = EqualLinear(w_dim, cin, bias_init=1.0)  # styles start at 1: an unmodulated conv
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.weight_gain = 1.0 / math.sqrt(cin * kernel * kernel)
        self.demodulate, self.up, self.padding = demodulate, up, kernel // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.affine(w)  # [B, cin]
        weight = self.weight * self.weight_gain
        x = x * s[:, :, None, None]  # per-channel scaling commutes with the resize: do it at low resolution
        if self.up:
            # Bilinear x2 then a 3x3 conv, not a transposed conv + FIR filter: see the module docstring.
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            d = torch.rsqrt(s.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8)  # [B, cout]
            x = x * d[:, :, None, None]
        return x


class StyleLayer(nn.Module):
    """Modulated 3x3 conv, noise (from w) times a learned strength, bias, leaky ReLU.

    No conv_clamp (StyleGAN2-ADA clamps at 256 for its fp16 layers): the export's fp16 conversion keeps some
    nodes in fp32, and a Clip whose shared bounds feed both fp16 and fp32 nodes becomes an invalid graph.
    Demodulation already keeps the activations near unit scale.
    """

    def __init__(self, w_dim: int, cin: int, cout: int, up: bool = False):
        super().__init__()
        self.conv = ModulatedConv(w_dim, cin, cout, 3, up=up)
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = self.conv(x, w) + noise * self.noise_strength
        return lrelu(x + self.bias[None, :, None, None])


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB without demodulation (StyleGAN2's skip output)."""

    def __init__(self, w_dim: int, cin: int, cout: int):
        super().__init__()
        self.conv = ModulatedConv(w_dim, cin, cout, 1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias[None, :, None, None]


class NoiseMaps(nn.Module):
    """Per-layer noise maps, a deterministic function of w.

    Each layer projects the normalised w onto ``NOISE_RANK`` coefficients (a fixed N(0, 1/w_dim) matrix) and
    mixes its resolution's fixed N(0, 1) basis maps with them (divided by sqrt(rank)), so every pixel is
    ~N(0, 1) over seeds. The buffers come from a fixed seed and are non-persistent: the artifact does not
    hold them, and every construction rebuilds the same ones.
    """

    def __init__(self, w_dim: int, layer_resolutions: list[int]):
        super().__init__()
        self.layer_resolutions = layer_resolutions
        for res in sorted(set(layer_resolutions)):
            self.register_buffer(f"basis{res}", _fixed_randn(NOISE_SEED + res, NOISE_RANK, res * res), persistent=False)
        for i in range(len(layer_resolutions)):
            proj = _fixed_randn(NOISE_SEED + 10_000 + i, w_dim, NOISE_RANK) / math.sqrt(w_dim)
            self.register_buffer(f"proj{i}", proj, persistent=False)

    def forward(self, w: torch.Tensor) -> list[torch.Tensor]:
        w = normalize_2nd_moment(w)
        out = []
        for i, res in enumerate(self.layer_resolutions):
            coeff = w @ getattr(self, f"proj{i}") / math.sqrt(NOISE_RANK)  # [B, rank]
            out.append((coeff @ getattr(self, f"basis{res}")).reshape(-1, 1, res, res))
        return out


class SynthesisNetwork(nn.Module):
    """ws [B, num_ws, w_dim] -> image [B, 3, H, W]: constant 4x4, two style layers per resolution, skip RGB."""

    def __init__(self, cfg: GeneratorConfig, w_dim: int):
        super().__init__()
        ch = channels(cfg)
        self.resolutions = [2**i for i in range(2, int(math.log2(cfg.resolution)) + 1)]
        self.const = nn.Parameter(torch.randn(ch[4], 4, 4))
        self.layers = nn.ModuleDict()
        self.torgb = nn.ModuleDict()
        layer_res = []
        for res in self.resolutions:
            if res > 4:
                self.layers[f"{res}_up"] = StyleLayer(w_dim, ch[res // 2], ch[res], up=True)
                layer_res.append(res)
            self.layers[f"{res}"] = StyleLayer(w_dim, ch[res], ch[res])
            layer_res.append(res)
            self.torgb[str(res)] = ToRGB(w_dim, ch[res], cfg.channels)
        self.noise = NoiseMaps(w_dim, layer_res)
        # As StyleGAN2 counts: one w per style layer, each ToRGB shares the next layer's (the last one its own).
        self.num_ws = len(self.layers) + 1

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        noise = self.noise(ws[:, 0])
        # repeat, not expand: a view of a parameter made under no_grad trips FlopCounterMode's module tracker
        x = self.const[None].repeat(ws.shape[0], 1, 1, 1)
        img = None
        i = 0
        for res in self.resolutions:
            names = ([f"{res}_up"] if res > 4 else []) + [f"{res}"]
            for name in names:
                x = self.layers[name](x, ws[:, i], noise[i])
                i += 1
            y = self.torgb[str(res)](x, ws[:, i])
            img = y if img is None else F.interpolate(img, scale_factor=2.0, mode="bilinear", align_corners=False) + y
        return img


class StyleGenerator(nn.Module):
    """``forward(z, c=None, psi=None)``: z [B, z_dim] float, c [B] int64 (conditional models), psi [B] float
    (truncation toward the class's average w; None = 1) -> image [B, 3, H, W], linear, roughly [-1, 1]."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.w_dim = cfg.w_dim or cfg.z_dim
        self.mapping_net = MappingNetwork(cfg)
        self.synthesis_net = SynthesisNetwork(cfg, self.w_dim)
        self.num_ws = self.synthesis_net.num_ws
        self.register_buffer("w_avg", torch.zeros(max(cfg.num_classes, 1), self.w_dim))

    def _classes(self, c: torch.Tensor | None) -> torch.Tensor | None:
        if not self.cfg.num_classes:
            return None  # an unconditional model ignores c, as the FastGAN generator does
        if c is None:
            raise ValueError("a class-conditional generator needs class indices c [B]")
        return c.long().reshape(-1)

    @torch.no_grad()
    def _track_w_avg(self, w: torch.Tensor, c: torch.Tensor | None) -> None:
        """Move each class's row toward the batch mean of that class's w (StyleGAN2's beta 0.995)."""
        k = self.w_avg.shape[0]
        idx = c if c is not None else torch.zeros(len(w), dtype=torch.long, device=w.device)
        onehot = F.one_hot(idx, k).to(w.dtype)  # [B, K]
        counts = onehot.sum(0)
        mean = (onehot.t() @ w.detach()) / counts.clamp(min=1)[:, None]
        new = self.w_avg.lerp(mean.to(self.w_avg.dtype), 1.0 - W_AVG_BETA)
        self.w_avg.copy_(torch.where(counts[:, None] > 0, new, self.w_avg))

    def mapping(self, z: torch.Tensor, c: torch.Tensor | None = None, psi: torch.Tensor | None = None) -> torch.Tensor:
        """z (and c) -> ws [B, num_ws, w_dim], the same w for every layer; truncated toward w_avg[c] by psi."""
        c = self._classes(c)
        w = self.mapping_net(z, c)
        if self.training:
            self._track_w_avg(w, c)
        if psi is not None:
            avg = (self.w_avg[c] if c is not None else self.w_avg[:1]).to(w.dtype)
            psi = torch.as_tensor(psi, dtype=w.dtype, device=w.device).reshape(-1, 1)
            w = torch.lerp(w, avg, 1.0 - psi)  # = avg + psi (w - avg), exactly w at psi = 1 and avg at 0
        return w.unsqueeze(1).expand(-1, self.num_ws, -1)

    def synthesis(self, ws: torch.Tensor) -> torch.Tensor:
        return self.synthesis_net(ws)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, psi: torch.Tensor | None = None) -> torch.Tensor:
        return self.synthesis(self.mapping(z, c, psi))


def flops_per_image(cfg: GeneratorConfig) -> float:
    """Multiply-adds x 2 per image (conv and matmul, ``FlopCounterMode``), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        G = StyleGenerator(cfg).eval()
        z = torch.zeros(2, cfg.z_dim)
        c = torch.zeros(2, dtype=torch.long) if cfg.num_classes else None
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            G(z, c)
    return fc.get_total_flops() / 2


# ---------------------------------------------------------------- w-space views (export, serving)


class WMapping(nn.Module):
    """A style generator's ``mapping`` as ``(z, c, psi) -> w [B, w_dim]`` (every layer gets the same w)."""

    def __init__(self, G: nn.Module):
        super().__init__()
        self.G = G

    def forward(self, z, c=None, psi=None):
        return self.G.mapping(z, c=c, psi=psi)[:, 0]


class WSynthesis(nn.Module):
    """A style generator's ``synthesis`` from one w per image, broadcast to its ``num_ws`` layers."""

    def __init__(self, G: nn.Module):
        super().__init__()
        self.G = G

    def forward(self, w):
        return self.G.synthesis(w.unsqueeze(1).expand(-1, self.G.num_ws, -1))
