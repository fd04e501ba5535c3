"""Packaging by role: the base install serves without torch, model/ needs the train extra and says so."""
import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """The top-level names a file imports, anywhere in it (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_runtime_and_the_app_import_neither_model_nor_torch_and_only_runtime_gpu_asks_for_torch():
    for folder in ("runtime", "app"):
        for path in sorted((ROOT / folder).glob("*.py")):
            imported = imported_modules(path)
            assert "model" not in imported, f"{path.relative_to(ROOT)} imports model/: the arrows go model -> runtime"
            if path.name != "gpu.py":
                assert "torch" not in imported, f"{path.relative_to(ROOT)} imports torch"


def test_the_base_install_has_no_torch_and_the_extras_do():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda requirements: {requirement.split("=")[0].split(">")[0].split("[")[0] for requirement in requirements}  # noqa: E731
    assert not names(project["dependencies"]) & {"torch", "torchvision", "pycocoevalcap", "onnx"}
    assert {"openvino", "onnxruntime", "numpy", "pillow", "fastapi"} <= names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert {"torch", "torchvision", "pycocoevalcap"} <= names(extras["train"])
    assert "torch" in names(extras["gpu"])


def test_model_checks_for_every_package_of_the_train_extra():
    from model import TRAIN_EXTRA

    train = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    assert {re.split(r"[=<>\[ ]", requirement)[0].replace("-", "_") for requirement in train} == set(TRAIN_EXTRA)


def test_a_training_command_without_the_train_extra_says_in_one_line_what_to_install():
    hide_torch = "import sys, runpy; sys.modules['torch'] = None; sys.argv = ['model.train', '--help']; " \
                 "runpy.run_module('model.train', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", hide_torch], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: training, evaluation and export need the train extra (torch missing): pip install 'captioner[train]'"]
