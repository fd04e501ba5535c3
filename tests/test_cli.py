"""The command lines' manners: --help names the command as it is typed, shows the defaults, and
answers without importing torch (which takes seconds)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("module, default", [("model.train", "(default: 20)"), ("model.evaluate", "(default: val)"),
                                             ("model.synthetic", "(default: 0.15)")])
def test_help_names_the_command_shows_defaults_and_loads_no_torch(module, default):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", module, "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: python -m {module} ")
    assert default in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "model.cli" in imported  # the importtime listing is read right
    assert "torch" not in imported and "torchvision" not in imported


def test_a_mistyped_flag_is_refused_before_torch_loads():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "model.train", "--data", "x", "--out", "y",
                             "--epoks", "3"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unrecognized arguments: --epoks 3" in result.stderr
    assert not any(line.rstrip().endswith("| torch") for line in result.stderr.splitlines())
