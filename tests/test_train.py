"""Training end to end on a small synthetic set: it learns, resumes exactly, and runs under DDP."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from model.data import ImageCaptions, load_dataset
from model.synthetic import load_scenes
from model.train import consensus_weights
from runtime.captioner import Captioner
from runtime.weights import EXPORT_FILES, verify

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def run(*args, **kwargs):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    data = root / "data"
    result = run("-m", "model.synthetic", "--out", str(data), "--n", "400", "--seed", "1")
    assert result.returncode == 0, result.stderr
    return root, data


def train(root, data, out, *extra):
    return run("-m", "model.train", "--data", str(data), "--out", str(out), "--cache-dir", str(root / "cache"),
               "--hidden-dim", "128", "--embed-dim", "64", "--min-count", "1", "--batch-size", "64", "--lr", "5e-3",
               "--workers", "0", *extra, timeout=300)


@pytest.fixture(scope="module")
def trained(synthetic):
    """A run that ends by exporting over a weights folder already there (a copy of the shipped one)."""
    root, data = synthetic
    out = root / "run"
    shutil.copytree(ROOT / "weights", root / "exported")
    started = time.time()
    result = train(root, data, out, "--epochs", "8", "--patience", "8", "--export", str(root / "exported"), "--force")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result, time.time() - started


def test_export_replaces_the_weights_folder_with_readable_files(trained):
    out, _, _ = trained
    exported = out.parent / "exported"
    assert sorted(p.name for p in exported.iterdir()) == sorted(p.name for p in (out / "best").iterdir())
    assert verify(exported)["model_id"] == verify(out / "best")["model_id"] != verify(ROOT / "weights")["model_id"]
    assert set(EXPORT_FILES) <= set(verify(exported)["files"])  # the CNN exported with them: the service loads them as they are
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in exported.iterdir()} == {
        p.name: oct(0o666 & ~umask) for p in exported.iterdir()}  # as open() makes them, readable by a service user
    assert not list(out.parent.glob(".exported.*"))  # no staged or retired copy left behind


@pytest.mark.parametrize("force", [False, True])
def test_export_refuses_before_training_to_overwrite(synthetic, tmp_path, force):
    """Without --force, an existing weights folder; with it, a folder that is not weights."""
    root, data = synthetic
    target = tmp_path / "target"
    if force:
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    else:
        shutil.copytree(ROOT / "weights", target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    result = train(root, data, tmp_path / "run", "--epochs", "1", "--export", str(target), *(["--force"] if force else []))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert ("is not a weights folder" if force else "already exists; pass --force") in result.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # refused before any work
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


def test_loss_falls_and_each_epoch_is_logged(trained):
    out, result, seconds = trained
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 9))
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    assert log[-1]["val_CIDEr"] > log[0]["val_CIDEr"]
    assert "val CIDEr" in result.stdout and "val:" in result.stdout and "test:" in result.stdout


def test_a_held_out_scene_gets_a_sensible_caption(trained, synthetic):
    out, _, _ = trained
    _, data = synthetic
    captioner = Captioner.load(out / "best", "cpu")
    test_items = load_dataset(data).split("test")
    scenes = load_scenes(data)
    from PIL import Image

    item = test_items[0]
    [[(caption, log_prob)]] = captioner.caption([Image.open(item.image_path)])
    scene = scenes[item.image_path.name]
    assert scene["background"] in caption.split()
    assert any(obj["shape"] in caption.split() for obj in scene["objects"])
    assert log_prob < 0


def test_manifest_records_data_scores_and_hashes(trained):
    out, _, _ = trained
    manifest = json.loads((out / "best" / "manifest.json").read_text())
    assert manifest["data"]["name"] == "synthetic"
    assert "synthetic" in manifest["note"]
    assert set(manifest["scores"]["val"]) >= {"BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "n_images"}
    assert set(manifest["scores"]["test"]) >= {"BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "n_images"}
    assert manifest["encoder"]["name"] == "efficientnet-lite0"


@pytest.mark.parametrize("objective", ["cross-entropy", "self-critical"])
def test_kill_9_then_resume_matches_an_uninterrupted_run(synthetic, trained, tmp_path, objective):
    root, data = synthetic
    full, interrupted = tmp_path / "full", tmp_path / "interrupted"
    extra = ["--epochs", "3", "--ema", "0.9"]  # the moving average is part of what must resume exactly
    if objective == "self-critical":
        extra += ["--init", str(trained[0] / "best"), "--scst", "--scst-samples", "2", "--lr", "1e-4"]
    else:  # so is the weighting, a setting kept in the checkpoint
        extra += ["--consensus-weighting", "1"]
    assert train(root, data, full, *extra).returncode == 0

    command = [sys.executable, "-m", "model.train", "--data", str(data), "--out", str(interrupted),
               "--cache-dir", str(root / "cache"), "--hidden-dim", "128", "--embed-dim", "64", "--min-count", "1",
               "--batch-size", "64", "--lr", "5e-3", "--workers", "0", *extra]
    process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (interrupted / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (interrupted / "checkpoint.pt").exists()
    torch.load(interrupted / "checkpoint.pt", weights_only=True)  # the checkpoint is whole

    resumed = train(root, data, interrupted, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    log_a = [json.loads(line)["loss"] for line in (full / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(line)["loss"] for line in (interrupted / "log.jsonl").read_text().splitlines()]
    assert log_a == log_b
    for part in ("decoder", "averaged"):
        a, b = (torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)[part] for run in (full, interrupted))
        assert all(torch.equal(a[k], b[k]) for k in a)
    best_a, best_b = (safetensors.torch.load_file(run / "best" / "decoder.safetensors") for run in (full, interrupted))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def test_consensus_weights_favour_the_captions_the_others_agree_with():
    photo = ImageCaptions(Path("/p/dog.jpg"), ("a dog runs on the grass", "a brown dog runs on grass",
                                                "a dog is running on the grass", "an old man reads a newspaper"), "train")
    other = ImageCaptions(Path("/p/boy.jpg"), ("a boy jumps into a pool", "a child jumps into the water"), "train")
    weights = consensus_weights([photo, other], power=1.0)  # [6]: the captions in order
    assert weights.shape == (6,) and torch.isclose(weights.mean(), torch.tensor(1.0))
    assert weights[3] == weights[:4].min() and weights[3] < 0.1 * weights[:3].min()  # the odd one out
    assert torch.allclose(consensus_weights([photo, other], power=0.5), weights.sqrt() / weights.sqrt().mean())


def test_unwritable_output_fails_before_training(synthetic, tmp_path):
    root, data = synthetic
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = train(root, data, blocker / "run", "--epochs", "1")
    assert result.returncode != 0
    assert "cannot write to" in result.stderr
    assert "Traceback" not in result.stderr


def test_ddp_on_two_cpu_processes(synthetic, tmp_path):
    root, data = synthetic
    out = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "model.train",
         "--data", str(data), "--out", str(out), "--cache-dir", str(root / "cache"), "--hidden-dim", "64",
         "--embed-dim", "32", "--min-count", "1", "--batch-size", "64", "--workers", "0", "--epochs", "2",
         "--device", "cpu"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and log[1]["loss"] < log[0]["loss"]
    assert log[0]["world_size"] == 2
    assert (out / "best" / "manifest.json").is_file()


def test_a_fresh_run_refuses_to_overwrite_an_existing_one(trained, synthetic):
    out, _, _ = trained
    root, data = synthetic
    before = (out / "checkpoint.pt").read_bytes()
    result = train(root, data, out, "--epochs", "1")
    assert result.returncode != 0
    assert "already holds a run; pass --resume" in result.stderr
    assert (out / "checkpoint.pt").read_bytes() == before
