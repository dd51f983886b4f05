"""The dependency direction DESIGN.md promises, checked in fresh interpreters."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.split()
    return {m.split(".")[0] if not m.startswith("projgan.") else ".".join(m.split(".")[:2]) for m in out}


HEAVY = {"timm", "fastapi", "gradio", "onnx", "onnxruntime", "cleanfid", "uvicorn", "matplotlib"}


def test_core_imports_with_torch_alone():
    mods = loaded_after("import projgan.generator, projgan.artifacts, projgan.config, projgan.cli")
    assert not mods & HEAVY, mods & HEAVY
    assert "projgan.train" not in mods and "projgan.serve" not in mods


def test_serving_backends_import_without_training_or_web_code():
    mods = loaded_after("import projgan.serve.backends")
    assert "projgan.train" not in mods
    assert not mods & {"timm", "fastapi", "gradio", "onnx"}, mods & HEAVY


@pytest.mark.parametrize("module", ["projgan.serve.app", "projgan.serve.batcher"])
def test_server_never_imports_training_code(module):
    pytest.importorskip(module)
    mods = loaded_after(f"import {module}")
    assert "projgan.train" not in mods and "timm" not in mods


def test_training_step_imports_without_serving_stack():
    pytest.importorskip("projgan.train.loop")
    mods = loaded_after("import projgan.train.loop")
    assert not mods & {"fastapi", "gradio", "onnx", "onnxruntime", "uvicorn"}, mods & HEAVY


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "folder,forbidden",
    [
        ("projgan", ("projgan.train", "projgan.serve", "projgan.export", "projgan.evaluation")),
        ("serve", ("projgan.train", "projgan.export", "timm")),
        ("export", ("projgan.train",)),
        ("evaluation", ("projgan.train", "projgan.export")),
    ],
)
def test_no_module_imports_against_the_direction(folder, forbidden):
    allowed_composers = {"cli.py", "cli_measure.py", "quickstart.py"}  # composition roots import stages lazily
    for path in sorted((ROOT / folder).glob("*.py")):
        if folder == "projgan" and path.name in allowed_composers:
            continue
        bad = [m for m in _imports(path) if m.startswith(forbidden)]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_no_bare_stage_imports():
    for path in ROOT.glob("*/**/*.py"):
        if ".venv" in path.parts:
            continue
        for m in _imports(path):
            assert m.split(".")[0] not in {"train", "export", "serve", "evaluation"}, f"{path}: bare import {m}"


def test_export_uses_serve_only_for_its_runners():
    """Parity runs the same backend code serving runs; nothing else of serve (app, batcher, UI) is export's."""
    runners = {"projgan.serve.backends", "projgan.serve.onnxruntime", "projgan.serve.tensorrt", "projgan.serve"}
    for path in sorted((ROOT / "export").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("projgan.serve"):
                names = {f"{node.module}.{a.name}" if node.module == "projgan.serve" else node.module for a in node.names}
                assert names <= runners, f"{path.relative_to(ROOT)} imports {names - runners}"


def test_architecture_doc_names_every_module():
    """docs/architecture.md is the map of the code: every module of the package appears in it."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for folder in ("projgan", "train", "export", "serve", "evaluation"):
        for path in sorted((ROOT / folder).glob("*.py")):
            if path.name not in ("__init__.py", "__main__.py"):
                assert f"{folder}/{path.name}" in doc, f"docs/architecture.md does not mention {folder}/{path.name}"
