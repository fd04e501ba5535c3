"""The command lines' manners: --help names the command as it is typed, shows the defaults, and
answers without importing torch (which takes seconds)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("module, default", [("model.train", "(default: 20)"), ("model.evaluate", "(default: val)"),
                                             ("model.synthetic", "(default: 0.15)"), ("model.fit_reranker", "(default: weights)"),
                                             ("model.export", "(default: weights)")])
def test_help_names_the_command_shows_defaults_and_loads_no_torch(module, default):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", module, "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: python -m {module} ")
    assert default in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "runtime.cli" in imported  # the importtime listing is read right
    assert "torch" not in imported and "torchvision" not in imported


def test_a_mistyped_flag_is_refused_before_torch_loads():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "model.train", "--data", "x", "--out", "y",
                             "--epoks", "3"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unrecognized arguments: --epoks 3" in result.stderr
    assert not any(line.rstrip().endswith("| torch") for line in result.stderr.splitlines())


FLICKR8K = ROOT.parent / "shared" / "data" / "flickr8k"  # any readable data set would do; missing, the data comes second


@pytest.mark.parametrize("command", [["scripts/examples.py"], ["scripts/compare_fit.py"], ["scripts/compare_tag_views.py"],
                                     ["-m", "model.calibrate"], ["-m", "model.fit_reranker"]])
@pytest.mark.parametrize("weights, data, message", [
    ("nowhere", None, "nowhere/manifest.json is missing"),
    ("weights", "no-such-folder", "no-such-folder: no such file or folder"),
])
def test_missing_weights_or_data_get_one_line_not_a_traceback(command, weights, data, message):
    if data is None and command[0] != "scripts/examples.py" and not FLICKR8K.is_dir():
        pytest.skip(f"needs a readable data set at {FLICKR8K}")
    data = data or str(FLICKR8K)
    if command[0] == "scripts/examples.py" and data == str(FLICKR8K):
        data_args = []  # examples.py needs no data set; its weights are checked alone
    else:
        data_args = ["--data", data]
    result = subprocess.run([sys.executable, *command, "--weights", weights, *data_args], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", ["--block-ngram", "--state-beam-size"])
def test_evaluate_refuses_a_negative_count_in_one_line(flag):
    result = subprocess.run([sys.executable, "-m", "model.evaluate", "--data", "x", flag, "-1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"error: {flag} must be 0 or more" in result.stderr and "Traceback" not in result.stderr
