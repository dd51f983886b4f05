"""`pipeline quickstart --data DIR`: the same recipe on a user's folder, scored by the law only where one is known."""

from __future__ import annotations

import json

import pytest

from projgan import artifacts
from projgan.evaluation.laws import make_law_dataset
from projgan.quickstart import quickstart
from tests.conftest import make_images


def test_quickstart_on_a_law_folder_reports_the_law_score(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_law_dataset(tmp_path / "dots", "dots", n=64, resolution=32)
    run = quickstart(out="runs/qs", minutes=0.1, serve=False, data=str(data))
    row = artifacts.read_jsonl(run / "evaluation.jsonl")[-1]
    assert row["backend"] == "onnxruntime" and 0 <= row["law_valid"] <= 1 and "fid" not in row
    assert json.loads((tmp_path / "exports" / "qs" / "export.json").read_text())["parity"]
    assert (run / "summary.png").stat().st_size > 1000 and (run / artifacts.LAW_PLOT).exists()


@pytest.mark.slow  # 17 s; `make test-slow` (the law-folder quickstart stays in the default suite)
def test_quickstart_on_an_ordinary_folder_reports_the_fid_proxy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_images(tmp_path / "pics", n=40, size=40)
    run = quickstart(out="runs/qs", minutes=0.1, serve=False, data=str(data))
    row = artifacts.read_jsonl(run / "evaluation.jsonl")[-1]
    assert row["fid"] > 0 and "law_valid" not in row
    assert row["extractor"] == "quickstart-random-proxy-v1"  # offline: the proxy, and said so
