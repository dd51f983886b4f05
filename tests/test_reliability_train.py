"""Training survives being killed: a real ``pipeline train`` process, SIGKILLed at random moments.

After every kill the run directory must be readable (the resume state loads with weights_only,
metrics rows parse with no duplicate kimg), the re-run must resume from the last complete
snapshot, and the finished run must have the same counters and metrics rows as an uninterrupted
one. SIGTERM/SIGINT stop cleanly after a snapshot; an unwritable --out fails before any work.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import make_images

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
KIMG = 0.096  # 12 steps of batch 8; a tick every 2 steps, a snapshot every tick


def train_cmd(data: Path, out: Path, kimg: float = KIMG) -> list[str]:
    return [
        sys.executable,
        "-m",
        "projgan",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--resolution",
        "32",
        "--ngf",
        "16",
        "--batch",
        "8",
        "--kimg",
        str(kimg),
        "--backbone-weights",
        "none",
        "--metrics",
        "none",
        "--backbone-resolution",
        "64",
        "--tick-kimg",
        "0.016",
        "--snapshot-ticks",
        "1",
        "--device",
        "cpu",
        "--seed",
        "3",
    ]


def state_counters(run: Path) -> dict | None:
    from projgan import artifacts

    path = run / "training-state.pt"
    if not path.exists():
        return None
    return artifacts.load_training_state(path)["counters"]  # raises UserError if torn


def check_readable(run: Path, allow_torn_last_line: bool) -> list[dict]:
    """The run directory after any interruption: state loads, rows parse, kimg strictly increasing.
    Returns the tick and metric rows (a header row is written at every start)."""
    state_counters(run)
    metrics = run / "metrics.jsonl"
    rows = []
    if metrics.exists():
        lines = metrics.read_text().split("\n")
        complete, tail = lines[:-1], lines[-1]
        assert tail == "" or allow_torn_last_line, f"unterminated last line {tail!r}"
        rows = [json.loads(line) for line in complete]  # every complete row parses
    headers = [r for r in rows if r.get("kind") == "header"]
    assert all(h["backbone"]["weights"] == "random" for h in headers)  # one per start, each says what trained
    rows = [r for r in rows if r.get("kind") != "header"]
    kimgs = [r["kimg"] for r in rows if r.get("kind") == "tick"]
    assert kimgs == sorted(set(kimgs)), f"duplicate or out-of-order kimg rows: {kimgs}"
    if (run / "generator").exists():
        from projgan.artifacts import load_generator

        load_generator(run / "generator")
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("train-data") / "images", n=16, size=32)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """One uninterrupted run: its final counters and metrics rows."""
    run = tmp_path_factory.mktemp("ref") / "run"
    res = subprocess.run(train_cmd(data, run), capture_output=True, text=True, timeout=300, env=ENV)
    assert res.returncode == 0, res.stdout + res.stderr
    return state_counters(run), check_readable(run, allow_torn_last_line=False)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_resumes_and_matches_uninterrupted(data, reference, tmp_path):
    ref_counters, ref_rows = reference
    run, rng = tmp_path / "run", random.Random(int(os.environ.get("PROJGAN_KILL_SEED", "7")))
    kills, resumed_at = 0, []
    for _attempt in range(8):
        if kills >= 4:
            break
        before = state_counters(run)
        proc = subprocess.Popen(
            train_cmd(data, run), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV
        )
        # Wait for the loop to start, then kill at a random moment (sometimes inside a snapshot write).
        out = ""
        for line in proc.stdout:
            out += line
            if line.startswith(("starting:", "resuming at")):
                break
        m = re.search(r"resuming at ([0-9.]+) kimg", out)
        if before is not None:
            assert m, f"did not resume although a state exists:\n{out}"
            assert abs(float(m.group(1)) * 1000 - before["cur_nimg"]) < 1e-6, (m.group(1), before)
            resumed_at.append(before["cur_nimg"])
        time.sleep(rng.uniform(0.2, 4.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
        rows = check_readable(run, allow_torn_last_line=True)
        after = state_counters(run)
        if after is not None and after["cur_nimg"] >= ref_counters["cur_nimg"]:
            break
        if after is not None:  # every row the state vouches for is one the reference run wrote too
            assert [r["kimg"] for r in rows if r["kimg"] * 1000 <= after["cur_nimg"]] == [
                r["kimg"] for r in ref_rows if r["kimg"] * 1000 <= after["cur_nimg"]
            ]
    assert kills >= 3, f"only {kills} kills landed"
    res = subprocess.run(train_cmd(data, run), capture_output=True, text=True, timeout=300, env=ENV)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = check_readable(run, allow_torn_last_line=False)
    final = state_counters(run)
    assert (final["cur_nimg"], final["cur_tick"]) == (ref_counters["cur_nimg"], ref_counters["cur_tick"])
    assert [(r["tick"], r["kimg"]) for r in rows] == [(r["tick"], r["kimg"]) for r in ref_rows]
    print(
        f"train kill test: {kills} SIGKILLs, resumed at nimg {resumed_at}, final {final['cur_nimg']} nimg "
        f"{final['cur_tick']} ticks == uninterrupted"
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_cleanly_after_a_snapshot(data, tmp_path, sig):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        train_cmd(data, run, kimg=1.0), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV
    )
    out = ""
    for line in proc.stdout:
        out += line
        if line.startswith("tick 1 "):
            break
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=120)
    out += rest
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "stopped at" in out, out
    rows = check_readable(run, allow_torn_last_line=False)
    counters = state_counters(run)
    # Stopped part-way (after the first tick, before the 1 kimg budget), with the last row at the state's count.
    assert 0 < counters["cur_nimg"] < 1000 and abs(rows[-1]["kimg"] * 1000 - counters["cur_nimg"]) < 1e-6
    res = subprocess.run(
        train_cmd(data, run, kimg=counters["cur_nimg"] / 1000 + 0.016),
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert res.returncode == 0 and f"resuming at {counters['cur_nimg'] / 1000:g} kimg" in res.stdout, res.stdout


def test_unwritable_output_directory_is_a_clear_error_before_work(data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cases = [blocker / "run"]
    if os.geteuid() != 0:  # root writes through permission bits
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        cases.append(ro / "run")
    for out in cases:
        t0 = time.monotonic()
        res = subprocess.run(train_cmd(data, out), capture_output=True, text=True, timeout=120, env=ENV)
        assert res.returncode == 2, res.stdout + res.stderr
        assert "Traceback" not in res.stderr and "cannot write to run directory" in res.stderr, res.stderr
        assert "starting:" not in res.stdout and time.monotonic() - t0 < 60
