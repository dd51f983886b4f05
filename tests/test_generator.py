"""FastGAN-lite generator: shapes, determinism, batch independence, spectral-norm folding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from projgan import artifacts
from projgan.config import GeneratorConfig
from projgan.generator import Generator, plain_state_dict, remove_spectral_norm, sample_latents, slerp, to_uint8


def _trained_like(G: Generator, seed: int = 0) -> Generator:
    """Give BatchNorm non-trivial running statistics (as training would), then switch to eval."""
    torch.manual_seed(seed)
    G.train()
    with torch.no_grad():
        for _ in range(3):
            G(torch.randn(8, G.cfg.z_dim))
    return G.eval()


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_output_shape_and_range_per_resolution(resolution):
    G = Generator(GeneratorConfig(resolution=resolution, ngf=16)).eval()
    with torch.no_grad():
        x = G(torch.from_numpy(sample_latents([0, 1], 256)))
    assert x.shape == (2, 3, resolution, resolution)
    assert x.dtype == torch.float32
    assert float(x.abs().max()) <= 1.0
    assert sorted(int(k) for k in G.ups) == [r for r in (8, 16, 32, 64, 128) if r <= resolution]


def test_sle_gates_exist_from_64_px():
    assert list(Generator(GeneratorConfig(resolution=32, ngf=16)).sles) == []
    assert sorted(Generator(GeneratorConfig(resolution=128, ngf=16)).sles, key=int) == ["64", "128"]


def test_seed_gives_same_latent_in_any_batch_and_order():
    a = sample_latents([7, 3, 11], 256)
    b = sample_latents([11, 7], 256)
    np.testing.assert_array_equal(a[0], b[1])
    np.testing.assert_array_equal(a[2], b[0])
    assert not np.allclose(a[0], a[1])
    assert abs(float(sample_latents(range(200), 256).std()) - 1.0) < 0.02
    with pytest.raises(ValueError):
        sample_latents([-1], 8)


def test_eval_mode_is_deterministic_and_batch_independent():
    G = _trained_like(Generator(GeneratorConfig(resolution=32, ngf=16)))
    z = torch.from_numpy(sample_latents(range(6), 256))
    with torch.no_grad():
        full = G(z)
        again = G(z)
        singles = torch.cat([G(z[i : i + 1]) for i in range(6)])
        shuffled = G(z.flip(0)).flip(0)
    torch.testing.assert_close(full, again, rtol=0, atol=0)
    torch.testing.assert_close(full, singles, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full, shuffled, rtol=1e-5, atol=1e-5)


def test_train_mode_differs_from_eval_mode():
    """Guards the previous test: in train mode BatchNorm uses batch statistics, so outputs do mix."""
    G = _trained_like(Generator(GeneratorConfig(resolution=32, ngf=16)))
    z = torch.from_numpy(sample_latents(range(4), 256))
    with torch.no_grad():
        ev = G(z)
        G.train()
        tr = G(z)
    assert (ev - tr).abs().max() > 1e-3


def test_spectral_norm_removal_keeps_outputs():
    torch.manual_seed(0)
    G = _trained_like(Generator(GeneratorConfig(resolution=64, ngf=16), spectral=True))
    z = torch.from_numpy(sample_latents(range(4), 256))
    with torch.no_grad():
        before = G(z)
        plain = Generator(G.cfg)
        plain.load_state_dict(plain_state_dict(G))
        plain.eval()
        after = plain(z)
        folded = remove_spectral_norm(G)(z)
    assert not any("parametrizations" in k for k in plain_state_dict(G))
    torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(before, folded, rtol=1e-5, atol=1e-5)


def test_spectral_norm_bounds_the_weight():
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=32, ngf=16), spectral=True).train()
    with torch.no_grad():
        for _ in range(30):  # power iterations converge over forward passes
            G(torch.randn(2, 256))
    w = G.ups["8"].conv.weight.detach()
    sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)
    assert 0.9 < float(sigma) < 1.1


def test_artifact_roundtrip_gives_identical_images(tmp_path):
    G = _trained_like(Generator(GeneratorConfig(resolution=32, ngf=16), spectral=True))
    artifacts.save_generator(tmp_path / "g", G, {"kimg": 1.5})
    H, config = artifacts.load_generator(tmp_path / "g")
    z = torch.from_numpy(sample_latents(range(3), 256))
    with torch.no_grad():
        torch.testing.assert_close(G(z), H(z), rtol=1e-5, atol=1e-5)
    assert config["meta"]["kimg"] == 1.5


def test_saving_leaves_the_training_generator_usable(tmp_path):
    """Saving folds spectral norm into a copy of the weights; the live (EMA) generator keeps working."""
    G = _trained_like(Generator(GeneratorConfig(resolution=32, ngf=16), spectral=True))
    z = torch.from_numpy(sample_latents(range(2), 256))
    with torch.no_grad():
        before = G(z)
        artifacts.save_generator(tmp_path / "a", G)
        artifacts.save_generator(tmp_path / "b", G)
        torch.testing.assert_close(G(z), before, rtol=0, atol=0)
    assert G.training is False


def test_to_uint8_and_slerp():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    u = to_uint8(x)
    assert u.shape == (1, 2, 2, 3) and u.dtype == np.uint8
    assert u[0, :, :, 0].tolist() == [[0, 128], [255, 255]]
    np.testing.assert_array_equal(u, to_uint8(x.numpy()))
    a, b = sample_latents([1, 2], 16)
    path = slerp(a, b, np.linspace(0, 1, 5))
    np.testing.assert_allclose(path[0], a, atol=1e-5)
    np.testing.assert_allclose(path[-1], b, atol=1e-5)


def test_a_format_1_artifact_loads_exports_and_serves_as_before(tmp_path):
    """Artifacts written before classes and style models existed (format_version 1, four generator keys) read
    as the unconditional FastGAN they are: same images, one ONNX input z, served by the torch backend."""
    import json

    import onnx

    from projgan.export.onnx import export_fp32
    from projgan.generator import input_names
    from projgan.serve.backends import load_backend

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=32, ngf=8)).eval()
    src = artifacts.save_generator(tmp_path / "generator", G)
    config = json.loads((src / artifacts.CONFIG_JSON).read_text())
    assert config["format_version"] == 2 and config["generator"]["arch"] == "fastgan"
    config["format_version"] = 1
    config["generator"] = {k: config["generator"][k] for k in ("resolution", "z_dim", "ngf", "channels")}
    (src / artifacts.CONFIG_JSON).write_text(json.dumps(config))

    old, _ = artifacts.load_generator(src)
    assert old.cfg == GeneratorConfig(resolution=32, ngf=8) and input_names(old.cfg) == ("z",)
    z = torch.from_numpy(sample_latents(range(4), 256))
    with torch.no_grad():
        assert torch.equal(old(z), G(z))
    export_fp32(old, tmp_path / "g.onnx")
    assert [i.name for i in onnx.load(str(tmp_path / "g.onnx")).graph.input] == ["z"]
    backend = load_backend(src, "torch", "cpu", "fp32")
    try:
        assert np.array_equal(backend.generate(z.numpy()), to_uint8(G(z).detach()))
    finally:
        backend.close()
