"""The StyleGAN2 generator: shapes, determinism, batch independence, truncation, w_avg, ONNX fp32/fp16, gradients."""

from __future__ import annotations

import contextlib
import io
import math
import warnings

import numpy as np
import pytest
import torch

from projgan import artifacts
from projgan.config import GeneratorConfig
from projgan.generator import Generator, build_generator, classes_for_seeds, model_inputs, run_torch, sample_latents
from projgan.stylegan2 import NOISE_RANK, StyleGenerator, flops_per_image

Z = 32
RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
              "Dropout"}


def make(resolution: int = 32, num_classes: int = 0, ngf: int = 8, seed: int = 0, warm: bool = True) -> StyleGenerator:
    """An eval-mode model; ``warm`` sets w_avg to real per-class averages of w (as long training would)."""
    torch.manual_seed(seed)
    cfg = GeneratorConfig(arch="stylegan2", resolution=resolution, ngf=ngf, z_dim=Z, num_classes=num_classes)
    G = build_generator(cfg).eval().requires_grad_(False)
    if warm:
        k = max(num_classes, 1)
        c = torch.arange(64 * k) % k
        w = G.mapping_net(torch.randn(64 * k, Z), c if num_classes else None)
        G.w_avg.copy_(torch.stack([w[c == i].mean(0) for i in range(k)]))
    return G


def render(G, seeds, classes=None, psi=None) -> torch.Tensor:
    seeds = list(seeds)
    if G.cfg.conditional and classes is None:
        classes = classes_for_seeds(seeds, G.cfg.num_classes)
    with torch.no_grad():
        return run_torch(G, model_inputs(G.cfg, sample_latents(seeds, Z), classes, psi))


@pytest.fixture(scope="module")
def cond():
    return make(num_classes=3)


@pytest.fixture(scope="module")
def uncond():
    return make()


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("resolution", [32, 256])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_shapes_and_parameters(resolution, num_classes):
    G = make(resolution, num_classes, warm=False)
    assert isinstance(G, StyleGenerator) and G.cfg.arch == "stylegan2"
    # One w per style layer (1 at 4 px, 2 per doubling) plus the last ToRGB's, as StyleGAN2 counts.
    assert G.num_ws == 2 * int(math.log2(resolution)) - 2
    img = render(G, range(3))
    assert img.shape == (3, 3, resolution, resolution) and torch.isfinite(img).all()
    assert 0.05 < img.std() < 5  # neither flat nor exploding at initialisation
    ws = G.mapping(torch.randn(2, Z), torch.zeros(2, dtype=torch.long) if num_classes else None)
    assert ws.shape == (2, G.num_ws, Z) and torch.equal(ws[:, 0], ws[:, -1])
    # Mapping: 2 layers, (2 z_dim if conditional) -> w_dim -> w_dim, plus the class embedding.
    n_map = sum(p.numel() for p in G.mapping_net.parameters())
    cin = Z * (2 if num_classes else 1)
    assert n_map == (cin * Z + Z) + (Z * Z + Z) + num_classes * Z
    # The same ngf gives a network of the FastGAN generator's size, not a different order of magnitude.
    n = sum(p.numel() for p in G.parameters())
    n_fastgan = sum(p.numel() for p in Generator(G.cfg).parameters())
    assert 0.3 < n / n_fastgan < 3
    # The artifact holds weights and w_avg, never the noise buffers (rebuilt from a fixed seed).
    keys = set(G.state_dict())
    assert "w_avg" in keys and not any("noise.basis" in k or "noise.proj" in k for k in keys)
    assert G.w_avg.shape == (max(num_classes, 1), Z)


def test_noise_is_fixed_and_unit_variance_over_seeds():
    a, b = make(warm=False, seed=0), make(warm=False, seed=1)
    bufs_a, bufs_b = dict(a.synthesis_net.noise.named_buffers()), dict(b.synthesis_net.noise.named_buffers())
    assert bufs_a.keys() == bufs_b.keys() and len(bufs_a) > 0
    assert all(torch.equal(bufs_a[k], bufs_b[k]) for k in bufs_a)  # other weights, the same noise buffers
    assert bufs_a["basis32"].shape == (NOISE_RANK, 32 * 32)
    noise = a.synthesis_net.noise(a.mapping(torch.randn(512, Z))[:, 0])
    last = noise[-1]  # [512, 1, 32, 32]
    assert 0.6 < last.std(dim=0).mean() < 1.4  # each pixel ~unit variance over seeds
    assert not torch.allclose(last[0], last[1])  # and it differs between seeds


def test_conditional_model_needs_a_class(cond):
    with pytest.raises(ValueError, match="class"):
        cond(torch.randn(2, Z))


# ---------------------------------------------------------------- determinism


def test_seed_determinism_across_calls_and_saved_artifacts(cond, tmp_path):
    seeds = [0, 7, 123, 2**32 - 1]
    first = render(cond, seeds, psi=0.7)
    assert torch.equal(first, render(cond, seeds, psi=0.7))
    artifacts.save_generator(tmp_path / "g", cond)
    loaded = [artifacts.load_generator(tmp_path / "g")[0] for _ in range(2)]
    for G in loaded:
        assert isinstance(G, StyleGenerator) and G.cfg == cond.cfg
        assert torch.equal(G.w_avg, cond.w_avg)
        assert torch.equal(render(G, seeds, psi=0.7), first)
    assert not torch.allclose(first[0], first[1])  # different seeds, different images


@pytest.mark.parametrize("fixture", ["cond", "uncond"])
def test_batch_independence(fixture, request):
    G = request.getfixturevalue(fixture)
    seeds = list(range(100, 116))
    psi = np.linspace(0.2, 1.0, 16, dtype=np.float32)
    big = render(G, seeds, psi=psi)
    seven = render(G, seeds[:7], psi=psi[:7])
    for i in (0, 3, 6):
        alone = render(G, [seeds[i]], psi=psi[i : i + 1])
        assert torch.allclose(alone[0], big[i], atol=1e-5, rtol=0)
        assert torch.allclose(alone[0], seven[i], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- truncation and w_avg


def test_truncation_per_class(cond):
    seeds = list(range(12))
    for k in range(3):
        zero = render(cond, seeds, classes=k, psi=0.0)
        assert torch.equal(zero, zero[:1].expand_as(zero))  # psi = 0: one image for every seed of a class
        ws = cond.w_avg[k].expand(1, cond.num_ws, -1)
        with torch.no_grad():
            assert torch.allclose(cond.synthesis(ws)[0], zero[0], atol=1e-5, rtol=0)
    avgs = [render(cond, [0], classes=k, psi=0.0)[0] for k in range(3)]
    assert (avgs[0] - avgs[1]).abs().max() > 1e-3 and (avgs[1] - avgs[2]).abs().max() > 1e-3
    z = torch.from_numpy(sample_latents(seeds, Z))
    c = torch.from_numpy(classes_for_seeds(seeds, 3))
    with torch.no_grad():
        assert torch.equal(cond(z, c, torch.ones(len(seeds))), cond(z, c))  # psi = 1 is no truncation
        avg = cond(z, c, torch.zeros(len(seeds)))
        dist = [(cond(z, c, torch.full((len(seeds),), p)) - avg).square().mean().item() for p in (1.0, 0.75, 0.5, 0.25)]
    assert all(a > b for a, b in zip(dist, dist[1:], strict=False)) and dist[-1] > 0


def test_truncation_unconditional(uncond):
    ws = uncond.mapping(torch.randn(10, Z), psi=torch.zeros(10))
    assert torch.equal(ws, uncond.w_avg[0].expand_as(ws))  # psi = 0: exactly w_avg, noise included
    zero = render(uncond, range(10), psi=0.0)
    assert torch.allclose(zero, zero[:1].expand_as(zero), atol=1e-5, rtol=0)
    assert not torch.allclose(render(uncond, [0, 1], psi=0.5)[0], render(uncond, [0, 1], psi=0.5)[1])


def test_w_avg_tracks_in_train_mode_only():
    G = make(num_classes=3, warm=False)
    z, c = torch.randn(8, Z), torch.tensor([0, 0, 2, 2, 2, 0, 2, 0])
    before = G.w_avg.clone()
    G(z, c)
    assert torch.equal(G.w_avg, before)  # eval mode: untouched
    G.train()
    with torch.no_grad():
        w = G.mapping_net(z, c)
        G(z, c)
    for k in (0, 2):
        expect = before[k] + (1 - 0.995) * (w[c == k].mean(0) - before[k])
        assert torch.allclose(G.w_avg[k], expect, atol=1e-6)
    assert torch.equal(G.w_avg[1], before[1])  # a class absent from the batch keeps its average
    assert (G.w_avg[0] - before[0]).abs().max() > 0
    U = make(warm=False).train()
    U(torch.randn(4, Z))
    assert U.w_avg.abs().max() > 0  # unconditional: row 0 moves


# ---------------------------------------------------------------- training


def test_gradients_reach_mapping_synthesis_and_embedding():
    G = make(num_classes=3, warm=False).requires_grad_(True).train()
    img = G(torch.randn(4, Z), torch.tensor([0, 1, 2, 0]))
    img.square().mean().backward()
    named = dict(G.named_parameters())
    must = ["mapping_net.embed.weight", "mapping_net.layers.0.weight", "mapping_net.layers.1.weight",
            "synthesis_net.const", "synthesis_net.layers.4.conv.weight", "synthesis_net.layers.4.conv.affine.weight",
            "synthesis_net.layers.32_up.conv.weight", "synthesis_net.layers.32.noise_strength",
            "synthesis_net.torgb.32.conv.weight", "synthesis_net.torgb.8.bias"]
    for name in must:
        g = named[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().max() > 0, name
    assert named["mapping_net.embed.weight"].grad[1].abs().max() > 0  # each class seen gets its gradient


def test_flops_per_image():
    small = flops_per_image(GeneratorConfig(arch="stylegan2", resolution=32, ngf=8, z_dim=Z))
    big = flops_per_image(GeneratorConfig(arch="stylegan2", resolution=256, ngf=8, z_dim=Z))
    assert 1e6 < small < big
    from torch.utils.flop_counter import FlopCounterMode

    G = make(warm=False)
    with FlopCounterMode(display=False) as fc, torch.no_grad():  # on CPU with batch 3: the same per image
        G(torch.zeros(3, Z))
    assert fc.get_total_flops() / 3 == pytest.approx(small)


# ---------------------------------------------------------------- ONNX


def export(G, path) -> None:
    """fp32 ONNX with a dynamic batch axis on every input (z, [class], psi)."""
    names = ["z"] + (["class"] if G.cfg.conditional else []) + ["psi"]
    batch = torch.export.Dim("batch", min=1, max=1024)
    kwargs = {"c": torch.zeros(2, dtype=torch.long)} if G.cfg.conditional else {}
    kwargs["psi"] = torch.ones(2)  # after c: the exporter orders the graph inputs as the kwargs
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(G, (torch.zeros(2, Z),), kwargs=kwargs, input_names=names, output_names=["image"],
                                    dynamic_shapes={k: {0: batch} for k in ["z", *kwargs]}, dynamo=True,
                                    external_data=False, optimize=True, opset_version=18)
    program.save(str(path))


def session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("fixture", ["cond", "uncond"])
def test_onnx_fp32_and_fp16(fixture, request, tmp_path):
    import onnx

    from projgan.export.fp16 import convert
    from projgan.generator import input_names, to_uint8
    from projgan.similarity import psnr

    G = request.getfixturevalue(fixture)
    export(G, tmp_path / "g.onnx")
    model = onnx.load(str(tmp_path / "g.onnx"))
    assert [i.name for i in model.graph.input] == list(input_names(G.cfg))
    assert all(i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input)  # dynamic batch everywhere
    ops = {n.op_type for n in model.graph.node}
    assert "Conv" in ops and not ops & RANDOM_OPS
    for node in model.graph.node:
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            assert group == 1, node.name  # modulation as activation scaling: no grouped conv over the batch
    sess = session(tmp_path / "g.onnx")
    for b in (1, 5):
        seeds = list(range(40, 40 + b))
        feeds = model_inputs(G.cfg, sample_latents(seeds, Z), classes_for_seeds(seeds, 3) if G.cfg.conditional else None,
                             np.linspace(0.4, 1.0, b))
        out = sess.run(None, feeds)[0]
        ref = run_torch(G, feeds).numpy()
        assert out.shape == ref.shape == (b, 3, 32, 32)
        assert np.abs(out - ref).max() <= 1e-4
    seeds = list(range(16))
    feeds = model_inputs(G.cfg, sample_latents(seeds, Z), classes_for_seeds(seeds, 3) if G.cfg.conditional else None)
    ref = to_uint8(sess.run(None, feeds)[0])
    for keep_fp32 in (False, True):  # the export pipeline keeps the fragile nodes in fp32
        convert(tmp_path / "g.onnx", tmp_path / "g16.onnx", keep_fp32=keep_fp32)
        half = session(tmp_path / "g16.onnx").run(None, feeds)[0]
        assert half.dtype == np.float32 and np.isfinite(half).all()
        assert psnr(ref, to_uint8(half)).min() >= 40
