"""The `pipeline` entry point: help with examples everywhere, one-line errors with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

COMMANDS = ["train", "export", "serve", "evaluate", "bench", "quickstart", "data check", "data make"]


def pipeline(*args: str, timeout: float = 120, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "projgan", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_top_level_help_lists_every_command():
    r = pipeline("--help")
    assert r.returncode == 0
    for cmd in ["train", "export", "serve", "evaluate", "bench", "quickstart", "data"]:
        assert cmd in r.stdout
    assert "Examples" in r.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help_with_examples(cmd):
    r = pipeline(*cmd.split(), "--help")
    assert r.returncode == 0, r.stderr
    assert "Example" in r.stdout and "pipeline" in r.stdout


def test_piped_help_prints_defaults_whole():
    """Through a pipe (no terminal, no COLUMNS) Rich used to cut help at 80 columns: `tf_efficientnet_li…`."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TERMINAL_WIDTH")}
    r = pipeline("train", "--help", env=env)
    assert r.returncode == 0, r.stderr
    assert "[default: tf_efficientnet_lite0]" in r.stdout and "…" not in r.stdout
    assert "[default: runs/<data name>]" in r.stdout  # help text in brackets is not eaten as Rich markup
    assert "--precisions" in pipeline("bench", "--help", env=env).stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["export", "/nonexistent/run"], "does not exist"),
        (["export", ".", "--batch-sizes", "8,1,4"], "--batch-sizes"),
        (["serve", "/nonexistent/run"], "does not exist"),
        (["train", "--data", "x", "--resolution", "100"], "resolution"),
        (["train", "--data", "x", "--projection", "weird"], "projection"),
        (["train", "--data", "x", "--discriminator", "stylegan"], "discriminator"),
        (["train", "--data", "x", "--optimizer", "lbfgs"], "optimizer"),
        (["train", "--data", "x", "--lr-schedule", "linear"], "lr-schedule"),
        (["data", "make", "squiggles", "/tmp/never-written"], "unknown law"),
        (["evaluate", ".", "--data", ".", "--metrics", "law"], "law.json"),
        (["bench", ".", "--channels-last", "on"], "--train only"),
        (["bench"], "nothing to benchmark"),
        (["bench", "--train", "--channels-last", "maybe"], "--channels-last"),
        (["bench", "--train", "--precisions", "fp8"], "--precisions"),
        (["bench", "/nonexistent/run", "--train"], "cannot read a training config"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(args, needle):
    r = pipeline(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
