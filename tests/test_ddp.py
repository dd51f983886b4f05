"""`torchrun --nproc_per_node 2` on CPU (gloo): two processes, one consistent run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from projgan import artifacts
from projgan.evaluation.laws import make_law_dataset


def test_torchrun_two_processes_write_one_consistent_run(tmp_path):
    data = make_law_dataset(tmp_path / "data", "shapes", n=16, resolution=32)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "projgan", "train", "--data", str(data), "--out", str(run), "--resolution", "32", "--ngf", "16",
        "--batch", "4", "--kimg", "0.012", "--tick-kimg", "0.004", "--snapshot-ticks", "2",
        "--backbone-weights", "none", "--backbone-resolution", "32", "--metrics", "none", "--device", "cpu",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "cpu x2" in r.stdout  # rank 0 speaks for a world of two; rank 1 stays quiet
    assert r.stdout.count("done: 0.012 kimg") == 1

    rows = artifacts.read_jsonl(run / artifacts.METRICS)
    assert [r["kind"] for r in rows].count("header") == 1 and rows[0]["world"] == 2
    rows = [r for r in rows if r["kind"] == "tick"]
    assert [row["tick"] for row in rows] == [1, 2, 3]  # one row per tick, none duplicated by rank 1
    assert [row["kimg"] for row in rows] == [0.004, 0.008, 0.012]
    state = torch.load(run / artifacts.TRAINING_STATE, weights_only=True)
    assert state["counters"]["cur_nimg"] == 12  # the global batch of 4 counted once per step
    G, config = artifacts.load_generator(run)
    assert config["meta"]["kimg"] == 0.012
    assert json.loads((run / artifacts.TRAIN_CONFIG).read_text())["batch"] == 4
    assert sorted(p.name for p in (run / artifacts.SAMPLES_DIR).iterdir()) == [
        "kimg00000.008.png", "kimg00000.012.png", "reals.png"
    ]
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".write-test")]
