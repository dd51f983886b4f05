"""Device strings, the one `auto` precision rule and the TF32 switch: what a first GPU run depends on."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from projgan import hardware
from projgan.config import BenchConfig, EvalConfig, ServeConfig, TrainConfig, parse_device
from projgan.errors import UserError


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("auto", ("auto", None)), ("cpu", ("cpu", None)), ("cuda", ("cuda", None)), ("cuda:0", ("cuda", 0)),
     ("cuda:1", ("cuda", 1)), ("CUDA:12", ("cuda", 12))],
)
def test_device_strings_parse(text, parsed):
    assert parse_device(text) == parsed


@pytest.mark.parametrize("text", ["gpu0", "cuda:", "cuda:x", "cuda:-1", "cuda:1:2", "cpu:0", "mps", ""])
def test_unknown_device_strings_are_user_errors(text):
    with pytest.raises(UserError, match="unknown --device") as e:
        parse_device(text)
    assert "cuda:N" in e.value.hint


def test_every_stage_accepts_one_gpu_of_several():
    for cfg in (ServeConfig(device="cuda:1"), TrainConfig(device="cuda:1"), EvalConfig(device="cuda:1"),
                BenchConfig(device="cuda:1")):
        assert cfg.device == "cuda:1"
    for make in (ServeConfig, TrainConfig, EvalConfig, BenchConfig):
        with pytest.raises(UserError, match="unknown --device"):
            make(device="gpu1")


@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="this machine has a second GPU")
def test_resolving_a_gpu_that_is_not_here_names_it():
    with pytest.raises(UserError) as e:
        hardware.resolve_device("cuda:1")
    assert "cuda:1" in str(e.value) and "unknown" not in str(e.value)
    assert hardware.resolve_device("cpu") == "cpu"


def test_serve_cuda_1_is_refused_for_what_the_machine_lacks_not_as_an_unknown_device(tmp_path):
    r = subprocess.run([sys.executable, "-m", "projgan", "serve", str(tmp_path), "--device", "cuda:7"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "cuda:7" in r.stderr and "unknown --device" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("support", "cuda", "want"),
    [
        ({"fp32": None, "fp16": None, "bf16": None}, True, "bf16"),  # Ampere and later
        ({"fp32": None, "fp16": None, "bf16": "needs compute capability 8.0+"}, True, "fp16"),  # Turing, Volta
        ({"fp32": None, "bf16": None}, False, "bf16"),  # AMX / AVX512-BF16 CPU
        ({"fp32": None, "bf16": "emulated"}, False, "fp32"),  # AVX2-only CPU
    ],
)
def test_one_auto_precision_rule(support, cuda, want):
    assert hardware.pick_auto_precision(support, cuda) == want


def test_training_and_serving_resolve_auto_the_same_way(monkeypatch):
    from projgan.train.dist import resolve_precision

    for flags in ("avx2 fma", "avx2 fma avx512f avx512_bf16"):
        monkeypatch.setenv(hardware.CPU_FLAGS_ENV, flags)
        assert resolve_precision("auto", torch.device("cpu")) == hardware.auto_precision("cpu")
    assert hardware.auto_precision("cpu") == "bf16"


def test_fp32_exact_turns_tf32_off_and_restores_it():
    before = hardware.tf32_state()
    torch.backends.cudnn.allow_tf32 = True  # cuDNN's default
    try:
        with hardware.fp32_exact():
            assert hardware.tf32_state() == {"matmul": False, "conv": False}
        assert hardware.tf32_state()["conv"] is True
        with pytest.raises(RuntimeError), hardware.fp32_exact():
            raise RuntimeError("a failing reference")
        assert hardware.tf32_state()["conv"] is True
    finally:
        torch.backends.cudnn.allow_tf32 = before["conv"]
        torch.backends.cuda.matmul.allow_tf32 = before["matmul"]
