"""Feature extractors (evaluation/features.py): DINOv2 through timm from a local file or the Hugging Face
cache, failing at once offline; `auto` falling back to the proxy and saying so; the common interface."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from projgan.errors import UserError
from projgan.evaluation import features as F
from tests.conftest import make_generator, make_images

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No DINOv2 in the Hugging Face cache and no Inception in clean-fid's: this machine, offline."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(F, "CLEANFID_CACHE", tmp_path / "cleanfid")
    return tmp_path


@pytest.fixture(scope="module")
def dinov2_cache(tmp_path_factory):
    """A Hugging Face cache laid out as `hf download` leaves it, holding random-init weights with the real
    architecture and key names (saved at timm's default 518 px, as the published file is)."""
    import timm
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("hfcache")
    repo = root / f"models--{F.DINOV2_REPO.replace('/', '--')}"
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    torch.manual_seed(0)
    model = timm.create_model(F.DINOV2_MODEL, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snap / "model.safetensors"))
    return root, snap / "model.safetensors"


def test_dinov2_offline_without_weights_fails_at_once_with_one_line(empty_caches):
    t0 = time.perf_counter()
    with pytest.raises(UserError) as e:
        F.load_extractor("dinov2")
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, f"{elapsed:.2f} s: a hub retry loop?"
    msg, hint = str(e.value), e.value.hint or ""
    assert F.DINOV2_REPO in msg and "\n" not in msg + hint
    assert "--dinov2-weights" in hint and f"hf download {F.DINOV2_REPO}" in hint
    with pytest.raises(UserError, match="no such file"):
        F.load_extractor("dinov2", str(empty_caches / "missing.safetensors"))


def test_cli_fd_dinov2_offline_exits_2_without_traceback(tmp_path):
    """The real CLI, offline: one error line naming --dinov2-weights, exit 2, and neither torch nor the
    generator loaded first (so it is a fraction of a second after interpreter start-up)."""
    gen = make_generator(tmp_path / "run" / "generator", resolution=32, ngf=16)
    data = make_images(tmp_path / "data", n=8, size=32)
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hf"), https_proxy="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9")  # nothing cached, and no route out even if something tried
    code = ("import sys, time\n"
            "t0 = time.perf_counter()\n"
            "from projgan.cli import main\n"
            "sys.argv = ['pipeline'] + sys.argv[1:]\n"
            "try:\n    main()\n"
            "except SystemExit as e:\n"
            "    print('exit', e.code, 'torch' in sys.modules, f'{time.perf_counter() - t0:.3f}')\n")
    for extra in (["--metrics", "fd_dinov2"], ["--metrics", "fid", "--extractor", "dinov2", "--nearest", "2"]):
        r = subprocess.run([sys.executable, "-c", code, "evaluate", str(gen), "--data", str(data),
                            "--num-images", "8", *extra], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
        assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
        exit_word, rc, torch_loaded, seconds = r.stdout.split()[-4:]
        assert (exit_word, rc, torch_loaded) == ("exit", "2", "False"), r.stdout
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert lines[0].startswith("error:") and "DINOv2" in lines[0] and "--dinov2-weights" in r.stderr
        assert len(lines) == 2 and lines[1].startswith("hint:")
        print(extra, f"{seconds} s from import to exit")
    assert not (tmp_path / "run" / "evaluation.jsonl").exists()


def test_dinov2_from_the_hf_cache_and_a_local_file(dinov2_cache, monkeypatch, reals_small):
    root, path = dinov2_cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    assert F.find_dinov2_weights() == path
    ext = F.load_extractor("dinov2")
    assert ext.name == "dinov2" and ext.identity.endswith(F.sha256_file(path)[:16])
    assert "224" in ext.preprocessing and "ImageNet" in ext.preprocessing and "CLS" in ext.preprocessing
    feats = F.features(reals_small, ext, "cpu", batch=2)
    assert feats.shape == (len(reals_small), 768) and feats.dtype == np.float64 and np.isfinite(feats).all()
    # The CLS token after the final norm (not a patch average), from 224 px inputs normalised with ImageNet stats.
    x = ext.prepare(reals_small)
    assert x.shape[-2:] == (224, 224)
    tokens = ext.model.forward_features((x - ext.mean) / ext.std)
    assert np.allclose(feats, tokens[:, 0].numpy(), atol=1e-5)
    assert not np.allclose(feats, tokens[:, 1:].mean(1).numpy(), atol=1e-3)
    # A tensor at another size is resized inside, so any 0..255 [B, 3, H, W] works.
    assert ext(torch.full((1, 3, 40, 40), 128.0)).shape == (1, 768)
    # The same file passed explicitly: same identity (so the same cached reference statistics).
    assert F.load_extractor("dinov2", str(path)).identity == ext.identity
    assert F.load_extractor("auto").name == "dinov2"  # found locally: auto prefers it


def test_a_wrong_dinov2_file_is_refused_clearly(tmp_path):
    bad = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2, 2)}, str(bad))
    with pytest.raises(UserError, match="not a DINOv2 ViT-B/14 state dict"):
        F.load_extractor("dinov2", str(bad))


def test_auto_falls_back_to_the_proxy_offline_and_says_so(empty_caches, capsys):
    t0 = time.perf_counter()
    ext = F.load_extractor("auto")
    assert time.perf_counter() - t0 < 1.0
    assert ext.name == "proxy" and ext.identity == F.ProxyExtractor.identity
    err = capsys.readouterr().err
    assert "note:" in err and "proxy" in err and F.DINOV2_REPO in err and F.INCEPTION_FILE in err
    assert "not comparable" in ext.note


def test_auto_prefers_a_local_inception_when_dinov2_is_absent(empty_caches):
    from tests.test_metrics import _fake_inception

    F.CLEANFID_CACHE.mkdir()
    _fake_inception(F.CLEANFID_CACHE / F.INCEPTION_FILE)
    ext = F.load_extractor("auto")
    assert ext.name == "inception" and not hasattr(ext, "note")


def test_every_extractor_states_name_identity_and_preprocessing(reals_small, tmp_path):
    from tests.test_metrics import TinyExtractor, _fake_inception

    exts = [F.load_extractor("proxy"), F.load_extractor("inception", str(_fake_inception(tmp_path / "i.pt")))]
    for ext in exts:
        d = F.describe(ext)
        assert d["name"] in F.EXTRACTORS and d["identity"] and "resize" in d["preprocessing"]
        assert F.features(reals_small[:3], ext).shape == (3, ext.feature_dim)
    injected = F.describe(TinyExtractor())
    assert injected["name"] == "custom" and injected["identity"].startswith("module:") and "299" in injected["preprocessing"]


def test_proxy_is_fixed_across_instances(reals_small):
    a = F.features(reals_small, F.proxy_extractor(), batch=3)
    b = F.features(reals_small, F.load_extractor("proxy"), batch=5)
    assert a.shape == (len(reals_small), 512) and np.array_equal(a, b)  # batch size does not matter either


def test_unknown_names_and_misplaced_weights_are_user_errors():
    with pytest.raises(UserError, match="unknown extractor"):
        F.load_extractor("clip")
    with pytest.raises(UserError, match="no weights"):
        F.load_extractor("proxy", "some.pt")


def test_importing_the_metric_modules_stays_light():
    code = ("import sys, projgan.evaluation.features, projgan.evaluation.fid, projgan.evaluation.evaluate\n"
            "print(' '.join(sorted(m for m in ('timm', 'cleanfid', 'prdc', 'sklearn', 'torchvision') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == ""


@pytest.fixture(scope="module")
def reals_small(tmp_path_factory):
    from projgan.evaluation.reference import load_reference_images

    arr, _ = load_reference_images(make_images(tmp_path_factory.mktemp("small"), n=6, size=32), 32)
    return arr
