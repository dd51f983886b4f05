"""`torchrun --nproc_per_node 2` on CPU (gloo): two processes, one consistent run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
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


SLOW_FID_SCRIPT = '''
import sys, time
import torch
from projgan.config import GeneratorConfig, TrainConfig
from projgan.train.loop import train


class SlowExtractor:
    """Rank 0's FID takes longer than the step timeout (PROJGAN_DIST_TIMEOUT_S) on its first call."""

    identity = "slow-test-extractor"

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        if self.calls == 1:
            time.sleep(float(sys.argv[3]))
        return x.float().mean(dim=(2, 3))


cfg = TrainConfig(data=sys.argv[1], out=sys.argv[2], generator=GeneratorConfig(resolution=32, ngf=16), batch=4,
                  kimg=0.008, discriminator="dcgan", d_width=16, tick_kimg=0.004, snapshot_ticks=1,
                  metrics=("fid",), fid_every=0.004, fid_images=8, sample_seeds=4, device="cpu")
train(cfg, feature_extractor=SlowExtractor())
'''


@pytest.mark.slow  # 14 s; `make test-slow` (the two-process run below stays in the default suite)
def test_rank0_only_fid_longer_than_the_step_timeout_does_not_break_the_group(tmp_path):
    """The other rank waits for rank 0's FID on a long-timeout group, not in a step collective."""
    data = make_law_dataset(tmp_path / "data", "disk", n=16, resolution=32)
    script = tmp_path / "slow_fid.py"
    script.write_text(SLOW_FID_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PROJGAN_DIST_TIMEOUT_S": "3"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(data), str(tmp_path / "run"), "6"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [x for x in artifacts.read_jsonl(tmp_path / "run" / artifacts.METRICS) if x["kind"] == "metric"]
    assert [x["kimg"] for x in rows] == [0.004, 0.008] and rows[0]["seconds"] >= 6


STOP_AT_TICK_SCRIPT = '''
import os, signal, sys
from projgan.config import GeneratorConfig, TrainConfig
from projgan.train import dist, step
from projgan.train.loop import train

rank = int(os.environ["RANK"])
calls, steps = [], []
agree, one_step = dist.any_rank, step.train_step


def counted(flag, rt):
    calls.append(flag)
    return agree(flag, rt)


def stepped(*args, **kw):
    out = one_step(*args, **kw)
    steps.append(out)
    if rank == 1 and len(steps) == 3:  # SIGTERM reaches rank 1 alone, mid-tick
        os.kill(os.getpid(), signal.SIGTERM)
    return out


dist.any_rank, step.train_step = counted, stepped
cfg = TrainConfig(data=sys.argv[1], out=sys.argv[2], generator=GeneratorConfig(resolution=32, ngf=16), batch=4,
                  kimg=0.024, discriminator="dcgan", d_width=16, tick_kimg=0.008, snapshot_ticks=100, metrics=(),
                  sample_seeds=4, device="cpu")
train(cfg)
print(f"rank {rank} agreed {len(calls)} times in {len(steps)} steps", flush=True)
'''


def test_ranks_agree_on_stopping_at_a_tick_with_one_collective_per_tick(tmp_path):
    """SIGTERM reaches rank 1 alone after its third step; both ranks stop together at the second tick (step
    four), having agreed once per tick (two collectives) instead of syncing the host every step."""
    data = make_law_dataset(tmp_path / "data", "disk", n=16, resolution=32)
    script = tmp_path / "stop_at_tick.py"
    script.write_text(STOP_AT_TICK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PROJGAN_DIST_TIMEOUT_S": "60"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(data), str(tmp_path / "run")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} agreed 2 times in 4 steps" in r.stdout, r.stdout[-2000:]
    state = torch.load(tmp_path / "run" / artifacts.TRAINING_STATE, weights_only=True)
    assert state["counters"]["cur_nimg"] == 16  # the tick after the signal, on both ranks
    assert "stop on another rank" in r.stdout
