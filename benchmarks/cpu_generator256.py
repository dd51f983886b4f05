"""Reproduce benchmarks/cpu_generator256.json + .png: inference bench of a 256 px, ngf-128 generator.

Random weights rescaled so the output spans the range (tests/conftest.make_generator); speed does
not depend on the values. Run from the repository root:

    .venv/bin/python benchmarks/cpu_generator256.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from projgan import artifacts  # noqa: E402
from projgan.config import BenchConfig  # noqa: E402
from projgan.evaluation.bench import bench  # noqa: E402
from tests.conftest import make_generator  # noqa: E402

NOTES = (
    "Shared 2-core CI machine: other engineers' processes (tests, training runs) ran on the same 2 cores "
    "during this measurement, so absolute numbers are noisy and pessimistic; compare backends within this file. "
    "Random-init generator (outputs rescaled to span [-1, 1]); ONNX from projgan.export.onnx.export_fp32 "
    "(dynamo exporter, opset 18) written to a temporary folder for this run. torch bf16 = autocast + channels_last."
)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench256-") as tmp:
        gen = make_generator(Path(tmp) / "generator", resolution=256, ngf=128)
        G, _ = artifacts.load_generator(gen)
        onnx = Path(tmp) / "generator.onnx"
        from projgan.export.onnx import export_fp32

        export_fp32(G, onnx, max_batch=64)
        del G
        cfg = BenchConfig(source=str(gen), batch_sizes=(1, 8), device="cpu", warmup=2, repeats=7,
                          out=str(ROOT / "benchmarks" / "cpu_generator256.json"))
        bench(cfg, onnx=onnx, notes=NOTES, command=".venv/bin/python benchmarks/cpu_generator256.py  "
              "# = pipeline bench GENERATOR_256_NGF128 --batch-sizes 1,8 --warmup 2 --repeats 7 "
              "--device cpu (+ ONNX Runtime on its generator.onnx)")


if __name__ == "__main__":
    main()
